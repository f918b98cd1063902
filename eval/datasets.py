"""``--dataset`` specs → benchmark sets, detecting which of the known files a folder holds.

``flickr30k`` / ``flickr8k`` / ``mscoco`` with ``--root DIR`` look for, in order, the Karpathy
split JSON, CLIP_benchmark's files, a BLIP/ALBEF list and a CLIP_benchmark webdataset directory,
and say which one was used. A classification dataset's CLIP_benchmark name (``cifar10``, ``imagenet1k``,
...; see ``eval.classification``) with ``--root DIR`` reads the layout found there, with CLIP_benchmark's
class names and templates unless ``--classnames`` / ``--templates`` replace them. Explicit forms:
``wds:DIR``, ``karpathy:FILE``, ``coco:FILE``, ``flickr-txt:FILE``, ``blip:FILE``, ``imagefolder:DIR``
(image files under ``--root``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from mmcontrast.errors import UserError

from . import readers
from .classification import open_classification
from .classification.registry import known as known_classification
from .sets import ClassificationSet, RetrievalSet, check_classification

# name → [(relative path, reader kind)] in the order they are tried
KNOWN = {
    "flickr30k": [("dataset_flickr30k.json", "karpathy"), ("flickr30k_{split}_karpathy.txt", "flickr-txt"),
                  ("flickr30k_{split}.json", "blip"), ("wds_flickr30k", "wds"), (".", "wds")],
    "flickr8k": [("dataset_flickr8k.json", "karpathy"), ("flickr8k_{split}_karpathy.txt", "flickr-txt"),
                 ("wds_flickr8k", "wds"), (".", "wds")],
    "mscoco": [("dataset_coco.json", "karpathy"), ("coco_{split}_karpathy.json", "coco"),
               ("coco_karpathy_{split}.json", "blip"), ("annotations/captions_val2014.json", "coco"),
               ("captions_val2014.json", "coco"), ("wds_mscoco_captions", "wds"), (".", "wds")],
}


def annotation_exists(path: Path, kind: str, split: str) -> bool:
    """Whether the annotation file (or, for a webdataset, the split's ``nshards.txt``) of a retrieval layout is there."""
    return (path / split / "nshards.txt").is_file() if kind == "wds" else path.is_file()


def open_dataset(spec: str, root: str | Path | None = None, split: str | None = None,
                 classnames: str | None = None, templates: str | None = None,
                 log=print) -> RetrievalSet | ClassificationSet:
    """The set named by ``spec``; ``log`` is told which file was used. ``split``: default the dataset's first
    (a classification dataset's registered splits), else ``test``."""
    kind, _, arg = spec.partition(":")
    if not arg and kind not in KNOWN and kind in known_classification():
        if root is None:
            raise UserError(f"--dataset {spec} needs --root DIR (the folder that holds {spec}'s files)")
        from .classification.names import apply_overrides  # at call time, as open_classification imports it

        return apply_overrides(open_classification(kind, root, split, log=log), classnames, templates)
    split = split or "test"
    if kind in KNOWN and not arg:
        if root is None:
            raise UserError(f"--dataset {spec} needs --root DIR (the folder with the annotations and images)")
        root = Path(root)
        tried = []
        for rel, fmt in KNOWN[kind]:
            path = root / rel.format(split=split)
            if annotation_exists(path, fmt, split):
                log(f"{spec}: using {path} ({fmt})")
                return _read(fmt, path, root, split, classnames, templates, name=kind)
            tried.append(str(path / split / "nshards.txt") if fmt == "wds" else str(path))
        raise UserError(f"no {spec} annotations under {root}; looked for: {', '.join(tried)}")
    if kind in ("wds", "karpathy", "coco", "flickr-txt", "blip", "imagefolder") and arg:
        return _read(kind, Path(arg), Path(root) if root else Path(arg).parent, split, classnames, templates)
    named = "|".join([*KNOWN, *sorted(known_classification())])
    raise UserError(f"unknown dataset {spec!r}: use {named} with --root, or wds:DIR, karpathy:FILE, "
                    "coco:FILE, flickr-txt:FILE, blip:FILE, imagefolder:DIR")


def _read(fmt, path, root, split, classnames, templates, name=None):
    if fmt == "wds":
        ds = readers.read_wds(path, split)
        if isinstance(ds, ClassificationSet) and (classnames or templates):
            ds = _replace_class_files(ds, Path(str(path).removeprefix("wds:")), classnames, templates)
    elif fmt == "karpathy":
        ds = readers.read_karpathy(path, root, split)
    elif fmt == "coco":
        ds = readers.read_coco_captions(path, root)
    elif fmt == "flickr-txt":
        ds = readers.read_flickr_txt(path, root)
    elif fmt == "blip":
        ds = readers.read_blip(path, root)
    else:
        ds = readers.read_imagefolder(path, classnames, templates)
    if name:
        ds.name = name
    return ds


def _replace_class_files(ds: ClassificationSet, root: Path, classnames, templates) -> ClassificationSet:
    """``ds`` with the user's class names or templates; the names must be as many as the set's own."""
    names, prompts = readers.class_files(root, classnames, templates)
    if classnames and len(names) != len(ds.classnames):
        raise UserError(f"--classnames {classnames}: {len(names):,} class names, but {root / 'classnames.txt'} "
                        f"has {len(ds.classnames):,}; the labels index the set's own classes, in its order")
    return check_classification(replace(ds, classnames=names, templates=prompts), str(classnames or root))
