"""``[accelerate launch] python -m training --config CONFIG --output RUN [key.sub=value ...]``.

Arguments and the config are checked, and the run directory refused if it must be, before torch is
imported: a typo or a busy ``--output`` answers in a fraction of a second.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from mmcontrast.errors import run_main

DESCRIPTION = """\
Train a two-tower image-text model, or continue a run. The run directory RUN receives config.yaml,
metrics.jsonl, checkpoints/, final/ (the model), report.md and curves.png."""

EPILOG = """\
examples:
  python -m training --config training/configs/tiny.yaml --output runs/mine schedule.steps=30
  python -m training --config training/configs/tiny.yaml --output runs/mine --resume auto
  accelerate launch --multi_gpu --num_processes 2 -m training --config tiny --output runs/two

Every setting is a key.sub=value override; --help-config lists them all with their types, defaults
and meaning. SIGTERM or Ctrl-C saves a checkpoint, then the program exits with status 1; --resume auto
continues from it. A user error is one line and exit status 2."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None,
                        help="YAML file, or the name of a shipped config (e.g. tiny); default: the built-in defaults")
    parser.add_argument("--output", metavar="RUN", help="run directory (required)")
    parser.add_argument("--resume", default=None, metavar="auto|CHECKPOINT",
                        help="'auto' continues the latest complete checkpoint in RUN, or give a checkpoint path")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in a RUN that holds an earlier run: removes only what a run writes")
    parser.add_argument("--help-config", action="store_true",
                        help="list every config key with its type, default and meaning, and exit")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="config overrides, e.g. optim.lr=5e-4 data.batch_size=64")
    args = parser.parse_args(argv)
    if not args.help_config and args.output is None:
        parser.error("the following arguments are required: --output")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from .config import help_config, load_config
    if args.help_config:
        print(help_config())
        return
    cfg = load_config(args.config, args.overrides)
    if os.environ.get("RANK", "0") == "0":  # the others learn the outcome from it in train (claim_run_dir)
        from .run_dir import check_run_dir
        check_run_dir(Path(args.output), args.resume, args.overwrite)  # an early look; train takes the lock
    from .train import train
    train(cfg, args.output, resume=args.resume, overwrite=args.overwrite)


if __name__ == "__main__":
    run_main(main)
