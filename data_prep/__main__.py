"""``python -m data_prep demo|compositional|shards|check``: build webdataset shards or the compositional test
set, or check a shard directory."""

from __future__ import annotations

import argparse

from mmcontrast.data.limits import Limits
from mmcontrast.errors import run_main

from .demo import DEMO_COMPOSITIONAL_SIZE, DEMO_SCENE_SHARE
from .process import RESIZE_MODES, ProcessOptions
from .sources import SOURCES, SourceOptions

SOURCE_FORMATS = sorted(SOURCES)


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
    demo.add_argument("--scene-share", type=float, default=DEMO_SCENE_SHARE,
                      help="fraction of training images that are scenes of 2–3 objects with relation captions "
                           "(%(default)s)")
    demo.add_argument("--compositional-size", type=int, default=DEMO_COMPOSITIONAL_SIZE,
                      help="items per category of a compositional set written under OUT/compositional (0: none; "
                           "%(default)s)")
    comp = sub.add_parser("compositional", help="a compositional test set of shapes scenes: SugarCrepe's layout "
                                                "(one JSON per category + images) and Winoground's 2 × 2 groups")
    comp.add_argument("--out", required=True)
    comp.add_argument("--size", type=int, default=1000, help="items per category (even)")
    comp.add_argument("--seed", type=int, default=0)
    shards = sub.add_parser("shards", help="image–caption pairs (table, folder, saved HF dataset, COCO/Karpathy "
                                          "annotations, webdataset shards) → clean shards; resumable")
    shards.add_argument("--input", required=True,
                        help="a .csv/.tsv/.jsonl/.parquet table, an image folder, a save_to_disk folder, a COCO or "
                             "Karpathy .json, or webdataset shards (a folder, a .tar, a {000..009}.tar pattern)")
    shards.add_argument("--out", required=True, help="the shard folder; run the same command again to resume")
    shards.add_argument("--format", default="auto", choices=["auto", *SOURCE_FORMATS])
    shards.add_argument("--image-col", default="image", help="table / dataset column of image paths or bytes")
    shards.add_argument("--caption-col", default="caption",
                        help="caption column(s), comma-separated: several give several captions per image "
                             "(also the caption fields of .json sidecars and webdataset .json)")
    shards.add_argument("--id-col", default=None, help="table / dataset column of ids (default: the row number)")
    shards.add_argument("--image-root", default=None, help="COCO / Karpathy: the folder that holds the images")
    shards.add_argument("--split", default="train",
                        help="Karpathy split(s), comma-separated (train = train + restval); HF DatasetDict split")
    shards.add_argument("--size", type=int, default=256)
    shards.add_argument("--resize", default="shorter", choices=RESIZE_MODES,
                        help="shorter: shorter side at most --size (aspect kept); center_crop: --size × --size; "
                             "longer: longer side at most --size; none: pixels kept")
    shards.add_argument("--quality", type=int, default=90, help="JPEG quality")
    shards.add_argument("--min-size", type=int, default=0, help="skip images whose shorter side is smaller")
    shards.add_argument("--max-aspect", type=float, default=0.0, help="skip images with longer/shorter above this")
    shards.add_argument("--min-caption-words", type=int, default=1)
    shards.add_argument("--max-caption-words", type=int, default=0, help="0: no limit")
    shards.add_argument("--no-dedup", action="store_true", help="keep images whose bytes equal an earlier one's")
    shards.add_argument("--max-image-pixels", type=int, default=Limits.max_image_pixels,
                        help="skip images whose header declares more pixels (too_large), before decoding")
    shards.add_argument("--max-caption-bytes", type=int, default=Limits.max_caption_bytes,
                        help="skip samples whose captions are longer in UTF-8 (caption_too_large)")
    shards.add_argument("--shard-size", type=int, default=1000)
    shards.add_argument("--workers", type=int, default=2, help="processes decoding and encoding images")
    check = sub.add_parser("check", help="read every shard of DIR: counts against the manifest, every image "
                                         "decoded, every caption present; exit status 1 on problems")
    check.add_argument("dir")
    check.add_argument("--workers", type=int, default=2)
    check.add_argument("--json", default=None, help="also write the full report as JSON here")
    for name, help in (("image-pixels", "images whose header declares more pixels: too_large"),
                       ("caption-bytes", "a key.txt longer than this: caption_too_large"),
                       ("file-bytes", "a file in a shard larger than this: file_too_large"),
                       ("pax-bytes", "a pax header larger than this: the shard is corrupt")):
        field = f"max_{name.replace('-', '_')}"
        check.add_argument(f"--max-{name}", type=int, default=getattr(Limits, field), help=f"{help} (%(default)s)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import build_demo
        m = build_demo(args.out, seed=args.seed, train_size=args.train_size,
                       retrieval_size=args.retrieval_size, zeroshot_size=args.zeroshot_size,
                       workers=args.workers, scene_share=args.scene_share,
                       compositional_size=args.compositional_size)
        print(f"demo data in {args.out}: {m['train']['samples']} training pairs, "
              f"{m['retrieval']['images']} retrieval images, {m['zeroshot']['images']} zero-shot images")
    elif args.command == "compositional":
        from .compositional import write_compositional
        m = write_compositional(args.out, seed=args.seed, size=args.size)
        print(f"compositional set in {args.out}: {args.size} items in each of {len(m['categories'])} categories, "
              f"{m['images']} images, {m['winoground']} Winoground groups")
    elif args.command == "check":
        import json
        import sys

        from .check import check_dir, format_report
        limits = Limits(args.max_image_pixels, args.max_caption_bytes, args.max_file_bytes, args.max_pax_bytes)
        report = check_dir(args.dir, workers=args.workers, limits=limits)
        print(format_report(report))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=2)
        if not report["ok"]:
            sys.exit(1)
    else:
        from .shards import build_shards
        sources = SourceOptions(image_col=args.image_col, caption_cols=args.caption_col.split(","),
                                id_col=args.id_col, image_root=args.image_root, split=args.split)
        m = build_shards(args.input, args.out, format=args.format, shard_size=args.shard_size, workers=args.workers,
                         source_options=sources,
                         options=ProcessOptions(size=args.size, resize=args.resize, quality=args.quality,
                                                min_size=args.min_size, max_aspect=args.max_aspect,
                                                min_caption_words=args.min_caption_words,
                                                max_caption_words=args.max_caption_words, dedup=not args.no_dedup,
                                                max_pixels=args.max_image_pixels,
                                                max_caption_bytes=args.max_caption_bytes))
        skipped = ", ".join(f"{k} {v}" for k, v in m["skipped"].items()) or "nothing"
        shards = f"{len(m['shards'])} shard{'s' * (len(m['shards']) != 1)}"
        print(f"{m['total']} samples in {shards} in {args.out} (skipped: {skipped}); see {args.out}/report.md")


if __name__ == "__main__":
    run_main(main)
