"""``python -m eval zeroshot|retrieval --model M --dataset wds:DIR --output out.json``.

M is a model directory or ``openclip:ARCH`` (with ``--pretrained FILE``). Writes CLIP_benchmark-schema
JSON to ``--output`` and a Markdown table beside it (``.md``), and prints the table.
"""

from __future__ import annotations

import argparse

from mmcontrast.errors import UserError, run_main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=["zeroshot", "retrieval"])
    parser.add_argument("--model", required=True, help="model directory or openclip:ARCH")
    parser.add_argument("--pretrained", default=None, help="weights file for openclip:ARCH")
    parser.add_argument("--dataset", required=True, help="wds:DIR in CLIP_benchmark's webdataset layout")
    parser.add_argument("--split", default="test")
    parser.add_argument("--output", required=True, help="result JSON path")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    import mmcontrast as mc

    from .datasets import open_wds
    from .report import markdown_table, result_json, result_rows, write_outputs
    from .retrieval import run_retrieval
    from .zeroshot import run_zeroshot

    ds = open_wds(args.dataset, args.split)
    expected = "retrieval" if args.task == "retrieval" else "classification"
    if ds.dataset_type != expected:
        raise UserError(f"{args.dataset} is a {ds.dataset_type} set; `{args.task}` needs a {expected} set")
    model, preprocess, tokenizer = mc.load(args.model, pretrained=args.pretrained, device=args.device)
    run = run_retrieval if args.task == "retrieval" else run_zeroshot
    result = run(model, preprocess, tokenizer, ds, batch_size=args.batch_size, device=args.device)
    record = result_json(ds.name, args.model, args.pretrained or "", args.task, result["metrics"])
    table = markdown_table(result_rows(result), title=f"{args.task} · {ds.name} · {args.model}")
    write_outputs(args.output, record, table)
    print(table)


if __name__ == "__main__":
    run_main(main)
