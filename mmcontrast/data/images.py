"""Any decoded image as 8-bit RGB, high-bit-depth ones scaled rather than clipped.

PIL's ``convert("RGB")`` clips a 16-bit greyscale image (modes ``I;16``, ``I;16B``, ``I``: 16-bit PNG and
TIFF) at 255, so a scan or a medical image comes out almost all white. Here such pixels are scaled to
8 bits (``v >> 8``: 65535 → 255), float images (``F``) from [0, 1]. 16-bit RGB(A) PNGs are already read
by PIL as 8-bit (their high bytes), so every other mode goes through ``convert``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # "I": 32-bit ints, which PIL gives 16-bit PNGs


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` decoded (truncated data fails here) as an RGB image with 8 bits per channel."""
    if img.mode == "RGB":
        img.load()  # convert() to the same mode would copy every pixel
        return img
    if img.mode in SIXTEEN_BIT:
        pixels = np.asarray(img)  # [H, W] uint16 of either byte order, or int32 for "I"
        if pixels.dtype.kind == "i":
            pixels = np.clip(pixels, 0, 65535)
        grey = (pixels >> 8).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if img.mode == "F":
        pixels = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255 if pixels.max(initial=0.0) <= 1 else 1  # [0, 1] as most float images; else 0..255
        grey = np.clip(np.rint(pixels * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    return img.convert("RGB")
