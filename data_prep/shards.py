"""``python -m data_prep shards``: image–caption pairs from a table or a folder → webdataset shards.

Inputs: a table — CSV/TSV, JSON Lines (``.jsonl``) or Parquet — with an image column (a path, relative
to the table, or the image's bytes) and one or several caption columns (several captions of one image
go into ``key.txt`` one per line), or a folder where each image ``x.jpg`` has a caption file ``x.txt``
beside it. Images are resized so the longer side is at most ``max_side`` and re-encoded as JPEG;
unreadable images and missing captions are skipped and counted by reason in the manifest.
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


def read_rows(path: Path) -> tuple[list[str], list[dict]]:
    """(column names, rows) of a CSV/TSV, JSON Lines or Parquet file."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq
        table = pq.read_table(path)
        return table.column_names, table.to_pylist()
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise UserError(f"{path}, line {n}: not JSON ({e})") from None
        return sorted({k for r in rows for k in r}), rows
    delimiter = "\t" if suffix in (".tsv", ".tab") else ","
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        return list(reader.fieldnames or []), list(reader)


def pairs_from_table(path: Path, image_col: str, caption_cols: str | list[str]) -> list[tuple[str | bytes, str]]:
    """(image path or bytes, captions one per line) per row; relative paths are taken from the table's folder."""
    caption_cols = [caption_cols] if isinstance(caption_cols, str) else list(caption_cols)
    cols, rows = read_rows(path)
    for col in (image_col, *caption_cols):
        if col not in cols:
            raise UserError(f"{path} has no column {col!r} (columns: {cols}); "
                            f"name them with --image-col/--caption-col")
    out = []
    for r in rows:
        image = r[image_col]
        if isinstance(image, dict) and "bytes" in image:  # an Image feature of datasets in Parquet: {bytes, path}
            image = image["bytes"]
        if isinstance(image, str) and not Path(image).is_absolute():
            image = str((path.parent / image).resolve())
        captions = [" ".join(str(r.get(c) or "").split()) for c in caption_cols]
        out.append((image, "\n".join(c for c in captions if c)))
    return out


def pairs_from_folder(root: Path) -> list[tuple[str, str | None]]:
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    out = []
    for p in images:
        txt = p.with_suffix(".txt")
        out.append((str(p), txt.read_text(encoding="utf-8") if txt.is_file() else None))
    return out


def _encode(args) -> tuple[str, bytes | None, tuple[int, int] | None]:
    source, max_side, quality = args
    path = source if isinstance(source, str) else "<bytes>"
    try:
        with Image.open(source if isinstance(source, str) else io.BytesIO(source)) as im:
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
                 shard_size: int = 1000, image_col: str = "image", caption_col: str | list[str] = "caption",
                 workers: int = 2) -> dict:
    src = Path(input_path)
    if not src.exists():
        raise UserError(f"input not found: {src}")
    pairs = pairs_from_folder(src) if src.is_dir() else pairs_from_table(src, image_col, caption_col)
    skipped: Counter = Counter()
    writer = ShardWriter(out, max_count=shard_size)
    todo = []
    for row, (img, cap) in enumerate(pairs):
        if img is None or img == "":
            skipped["missing_image"] += 1
        elif cap is None or not cap.strip():
            skipped["missing_caption"] += 1
        else:
            # whitespace runs become one space in each caption; several captions stay one per line
            todo.append((row, img, "\n".join(" ".join(line.split()) for line in cap.splitlines() if line.strip())))
    with Pool(workers) as pool:
        results = pool.imap(_encode, [(img, max_side, quality) for _, img, _ in todo], chunksize=16)
        for n, ((row, _, caption), (path, data, size)) in enumerate(zip(todo, tqdm(results, total=len(todo),
                                                                                      desc="shards"))):
            if data is None:
                skipped["missing_image"] += 1
                continue
            if not data:
                skipped["unreadable_image"] += 1
                continue
            meta = {"source": path, "row": row, "original_size": list(size)}
            writer.write({"__key__": f"{n:09d}", "jpg": data, "txt": caption, "json": json.dumps(meta)})
    options = dict(max_side=max_side, quality=quality, shard_size=shard_size)
    return writer.close(source=str(src), options=options, skipped=dict(skipped))
