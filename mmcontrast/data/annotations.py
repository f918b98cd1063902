"""Caption annotation files shared by evaluation and shard building: Karpathy split JSON and COCO captions JSON.

Both parse to entries ``{"id", "candidates", "captions"}``: the image's id, the relative paths where its
file may lie under an image root (first match wins), and its captions in file order. Finding the files is
left to the caller: evaluation stops on a missing image, shard building skips and counts it. A file of the
wrong shape (a null caption, an image without a file name, an id given to two images) stops with one line
naming the file and the first offending item.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from mmcontrast.errors import UserError


def read_json(path: str | Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"annotation file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder, not an annotation file") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start}); annotation files are UTF-8 JSON") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None
    except RecursionError:
        raise UserError(f"{path} nests its JSON too deeply to be an annotation file") from None


def _short(value, limit: int = 60) -> str:
    """``repr`` of a value from a file, cut to ``limit`` characters: messages never carry unbounded user data."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def caption_text(value, where: str) -> str:
    """A caption from an annotation file, stripped; anything but a string (a null, a number) is refused."""
    if not isinstance(value, str):
        raise UserError(f"{where}: the caption is {_short(value)}, not a string; fix or remove it")
    return value.strip()


def refuse_repeats(ids: list, path: str | Path, what: str) -> None:
    """One line naming the first id that occurs twice and how many ids do, if any does."""
    counts = Counter(ids)
    repeated = [i for i in counts if counts[i] > 1]
    if repeated:
        raise UserError(f"{path}: {what} {_short(repeated[0])} occurs {counts[repeated[0]]} times "
                        f"({len(repeated):,} repeated in all); each image must appear once")


def karpathy_entries(data: dict, path: str | Path, splits: set[str]) -> list[dict]:
    """Images of ``splits`` in a Karpathy split file (``dataset_coco.json``, ``dataset_flickr30k.json``) with all
    their sentences; COCO's ``filepath`` (``train2014``/``val2014``) honoured."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise UserError(f"{path} is not a Karpathy split file (no 'images' list)")
    for n, im in enumerate(data["images"]):
        if not isinstance(im, dict):
            raise UserError(f"{path}: images[{n}] is {_short(im)}, not an object with 'filename' and 'sentences'")
    images = [(n, im) for n, im in enumerate(data["images"])
              if isinstance(im.get("split"), str) and im["split"] in splits]
    if not images:
        found = sorted({_short(im.get("split"), 20) for im in data["images"]})[:20]
        wanted = " or ".join(repr(s) for s in sorted(splits))
        raise UserError(f"{path} has no images in split {wanted} (splits: {found})")
    entries = [_karpathy_entry(n, im, path) for n, im in images]
    refuse_repeats([e["id"] for e in entries], path, "image id")
    refuse_repeats([e["candidates"][0] for e in entries], path, "image file")
    return entries


def _karpathy_entry(n: int, im: dict, path: str | Path) -> dict:
    name, sentences = im.get("filename"), im.get("sentences")
    if not isinstance(name, str) or not name:
        raise UserError(f"{path}: images[{n}] has no 'filename' string")
    if not isinstance(sentences, list) or not all(isinstance(s, dict) for s in sentences):
        raise UserError(f"{path}: images[{n}] ({_short(name)}) has no 'sentences' list of objects")
    filepath = im.get("filepath")
    if filepath is not None and not isinstance(filepath, str):
        raise UserError(f"{path}: images[{n}] ({_short(name)}) has a 'filepath' that is not a string")
    rel = f"{filepath}/{name}" if filepath else name
    image_id = im.get("cocoid", im.get("imgid", name))
    if not isinstance(image_id, (int, str)):
        raise UserError(f"{path}: images[{n}] ({_short(name)}) has an id {_short(image_id)} that is neither "
                        "a number nor a string")
    captions = [caption_text(s.get("raw"), f"{path}: images[{n}] ({_short(name)}) sentence {k}")
                for k, s in enumerate(sentences)]
    return {"id": str(image_id), "candidates": [rel, name, f"flickr30k-images/{name}", f"Images/{name}"],
            "captions": captions}


def coco_entries(data: dict, path: str | Path) -> list[dict]:
    """Images of a COCO captions file (``images`` with ``id``/``file_name``, ``annotations`` with
    ``image_id``/``caption``) in the file's image order, captions in annotation-id order."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise UserError(f"{path} is not a COCO captions file (needs 'images' and 'annotations' lists)")
    for n, im in enumerate(data["images"]):
        if not isinstance(im, dict) or not isinstance(im.get("id"), (int, str)) \
                or not isinstance(im.get("file_name"), str):
            raise UserError(f"{path}: images[{n}] needs an 'id' (a number or a string) and a 'file_name' string")
    # one id for two images would give the second image the first one's captions
    refuse_repeats([im["id"] for im in data["images"]], path, "image id")
    captions: dict = {im["id"]: [] for im in data["images"]}
    for n, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not isinstance(ann.get("id"), (int, str)) \
                or not isinstance(ann.get("image_id"), (int, str)):
            raise UserError(f"{path}: annotations[{n}] needs an 'id', an 'image_id' and a 'caption'")
    for ann in sorted(data["annotations"], key=lambda a: (isinstance(a["id"], str), a["id"])):
        if ann["image_id"] not in captions:
            raise UserError(f"{path}: annotation {_short(ann['id'])} refers to unknown image {_short(ann['image_id'])}")
        captions[ann["image_id"]].append(caption_text(ann.get("caption"), f"{path}: annotation {_short(ann['id'])}"))
    # the image folder is usually named like the annotation file's split: captions_train2017.json → train2017/
    split_dir = next((d for d in ("train2014", "val2014", "train2017", "val2017", "test2014")
                      if d in Path(path).name), "val2014")
    return [{"id": str(im["id"]), "captions": captions[im["id"]],
             "candidates": [im["file_name"], f"{split_dir}/{im['file_name']}", f"val2014/{im['file_name']}",
                            f"val2017/{im['file_name']}"]}
            for im in data["images"]]
