"""High-bit-depth images (16-bit PNG and TIFF, 32-bit int and float) scaled to 8 bits, never clipped to white."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import mmcontrast as mc
from data_prep.process import ProcessOptions, process_image
from data_prep.writer import write_shard
from mmcontrast.data.images import to_rgb


def _gradient() -> np.ndarray:
    """[32, 256] uint16: column x holds x·256 plus a low byte that varies by row, so v >> 8 == x."""
    y, x = np.mgrid[0:32, 0:256]
    return (x * 256 + (y * 37) % 256).astype(np.uint16)


def _png16() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_gradient()).save(buf, format="PNG")
    return buf.getvalue()


def _png48() -> bytes:
    """A 16-bit-per-channel RGB PNG (PIL cannot write one): red the gradient, green its reverse, blue 0."""
    g = _gradient()
    rgb = np.stack([g, 65535 - g, np.zeros_like(g)], axis=-1).astype(">u2")  # [H, W, 3], big-endian as PNG is
    raw = b"".join(b"\x00" + row.tobytes() for row in rgb)  # filter type 0 before every row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 256, 32, 16, 2, 0, 0, 0)  # width, height, 16 bits, truecolour
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _expected() -> np.ndarray:
    return np.repeat((_gradient() >> 8).astype(np.uint8)[..., None], 3, axis=-1)  # [H, W, 3]


def test_a_16_bit_png_is_read_as_16_bit_and_clipped_by_plain_convert():
    img = Image.open(io.BytesIO(_png16()))
    assert img.mode == "I;16"
    assert (np.asarray(img.convert("RGB")) == 255).mean() > 0.99  # the defect to_rgb exists for


@pytest.mark.parametrize("make", [
    lambda: Image.open(io.BytesIO(_png16())),                                              # I;16
    lambda: Image.frombytes("I;16B", (256, 32), _gradient().astype(">u2").tobytes()),     # I;16B
    lambda: Image.fromarray(_gradient().astype(np.int32)),                                # I (32-bit int)
    lambda: Image.open(io.BytesIO(_tiff16())),                                            # 16-bit TIFF
], ids=["I;16 png", "I;16B", "I", "tiff"])
def test_to_rgb_scales_16_bit_greyscale_to_8_bits(make):
    out = to_rgb(make())
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), _expected())


def _tiff16() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_gradient()).save(buf, format="TIFF")
    return buf.getvalue()


def test_to_rgb_of_int_and_float_images_outside_the_range_and_48_bit_rgb():
    ints = Image.fromarray(np.array([[-5, 0, 256, 65535, 70000]], dtype=np.int32))
    assert np.asarray(to_rgb(ints))[0, :, 0].tolist() == [0, 0, 1, 255, 255]
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0, np.nan]], dtype=np.float32))
    assert np.asarray(to_rgb(floats))[0, :, 0].tolist() == [0, 128, 255, 0]
    rgb48 = Image.open(io.BytesIO(_png48()))
    pixels = np.asarray(to_rgb(rgb48))
    assert np.array_equal(pixels[..., 0], _gradient() >> 8) and np.array_equal(pixels[..., 1], 255 - (_gradient() >> 8))
    assert not pixels[..., 2].any()


def test_a_truncated_16_bit_png_fails_in_to_rgb():
    data = _png16()
    with pytest.raises(OSError):
        to_rgb(Image.open(io.BytesIO(data[:len(data) // 2])))


def test_the_loader_scales_a_16_bit_png(tmp_path):
    write_shard(tmp_path / "a.tar", [{"__key__": "deep", "png": _png16(), "txt": "a grey gradient"}])
    as_tensor = lambda img: torch.from_numpy(np.array(img))  # noqa: E731  [H, W, 3] uint8, unresized
    loader = mc.make_loader([str(tmp_path / "a.tar")], as_tensor, lambda t: torch.zeros(len(t), 1), batch_size=1,
                            repeat=False, shuffle_buffer=0)
    (batch,) = list(loader)
    assert loader.skipped == {} and np.array_equal(batch["image"][0].numpy(), _expected())


def test_data_prep_scales_a_16_bit_png():
    out = process_image(_png16(), ProcessOptions(resize="none", quality=100))
    pixels = np.asarray(Image.open(io.BytesIO(out["jpg"])).convert("RGB")).astype(int)
    assert out["size"] == [256, 32]
    # JPEG at quality 100 moves a value by a step or two, never to white
    assert np.abs(pixels - _expected()).max() <= 2 and (pixels == 255).mean() < 0.01
