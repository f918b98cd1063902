"""Errors a user can cause. Programs print their message as one line, never a stack trace."""

import sys
from typing import Callable, NoReturn


class UserError(Exception):
    """Bad input from the user: a path, a config key, a value. The message says what to do."""


def run_main(main: Callable[[], object]) -> NoReturn:
    """A program's entry point: a ``UserError`` becomes one line on stderr and exit status 2. A process group
    the program joined (``accelerate launch``) is destroyed on the way out, whatever the outcome."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        if "torch.distributed" in sys.modules:  # else there is no group, and importing torch costs seconds
            from .distributed import shutdown
            shutdown()
    sys.exit(0)
