"""The one exception type for mistakes a user can make (bad files, bad flags, bad data)."""
from __future__ import annotations

import sys
from typing import Callable


class UNetError(Exception):
    """A problem with the user's input: the message names the input and what was expected.

    main.py prints the message and exits with status 2 instead of a traceback.
    """


def os_error_line(exc: OSError) -> str:
    """One line for a failed file operation: the path(s) and the OS reason ("No space left on device")."""
    paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
    reason = exc.strerror or str(exc)
    return f"{paths}: {reason}" if paths else f"file operation failed: {reason}"


def run_cli(main: Callable[[], int | None]) -> int:
    """Run a command-line entry point: a UNetError, or an OSError (full disk, permission denied, a path
    through a regular file), becomes one line on stderr and exit status 2."""
    try:
        return main() or 0
    except UNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        return 2
