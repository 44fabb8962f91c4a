"""Image decoding: every kind of bad input is rejected with its reason code; odd modes become RGB."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from geosurge.data.images import ImageRejected, ImageSpec, decode_image, encode_jpeg

SPEC = ImageSpec(size=32, max_pixels=50_000_000)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width × height but whose data is a few bytes: a decompression bomb's header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"this is a text file named photo.jpg\n", "not_an_image"),
        (encode_jpeg(np.full((64, 64, 3), 120, np.uint8))[:300], "truncated"),
        (png_header_only(30_000, 30_000), "too_large"),
    ],
    ids=["zero-bytes", "text", "truncated-jpeg", "30000x30000-png-header"],
)
def test_bad_inputs_are_rejected_with_their_reason(data, reason):
    with pytest.raises(ImageRejected) as info:
        decode_image(data, SPEC)
    assert info.value.reason == reason


@pytest.mark.parametrize("mode", ["CMYK", "L", "P", "RGBA", "LA", "I;16"])
def test_every_mode_becomes_rgb_at_the_requested_size(mode):
    img = Image.new("RGB", (80, 50), (200, 30, 30)).convert(mode) if mode != "I;16" else Image.new("I;16", (80, 50), 300)
    fmt = "JPEG" if mode in ("CMYK", "L") else "PNG"
    out = decode_image(_encode(img, fmt), SPEC)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8


def test_transparent_pixels_are_composited_on_white():
    img = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    out = decode_image(_encode(img, "PNG"), SPEC)
    assert (out > 250).all()


def test_exif_orientation_is_applied():
    # A 60×30 image, left half black, right half white, tagged "rotate 90° clockwise to display" (orientation 6).
    arr = np.zeros((30, 60, 3), np.uint8)
    arr[:, 30:] = 255
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6
    out = decode_image(_encode(img, "PNG", exif=exif), ImageSpec(size=30))
    # Displayed upright it is 30 wide × 60 tall with black on top: the centre crop's top row is dark.
    assert out[0].mean() < 60 and out[-1].mean() > 200


def test_majority_pool_takes_each_patch_s_most_frequent_class():
    from geosurge.data.images import majority_pool

    labels = np.zeros((8, 8), np.uint8)
    labels[:4, :4], labels[:4, 4:], labels[4:, :] = 5, 7, 9
    labels[0, 0] = 1  # a minority pixel does not win its patch
    assert majority_pool(labels, 2).tolist() == [[5, 7], [9, 9]]
    with pytest.raises(ValueError, match="grid"):
        majority_pool(labels, 3)
