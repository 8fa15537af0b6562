"""The Logger: turns one log call into a Record and hands it to every backend that wants it.

Only rank 0 writes: on any other rank the Logger drops its backends at construction, so its calls
are no-ops and no file is ever opened (a shared file system stays clean in multi-worker runs).
"""
from __future__ import annotations

import abc
import dataclasses
import datetime
import enum
import pathlib
import time
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

# An int (global step), a tuple such as (epoch, iteration), or a tag such as "PARAMETER"/"FINAL".
Step = Union[int, Tuple[Any, ...], str]


class Verbosity(enum.IntEnum):
    """A record reaches a backend when record verbosity <= backend verbosity."""

    DEFAULT = 0
    VERBOSE = 1


def to_builtin(value: Any) -> Any:
    """Convert a value to plain JSON-serializable Python (NumPy and TF scalars included).

    NumPy scalars and 0-d arrays become int/float/bool, larger arrays nested lists, TF tensors and
    variables go through their ``.numpy()``, mappings and sequences are converted recursively,
    anything else unknown becomes its ``str``. Checked by duck typing so NumPy and TensorFlow are
    never imported here.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): to_builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_builtin(v) for v in value]
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if callable(getattr(value, "numpy", None)):  # tf.Tensor, tf.Variable
        return to_builtin(value.numpy())
    if callable(getattr(value, "tolist", None)):  # np.generic -> scalar, np.ndarray -> list
        return to_builtin(value.tolist())
    return str(value)


def normalize_step(step: Step) -> Union[int, Tuple[Any, ...], str]:
    """Check a step and convert NumPy/TF integers inside it to int."""
    step = to_builtin(step)
    if isinstance(step, list):
        return tuple(step)
    if isinstance(step, (int, str)) and not isinstance(step, bool):
        return step
    raise TypeError(f"a log step must be an int, a tuple or a string, got {step!r}")


@dataclasses.dataclass(frozen=True)
class Record:
    """One log or metadata event, as every backend receives it.

    Attributes:
        kind: "LOG" or "METADATA".
        step: the step (None for metadata).
        data: metric name -> plain value; for metadata, metric name -> its metadata dict.
        timestamp: seconds since the Unix epoch.
        elapsed: seconds since the Logger was created.
    """

    kind: str
    step: Optional[Union[int, Tuple[Any, ...], str]]
    data: Dict[str, Any]
    timestamp: float
    elapsed: float

    @property
    def datetime(self) -> str:
        """Local time with UTC offset, ISO 8601, millisecond resolution."""
        moment = datetime.datetime.fromtimestamp(self.timestamp).astimezone()
        return moment.isoformat(timespec="milliseconds")


class Backend(abc.ABC):
    """Where records go. Subclasses implement ``write``; ``open``/``flush``/``close`` are optional.

    Args:
        verbosity: the highest record verbosity this backend writes.
    """

    def __init__(self, verbosity: int = Verbosity.DEFAULT):
        self.verbosity = int(verbosity)

    def open(self) -> None:
        """Acquire resources; called by a rank-0 Logger at construction so bad paths fail early."""

    @abc.abstractmethod
    def write(self, record: Record) -> None:
        """Emit one record."""

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        """Emit named image batches (N, H, W, 3) uint8 at an integer step; most backends ignore them."""

    def write_hparams(self, params: Mapping[str, Any]) -> None:
        """Record a run's hyper-parameters (flat name -> bool/int/float/str); most backends ignore them."""

    def flush(self) -> None:
        """Push buffered output to its destination."""

    def close(self) -> None:
        """Flush and release resources."""
        self.flush()


class Logger:
    """Structured logger in the spirit of NVIDIA's DLLogger.

    Args:
        backends: where records go (StdOutBackend, JSONStreamBackend, TensorBoardBackend, ...).
        rank: this process's rank; every rank other than 0 logs nothing.

    Example:
        logger = Logger([StdOutBackend(), JSONStreamBackend("run/log.json")])
        logger.log(step=(0, 10), data={"loss": 0.31, "throughput_img_s": 4.2})
    """

    def __init__(self, backends: Sequence[Backend], rank: int = 0):
        self.rank = int(rank)
        self._backends = list(backends) if self.rank == 0 else []
        self._start = time.time()
        for backend in self._backends:
            backend.open()

    @property
    def enabled(self) -> bool:
        """True when calls reach at least one backend (rank 0, not closed)."""
        return bool(self._backends)

    def _record(self, kind: str, step: Optional[Step], data: Mapping[str, Any]) -> Record:
        now = time.time()
        return Record(kind=kind, step=step, data=to_builtin(dict(data)), timestamp=now,
                      elapsed=now - self._start)

    def log(self, step: Step, data: Mapping[str, Any], verbosity: int = Verbosity.DEFAULT) -> None:
        """Log metric values (name -> number/string/array) at one step."""
        if not self._backends:
            return
        record = self._record("LOG", normalize_step(step), data)
        for backend in self._backends:
            if verbosity <= backend.verbosity:
                backend.write(record)

    def metadata(self, name: str, meta: Mapping[str, Any]) -> None:
        """Describe a metric, e.g. metadata("loss", {"unit": None, "format": ":.4f"})."""
        if not self._backends:
            return
        record = self._record("METADATA", None, {name: dict(meta)})
        for backend in self._backends:
            backend.write(record)

    def images(self, step: int, images: Mapping[str, Any]) -> None:
        """Log named image batches (N, H, W, 3) uint8 at an integer step (TensorBoard shows them; the
        text backends do not: pixels do not belong in a log line)."""
        for backend in self._backends:
            backend.write_images(int(step), images)

    def hparams(self, params: Mapping[str, Any]) -> None:
        """Log the run's hyper-parameters (name -> value; values that are not bool/int/float/str are
        written as their str)."""
        params = {str(k): v if isinstance(v, (bool, int, float, str)) else str(v)
                  for k, v in to_builtin(dict(params)).items() if v is not None}
        for backend in self._backends:
            backend.write_hparams(params)

    def flush(self) -> None:
        for backend in self._backends:
            backend.flush()

    def close(self) -> None:
        """Close every backend; later calls are no-ops."""
        backends, self._backends = self._backends, []
        for backend in backends:
            backend.close()

    def __enter__(self) -> "Logger":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

