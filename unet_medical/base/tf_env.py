"""TensorFlow's start-up noise, hidden from the command line unless --verbose.

On a CPU machine the CUDA wheel of TensorFlow prints "Could not find cuda drivers", "failed call to
cuInit" and oneDNN notices from C++ (absl) before any Python logging is set up, twice per import.
TF_CPP_MIN_LOG_LEVEL=3 silences the lines logged after absl is initialised; the lines written while
`import tensorflow` runs go straight to file descriptor 2, so they are caught there and shown only if
the import fails.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Iterator


@contextlib.contextmanager
def stderr_captured() -> Iterator[None]:
    """Send file descriptor 2 to a temporary file for the block; replay it if the block raises."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def import_tensorflow(verbose: bool = False) -> None:
    """Import TensorFlow (and tf_keras) once, quietly unless `verbose`."""
    if "tensorflow" in sys.modules:
        return
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        import tensorflow  # noqa: F401
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    with stderr_captured():
        import tensorflow  # noqa: F401
        import tf_keras  # noqa: F401
