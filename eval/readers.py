"""Readers for the benchmark files users already have (their layouts: ``docs/evaluation.md``).

Retrieval: Karpathy split JSON (``dataset_flickr30k.json``, ``dataset_coco.json``,
``dataset_flickr8k.json``), COCO captions JSON + image root, CLIP_benchmark's Flickr txt, BLIP/ALBEF
list JSON, CLIP_benchmark webdataset directories. Classification: CLIP_benchmark webdataset
directories and ImageFolder trees with optional classnames/templates files.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from mmcontrast.data.annotations import coco_entries, karpathy_entries, read_json
from mmcontrast.errors import UserError
from mmcontrast.templates import OPENAI_IMAGENET, read_lines

from .sets import IMAGE_EXTS, ClassificationSet, FileImages, RetrievalSet, WdsImages, wds_samples

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def _find_image(root: Path, candidates: list[str]) -> Path:
    for rel in candidates:
        if (root / rel).is_file():
            return root / rel
    looked = ", ".join(str(root / rel) for rel in candidates)
    raise UserError(f"image not found; looked for {looked}. Is --root the folder that holds the images?")


def _resolve_all(root: Path, candidate_lists: list[list[str]]) -> list[Path]:
    """Resolve every image; the first candidate that works for one image is tried first for the rest."""
    out, hint = [], None
    for candidates in candidate_lists:
        if hint is not None:
            guess = hint(candidates[0])
            if guess.is_file():
                out.append(guess)
                continue
        found = _find_image(root, candidates)
        prefix = found.parent
        name = Path(candidates[0]).name
        hint = (lambda p, prefix=prefix: prefix / Path(p).name) if found.name == name else None
        out.append(found)
    return out


def read_karpathy(path: str | Path, root: str | Path, split: str = "test", name: str | None = None) -> RetrievalSet:
    """Karpathy split JSON: images of ``split`` with all their sentences; COCO's ``filepath`` honoured."""
    data = read_json(path)
    entries = karpathy_entries(data, path, {split})
    paths = _resolve_all(Path(root), [e["candidates"] for e in entries])
    return RetrievalSet(name or data.get("dataset", Path(path).stem), str(path), FileImages(paths),
                        [e["captions"] for e in entries], [e["id"] for e in entries])


def read_coco_captions(path: str | Path, root: str | Path, name: str = "mscoco_captions") -> RetrievalSet:
    """COCO captions JSON (``images`` with ``id``/``file_name``, ``annotations`` with ``image_id``/``caption``)."""
    entries = coco_entries(read_json(path), path)
    paths = _resolve_all(Path(root), [e["candidates"] for e in entries])
    return RetrievalSet(name, str(path), FileImages(paths), [e["captions"] for e in entries],
                        [e["id"] for e in entries])


