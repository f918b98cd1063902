"""``[accelerate launch] python -m eval zeroshot|retrieval|compositional --model M --dataset D --output out.json``.

M is a model directory, ``openclip:ARCH`` (with ``--pretrained FILE``) or ``hf:DIR`` (a local
transformers directory; nothing is downloaded). D is ``flickr30k``, ``flickr8k`` or ``mscoco`` with
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
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmcontrast.errors import UserError, run_main

TEMPLATE_SETS = ("openai", "simple")
DTYPES = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}


def build_parser() -> argparse.ArgumentParser:
    """The program's options; nothing heavy is imported before they are parsed, so --help answers at once."""
    p = argparse.ArgumentParser(prog="python -m eval", description=__doc__.replace("``", ""),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=["zeroshot", "retrieval", "compositional"],
                   help="zeroshot: classify a labelled image set; retrieval: image↔text recall@K; "
                        "compositional: pick the true caption against hard negatives (SugarCrepe, Winoground, ARO)")
    p.add_argument("--model", required=True,
                   help="a model directory (training's final/, or open_clip_config.json + weights); "
                        "openclip:NAME (an open_clip architecture or config .json) with --pretrained FILE; "
                        "or hf:/local/dir, a transformers CLIP/SigLIP directory (local only: never downloaded)")
    p.add_argument("--pretrained", default=None,
                   help="openclip:NAME only: the weights file (.safetensors, or .bin/.pt read weights-only)")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="load weights holding NaN or inf (refused by default: they give chance-level numbers)")
    p.add_argument("--dataset", required=True,
                   help="flickr30k|flickr8k|mscoco (with --root) or FORMAT:PATH; compositional: "
                        "sugar_crepe[/CATEGORY]|winoground|aro_vgr|aro_vga|shapes[/CATEGORY] (with --root)")
    p.add_argument("--root", default=None, help="folder with the annotation file and the images")
    p.add_argument("--split", default="test", help="split of a named dataset or a wds: directory (default: test)")
    p.add_argument("--output", required=True,
                   help="result JSON path, NAME.json (NAME.md and NAME.html or NAME.classes.png written beside it)")
    p.add_argument("--classnames", default=None, help="zero-shot: class names file, one per line")
    p.add_argument("--templates", default=None,
                   help="zero-shot: openai (80), simple (7), a file with one {c} template per line, "
                        "or a CuPL JSON {class: [prompts]}; default: the dataset's own, else openai")
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


def choose_templates(spec: str | None, ds):
    import mmcontrast as mc

    from .readers import read_templates
    if spec is None:
        return ds.templates
    if spec == "openai":
        return list(mc.templates.OPENAI_IMAGENET)
    if spec == "simple":
        return list(mc.templates.SIMPLE)
    if not Path(spec).is_file():
        raise UserError(f"--templates {spec}: not {'/'.join(TEMPLATE_SETS)} and no such file")
    return read_templates(spec)


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
    if args.task == "compositional":
        from .compositional_cli import run
        return run(args, input_paths, load_model)
    from .report import output_paths
    outputs = output_paths(args.output, args.task)  # before the heavy imports: a bad name answers at once
    import torch
    from accelerate import PartialState

    import mmcontrast.model  # noqa: F401  before the process group (mmcontrast.distributed.shutdown)

    from .cache import EmbeddingCache, cache_key, file_identity
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
                              cache_key=key, **common)
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
        plot_per_class(outputs["chart"], ds.classnames, result["per_class_recall"], title)
        outputs["per-class JSON"].write_text(json.dumps(dict(zip(ds.classnames, result["per_class_recall"]))))
    print(table)
    print("wrote " + ", ".join(str(p) for p in outputs.values()))


if __name__ == "__main__":
    run_main(main)
