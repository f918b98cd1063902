"""Readers for the benchmark files users already have (their layouts: ``docs/evaluation.md``).

Retrieval: Karpathy split JSON (``dataset_flickr30k.json``, ``dataset_coco.json``,
``dataset_flickr8k.json``), COCO captions JSON + image root, CLIP_benchmark's Flickr txt, BLIP/ALBEF
list JSON, CLIP_benchmark webdataset directories. Classification: CLIP_benchmark webdataset
directories and ImageFolder trees with optional classnames/templates files.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from mmcontrast.data.annotations import caption_text, coco_entries, karpathy_entries, read_json
from mmcontrast.errors import UserError
from mmcontrast.templates import OPENAI_IMAGENET, read_lines, template_problem

from .sets import (IMAGE_EXTS, ClassificationSet, FileImages, RetrievalSet, WdsImages, check_classification,
                   check_retrieval, wds_samples)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
MAX_SHARDS = 100_000  # nshards.txt above this is not a benchmark (ImageNet-1k's test split has 50)
MAX_LABEL_BYTES = 32  # a .cls file holds one class index


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
    dataset = data.get("dataset")
    name = name or (dataset if isinstance(dataset, str) else Path(path).stem)
    return check_retrieval(RetrievalSet(name, str(path), FileImages(paths), [e["captions"] for e in entries],
                                        [e["id"] for e in entries]))


def read_coco_captions(path: str | Path, root: str | Path, name: str = "mscoco_captions") -> RetrievalSet:
    """COCO captions JSON (``images`` with ``id``/``file_name``, ``annotations`` with ``image_id``/``caption``)."""
    entries = coco_entries(read_json(path), path)
    paths = _resolve_all(Path(root), [e["candidates"] for e in entries])
    return check_retrieval(RetrievalSet(name, str(path), FileImages(paths), [e["captions"] for e in entries],
                                        [e["id"] for e in entries]))


def read_flickr_txt(path: str | Path, root: str | Path, name: str = "flickr30k") -> RetrievalSet:
    """CLIP_benchmark's ``flickr30k_test_karpathy.txt``: a header, then ``<id>.jpg,<caption>`` lines."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"annotation file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()[1:]
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start}); annotation files are UTF-8") from None
    by_image: OrderedDict[str, list[str]] = OrderedDict()
    for n, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        if ".jpg," not in line:
            raise UserError(f"{path}:{n}: expected '<id>.jpg,<caption>', got {line[:60]!r}")
        image, caption = line.split(".jpg,", 1)  # captions contain commas: split on the first ".jpg,"
        by_image.setdefault(image + ".jpg", []).append(caption.strip())
    paths = _resolve_all(Path(root), [[f, f"flickr30k-images/{f}", f"Images/{f}"] for f in by_image])
    return check_retrieval(RetrievalSet(name, str(path), FileImages(paths), list(by_image.values()), list(by_image)))


def read_blip(path: str | Path, root: str | Path, name: str | None = None) -> RetrievalSet:
    """BLIP/ALBEF list JSON: ``[{"image": "val2014/x.jpg", "caption": [...] | "..."}, ...]``."""
    data = read_json(Path(path))
    if not isinstance(data, list) or not all(isinstance(d, dict) and "image" in d and "caption" in d for d in data):
        raise UserError(f"{path} is not a BLIP/ALBEF list (items need 'image' and 'caption')")
    bad = next((n for n, d in enumerate(data) if not isinstance(d["image"], str) or not d["image"]), None)
    if bad is not None:
        raise UserError(f"{path}: item {bad} has an 'image' that is not a path string")
    captions = [[caption_text(c, f"{path}: item {n} ({d['image'][:80]!r})")
                 for c in (d["caption"] if isinstance(d["caption"], list) else [d["caption"]])]
                for n, d in enumerate(data)]
    paths = _resolve_all(Path(root), [[d["image"], Path(d["image"]).name] for d in data])
    return check_retrieval(RetrievalSet(name or Path(path).stem, str(path), FileImages(paths), captions,
                                        [d["image"] for d in data]))


def read_wds(root: str | Path, split: str = "test") -> RetrievalSet | ClassificationSet:
    """CLIP_benchmark's webdataset layout; ``nshards.txt`` is required (never a silent single shard)."""
    root = Path(str(root).removeprefix("wds:"))
    if not root.is_dir():
        raise UserError(f"dataset not found: {root}")
    shards = [str(root / split / f"{i}.tar") for i in range(_shard_count(root / split / "nshards.txt"))]
    missing = [s for s in shards if not Path(s).is_file()]
    if missing:
        raise UserError(f"shard not found: {missing[0]} (nshards.txt lists {len(shards)})")
    type_file = root / "dataset_type.txt"
    kind = _small_text(type_file, 64) if type_file.is_file() else "classification"
    if kind not in ("retrieval", "classification"):
        raise UserError(f"{type_file}: dataset type {kind[:20]!r} is not supported (retrieval or classification)")
    keys, exts, targets = [], [], []
    for sample in wds_samples(shards):
        ext = next((e for e in IMAGE_EXTS if e in sample), None)
        where = f"{sample['__url__']}: sample {str(sample['__key__'])[:80]!r}"
        if ext is None:
            raise UserError(f"{where} has no image")
        targets.append(_wds_captions(sample, where) if kind == "retrieval" else _wds_label(sample, where))
        keys.append(sample["__key__"])
        exts.append(ext)
    images = WdsImages(shards, keys, exts)
    if kind == "retrieval":
        return check_retrieval(RetrievalSet(root.name, str(root), images, targets, keys))
    classnames, templates = class_files(root)
    return check_classification(ClassificationSet(root.name, str(root), images, targets, classnames, templates, keys),
                                str(root / "classnames.txt"))


