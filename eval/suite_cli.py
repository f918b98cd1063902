"""``python -m eval suite --model M --root DATASETS_DIR --output OUT_DIR``: the program's steps.

Options: ``--tasks`` (zeroshot retrieval compositional by default; linear_probe on request), ``--datasets`` (only
these names), ``--compare M2`` (with ``--compare-pretrained FILE``: a second model, side by side). Discovers what
``--root`` holds (``eval.suite``), prints what was found and what is missing, evaluates each found dataset with
one loaded model and the embedding cache, and writes ``OUT_DIR/results.{csv,md,png}`` and one CLIP_benchmark
JSON per evaluation (``eval.suite_report``). A dataset that fails is reported and the others still run; the exit
status is then non-zero. Under ``accelerate launch --num_processes N`` the encoding is split across the processes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mmcontrast.errors import UserError

# options of the single-dataset tasks that the suite does not take (each dataset brings its own)
NOT_FOR_SUITE = {"dataset": None, "classnames": None, "templates": None, "rerank_k": 0, "captions_per_image": 0,
                 "backend": "torch"}


def _check_options(args: argparse.Namespace) -> None:
    given = [name for name, default in NOT_FOR_SUITE.items() if getattr(args, name, default) not in (default, None)]
    if given:
        raise UserError(f"--{given[0].replace('_', '-')} is for a single dataset's task, not suite: the suite reads "
                        "each dataset found under --root with its own class names and templates")
    if not args.root:
        raise UserError("suite needs --root DATASETS_DIR, the folder holding the datasets")
    if Path(args.output).suffix == ".json":
        raise UserError(f"--output {args.output}: suite writes a folder (results.csv, results.md, results.png and "
                        "one JSON per evaluation); give a directory")
    if getattr(args, "compare_pretrained", None) and not getattr(args, "compare", None):
        raise UserError("--compare-pretrained is the weights of --compare M2; give --compare too")


def _models(args: argparse.Namespace) -> list[argparse.Namespace]:
    """The arguments that load each model: --model's, then --compare's."""
    models = [args]
    if getattr(args, "compare", None):
        models.append(argparse.Namespace(**{**vars(args), "model": args.compare,
                                            "pretrained": getattr(args, "compare_pretrained", None)}))
    return models


def run(args: argparse.Namespace, input_paths, load_model) -> None:
    """Everything ``python -m eval suite`` does after parsing; ``input_paths`` names the files read,
    ``load_model`` loads a model as every task of the program does."""
    _check_options(args)
    import torch
    from accelerate import PartialState

    import mmcontrast.model  # noqa: F401  before the process group (mmcontrast.distributed.shutdown)

    from .cache import EmbeddingCache
    from .report import check_outputs
    from .suite import DEFAULT_TASKS, LoadedModel, discover, run_suite
    from .suite_report import ModelResults, output_paths, write_report

    state = PartialState(cpu=not torch.cuda.is_available())  # N processes under accelerate launch, else one
    log = print if state.is_main_process else (lambda *a, **k: None)
    found = discover(args.root, tuple(getattr(args, "tasks", None) or DEFAULT_TASKS), getattr(args, "datasets", None))
    models = _models(args)
    inputs = {}
    for n, margs in enumerate(models):
        named = input_paths(argparse.Namespace(**{**vars(margs), **NOT_FOR_SUITE, "dataset": ""}), None)
        inputs.update({(option if n == 0 else f"{option} of --compare"): path for option, path in named.items()})
    outputs = output_paths(args.output, found, len(models))
    check_outputs(outputs, inputs)
    for f in found:
        log(f"{f.status}: {f.task} {f.dataset}: {f.where}")
    n_found = sum(f.status == "found" for f in found)
    log(f"{n_found} of {len(found)} known evaluations found under {args.root}")
    if not n_found:  # every path looked for is listed above
        raise UserError(f"--root {args.root}: none of the {len(found)} known benchmarks is there (the paths looked "
                        "for are listed above); --root is the folder that holds the dataset folders")
    runs = []
    for margs in models:
        device, model, preprocess, tokenizer, dtype, model_id = load_model(margs, state)
        loaded = LoadedModel(model, preprocess, tokenizer, model_id, device, dtype, args.batch_size, args.workers,
                             EmbeddingCache(args.cache_dir or None, writer=state.is_main_process),
                             progress=state.is_main_process)
        log(f"model {margs.model}:")
        runs.append(ModelResults(margs.model, margs.pretrained or "", run_suite(found, loaded, log)))
        del loaded, model  # the next model needs the memory
    if state.is_main_process:
        written = write_report(args.output, runs, args.root)
        print((Path(args.output) / "results.md").read_text())
        print(f"wrote {', '.join(str(p) for p in written[:3])} and {len(written) - 3} JSON files")
    failed = [f"{o.task} {o.dataset} ({run.model})" for run in runs for o in run.outcomes if o.status == "failed"]
    if failed:
        raise UserError(f"{len(failed)} evaluation{'s' if len(failed) > 1 else ''} failed: {', '.join(failed)}; "
                        f"each error is in {Path(args.output) / 'results.md'}, the other results beside it")
