"""``python -m eval suite``: every benchmark found under one folder, evaluated with one loaded model.

Discovery (``discover``) looks for every dataset the evaluation knows, where its files sit:

- classification (``eval.classification.registry``, CLIP_benchmark's names): in ``ROOT`` itself — a torchvision
  root holds ``cifar-10-batches-py/``, ``MNIST/raw/``, ``oxford-iiit-pet/`` side by side — then in
  ``ROOT/<name>``; the first layout whose marker exists is read, as ``python -m eval zeroshot`` reads it;
- retrieval (``eval.datasets.KNOWN``: flickr30k, flickr8k, mscoco): ``ROOT/<name>``, the annotation files tried
  in the order ``python -m eval retrieval`` tries them;
- compositional (``eval.compositional_sets``: SugarCrepe, Winoground, ARO, the generated shapes set):
  ``ROOT/<name>``; ARO also ``ROOT/aro``, where its download puts both of its files.

Every known dataset is reported: found, missing (with each path looked for) or skipped (with why). Running
(``run_suite``) evaluates each found one with its task's runner — ``run_zeroshot``, ``run_retrieval``,
``run_compositional``, and the linear probe of ``eval.linear_probe`` where that module is present — sharing the
model and the embedding cache. The cache keys are those of the single-task programs, so an entry written by one
serves the other. A dataset that fails is recorded with its one-line error and the suite goes on.
"""

from __future__ import annotations

import importlib
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from mmcontrast.errors import UserError

from .cache import EmbeddingCache, cache_key, file_identity
from .classification.registry import DatasetSpec, find_layout, known, open_classification
from .compositional import run_compositional
from .compositional_sets import ARO_FILES, SUGAR_CREPE, open_selection_set
from .compositional_sets import DATASETS as COMPOSITIONAL
from .datasets import KNOWN as RETRIEVAL
from .datasets import annotation_exists, open_dataset
from .encode import encode_images
from .retrieval import run_retrieval
from .sets import ClassificationSet
from .zeroshot import run_zeroshot

TASKS = ("zeroshot", "retrieval", "compositional", "linear_probe")
DEFAULT_TASKS = ("zeroshot", "retrieval", "compositional")  # the linear probe trains classifiers: asked for by name
SPLIT = "test"
MULTILABEL_METRIC = "mean_average_precision"
TRAIN_SPLITS = ("train", "trainval")  # what a linear probe fits on, the first a dataset's readers know

# compositional sets: the folders under ROOT tried, and the files (relative to one) that say the set is there
COMPOSITIONAL_FOLDERS = {name: (name, "aro") if name in ARO_FILES else (name,) for name in COMPOSITIONAL}
CREPE_FILES = "{" + ",".join(SUGAR_CREPE) + "}.json"  # how the looked-for line names any of them
COMPOSITIONAL_MARKERS = {
    "sugar_crepe": [p for c in SUGAR_CREPE for p in (f"{c}.json", f"data/{c}.json")],
    "shapes": [p for c in SUGAR_CREPE for p in (f"{c}.json", f"data/{c}.json")],
    "winoground": ["examples.jsonl", "data/examples.jsonl"],
    **{name: [file_name] for name, (file_name, _) in ARO_FILES.items()},
}


@dataclass(frozen=True)
class Found:
    """One dataset of one task, as discovery left it."""
    task: str                   # zeroshot | retrieval | compositional | linear_probe
    dataset: str                # cifar10, flickr30k, sugar_crepe, ...
    status: str                 # found | missing | skipped
    where: str                  # found: what is read; missing: every path looked for; skipped: why
    folder: Path | None = None  # found: the root its reader is given
    split: str = SPLIT
    train_split: str = ""       # linear_probe: the split the probe fits on


@dataclass
class LoadedModel:
    """What every runner takes: the model with its preprocessing and tokenizer, and how to encode."""
    model: torch.nn.Module
    preprocess: Callable
    tokenizer: Callable
    model_id: list              # what the embedding cache keys on (``eval.__main__.load_model``'s identity)
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype | None = None
    batch_size: int = 256
    workers: int = 0
    cache: EmbeddingCache = field(default_factory=lambda: EmbeddingCache(None))
    progress: bool = True

    def encoding(self) -> dict:
        """The keyword arguments every runner shares."""
        return dict(batch_size=self.batch_size, device=self.device, dtype=self.dtype, workers=self.workers,
                    cache=self.cache, progress=self.progress)


@dataclass
class Outcome:
    """One dataset of one task after running: its main metric, or why it has none."""
    task: str
    dataset: str
    status: str                 # ok | failed | missing | skipped
    detail: str                 # ok: what was read; failed: the error; missing, skipped: as discovered
    metric: str | None = None   # the main metric, as open_clip's results table takes it
    value: float | None = None
    name: str = ""              # the set's name as its reader gives it (the result JSON's "dataset")
    result: dict = field(default_factory=dict)   # the runner's whole result
    seconds: float = 0.0


