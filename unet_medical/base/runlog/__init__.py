"""A small structured logger in the spirit of NVIDIA's DLLogger (same line format and backends).

Use a Logger object directly, or the module-level functions that delegate to one global Logger:

    from unet_medical.base import runlog
    runlog.init([runlog.StdOutBackend(), runlog.JSONStreamBackend("out/log.json")], rank=0)
    runlog.log(step="PARAMETER", data={"batch_size": 8})
    runlog.log(step=(0, 10), data={"loss": 0.31})
    runlog.flush()

Before ``init`` the global Logger has no backends, so library code may call ``runlog.log``
unconditionally (nothing is written). Importing this package never imports TensorFlow.
"""
from typing import Any, Mapping, Sequence

from unet_medical.base.runlog.backends import (JSON_PREFIX, JSONStreamBackend, StdOutBackend, TensorBoardBackend,
                                               parse_log_lines, read_log)
from unet_medical.base.runlog.logger import Backend, Logger, Record, Step, Verbosity, to_builtin

__all__ = ["Backend", "JSONStreamBackend", "JSON_PREFIX", "Logger", "Record", "StdOutBackend", "parse_log_lines", "read_log",
           "Step", "TensorBoardBackend", "Verbosity", "close", "flush", "get_logger", "init", "log",
           "metadata", "to_builtin"]

_global_logger = Logger([])


def init(backends: Sequence[Backend], rank: int = 0) -> Logger:
    """Replace the global Logger (closing the previous one) and return the new one."""
    global _global_logger
    _global_logger.close()
    _global_logger = Logger(backends, rank=rank)
    return _global_logger


def get_logger() -> Logger:
    """The global Logger the module-level functions use."""
    return _global_logger


def log(step: Step, data: Mapping[str, Any], verbosity: int = Verbosity.DEFAULT) -> None:
    """Log metric values at one step through the global Logger."""
    _global_logger.log(step, data, verbosity)


def metadata(name: str, meta: Mapping[str, Any]) -> None:
    """Describe a metric (unit, format) through the global Logger."""
    _global_logger.metadata(name, meta)


def flush() -> None:
    _global_logger.flush()


def close() -> None:
    _global_logger.close()
