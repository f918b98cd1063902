"""``python -m data_prep demo|shards|check``: build webdataset shards, or check a shard directory."""

from __future__ import annotations

import argparse

from mmcontrast.errors import run_main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="generate the shapes demo dataset")
    demo.add_argument("--out", default="data/demo")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--train-size", type=int, default=24000)
    demo.add_argument("--retrieval-size", type=int, default=1000)
    demo.add_argument("--zeroshot-size", type=int, default=1600)
    demo.add_argument("--workers", type=int, default=2)
    shards = sub.add_parser("shards", help="a table (CSV/TSV/JSONL/Parquet) of image + captions, or a folder of "
                                          "image + .txt → shards")
    shards.add_argument("--input", required=True, help="captions.csv|.tsv|.jsonl|.parquet or a folder")
    shards.add_argument("--out", required=True)
    shards.add_argument("--max-side", type=int, default=256)
    shards.add_argument("--quality", type=int, default=90)
    shards.add_argument("--shard-size", type=int, default=1000)
    shards.add_argument("--image-col", default="image")
    shards.add_argument("--caption-col", default="caption",
                        help="caption column; several comma-separated columns give several captions per image")
    shards.add_argument("--workers", type=int, default=2)
    check = sub.add_parser("check", help="read every shard of DIR: counts against the manifest, every image "
                                         "decoded, every caption present; exit status 1 on problems")
    check.add_argument("dir")
    check.add_argument("--workers", type=int, default=2)
    check.add_argument("--json", default=None, help="also write the full report as JSON here")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import build_demo
        m = build_demo(args.out, seed=args.seed, train_size=args.train_size,
                       retrieval_size=args.retrieval_size, zeroshot_size=args.zeroshot_size,
                       workers=args.workers)
        print(f"demo data in {args.out}: {m['train']['samples']} training pairs, "
              f"{m['retrieval']['images']} retrieval images, {m['zeroshot']['images']} zero-shot images")
    elif args.command == "check":
        import json
        import sys

        from .check import check_dir, format_report
        report = check_dir(args.dir, workers=args.workers)
        print(format_report(report))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=2)
        if not report["ok"]:
            sys.exit(1)
    else:
        from .shards import build_shards
        m = build_shards(args.input, args.out, max_side=args.max_side, quality=args.quality,
                         shard_size=args.shard_size, image_col=args.image_col,
                         caption_col=args.caption_col.split(","), workers=args.workers)
        print(f"{m['total']} samples in {len(m['shards'])} shards in {args.out}; skipped {m['skipped']}")


if __name__ == "__main__":
    run_main(main)
