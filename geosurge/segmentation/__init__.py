"""Semantic segmentation: segmenters by spec (hub id, folder, s3:// folder, random, none, ground truth) and the
ADE20K classes."""

from geosurge.segmentation.segmenter import (
    GEOWORLD_SEGMENTER,
    GROUND_TRUTH_SEGMENTER,
    NO_SEGMENTER,
    RANDOM_MASK2FORMER,
    RANDOM_ONEFORMER,
    RANDOM_SEGMENTER,
    RANDOM_SPECS,
    Segmenter,
    is_random_spec,
)

__all__ = ["GEOWORLD_SEGMENTER", "GROUND_TRUTH_SEGMENTER", "NO_SEGMENTER", "RANDOM_MASK2FORMER", "RANDOM_ONEFORMER",
           "RANDOM_SEGMENTER", "RANDOM_SPECS", "Segmenter", "is_random_spec"]