def linear_probe_module():
    """``eval.linear_probe``, or the one line saying why it cannot be imported."""
    try:
        return importlib.import_module(f"{__package__}.linear_probe")
    except ImportError as e:
        return f"eval.linear_probe cannot be imported ({e}); the linear probe is not run"


def known_datasets(tasks: tuple[str, ...]) -> dict[str, list[str]]:
    """task → the names of every dataset it knows, in the order they are reported."""
    classification = list(known())
    names = {"zeroshot": classification, "linear_probe": classification, "retrieval": list(RETRIEVAL),
             "compositional": list(COMPOSITIONAL)}
    return {task: names[task] for task in tasks}


def discover(root: str | Path, tasks: tuple[str, ...] = DEFAULT_TASKS,
             datasets: list[str] | None = None) -> list[Found]:
    """Every known dataset of ``tasks`` (or only those named in ``datasets``), found under ``root`` or not."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"--root {root}: no such folder (the folder holding the datasets)")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise UserError(f"--tasks {unknown[0]}: no such task; the tasks are {', '.join(TASKS)}")
    names = known_datasets(tuple(dict.fromkeys(tasks)))
    everything = sorted({n for ns in names.values() for n in ns})
    strays = [d for d in datasets or [] if d not in everything]
    if strays:
        raise UserError(f"--datasets {strays[0]}: no such dataset for the tasks {', '.join(names)}; "
                        f"known: {', '.join(everything)}")
    probe = linear_probe_module() if "linear_probe" in names else None
    found = []
    for task, task_names in names.items():
        for name in task_names:
            if datasets and name not in datasets:
                continue
            if task == "linear_probe" and isinstance(probe, str):
                found.append(Found(task, name, "skipped", probe))
            elif task in ("zeroshot", "linear_probe"):
                found.append(_find_classification(root, name, task))
            elif task == "retrieval":
                found.append(_find_retrieval(root, name))
            else:
                found.append(_find_compositional(root, name))
    return found


def _layout_in(root: Path, spec: DatasetSpec, split: str) -> tuple[Path, str] | list[str]:
    """(folder, what is read) of the first of ``root``, ``root/<name>`` holding ``split``, or every path looked for."""
    looked = []
    for folder in (root, root / spec.name):
        layout = find_layout(spec.name, folder, split)
        if layout is not None:
            return folder, f"{folder / layout.marker.format(split=split)} ({layout.description})"
        looked += [str(folder / lay.marker.format(split=split)) for lay in spec.layouts]
    return looked


def _find_classification(root: Path, name: str, task: str) -> Found:
    spec = known()[name]
    split = spec.splits[0]
    if task == "linear_probe":
        if spec.metric == MULTILABEL_METRIC:
            return Found(task, name, "skipped", "multi-label: the linear probe takes one label per image")
        train_split = next((s for s in TRAIN_SPLITS if s in spec.splits), None)
        if train_split is None:
            return Found(task, name, "skipped", f"no train split (its readers know {', '.join(spec.splits)})")
        split = SPLIT if SPLIT in spec.splits else split
    test = _layout_in(root, spec, split)
    if isinstance(test, list):
        return Found(task, name, "missing", "looked for " + ", ".join(test))
    folder, where = test
    if task == "linear_probe":
        if find_layout(name, folder, train_split) is None:
            return Found(task, name, "missing", f"{where} holds {split}, but no {train_split} split under {folder}: "
                         f"looked for " + ", ".join(str(folder / lay.marker.format(split=train_split))
                                                    for lay in spec.layouts))
        return Found(task, name, "found", where, folder, split, train_split)
    return Found(task, name, "found", where, folder, split)


def _find_retrieval(root: Path, name: str) -> Found:
    folder, looked = root / name, []
    for rel, fmt in RETRIEVAL[name]:
        path = folder / rel.format(split=SPLIT)
        if annotation_exists(path, fmt, SPLIT):
            return Found("retrieval", name, "found", f"{path} ({fmt})", folder)
        looked.append(str(path / SPLIT / "nshards.txt") if fmt == "wds" else str(path))
    return Found("retrieval", name, "missing", "looked for " + ", ".join(looked))


def _find_compositional(root: Path, name: str) -> Found:
    looked = []
    for folder in (root / f for f in COMPOSITIONAL_FOLDERS[name]):
        for rel in COMPOSITIONAL_MARKERS[name]:
            if (folder / rel).is_file():
                return Found("compositional", name, "found", str(folder / rel), folder)
        crepe = name in ("sugar_crepe", "shapes")
        looked += ([str(folder / CREPE_FILES), str(folder / "data" / CREPE_FILES)] if crepe
                   else [str(folder / rel) for rel in COMPOSITIONAL_MARKERS[name]])
    return Found("compositional", name, "missing", "looked for " + ", ".join(looked))


def run_suite(found: list[Found], m: LoadedModel, log: Callable = print) -> list[Outcome]:
    """Each found dataset evaluated in turn; one that fails gets its error, and the next one runs."""
    outcomes = []
    for f in found:
        if f.status != "found":
            outcomes.append(Outcome(f.task, f.dataset, f.status, f.where))
            continue
        start = time.perf_counter()
        try:
            name, metric, value, result = RUNNERS[f.task](f, m, log)
        except UserError as e:
            outcomes.append(Outcome(f.task, f.dataset, "failed", str(e), seconds=time.perf_counter() - start))
        except Exception as e:  # a bug or out of memory on one set: say so with its trace, and go on to the next
            log(traceback.format_exc())
            outcomes.append(Outcome(f.task, f.dataset, "failed", f"{type(e).__name__}: {e}",
                                    seconds=time.perf_counter() - start))
        else:
            outcomes.append(Outcome(f.task, f.dataset, "ok", f.where, metric, value, name, result,
                                    time.perf_counter() - start))
        if outcomes[-1].status == "failed":
            log(f"{f.task} {f.dataset}: FAILED: {outcomes[-1].detail}")
        else:
            log(f"{f.task} {f.dataset}: {metric} = {100 * value:.2f} % ({outcomes[-1].seconds:.1f} s)")
    return outcomes


def _main_value(metrics: dict, metric: str, f: Found) -> float:
    if metric not in metrics:
        raise UserError(f"{f.task} {f.dataset}: the result has no {metric} (it has {', '.join(metrics)})")
    return float(metrics[metric])


def classification_key(m: LoadedModel, ds: ClassificationSet) -> str:
    """The embedding cache key of a classification set's images, as ``python -m eval zeroshot`` forms it."""
    return cache_key(m.model_id, file_identity(ds.source), ds.images.fingerprint())


