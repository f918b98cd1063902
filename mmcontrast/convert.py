"""``python -m mmcontrast.convert SRC DST [--overwrite]`` — the command line of ``mmcontrast.conversion``.

Run, not imported: the package's ``mc.convert`` is the function ``mmcontrast.conversion.convert``, and
importing this module would bind the name ``mmcontrast.convert`` to the module instead.
"""

import sys

from .conversion import convert
from .errors import UserError, run_main

USAGE = """usage: python -m mmcontrast.convert SRC DST [--overwrite]

Convert a transformers CLIP directory (config.json) into an mmcontrast/open_clip model directory
(open_clip_config.json + open_clip_model.safetensors), or the reverse; the direction follows SRC.
DST must not exist, be empty, or (with --overwrite) hold only a model or transformers directory's
files, which are replaced; anything else in it stops the conversion before a file is touched.
DST may not be SRC, nor inside it, nor hold it."""


def main(argv: list[str]) -> None:
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return
    overwrite = "--overwrite" in argv
    paths = [a for a in argv if a != "--overwrite"]
    unknown = [a for a in paths if a.startswith("--")]
    if unknown:
        raise UserError(f"unknown option {unknown[0][:80]!r}; the only option is --overwrite\n{USAGE}")
    if len(paths) != 2:
        raise UserError(f"expected SRC and DST, got {len(paths)} path(s)\n{USAGE}")
    out = convert(*paths, overwrite=overwrite)
    print(f"wrote {out}")


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
