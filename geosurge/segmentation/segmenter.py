"""Semantic segmentation: a `transformers` segmentation checkpoint → ADE20K label maps on a patch grid.

What `ingest.segmenter` (a spec) may name:
- a hub id (e.g. the paper's `shi-labs/oneformer_ade20k_swin_large`) or a local checkpoint folder;
- an `s3://bucket/prefix` checkpoint folder, copied once into a local cache and loaded from there
  (`geosurge.segmentation.cache`; pass `s3=` for the endpoint and credentials);
- `"random"`, `"random-oneformer"`, `"random-mask2former"` (`RANDOM_SPECS`): tiny randomly initialised models of
  those families with the ADE20K label set, built without downloading anything. They exercise the real code paths
  but their label maps carry no meaning, and every caller must say so in its output (`Segmenter.is_random`).

The model family comes from the checkpoint's `config.model_type` (`geosurge.segmentation.families`): "oneformer"
→ OneFormerForUniversalSegmentation, "mask2former" → Mask2FormerForUniversalSegmentation, "maskformer" →
MaskFormerForInstanceSegmentation (these three turn query classes and masks into per-pixel class scores), anything
else → AutoModelForSemanticSegmentation (SegFormer and the like, per-pixel `.logits`). Every family's scores are
then pooled to the patch grid. Images are normalised with the checkpoint's own image-processor statistics when it
has a processor config, else with ImageNet's (what SegFormer, Mask2Former and OneFormer processors use).
Label ids are the checkpoint's own: meaningful as ADE20K ids only for a model trained on ADE20K's 150 classes.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from geosurge import storage
from geosurge.config import S3Config
from geosurge.device import autocast, device_for, inference_dtype
from geosurge.segmentation.ade20k import NUM_ADE20K_CLASSES
from geosurge.segmentation.cache import cached_checkpoint
from geosurge.segmentation.families import (
    Mask2FormerFamily,
    OneFormerFamily,
    SemanticFamily,
    family_for,
    pixel_statistics,
    random_segformer,  # noqa: F401  re-exported: callers and tests take it from here
)
from geosurge.segmentation.specs import (  # noqa: F401  re-exported: the specs' callers may take them from here
    GEOWORLD_SEGMENTER,
    GROUND_TRUTH_SEGMENTER,
    NO_SEGMENTER,
    RANDOM_MASK2FORMER,
    RANDOM_ONEFORMER,
    RANDOM_SEGMENTER,
    RANDOM_SPECS,
    is_random_spec,
)

log = logging.getLogger(__name__)

_RANDOM_FAMILIES = {RANDOM_SEGMENTER: SemanticFamily, RANDOM_ONEFORMER: OneFormerFamily,
                    RANDOM_MASK2FORMER: Mask2FormerFamily}
# ImageNet statistics: the fallback when a checkpoint has no processor config
_MEAN = [0.485, 0.456, 0.406]
_STD = [0.229, 0.224, 0.225]


def load_family(spec: str, s3: S3Config | None = None) -> tuple[SemanticFamily | Mask2FormerFamily, str | None]:
    """(family wrapper holding the model in eval mode, local checkpoint path or hub id; None for random specs)."""
    if is_random_spec(spec):
        family, checkpoint = _RANDOM_FAMILIES[spec].random(), None
    else:
        checkpoint = str(cached_checkpoint(spec, s3)) if storage.is_s3(spec) else spec
        from transformers import AutoConfig

        family = family_for(AutoConfig.from_pretrained(checkpoint).model_type).from_pretrained(checkpoint)
        if family.model.config.num_labels != NUM_ADE20K_CLASSES:
            log.warning("%s predicts %d classes, not ADE20K's %d: its label ids are not ADE20K ids", spec,
                        family.model.config.num_labels, NUM_ADE20K_CLASSES)
    family.model.eval()  # a freshly built model is in training mode (dropout on)
    return family, checkpoint


def load_segmenter(spec: str, s3: S3Config | None = None) -> tuple[torch.nn.Module, bool]:
    """(model in eval mode, is_random) for any spec `Segmenter` takes."""
    family, _ = load_family(spec, s3)
    return family.model.eval(), is_random_spec(spec)


def pool_logits_to_grid(logits: torch.Tensor, grid: int) -> np.ndarray:
    """Class logits [B, C, h, w] → uint8 label map [B, grid, grid]: mean logit per patch, then argmax
    (a soft majority vote, robust to the segmenter's output stride)."""
    pooled = F.adaptive_avg_pool2d(logits.float(), grid)
    return pooled.argmax(dim=1).to(torch.uint8).cpu().numpy()


class Segmenter:
    """Batched segmentation to patch-grid label maps. Used as a Ray Data actor (one model per actor)."""

    def __init__(self, spec: str, grid: int, device: str | None = None, *, s3: S3Config | None = None):
        self.device = torch.device(device) if device else device_for()
        self.family, checkpoint = load_family(spec, s3)
        self.is_random = is_random_spec(spec)
        self.family.model.to(self.device)
        self.dtype = inference_dtype(self.device)
        self.grid = grid
        divisor, mean, std = pixel_statistics(checkpoint) or (255.0, _MEAN, _STD)
        self._divisor = divisor
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    @property
    def model(self) -> torch.nn.Module:
        return self.family.model

    @model.setter
    def model(self, model: torch.nn.Module) -> None:
        self.family.model = model

    @torch.inference_mode()
    def label_maps(self, images: np.ndarray) -> np.ndarray:
        """uint8 RGB images [B, H, W, 3] → uint8 label maps [B, grid, grid] of ADE20K ids."""
        x = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float().div_(self._divisor)
        x = (x - self._mean) / self._std
        with autocast(self.device, bf16=self.dtype == torch.bfloat16):
            scores = self.family.class_scores(x)
        return pool_logits_to_grid(scores, self.grid)
