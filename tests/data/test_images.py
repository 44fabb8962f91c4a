"""Image decoding: every kind of bad input is rejected with its reason code; odd modes become RGB."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from geosurge.data.images import ImageRejected, ImageSpec, decode_image, decode_label_map, encode_jpeg

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


def palette_png(width: int, height: int) -> bytes:
    """A real palette PNG of one colour: a few KB on the wire, width × height bytes once decoded."""
    return _encode(Image.new("P", (width, height), 3), "PNG", optimize=True)


def test_a_small_palette_png_bomb_is_refused_under_the_default_limit():
    bomb = palette_png(9_400, 9_400)  # 88 M pixels: under the old 100 M default, it decoded (~700 MiB peak)
    assert len(bomb) < 200_000
    with pytest.raises(ImageRejected) as info:
        decode_image(bomb, ImageSpec(size=32))
    assert info.value.reason == "too_large" and "9400x9400" in info.value.detail
    with pytest.raises(ImageRejected) as label:  # label maps take the same guard
        decode_label_map(bomb, ImageSpec(size=32), 4)
    assert label.value.reason == "bad_label_map" and "9400x9400" in label.value.detail


# Peak memory of this process image (VmHWM; ru_maxrss would carry the forking parent's peak across exec).
_DRAFT_PROBE = """
import re, sys
from geosurge.data.images import ImageSpec, decode_image
def peak_kib():
    return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
data = open(sys.argv[1], "rb").read()
before = peak_kib()
out = decode_image(data, ImageSpec(size=64))
print(out.shape, (peak_kib() - before) // 1024)
"""


def test_a_large_jpeg_decodes_at_a_reduced_scale_with_the_same_output(tmp_path):
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (50, 80, 3), np.uint8)
    big = Image.fromarray(small).resize((8_000, 5_000), Image.Resampling.BILINEAR)  # 40 M pixels, 120 MB as RGB
    data = _encode(big, "JPEG", quality=90)
    (tmp_path / "big.jpg").write_bytes(data)
    spec = ImageSpec(size=64)
    out = decode_image(data, spec)
    full = np.asarray(ImageOps.fit(Image.open(io.BytesIO(data)).convert("RGB"), (64, 64),
                                   method=Image.Resampling.BILINEAR), dtype=np.int16)
    assert out.shape == (64, 64, 3) and np.abs(out.astype(np.int16) - full).mean() < 4  # the same picture
    probe = subprocess.run([sys.executable, "-c", _DRAFT_PROBE, str(tmp_path / "big.jpg")], capture_output=True,
                           text=True, check=True)
    shape, grew_mib = probe.stdout.split(")")[0] + ")", int(probe.stdout.split(")")[1])
    assert shape == "(64, 64, 3)" and grew_mib < 40, probe.stdout  # a full decode alone is 114 MiB


def test_large_decodes_wait_for_each_other():
    import threading

    from geosurge.data import images

    spec = ImageSpec(size=16, large_decode_pixels=1_000_000)
    large = _encode(Image.new("RGB", (1_200, 1_000), (10, 200, 30)), "PNG")
    small = _encode(Image.new("RGB", (100, 100), (10, 200, 30)), "PNG")
    done = threading.Event()
    with images.LARGE_DECODES:  # another thread's large decode in flight
        worker = threading.Thread(target=lambda: (decode_image(large, spec), done.set()))
        worker.start()
        assert decode_image(small, spec).shape == (16, 16, 3)  # small ones never wait
        assert not done.wait(0.5)  # the large one waits its turn
    assert done.wait(10)
    worker.join()


def test_cmyk_and_16_bit_grey_keep_their_colours():
    cmyk = Image.new("RGB", (40, 30), (200, 30, 30)).convert("CMYK")
    out = decode_image(_encode(cmyk, "JPEG", quality=95), SPEC)
    assert np.abs(out.astype(int) - (200, 30, 30)).max() <= 6, out[16, 16]
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    img = Image.fromarray(ramp)
    assert img.mode == "I;16"
    out = decode_image(_encode(img, "PNG"), ImageSpec(size=64))
    expected = ramp // 257  # 16-bit values scaled to 8 bits (PIL's convert clipped every value > 255 to white)
    assert np.abs(out[..., 0].astype(int) - expected).max() <= 1 and (out[..., 0] == out[..., 2]).all()
    assert out[32, 0, 0] in (127, 128)  # mid-grey stays mid-grey
