"""Decode, validate and resize image bytes: one code path for ingest and for inference.

Failures are reported as a reason code (the quarantine vocabulary) instead of exceptions, so a stage can
route a bad record to the quarantine table and carry on.
"""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class ImageRejected(Exception):
    """An input that is not a usable image; `reason` is a quarantine reason code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageSpec:
    size: int = 64  # output is size × size RGB
    max_pixels: int = 40_000_000  # decompression-bomb guard, checked on the header before pixels are decoded
    large_decode_pixels: int = 12_000_000  # decodes above this take LARGE_DECODES (one at a time per process)


# Full-size decodes above `large_decode_pixels` take this, so a fetch pool of 16 threads never holds 16 of them.
LARGE_DECODES = threading.BoundedSemaphore(1)


def _open_bounded(data: bytes, spec: ImageSpec, reason: str = "too_large", draft: bool = True) -> Image.Image:
    """Open (header only) and refuse more than `spec.max_pixels` before a pixel is decoded; a JPEG is set to decode
    at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both sides at least `spec.size`."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = Image.open(io.BytesIO(data))
    width, height = img.size  # read from the header, before any pixel is decoded
    if width * height > spec.max_pixels:
        raise ImageRejected(reason, f"{width}x{height} exceeds {spec.max_pixels} pixels")
    if draft and img.format == "JPEG":
        img.draft(None, (spec.size, spec.size))
    return img


def _load(img: Image.Image, spec: ImageSpec) -> None:
    width, height = img.size  # after draft: what will really be decoded
    gate = LARGE_DECODES if width * height > spec.large_decode_pixels else contextlib.nullcontext()
    with gate, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img.load()


def decode_image(data: bytes, spec: ImageSpec) -> np.ndarray:
    """Bytes → uint8 RGB array [size, size, 3]: EXIF orientation applied, any mode converted to RGB (16-bit grey
    scaled, not clipped), short side resized to `size` and centre-cropped. Raises ImageRejected with a reason code."""
    if not data:
        raise ImageRejected("empty", "zero bytes")
    try:
        img = _open_bounded(data, spec)
        _load(img, spec)
    except ImageRejected:
        raise
    except UnidentifiedImageError as e:
        raise ImageRejected("not_an_image", str(e)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageRejected("too_large", str(e)) from None
    except OSError as e:  # PIL reports truncated/corrupt streams as OSError
        raise ImageRejected("truncated", str(e)) from None
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grey (PNG): PIL's convert clips every value above 255 to white; scale 0..65535 to 0..255 instead
        grey = np.asarray(img, dtype=np.uint32)
        img = Image.fromarray((np.clip(grey, 0, 65535) // 257).astype(np.uint8), "L")
    if img.mode != "RGB":
        # palette/grey/CMYK/alpha → RGB; alpha is composited on white so transparent areas are not black
        if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, rgba).convert("RGB")
        else:
            img = img.convert("RGB")
    img = ImageOps.fit(img, (spec.size, spec.size), method=Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def encode_jpeg(array: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    """Shard image bytes (already validated and resized) → uint8 RGB array."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.uint8)


def decode_label_map(data: bytes, spec: ImageSpec, grid: int) -> np.ndarray:
    """A ground-truth label map (PNG of class ids) → uint8 [grid, grid]: the same fit as `decode_image` (so it
    stays aligned with its image), then the majority class of each patch."""
    try:
        img = _open_bounded(data, spec, "bad_label_map", draft=False)  # the bomb guard of images; ids stay exact
        _load(img, spec)
    except ImageRejected:
        raise
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageRejected("bad_label_map", str(e)) from None
    if img.mode not in ("L", "P"):
        raise ImageRejected("bad_label_map", f"label maps are single-channel class ids, got mode {img.mode}")
    labels = np.asarray(ImageOps.fit(img, (spec.size, spec.size), method=Image.Resampling.NEAREST), dtype=np.uint8)
    return majority_pool(labels, grid)


def majority_pool(labels: np.ndarray, grid: int) -> np.ndarray:
    """uint8 [H, W] class ids → uint8 [grid, grid]: the most frequent class in each patch (ties: lowest id)."""
    h, w = labels.shape
    if h % grid or w % grid:
        raise ValueError(f"a {h}x{w} label map does not split into a {grid}x{grid} grid")
    patches = labels.reshape(grid, h // grid, grid, w // grid).transpose(0, 2, 1, 3).reshape(grid * grid, -1)
    counts = np.zeros((grid * grid, 256), np.int32)
    np.add.at(counts, (np.repeat(np.arange(grid * grid), patches.shape[1]), patches.ravel()), 1)
    return counts.argmax(axis=1).astype(np.uint8).reshape(grid, grid)
