"""What happens to each pair: caption clean-up and filters, image checks, resizing and JPEG re-encoding.

Everything here is a pure function of the input bytes and ``ProcessOptions``, so a build is deterministic
and can be resumed. Images are handled in worker processes (``process_image``); captions in the main one.
"""

from __future__ import annotations

import hashlib
import html
import io
import re
from dataclasses import asdict, dataclass

from PIL import Image

from mmcontrast.data.images import to_rgb
from mmcontrast.data.limits import ImageTooLarge, Limits, open_image
from mmcontrast.errors import UserError

RESIZE_MODES = ("shorter", "center_crop", "longer", "none")
_C0 = re.compile(r"[\x00-\x1f\x7f]")  # before ftfy, which would delete them and join the words around
_INVISIBLE = re.compile(r"[\x80-\x9f\u200b-\u200d\u2028\u2029\ufeff]")  # after: C1 bytes may be mojibake
# bidirectional controls (marks, embeddings, overrides, isolates): a right-to-left override shows
# "gpj.exe" as "exe.jpg"; removed without a space, since they sit inside words
_BIDI = re.compile(r"[\u200e\u200f\u202a-\u202e\u2066-\u2069\u061c]")


@dataclass(frozen=True)
class ProcessOptions:
    size: int = 256                # the target size in pixels (see ``resize``)
    resize: str = "shorter"        # shorter: shorter side at most size, aspect kept; center_crop: size × size;
                                   # longer: longer side at most size; none: pixels kept
    quality: int = 90              # JPEG quality of the re-encoded image
    min_size: int = 0              # skip images whose shorter side is smaller (before resizing)
    max_aspect: float = 0.0        # skip images with longer / shorter side above this (0: no limit)
    max_pixels: int = Limits.max_image_pixels  # skip images whose header declares more (too_large), undecoded
    min_caption_words: int = 1     # drop captions with fewer words; a sample without captions left is skipped
    max_caption_words: int = 0     # drop captions with more words (0: no limit)
    max_caption_bytes: int = Limits.max_caption_bytes  # skip a sample whose kept captions are longer (UTF-8)
    dedup: bool = True             # skip an image whose bytes equal an earlier one's

    def __post_init__(self):
        if self.resize not in RESIZE_MODES:
            raise UserError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}")
        if self.size < 1 or not 1 <= self.quality <= 100:
            raise UserError(f"size must be ≥ 1 and quality in 1..100 (got size {self.size}, quality {self.quality})")

    def as_dict(self) -> dict:
        return asdict(self)


def clean_caption(text: str) -> str:
    """Mojibake and HTML entities fixed (as open_clip's tokenizer does: ftfy, then html.unescape twice),
    control, zero-width and bidirectional control characters removed, whitespace runs made one space."""
    import ftfy
    text = html.unescape(html.unescape(ftfy.fix_text(_C0.sub(" ", text))))
    return " ".join(_BIDI.sub("", _INVISIBLE.sub(" ", text)).split())


def filter_captions(captions: list[str], options: ProcessOptions) -> tuple[list[str], str | None]:
    """(cleaned captions that pass the length filters, the skip reason when none does)."""
    cleaned = [c for c in (clean_caption(c) for c in captions) if c]
    if not cleaned:
        return [], "empty_caption"
    words = [len(c.split()) for c in cleaned]
    kept = [c for c, n in zip(cleaned, words)
            if n >= options.min_caption_words and (options.max_caption_words <= 0 or n <= options.max_caption_words)]
    if len("\n".join(kept).encode()) > options.max_caption_bytes:  # the trainer would skip its key.txt
        return [], "caption_too_large"
    if kept:
        return kept, None
    return [], "caption_too_short" if min(words) < options.min_caption_words else "caption_too_long"


def target_size(size: tuple[int, int], options: ProcessOptions) -> tuple[int, int]:
    w, h = size
    s = options.size
    if options.resize == "none":
        return w, h
    if options.resize == "longer":
        scale = s / max(w, h)
    elif options.resize == "shorter":
        scale = s / min(w, h)
    else:  # center_crop: the shorter side becomes exactly size, then the centre is cut
        return (round(w * s / min(w, h)), round(h * s / min(w, h))) if min(w, h) != s else (w, h)
    if scale >= 1:
        return w, h
    return max(1, round(w * scale)), max(1, round(h * scale))


def process_image(source: str | bytes, options: ProcessOptions) -> dict:
    """``{"skip": reason}`` or ``{"jpg": bytes, "size": [w, h] as shown, before resizing, "hash": hex}``."""
    try:
        if isinstance(source, str):
            with open(source, "rb") as f:
                data = f.read()
        else:
            data = source
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return {"skip": "missing_image"}
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    try:
        with open_image(data, options.max_pixels) as im:
            orientation = im.getexif().get(_ORIENTATION, 1)
            turned = orientation in (5, 6, 7, 8)  # phone photos: the pixels are shown rotated by 90°
            w, h = (im.height, im.width) if turned else im.size
            if min(w, h) < options.min_size:
                return {"skip": "too_small"}
            if options.max_aspect > 0 and max(w, h) / min(w, h) > options.max_aspect:
                return {"skip": "bad_aspect"}
            if options.resize == "none" and im.format == "JPEG" and im.mode == "RGB" and orientation == 1:
                im.load()  # decoded once to be sure it is whole; the bytes are kept as they are
                return {"jpg": data, "size": [w, h], "hash": digest}
            tw, th = target_size((w, h), options)
            # decode JPEG at a reduced DCT scale while that keeps ≥ 2× the target (PIL's thumbnail rule)
            im.draft("RGB", (2 * th, 2 * tw) if turned else (2 * tw, 2 * th))
            im = to_rgb(im)  # 16-bit images scaled to 8 bits, not clipped
            if orientation in _TRANSPOSE:  # the same table as PIL.ImageOps.exif_transpose
                im = im.transpose(_TRANSPOSE[orientation])
            if im.size != (tw, th):
                im = im.resize((tw, th), Image.Resampling.BICUBIC)
            if options.resize == "center_crop":
                left, top = (tw - options.size) // 2, (th - options.size) // 2
                im = im.crop((left, top, left + options.size, top + options.size))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=options.quality)
    except ImageTooLarge:
        return {"skip": "too_large"}
    except Exception:  # PIL raises many types for broken files (OSError, SyntaxError, ValueError, ...)
        return {"skip": "unreadable_image"}
    return {"jpg": buf.getvalue(), "size": [w, h], "hash": digest}


_ORIENTATION = 0x0112
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}