def _zeroshot(f: Found, m: LoadedModel, log: Callable) -> tuple[str, str, float, dict]:
    ds = open_classification(f.dataset, f.folder, f.split, log=log)
    result = run_zeroshot(m.model, m.preprocess, m.tokenizer, ds, cache_key=classification_key(m, ds),
                          model_key=cache_key(m.model_id), **m.encoding())
    metric = known()[f.dataset].metric
    return ds.name, metric, _main_value(result["metrics"], metric, f), result


def _retrieval(f: Found, m: LoadedModel, log: Callable) -> tuple[str, str, float, dict]:
    ds = open_dataset(f.dataset, f.folder, f.split, log=log)
    key = cache_key(m.model_id, file_identity(ds.source), ds.images.fingerprint(), ds.texts)
    result = run_retrieval(m.model, m.preprocess, m.tokenizer, ds, cache_key=key, **m.encoding())
    recall = result["metrics"]
    # DataComp's main metric for Flickr and MSCOCO: the mean of the two directions' recall@1
    value = (recall["image_retrieval_recall@1"] + recall["text_retrieval_recall@1"]) / 2
    return ds.name, "mean_recall@1", value, result


def _compositional(f: Found, m: LoadedModel, log: Callable) -> tuple[str, str, float, dict]:
    log(f"{f.dataset}: reading {f.where}")
    ds = open_selection_set(f.dataset, f.folder)
    key = cache_key(m.model_id, [file_identity(p) for p in ds.files], ds.images.fingerprint(), ds.texts)
    result = run_compositional(m.model, m.preprocess, m.tokenizer, ds, cache_key=key, **m.encoding())
    return ds.name, "acc", _main_value(result["scorers"]["embeddings"]["metrics"], "acc", f), result


def _image_features(ds: ClassificationSet, m: LoadedModel) -> torch.Tensor:
    """[N, D] image features of a set through the cache (the test split's entry is zero-shot's own)."""
    def encode():
        return encode_images(m.model, m.preprocess, ds.images, m.batch_size, m.device, m.dtype, m.workers,
                             desc=f"{ds.name}: images", progress=m.progress)
    return m.cache.get_or_compute(f"{classification_key(m, ds)}-images", encode)


def _linear_probe(f: Found, m: LoadedModel, log: Callable) -> tuple[str, str, float, dict]:
    probe = linear_probe_module()
    if isinstance(probe, str):
        raise UserError(probe)
    train = open_classification(f.dataset, f.folder, f.train_split, log=log)
    test = open_classification(f.dataset, f.folder, f.split, log=log)
    if train.classnames != test.classnames:
        raise UserError(f"{f.dataset}: the {f.train_split} split's {len(train.classnames)} class names differ from the "
                        f"{f.split} split's {len(test.classnames)}; a probe needs one set of classes")
    # CLIP_benchmark's defaults: no validation split, so weight decay 0 (eval.linear_probe)
    metrics = probe.linear_probe(_image_features(train, m), torch.tensor(train.labels),
                                 _image_features(test, m), torch.tensor(test.labels),
                                 num_classes=len(test.classnames), classnames=test.classnames)
    metric = "lp_" + known()[f.dataset].metric
    return test.name, metric, _main_value(metrics, metric, f), {"metrics": metrics}


RUNNERS = {"zeroshot": _zeroshot, "retrieval": _retrieval, "compositional": _compositional,
           "linear_probe": _linear_probe}
