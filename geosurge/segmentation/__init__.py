"""Semantic segmentation: segmenters by spec (hub id, folder, s3:// folder, random, none, ground truth) and the
ADE20K classes. The specs (`specs`) import without PyTorch; `Segmenter` (`segmenter`) loads it on first use."""

from geosurge.segmentation.specs import (
    GEOWORLD_SEGMENTER,
    GROUND_TRUTH_SEGMENTER,
    NO_SEGMENTER,
    RANDOM_MASK2FORMER,
    RANDOM_ONEFORMER,
    RANDOM_SEGMENTER,
    RANDOM_SPECS,
    is_random_spec,
)

__all__ = ["GEOWORLD_SEGMENTER", "GROUND_TRUTH_SEGMENTER", "NO_SEGMENTER", "RANDOM_MASK2FORMER", "RANDOM_ONEFORMER",
           "RANDOM_SEGMENTER", "RANDOM_SPECS", "Segmenter", "is_random_spec"]


def __getattr__(name: str):
    if name == "Segmenter":  # PyTorch and transformers: imported by the first caller that segments
        from geosurge.segmentation.segmenter import Segmenter

        return Segmenter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
