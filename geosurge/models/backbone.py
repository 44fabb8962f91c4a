"""The image backbone every model shares: a timm model that yields tokens, with its own pixel normalisation.

`Backbone(image) -> tokens [B, 1 + h*w, dim]`: a global token first (a ViT's CLS token), then one token per
patch of the `grid` (h, w). Images come in as uint8 [B,H,W,3] (straight from the shards) or float
[B,3,H,W] in [0, 1].
"""

from __future__ import annotations

import timm
import torch
import torch.nn as nn


class Backbone(nn.Module):
    def __init__(
        self,
        name: str = "vit_tiny_patch16_224",
        kwargs: dict | None = None,
        pretrained: bool = False,
        trainable_blocks: int | None = None,
    ):
        super().__init__()
        self.model = timm.create_model(name, pretrained=pretrained, num_classes=0, **(kwargs or {}))
        if not hasattr(self.model, "patch_embed"):
            raise ValueError(f"backbone {name!r} yields no patch tokens (needs a ViT-style patch_embed)")
        self.grid: tuple[int, int] = tuple(self.model.patch_embed.grid_size)
        self.dim: int = self.model.num_features
        cfg = self.model.pretrained_cfg
        self.register_buffer("pixel_mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1), persistent=False)
        if trainable_blocks is not None:
            self.freeze_all_but_last(trainable_blocks)

    def freeze_all_but_last(self, k: int) -> None:
        """Freeze the backbone except its last k blocks (and the final norm, which feeds the heads)."""
        for p in self.model.parameters():
            p.requires_grad_(False)
        blocks = list(self.model.blocks)
        for block in blocks[len(blocks) - k:] if k > 0 else []:
            for p in block.parameters():
                p.requires_grad_(True)
        for p in self.model.norm.parameters():
            p.requires_grad_(k > 0)

    def pixels(self, image: torch.Tensor) -> torch.Tensor:
        if image.dtype == torch.uint8:
            image = image.permute(0, 3, 1, 2).to(self.pixel_mean.dtype).div(255)
        return (image - self.pixel_mean) / self.pixel_std

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        tokens = self.model.forward_features(self.pixels(image))
        prefix = getattr(self.model, "num_prefix_tokens", 1)
        return torch.cat([tokens[:, :1], tokens[:, prefix:]], dim=1)  # CLS + patches (register tokens dropped)
