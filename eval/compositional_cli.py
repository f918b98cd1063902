"""``python -m eval compositional --model M --dataset D --root DIR --output out.json``: the program's steps.

D is ``sugar_crepe`` (or ``sugar_crepe/CATEGORY``), ``winoground``, ``aro_vgr``, ``aro_vga`` or ``shapes``
(the generated set; ``shapes/CATEGORY``). Writes the CLIP_benchmark-schema JSON, a Markdown table with
chance levels, standard errors and ties, and an HTML page of failures beside it.
"""

from __future__ import annotations

import argparse

from mmcontrast.errors import UserError


def run(args: argparse.Namespace, input_paths, load_model) -> None:
    """Everything ``python -m eval compositional`` does after parsing; ``input_paths`` names the files read,
    ``load_model`` loads the model as every task of the program does."""
    from .report import compositional_output_paths
    outputs = compositional_output_paths(args.output)  # before the heavy imports: a bad name answers at once
    for option in ("classnames", "templates"):
        if getattr(args, option):
            raise UserError(f"--{option} is for zeroshot, not compositional")
    if args.rerank_k or args.captions_per_image or args.backend != "torch":
        raise UserError("--rerank-k, --captions-per-image and --backend are for retrieval; a fusion model is "
                        "scored by its ITM head here without them")
    import torch
    from accelerate import PartialState

    import mmcontrast.model  # noqa: F401  before the process group (mmcontrast.distributed.shutdown)

    from .cache import EmbeddingCache, cache_key, file_identity
    from .compositional import run_compositional
    from .compositional_sets import open_selection_set
    from .html import write_compositional_html
    from .report import check_outputs, compositional_json, compositional_table, write_outputs

    state = PartialState(cpu=not torch.cuda.is_available())
    ds = open_selection_set(args.dataset, args.root)
    check_outputs(outputs, input_paths(args, ds.source))
    device, model, preprocess, tokenizer, dtype, model_id = load_model(args, state)
    key = cache_key(model_id, [file_identity(f) for f in ds.files], ds.images.fingerprint(), ds.texts)
    result = run_compositional(model, preprocess, tokenizer, ds, batch_size=args.batch_size, device=device,
                               dtype=dtype, workers=args.workers,
                               cache=EmbeddingCache(args.cache_dir or None, writer=state.is_main_process),
                               cache_key=key, progress=state.is_main_process)
    if not state.is_main_process:
        return
    title = f"compositional · {args.dataset} · {args.model}"
    table = compositional_table(result, ds.kind, title=title)
    write_outputs(outputs, compositional_json(ds.name, args.model, args.pretrained or "", result), table)
    write_compositional_html(outputs["HTML page"], ds, result, table, title)
    print(table)
    print("wrote " + ", ".join(str(p) for p in outputs.values()))
