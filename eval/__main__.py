"""``[accelerate launch] python -m eval zeroshot|retrieval|compositional|linear-probe --model M --dataset D --output out.json``
and ``python -m eval suite --model M --root DATASETS_DIR --output OUT_DIR``.

M is a model directory, ``openclip:ARCH`` (with ``--pretrained FILE``) or ``hf:DIR`` (a local
transformers directory; nothing is downloaded). D is a classification dataset by its CLIP_benchmark name
(``imagenet1k``, ``cifar10``, ``mnist``, ``voc2007``, ... with ``--root DIR``: the files users have, in their
on-disk layouts, with CLIP_benchmark's class names and templates), ``flickr30k``, ``flickr8k`` or ``mscoco`` with
``--root DIR`` (the annotation file found is reported), or an explicit ``wds:DIR``, ``karpathy:FILE``,
``coco:FILE``, ``flickr-txt:FILE``, ``blip:FILE``, ``imagefolder:DIR``. Writes CLIP_benchmark-schema
JSON to ``--output`` (a NAME.json), a Markdown table beside it (``.md``), and an HTML page with sample
queries (retrieval: ``.html``, ``_thumbs/``) or a per-class bar chart (zero-shot: ``.classes.png``,
``.classes.json``); an output that would be an input or another output stops it before anything is
written. Under ``accelerate launch --num_processes N`` the encoding is split across the processes. A
broken model file, or weights holding NaN/inf (unless ``--allow-nonfinite``), stop it with one line
naming the file.

``compositional`` takes D = ``sugar_crepe`` (``sugar_crepe/CATEGORY``), ``winoground``, ``aro_vgr``,
``aro_vga`` or ``shapes`` (the set ``python -m data_prep compositional`` writes) with ``--root DIR``, and
writes ``.json`` (CLIP_benchmark's ``text_acc``/``image_acc``/``acc``, per category), ``.md`` (with chance
levels, standard errors and ties) and ``.html`` (failures); a fusion model is also scored by its ITM head.

``linear-probe`` fits CLIP_benchmark's logistic-regression probe on frozen features of D's ``--train-split``
(``--fewshot-k K`` per class, ``--seeds``), choosing the weight decay on validation data only. ``suite`` finds
every known benchmark under ``--root``, runs each, and writes open_clip's results table, one JSON per evaluation
and a chart (``--compare M2``: a second model beside it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmcontrast.errors import UserError, run_main

TEMPLATE_SETS = ("openai", "simple", "cupl")
DTYPES = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}


def build_parser() -> argparse.ArgumentParser:
    """The program's options; nothing heavy is imported before they are parsed, so --help answers at once."""
    p = argparse.ArgumentParser(prog="python -m eval", description=__doc__.replace("``", ""),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=["zeroshot", "retrieval", "compositional", "linear-probe", "suite"],
                   help="zeroshot: classify a labelled image set; retrieval: image↔text recall@K; "
                        "compositional: pick the true caption against hard negatives (SugarCrepe, Winoground, ARO); "
                        "linear-probe: logistic regression on frozen image features (full or --fewshot-k); "
                        "suite: every benchmark found under --root")
    p.add_argument("--model", required=True,
                   help="a model directory (training's final/, or open_clip_config.json + weights); "
                        "openclip:NAME (an open_clip architecture or config .json) with --pretrained FILE; "
                        "or hf:/local/dir, a transformers CLIP/SigLIP directory (local only: never downloaded)")
    p.add_argument("--pretrained", default=None,
                   help="openclip:NAME only: the weights file (.safetensors, or .bin/.pt read weights-only)")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="load weights holding NaN or inf (refused by default: they give chance-level numbers)")
    p.add_argument("--dataset", default=None,
                   help="flickr30k|flickr8k|mscoco (with --root) or FORMAT:PATH; compositional: "
                        "sugar_crepe[/CATEGORY]|winoground|aro_vgr|aro_vga|shapes[/CATEGORY] (with --root)")
    p.add_argument("--root", default=None, help="folder with the annotation file and the images")
    p.add_argument("--split", default="test", help="split of a named dataset or a wds: directory (default: test)")
    p.add_argument("--output", required=True,
                   help="result JSON path, NAME.json (NAME.md and NAME.html or NAME.classes.png written beside it); "
                        "suite: a folder (results.csv, results.md, results.png, one JSON per evaluation)")
    p.add_argument("--train-split", default="train",
                   help="linear-probe: the split the probe is trained on (default: train; pets: trainval)")
    p.add_argument("--val-split", default=None,
                   help="linear-probe: a split to choose the weight decay on (else --val-proportion, else it is 0)")
    p.add_argument("--val-proportion", type=float, default=0.0,
                   help="linear-probe: share of train held out to choose the weight decay; with --fewshot-k, any p > 0 "
                        "draws k more per class from train, disjoint from the k-shot ones (default: 0, no search)")
    p.add_argument("--fewshot-k", type=int, default=-1,
                   help="linear-probe: train examples per class, drawn per seed (default: -1, all of them)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="linear-probe: one probe per seed; several give the mean and standard deviation (default: 0)")
    p.add_argument("--lp-lr", type=float, default=0.1, help="linear-probe: AdamW learning rate (default: 0.1)")
    p.add_argument("--lp-epochs", type=int, default=10, help="linear-probe: epochs (default: 10)")
    p.add_argument("--lp-batch-size", type=int, default=64, help="linear-probe: training batch size (default: 64)")
    p.add_argument("--tasks", nargs="+", choices=["zeroshot", "retrieval", "compositional", "linear_probe"],
                   default=None, help="suite: the tasks run (default: zeroshot retrieval compositional; "
                                      "linear_probe on request)")
    p.add_argument("--datasets", nargs="+", default=None,
                   help="suite: only these dataset names (default: every one found)")
    p.add_argument("--compare", default=None,
                   help="suite: a second model (any --model form), side by side with the differences")
    p.add_argument("--compare-pretrained", default=None, help="suite: the weights file of --compare (openclip:NAME)")
    p.add_argument("--classnames", default=None, help="zero-shot: class names file, one per line")
    p.add_argument("--templates", default=None,
                   help="zero-shot: openai (80), simple (7), cupl (CLIP_benchmark's CuPL prompts, ImageNet classes), "
                        "a file with one {c} template per line, or a CuPL JSON {class: [prompts]}; "
                        "default: the dataset's own (CLIP_benchmark's for a named dataset), else openai")
    p.add_argument("--captions-per-image", type=int, default=0,
                   help="retrieval: keep only the first K captions of each image (0 = all)")
    p.add_argument("--backend", choices=["torch", "faiss-flat", "faiss-hnsw"], default="torch",
                   help="retrieval: exact chunked torch (default), faiss exact, or faiss HNSW (approximate)")
    p.add_argument("--rerank-k", type=int, default=0,
                   help="retrieval with a fusion model: also re-rank each query's top K by the ITM head "
                        "(ALBEF/BLIP: Flickr 128, COCO 256); both results are reported")
    p.add_argument("--batch-size", type=int, default=256, help="images or texts encoded at once (default: 256)")
    p.add_argument("--workers", type=int, default=2, help="image decoding processes (default: 2)")
    p.add_argument("--precision", choices=list(DTYPES), default="fp32",
                   help="autocast dtype while encoding; features are compared in fp32 (default: fp32)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "mmcontrast" / "embeddings"),
                   help="where embeddings are cached; '' disables the cache")
    return p


def parse_args(argv):
    return build_parser().parse_args(argv)


def input_paths(args: argparse.Namespace, source: str) -> dict[str, Path]:
    """Every local path the program reads, by the option that names it (the outputs must differ from each)."""
    model = args.model.removeprefix("hf:")
    if model.startswith("openclip:"):  # an architecture name, or a config file
        model = model.removeprefix("openclip:") if model.endswith(".json") else None
    named = {"--model": model,
             "--pretrained": args.pretrained, "--dataset": args.dataset.partition(":")[2] or None,
             "dataset file": source, "--root": args.root, "--classnames": args.classnames,
             "--templates": args.templates if args.templates not in TEMPLATE_SETS else None,
             "--cache-dir": args.cache_dir or None}
    return {option: Path(path) for option, path in named.items() if path}


def load_model(args: argparse.Namespace, state) -> tuple:
    """(device, model, preprocess, tokenizer, autocast dtype, the model's identity for the cache) from the
    arguments every task shares; ``state``: accelerate's PartialState (its device under a GPU launch)."""
    import torch

    import mmcontrast as mc

    from .cache import file_identity

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        device = state.device
    model, preprocess, tokenizer = mc.load(args.model, pretrained=args.pretrained, device=device,
                                           allow_nonfinite=args.allow_nonfinite)
    dtype = getattr(torch, DTYPES[args.precision]) if DTYPES[args.precision] else None
    weights = Path(args.pretrained or args.model.removeprefix("hf:"))
    model_id = [args.model, file_identity(weights) if weights.exists() else None, model.preprocess_cfg, args.precision]
    return device, model, preprocess, tokenizer, dtype, model_id


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.task == "suite":
        from .suite_cli import run
        return run(args, input_paths, load_model)
    if not args.dataset:
        raise UserError(f"--dataset is required for {args.task}")
    if args.task == "linear-probe":
        from .linear_probe_cli import run
        return run(args, input_paths, load_model)
    if args.task == "compositional":
        from .compositional_cli import run
        return run(args, input_paths, load_model)
    from .report import output_paths
    outputs = output_paths(args.output, args.task)  # before the heavy imports: a bad name answers at once
    import torch
    from accelerate import PartialState

    import mmcontrast.model  # noqa: F401  before the process group (mmcontrast.distributed.shutdown)

    from .cache import EmbeddingCache, cache_key, file_identity
    from .classification.names import choose_templates
    from .datasets import open_dataset
    from .html import write_retrieval_html
    from .report import check_outputs, markdown_table, plot_per_class, result_json, result_rows, write_outputs
    from .retrieval import run_retrieval
    from .sets import ClassificationSet, RetrievalSet
    from .zeroshot import run_zeroshot

    state = PartialState(cpu=not torch.cuda.is_available())  # N processes under accelerate launch, else one
    main_process = state.is_main_process
    log = print if main_process else (lambda *a: None)
    ds = open_dataset(args.dataset, args.root, args.split, args.classnames, None, log=log)
    check_outputs(outputs, input_paths(args, ds.source))
    want = RetrievalSet if args.task == "retrieval" else ClassificationSet
    if not isinstance(ds, want):
        raise UserError(f"{args.dataset} is a {'retrieval' if isinstance(ds, RetrievalSet) else 'classification'} "
                        f"set; `{args.task}` needs the other kind")
    device, model, preprocess, tokenizer, dtype, model_id = load_model(args, state)
    cache = EmbeddingCache(args.cache_dir or None, writer=main_process)
    common = dict(batch_size=args.batch_size, device=device, dtype=dtype, workers=args.workers, cache=cache,
                  progress=main_process)
    if args.task == "retrieval":
        if args.captions_per_image:
            ds = ds.first_captions(args.captions_per_image)
        key = cache_key(model_id, file_identity(ds.source), ds.images.fingerprint(), ds.texts)
        result = run_retrieval(model, preprocess, tokenizer, ds, cache_key=key, backend=args.backend,
                               rerank_k=args.rerank_k, **common)
    else:
        key = cache_key(model_id, file_identity(ds.source), ds.images.fingerprint())
        if args.rerank_k:
            raise UserError("--rerank-k is for retrieval")
        result = run_zeroshot(model, preprocess, tokenizer, ds, templates=choose_templates(args.templates, ds),
                              cache_key=key, model_key=cache_key(model_id), **common)
    if not main_process:
        return
    title = f"{args.task} · {ds.name} · {args.model}"
    if result["metrics"].get("approximate"):
        title += " · APPROXIMATE (faiss HNSW)"
    record = result_json(ds.name, args.model, args.pretrained or "", args.task, result["metrics"])
    if "reranked" in result:
        record["reranked"] = result["reranked"]
    table = markdown_table(result_rows(result), title=title)
    write_outputs(outputs, record, table)
    if args.task == "retrieval":
        write_retrieval_html(outputs["HTML page"], ds, result, title)
    else:
        per_class = result.get("per_class_recall", result.get("per_class_average_precision"))  # multi-label: AP
        plot_per_class(outputs["chart"], ds.classnames, per_class, title)
        outputs["per-class JSON"].write_text(json.dumps(dict(zip(ds.classnames, per_class))))
    print(table)
    print("wrote " + ", ".join(str(p) for p in outputs.values()))


if __name__ == "__main__":
    run_main(main)
