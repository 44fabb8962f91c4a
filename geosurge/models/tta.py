"""Test-time augmentation shared by the models: the ten-crop views (the paper evaluates with ten crops, predictions
averaged). Every registered model's `predict(batch, k, ten_crop=True)` averages its probabilities over them."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ten_crop_views(
    image: torch.Tensor, label_map: torch.Tensor | None, fraction: float = 0.875
) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """The 10 test-time views: 4 corner crops and the centre crop, then their horizontal flips.

    Each crop covers `fraction` of the image's height and width and is resized (bilinear) back to the image
    size, which the backbone's grid was built for. The label map is cropped at the same region of the image
    and resized to its own grid by nearest neighbour (each output cell takes the label under its centre), so
    it stays aligned with its view. Crop placement follows torchvision's `five_crop` (centre offset rounded).
    Images: uint8 [B,H,W,3] or float [B,3,H,W] in [0,1]; views are float [B,3,H,W].
    """
    if image.dtype == torch.uint8:
        image = image.permute(0, 3, 1, 2).float().div(255)
    height, width = image.shape[-2:]
    ch, cw = int(round(fraction * height)), int(round(fraction * width))
    if not (0 < ch <= height and 0 < cw <= width):
        raise ValueError(f"ten-crop fraction {fraction} gives an empty crop of a {height}x{width} image")
    centre = (int(round((height - ch) / 2)), int(round((width - cw) / 2)))
    corners = [(0, 0), (0, width - cw), (height - ch, 0), (height - ch, width - cw), centre]
    views: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    for y, x in corners:
        crop = F.interpolate(image[..., y:y + ch, x:x + cw], size=(height, width), mode="bilinear", align_corners=False)
        labels = None
        if label_map is not None:
            gh, gw = label_map.shape[-2:]
            # centre of output label cell i, in image pixels, → the label cell of the full map under it
            rows = ((y + (torch.arange(gh, dtype=torch.float64) + 0.5) * ch / gh) * gh / height).floor().long().clamp(max=gh - 1)
            cols = ((x + (torch.arange(gw, dtype=torch.float64) + 0.5) * cw / gw) * gw / width).floor().long().clamp(max=gw - 1)
            labels = label_map[:, rows.to(label_map.device)][:, :, cols.to(label_map.device)]
        views.append((crop, labels))
    return views + [(img.flip(-1), None if lm is None else lm.flip(-1)) for img, lm in views]


def prediction_views(
    batch: dict[str, torch.Tensor], ten_crop: bool
) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(image, label map or None) of each view a prediction averages over: the batch as it is, or its ten crops."""
    image, label_map = batch["image"], batch.get("label_map")
    return ten_crop_views(image, label_map) if ten_crop else [(image, label_map)]