def _small_text(path: Path, limit: int) -> str:
    """The stripped text of a file that holds one short word or number; one line if it does not."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        text = None
    if text is None or len(data) > limit:
        raise UserError(f"{path} is not one short line of UTF-8 text; is it the file CLIP_benchmark wrote?")
    return text


def _shard_count(path: Path) -> int:
    if not path.is_file():
        raise UserError(f"{path} is missing: CLIP_benchmark's webdataset layout needs it")
    text = _small_text(path, 32)
    if not text.isdigit() or not 1 <= int(text) <= MAX_SHARDS:
        raise UserError(f"{path} should hold the number of shards, 1 to {MAX_SHARDS:,}; it holds {text[:20]!r}")
    return int(text)


def _wds_captions(sample: dict, where: str) -> list[str]:
    """A retrieval sample's captions, one per line of its ``.txt``; invalid UTF-8 stops (never a guessed caption)."""
    if "txt" not in sample:
        raise UserError(f"{where} has no .txt captions")
    try:
        text = sample["txt"].decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{where}: its .txt captions are not UTF-8 (byte {e.start}); rebuild the shard") from None
    return [c.strip() for c in text.splitlines() if c.strip()]


def _wds_label(sample: dict, where: str) -> int:
    """A classification sample's class index from its ``.cls`` (a non-negative integer; the range is checked later)."""
    if "cls" not in sample:
        raise UserError(f"{where} has no .cls label")
    data = sample["cls"]
    text = data[:MAX_LABEL_BYTES].decode("utf-8", errors="replace").strip()
    digits = text[1:] if text.startswith("-") else text  # a negative one is refused by the range check
    if len(data) > MAX_LABEL_BYTES or not digits.isascii() or not digits.isdigit():
        raise UserError(f"{where}: its .cls label {text[:20]!r} is not an integer class index")
    return int(text)


def class_files(root: Path, classnames: str | Path | None = None, templates: str | Path | None = None):
    names_file = Path(classnames) if classnames else root / "classnames.txt"
    tmpl_file = Path(templates) if templates else root / "zeroshot_classification_templates.txt"
    for f in (names_file, tmpl_file):
        if not f.is_file():
            raise UserError(f"{f} is missing: a classification set needs class names and templates")
    return read_classnames(names_file), read_templates(tmpl_file)


def read_classnames(path: str | Path) -> list[str]:
    """One class name per line, in label order; an empty file stops."""
    names = read_lines(path)
    if not names:
        raise UserError(f"{path}: no class names (one per line, in label order)")
    return names


def read_templates(path: str | Path) -> list[str] | dict[str, list[str]]:
    """One ``{c}`` template per line, or a CuPL-style JSON ``{classname: [prompts]}``; an empty file, a template
    without ``{c}`` or with another placeholder, or a class with no prompts stops with one line."""
    path = Path(path)
    if path.suffix == ".json":
        return _cupl_prompts(read_json(path), path)
    templates = read_lines(path)
    if not templates:
        raise UserError(f"{path}: no templates (one per line, each with {{c}} where the class name goes)")
    for n, t in enumerate(templates):
        problem = template_problem(t)
        if problem:
            raise UserError(f"{path}: template {n + 1} ({t[:60]!r}) {problem}")
    return templates


def _cupl_prompts(data, path: Path) -> dict[str, list[str]]:
    if not isinstance(data, dict) or not data:
        raise UserError(f"{path}: CuPL prompts must be a non-empty JSON object classname → list of prompts")
    for name, prompts in data.items():
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise UserError(f"{path}: class {name[:60]!r} needs a non-empty list of prompt strings "
                            "(an empty one gives the class NaN weights)")
    return data


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
        names_file = classnames or root / "classnames.txt"
        names = read_classnames(names_file)
        if len(names) != len(folders):
            raise UserError(f"{names_file}: {len(names):,} class names for {len(folders):,} class folders in {root}")
    tmpl = templates or (root / "zeroshot_classification_templates.txt")
    prompts = read_templates(tmpl) if Path(tmpl).is_file() else list(OPENAI_IMAGENET)
    return check_classification(ClassificationSet(root.name, str(root), FileImages(paths), labels, names, prompts,
                                                  [str(p.relative_to(root)) for p in paths]))
