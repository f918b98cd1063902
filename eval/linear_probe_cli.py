"""``python -m eval linear-probe --model M --dataset D --root DIR --output out.json``: the program's steps.

D is a classification dataset of the registry (``eval.classification``) that has a train split: cifar10, mnist,
dtd, ... The images of its train split (``--train-split``), of ``--val-split`` when given, and of its test split
(``--split``) are encoded once and cached under the keys ``zeroshot`` and ``suite`` use, so a second run only
trains. ``eval.linear_probe`` then fits the probe for each of ``--seeds`` (the mean ± std when there are several),
with ``--fewshot-k`` examples per class or all of them, the weight decay searched on ``--val-split`` or on a
held-out ``--val-proportion`` of train. Writes the CLIP_benchmark-schema JSON (task ``linear_probe``) and a
Markdown table beside it (``.md``).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from mmcontrast.errors import UserError

# options of the other tasks that the linear probe does not take, with their defaults
NOT_FOR_PROBE = {"classnames": None, "templates": None, "rerank_k": 0, "captions_per_image": 0, "backend": "torch"}


def output_paths(output: str | Path) -> dict[str, Path]:
    """The result JSON at ``--output`` (which must end in .json) and the Markdown table beside it."""
    out = Path(output)
    if out.suffix != ".json":
        raise UserError(f"--output {str(output)[:200]!r} does not end in .json: the result JSON is written there "
                        "and the Markdown table (.md) beside it; give a NAME.json")
    return {"result JSON": out, "Markdown table": out.with_suffix(".md")}


def probe_config(args: argparse.Namespace):
    """The probe's settings from the command line; a value out of range is one line."""
    from .linear_probe import ProbeConfig

    if args.val_split and args.val_proportion:
        raise UserError("--val-split and --val-proportion exclude each other: the weight decay is searched on one")
    if not args.seeds or len(set(args.seeds)) != len(args.seeds):
        raise UserError(f"--seeds {' '.join(map(str, args.seeds or []))}: give one or more distinct seeds")
    return ProbeConfig(lr=args.lp_lr, epochs=args.lp_epochs, batch_size=args.lp_batch_size,
                       fewshot_k=args.fewshot_k, val_proportion=args.val_proportion)


def probe_table(metrics: dict, n_classes: int, title: str) -> str:
    """The scores in percent with their spread over seeds and chance, then the weight decay and the labels used."""
    seeds = metrics["seed"] if isinstance(metrics["seed"], list) else [metrics["seed"]]
    chance = {"lp_acc1": 1 / n_classes, "lp_acc5": min(1.0, 5 / n_classes), "lp_mean_per_class_recall": 1 / n_classes}
    lines = [f"### {title}", "", f"| metric | value (%) | std over {len(seeds)} seed(s) (%) | chance (%) |",
             "|---|---:|---:|---:|"]
    for name, level in chance.items():
        value, std = metrics[name], metrics.get(f"{name}_std")
        shown = "n/a" if math.isnan(value) else f"{100 * value:.2f}"
        spread = "" if std is None or math.isnan(std) else f"{100 * std:.2f}"
        lines.append(f"| {name} | {shown} | {spread} | {100 * level:.2f} |")
    wds = metrics["weight_decay"] if isinstance(metrics["weight_decay"], list) else [metrics["weight_decay"]]
    k = metrics["fewshot_k"]
    lines += ["", f"weight decay: {', '.join(f'{wd:.3g}' for wd in wds)} (seeds {', '.join(map(str, seeds))}); "
              f"{'every train example' if k < 0 else f'{k} per class'}: {metrics['n_train']:,} examples in the final "
              f"fit, {metrics['n_val']:,} more seen by the weight-decay search only; {metrics['epochs']} epochs"]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace, input_paths, load_model) -> None:
    """Everything ``python -m eval linear-probe`` does after parsing; ``input_paths`` names the files read,
    ``load_model`` loads the model as every task of the program does."""
    outputs = output_paths(args.output)  # before the heavy imports: a bad name or value answers at once
    given = [name for name, default in NOT_FOR_PROBE.items() if getattr(args, name) not in (default, None)]
    if given:
        raise UserError(f"--{given[0].replace('_', '-')} is not for linear-probe, which trains a classifier on "
                        "image features only")
    if not args.root:
        raise UserError(f"linear-probe needs --root DIR, the folder holding {args.dataset}'s files")
    config = probe_config(args)
    import torch
    from accelerate import PartialState

    import mmcontrast.model  # noqa: F401  before the process group (mmcontrast.distributed.shutdown)

    from .cache import EmbeddingCache, cache_key, file_identity
    from .classification.registry import open_classification
    from .encode import check_finite, encode_images
    from .linear_probe import fit_probe, summarise
    from .report import check_outputs, write_outputs

    state = PartialState(cpu=not torch.cuda.is_available())  # N processes under accelerate launch, else one
    log = print if state.is_main_process else (lambda *a: None)
    splits = {"train": args.train_split, "test": args.split}
    if args.val_split:
        splits["validation"] = args.val_split
    if len(set(splits.values())) != len(splits):
        raise UserError(f"--train-split {args.train_split}, --split {args.split}"
                        f"{f' and --val-split {args.val_split}' if args.val_split else ''} must be different splits")
    sets = {role: open_classification(args.dataset, args.root, split, log=log) for role, split in splits.items()}
    if sets["test"].multilabel:
        raise UserError(f"{args.dataset} is multi-label; the linear probe takes one label per image")
    inputs = input_paths(args, sets["test"].source)
    inputs.update({f"{role} split file": Path(ds.source) for role, ds in sets.items() if role != "test"})
    check_outputs(outputs, inputs)
    device, model, preprocess, tokenizer, dtype, model_id = load_model(args, state)
    cache = EmbeddingCache(args.cache_dir or None, writer=state.is_main_process)
    features, labels = {}, {}
    for role, ds in sets.items():
        def encode(ds=ds, role=role):
            return encode_images(model, preprocess, ds.images, args.batch_size, device, dtype, args.workers,
                                 desc=f"{ds.name} {splits[role]}: images", progress=state.is_main_process)
        key = cache_key(model_id, file_identity(ds.source), ds.images.fingerprint())  # zero-shot's key for a set
        features[role] = check_finite(cache.get_or_compute(f"{key}-images", encode, log=log), "image features",
                                      f"{splits[role]} images")
        labels[role] = torch.tensor(ds.labels)
    if not state.is_main_process:
        return
    classnames = sets["test"].classnames
    per_seed = []
    for seed in args.seeds:
        result = fit_probe(features["train"], labels["train"], features["test"], labels["test"],
                           features.get("validation"), labels.get("validation"), num_classes=len(classnames),
                           classnames=classnames, config=config, seed=seed, device=device)
        log(f"seed {seed}: weight decay {result.weight_decay:.3g}, lp_acc1 {100 * result.metrics['lp_acc1']:.2f} %")
        per_seed.append(result.metrics)
    metrics = summarise(per_seed)
    title = f"linear probe · {sets['test'].name} · {args.model}"
    table = probe_table(metrics, len(classnames), title)
    record = {"dataset": sets["test"].name, "model": args.model, "pretrained": args.pretrained or "",
              "task": "linear_probe", "metrics": metrics, "language": "en"}
    write_outputs(outputs, record, table)
    print(table)
    print("wrote " + ", ".join(str(p) for p in outputs.values()))
