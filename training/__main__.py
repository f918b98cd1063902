"""``[accelerate launch] python -m training --config CONFIG --output RUN [key.sub=value ...]``."""

from __future__ import annotations

import argparse

from mmcontrast.errors import run_main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument("--config", default=None, help="YAML file (training/configs/*.yaml)")
    parser.add_argument("--output", required=True, help="run directory")
    parser.add_argument("--resume", default=None,
                        help="'auto' continues the latest complete checkpoint in the run directory, "
                             "or a checkpoint path")
    parser.add_argument("overrides", nargs="*", help="key.sub=value, e.g. optim.lr=5e-4 data.batch_size=64")
    args = parser.parse_args(argv)
    from .config import load_config
    from .train import train

    cfg = load_config(args.config, args.overrides)
    train(cfg, args.output, resume=args.resume)


if __name__ == "__main__":
    run_main(main)
