"""Semantic segmentation: segmenters by spec (hub id or folder, random, none, ground truth) and the ADE20K classes."""

from geosurge.segmentation.segmenter import (
    GEOWORLD_SEGMENTER,
    GROUND_TRUTH_SEGMENTER,
    NO_SEGMENTER,
    RANDOM_SEGMENTER,
    Segmenter,
)

__all__ = ["GEOWORLD_SEGMENTER", "GROUND_TRUTH_SEGMENTER", "NO_SEGMENTER", "RANDOM_SEGMENTER", "Segmenter"]
