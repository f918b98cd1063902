"""Caption annotation files shared by evaluation and shard building: Karpathy split JSON and COCO captions JSON.

Both parse to entries ``{"id", "candidates", "captions"}``: the image's id, the relative paths where its
file may lie under an image root (first match wins), and its captions in file order. Finding the files is
left to the caller: evaluation stops on a missing image, shard building skips and counts it.
"""

from __future__ import annotations

import json
from pathlib import Path

from mmcontrast.errors import UserError


def read_json(path: str | Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"annotation file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None


def karpathy_entries(data: dict, path: str | Path, splits: set[str]) -> list[dict]:
    """Images of ``splits`` in a Karpathy split file (``dataset_coco.json``, ``dataset_flickr30k.json``) with all
    their sentences; COCO's ``filepath`` (``train2014``/``val2014``) honoured."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise UserError(f"{path} is not a Karpathy split file (no 'images' list)")
    images = [im for im in data["images"] if im.get("split") in splits]
    if not images:
        found = sorted({str(im.get("split")) for im in data["images"]})
        wanted = " or ".join(repr(s) for s in sorted(splits))
        raise UserError(f"{path} has no images in split {wanted} (splits: {found})")
    entries = []
    for im in images:
        name = im["filename"]
        rel = f"{im['filepath']}/{name}" if im.get("filepath") else name
        entries.append({"id": str(im.get("cocoid", im.get("imgid", name))),
                        "candidates": [rel, name, f"flickr30k-images/{name}", f"Images/{name}"],
                        "captions": [s["raw"].strip() for s in im["sentences"]]})
    return entries


def coco_entries(data: dict, path: str | Path) -> list[dict]:
    """Images of a COCO captions file (``images`` with ``id``/``file_name``, ``annotations`` with
    ``image_id``/``caption``) in the file's image order, captions in annotation-id order."""
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise UserError(f"{path} is not a COCO captions file (needs 'images' and 'annotations')")
    captions: dict[int, list[str]] = {im["id"]: [] for im in data["images"]}
    for ann in sorted(data["annotations"], key=lambda a: a["id"]):
        if ann["image_id"] not in captions:
            raise UserError(f"{path}: annotation {ann['id']} refers to unknown image {ann['image_id']}")
        captions[ann["image_id"]].append(ann["caption"].strip())
    # the image folder is usually named like the annotation file's split: captions_train2017.json → train2017/
    split_dir = next((d for d in ("train2014", "val2014", "train2017", "val2017", "test2014")
                      if d in Path(path).name), "val2014")
    return [{"id": str(im["id"]), "captions": captions[im["id"]],
             "candidates": [im["file_name"], f"{split_dir}/{im['file_name']}", f"val2014/{im['file_name']}",
                            f"val2017/{im['file_name']}"]}
            for im in data["images"]]
