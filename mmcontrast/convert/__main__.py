"""``python -m mmcontrast.convert SRC DST`` — see ``mmcontrast.convert``."""

import sys

from ..errors import UserError, run_main
from . import convert

USAGE = """usage: python -m mmcontrast.convert SRC DST

Convert a transformers CLIP directory (config.json) into an mmcontrast/open_clip model directory
(open_clip_config.json + open_clip_model.safetensors), or the reverse; the direction follows SRC."""


def main(argv: list[str]) -> None:
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return
    if len(argv) != 2:
        raise UserError(f"expected SRC and DST, got {len(argv)} argument(s)\n{USAGE}")
    out = convert(*argv)
    print(f"wrote {out}")


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
