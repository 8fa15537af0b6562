"""The one exception type for mistakes a user can make (bad files, bad flags, bad data)."""
from __future__ import annotations

import sys
from typing import Callable


class UNetError(Exception):
    """A problem with the user's input: the message names the input and what was expected.

    main.py prints the message and exits with status 2 instead of a traceback.
    """


def run_cli(main: Callable[[], int | None]) -> int:
    """Run a command-line entry point: a UNetError becomes one line on stderr and exit status 2."""
    try:
        return main() or 0
    except UNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
