"""``python -m data_prep shards``: image–caption pairs from a CSV/TSV or a folder → webdataset shards.

Inputs: a CSV/TSV with an image path column and a caption column (paths relative to the file), or
a folder where each image ``x.jpg`` has a caption file ``x.txt`` beside it. Images are resized so
the longer side is at most ``max_side`` and re-encoded as JPEG; unreadable images and missing
captions are skipped and counted by reason in the manifest.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from multiprocessing import Pool
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from mmcontrast.errors import UserError

from .writer import ShardWriter

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def pairs_from_table(path: Path, image_col: str, caption_col: str) -> list[tuple[str, str]]:
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        cols = reader.fieldnames or []
        for col in (image_col, caption_col):
            if col not in cols:
                raise UserError(f"{path} has no column {col!r} (columns: {cols}); "
                                f"name them with --image-col/--caption-col")
        rows = [(r[image_col], r[caption_col]) for r in reader]
    return [(str((path.parent / img).resolve()) if not Path(img).is_absolute() else img, cap or "")
            for img, cap in rows]


def pairs_from_folder(root: Path) -> list[tuple[str, str | None]]:
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    out = []
    for p in images:
        txt = p.with_suffix(".txt")
        out.append((str(p), txt.read_text(encoding="utf-8") if txt.is_file() else None))
    return out


def _encode(args) -> tuple[str, bytes | None, tuple[int, int] | None]:
    path, max_side, quality = args
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            size = im.size
            if max(size) > max_side:
                im.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=quality)
        return path, buf.getvalue(), size
    except FileNotFoundError:
        return path, None, None
    except Exception:
        return path, b"", None


def build_shards(input_path: str | Path, out: str | Path, max_side: int = 256, quality: int = 90,
                 shard_size: int = 1000, image_col: str = "image", caption_col: str = "caption",
                 workers: int = 2) -> dict:
    src = Path(input_path)
    if not src.exists():
        raise UserError(f"input not found: {src}")
    pairs = pairs_from_folder(src) if src.is_dir() else pairs_from_table(src, image_col, caption_col)
    skipped: Counter = Counter()
    writer = ShardWriter(out, max_count=shard_size)
    todo = []
    for img, cap in pairs:
        if cap is None or not cap.strip():
            skipped["missing_caption"] += 1
        else:
            todo.append((img, " ".join(cap.split())))
    with Pool(workers) as pool:
        results = pool.imap(_encode, [(img, max_side, quality) for img, _ in todo], chunksize=16)
        for n, ((_, caption), (path, data, size)) in enumerate(zip(todo, tqdm(results, total=len(todo),
                                                                                 desc="shards"))):
            if data is None:
                skipped["missing_image"] += 1
                continue
            if not data:
                skipped["unreadable_image"] += 1
                continue
            meta = {"source": path, "original_size": list(size)}
            writer.write({"__key__": f"{n:09d}", "jpg": data, "txt": caption, "json": json.dumps(meta)})
    options = dict(max_side=max_side, quality=quality, shard_size=shard_size)
    return writer.close(source=str(src), options=options, skipped=dict(skipped))
