"""Errors a user can cause. Programs print their message as one line, never a stack trace."""

import sys
from typing import Callable, NoReturn


class UserError(Exception):
    """Bad input from the user: a path, a config key, a value. The message says what to do."""


def run_main(main: Callable[[], object]) -> NoReturn:
    """A program's entry point: a ``UserError`` becomes one line on stderr and exit status 2."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(0)
