"""Limits on what one shard, file, caption or image may cost before it is read, and the header-only
image check that enforces the pixel limit.

A shard is input from strangers (a crawl, a download): a 12,000 × 12,000 PNG compresses to kilobytes and
decodes to 430 MB; a tar header may declare a member of an exabyte, or a pax header of a gigabyte. Each
limit turns such a file into a counted skip (the reason in parentheses) instead of an allocation.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UserError


@dataclass(frozen=True)
class Limits:
    max_image_pixels: int = 50_000_000  # width × height from the image header; above: skipped (too_large)
    max_caption_bytes: int = 65_536     # a key.txt larger than this: skipped (caption_too_large)
    max_file_bytes: int = 256 * 2**20   # one file inside a shard; larger: read past, its sample skipped (file_too_large)
    max_pax_bytes: int = 2**20          # one pax extended header; larger: the shard is corrupt (corrupt_shard)

    def __post_init__(self):
        for name in ("max_image_pixels", "max_caption_bytes", "max_file_bytes", "max_pax_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"{name} must be a positive integer, got {value!r}")


if TYPE_CHECKING:
    from PIL import Image


class ImageTooLarge(ValueError):
    """An image whose header declares more pixels than allowed; nothing was decoded."""


def open_image(data: bytes, max_pixels: int) -> "Image.Image":
    """The image in ``data``, opened but not decoded (PIL reads the header only); ``ImageTooLarge``
    when width × height is above ``max_pixels``. Other failures raise what PIL raises."""
    from PIL import Image  # here: the tar reader and data_prep's command line start without it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit replaces PIL's warning
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:  # above twice PIL's own limit, whatever ours is
            raise ImageTooLarge(str(e)) from None
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise ImageTooLarge(f"{width} × {height} pixels, above the limit of {max_pixels:,}")
    return img