def read_flickr_txt(path: str | Path, root: str | Path, name: str = "flickr30k") -> RetrievalSet:
    """CLIP_benchmark's ``flickr30k_test_karpathy.txt``: a header, then ``<id>.jpg,<caption>`` lines."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"annotation file not found: {path}")
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    by_image: OrderedDict[str, list[str]] = OrderedDict()
    for n, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        if ".jpg," not in line:
            raise UserError(f"{path}:{n}: expected '<id>.jpg,<caption>', got {line[:60]!r}")
        image, caption = line.split(".jpg,", 1)  # captions contain commas: split on the first ".jpg,"
        by_image.setdefault(image + ".jpg", []).append(caption.strip())
    paths = _resolve_all(Path(root), [[f, f"flickr30k-images/{f}", f"Images/{f}"] for f in by_image])
    return RetrievalSet(name, str(path), FileImages(paths), list(by_image.values()), list(by_image))


def read_blip(path: str | Path, root: str | Path, name: str | None = None) -> RetrievalSet:
    """BLIP/ALBEF list JSON: ``[{"image": "val2014/x.jpg", "caption": [...] | "..."}, ...]``."""
    data = read_json(Path(path))
    if not isinstance(data, list) or not all(isinstance(d, dict) and "image" in d and "caption" in d for d in data):
        raise UserError(f"{path} is not a BLIP/ALBEF list (items need 'image' and 'caption')")
    captions = [[c.strip() for c in (d["caption"] if isinstance(d["caption"], list) else [d["caption"]])]
                for d in data]
    paths = _resolve_all(Path(root), [[d["image"], Path(d["image"]).name] for d in data])
    return RetrievalSet(name or Path(path).stem, str(path), FileImages(paths), captions, [d["image"] for d in data])


def read_wds(root: str | Path, split: str = "test") -> RetrievalSet | ClassificationSet:
    """CLIP_benchmark's webdataset layout; ``nshards.txt`` is required (never a silent single shard)."""
    root = Path(str(root).removeprefix("wds:"))
    if not root.is_dir():
        raise UserError(f"dataset not found: {root}")
    nshards_file = root / split / "nshards.txt"
    if not nshards_file.is_file():
        raise UserError(f"{nshards_file} is missing: CLIP_benchmark's webdataset layout needs it")
    shards = [str(root / split / f"{i}.tar") for i in range(int(nshards_file.read_text().strip()))]
    missing = [s for s in shards if not Path(s).is_file()]
    if missing:
        raise UserError(f"shard not found: {missing[0]} (nshards.txt lists {len(shards)})")
    type_file = root / "dataset_type.txt"
    kind = type_file.read_text().strip() if type_file.is_file() else "classification"
    if kind not in ("retrieval", "classification"):
        raise UserError(f"{type_file}: dataset type {kind!r} is not supported (retrieval or classification)")
    keys, exts, targets = [], [], []
    for sample in wds_samples(shards):
        ext = next((e for e in IMAGE_EXTS if e in sample), None)
        where = f"{sample['__url__']}: sample {sample['__key__']}"
        if ext is None:
            raise UserError(f"{where} has no image")
        if kind == "retrieval":
            if "txt" not in sample:
                raise UserError(f"{where} has no .txt captions")
            targets.append([c.strip() for c in sample["txt"].decode("utf-8").splitlines() if c.strip()])
        else:
            if "cls" not in sample:
                raise UserError(f"{where} has no .cls label")
            targets.append(int(sample["cls"].decode().strip()))
        keys.append(sample["__key__"])
        exts.append(ext)
    images = WdsImages(shards, keys, exts)
    if kind == "retrieval":
        return RetrievalSet(root.name, str(root), images, targets, keys)
    classnames, templates = class_files(root)
    return ClassificationSet(root.name, str(root), images, targets, classnames, templates, keys)


def class_files(root: Path, classnames: str | Path | None = None, templates: str | Path | None = None):
    names_file = Path(classnames) if classnames else root / "classnames.txt"
    tmpl_file = Path(templates) if templates else root / "zeroshot_classification_templates.txt"
    for f in (names_file, tmpl_file):
        if not f.is_file():
            raise UserError(f"{f} is missing: a classification set needs class names and templates")
    return read_lines(names_file), read_templates(tmpl_file)


def read_templates(path: str | Path) -> list[str] | dict[str, list[str]]:
    """One ``{c}`` template per line, or a CuPL-style JSON ``{classname: [prompts]}``."""
    path = Path(path)
    if path.suffix == ".json":
        data = read_json(path)
        if not isinstance(data, dict):
            raise UserError(f"{path}: CuPL prompts must be a JSON object classname → list of prompts")
        return data
    templates = read_lines(path)
    bad = [t for t in templates if "{c}" not in t]
    if bad:
        raise UserError(f"{path}: template {bad[0]!r} has no {{c}} placeholder")
    return templates


def read_imagefolder(root: str | Path, classnames: str | Path | None = None,
                     templates: str | Path | None = None) -> ClassificationSet:
    """``root/<class>/*.jpg``; class order = sorted folder names; names from a file or the folders."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"dataset not found: {root}")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise UserError(f"{root} has no class folders (expected root/<class>/*.jpg)")
    paths, labels = [], []
    for label, folder in enumerate(folders):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [label] * len(files)
    names = [f.name.replace("_", " ") for f in folders]
    if classnames or (root / "classnames.txt").is_file():
        names = read_lines(classnames or root / "classnames.txt")
        if len(names) != len(folders):
            raise UserError(f"{len(names)} class names for {len(folders)} class folders in {root}")
    tmpl = templates or (root / "zeroshot_classification_templates.txt")
    prompts = read_templates(tmpl) if Path(tmpl).is_file() else list(OPENAI_IMAGENET)
    return ClassificationSet(root.name, str(root), FileImages(paths), labels, names, prompts,
                             [str(p.relative_to(root)) for p in paths])
