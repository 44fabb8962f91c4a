"""Semantic segmentation: any `transformers` semantic-segmentation checkpoint → label maps on a patch grid.

The production default is an ADE20K model (OneFormer, SegFormer) loaded by hub id; on machines without a hub
the same loader takes a local checkpoint folder. `"random"` builds a randomly initialised SegFormer with the
ADE20K label set: it exercises the real code path but its label maps carry no meaning, and every caller
must say so in its output.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from geosurge.segmentation.ade20k import NUM_ADE20K_CLASSES, id2label

log = logging.getLogger(__name__)

# `ingest.segmenter` values that name no checkpoint (anything else is a hub id or a checkpoint folder):
RANDOM_SEGMENTER = "random"
# Not a model but an instruction to the pipeline: train a SegFormer on the run's own GeoWorld label maps
# (geosurge.train.segmenter) and segment with that checkpoint folder.
GEOWORLD_SEGMENTER = "geoworld"
# An oracle segmenter for benchmarks and ablations: the manifest's own label maps (`label_uri`, as GeoWorld
# writes them) instead of a model's predictions. A model trained on it has no segmenter to serve with.
GROUND_TRUTH_SEGMENTER = "ground_truth"
# No segmentation: shards without label maps. For models that use none (GeoCLIP) and for measuring the rest
# of the ingest stage on its own (benchmarks/ingest.py).
NO_SEGMENTER = "none"
# ImageNet statistics: what SegFormer/OneFormer image processors normalise with
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def random_segformer(seed: int = 0) -> torch.nn.Module:
    """A small SegFormer (MiT-b0-like, fewer channels) over the 150 ADE20K classes, random weights."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(seed)
    config = SegformerConfig(
        num_labels=NUM_ADE20K_CLASSES,
        id2label=id2label(),
        label2id={v: k for k, v in id2label().items()},
        hidden_sizes=[16, 32, 80, 128],
        decoder_hidden_size=128,
        depths=[1, 1, 1, 1],
    )
    return SegformerForSemanticSegmentation(config)


def load_segmenter(spec: str) -> tuple[torch.nn.Module, bool]:
    """(model in eval mode, is_random). `spec` is "random", a hub id or a local checkpoint folder."""
    if spec == RANDOM_SEGMENTER:
        return random_segformer().eval(), True
    from transformers import AutoModelForSemanticSegmentation

    model = AutoModelForSemanticSegmentation.from_pretrained(spec)
    return model.eval(), False


def pool_logits_to_grid(logits: torch.Tensor, grid: int) -> np.ndarray:
    """Class logits [B, C, h, w] → uint8 label map [B, grid, grid]: mean logit per patch, then argmax
    (a soft majority vote, robust to the segmenter's output stride)."""
    pooled = F.adaptive_avg_pool2d(logits.float(), grid)
    return pooled.argmax(dim=1).to(torch.uint8).cpu().numpy()


class Segmenter:
    """Batched segmentation to patch-grid label maps. Used as a Ray Data actor (one model per actor)."""

    def __init__(self, spec: str, grid: int, device: str | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.is_random = load_segmenter(spec)
        self.model.to(self.device)
        # bf16 on GPU halves memory traffic; CPUs keep fp32 (bf16 matmuls are slow on many CPUs)
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.grid = grid

    @torch.inference_mode()
    def label_maps(self, images: np.ndarray) -> np.ndarray:
        """uint8 RGB images [B, H, W, 3] → uint8 label maps [B, grid, grid] of ADE20K ids."""
        x = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float().div_(255)
        x = (x - _MEAN.to(self.device)) / _STD.to(self.device)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            logits = self.model(pixel_values=x).logits
        return pool_logits_to_grid(logits, self.grid)
