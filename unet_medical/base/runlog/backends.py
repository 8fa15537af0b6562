"""Backends: a human-readable stdout line, a JSON-lines file for scripts, TensorBoard scalars."""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Dict, Mapping, Optional, TextIO, Union

from unet_medical.base.runlog.logger import Backend, Record, Verbosity
from unet_medical.base.errors import UNetError
from unet_medical.base.progress import write_line

JSON_PREFIX = "DLLL "


def _is_number(value: Any) -> bool:
    """A real number worth plotting (bools are flags, not scalars)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class StdOutBackend(Backend):
    """One line per log call on stdout, e.g.

        DLL 2026-11-22T23:10:00.123+00:00 - step (0, 20) | loss: 0.43212 | dice: 0.91

    Floats use 5 significant digits unless metadata gives the metric a format (":.4f") and a
    unit ("img/s"), as NVIDIA's DLLogger does. Metadata records themselves are not printed.

    Args:
        verbosity: the highest record verbosity printed.
        prefix: first word of every line, so the lines are easy to grep out of mixed output.
    """

    def __init__(self, verbosity: int = Verbosity.DEFAULT, prefix: str = "DLL"):
        super().__init__(verbosity)
        self.prefix = prefix
        self._meta: Dict[str, Dict[str, Any]] = {}

    def _format_value(self, name: str, value: Any) -> str:
        meta = self._meta.get(name, {})
        if _is_number(value) and meta.get("format"):
            text = ("{" + meta["format"] + "}").format(value)
        elif isinstance(value, float):
            text = format(value, ".5g")
        else:
            text = str(value)
        return f"{text} {meta['unit']}" if meta.get("unit") else text

    @staticmethod
    def _format_step(step: Union[int, tuple, str]) -> str:
        if isinstance(step, str):
            return step
        if isinstance(step, tuple):
            return f"step ({', '.join(str(s) for s in step)})"
        return f"step {step}"

    def write(self, record: Record) -> None:
        if record.kind == "METADATA":
            self._meta.update(record.data)
            return
        fields = [f"{name}: {self._format_value(name, value)}"
                  for name, value in record.data.items()]
        line = " | ".join([f"{self.prefix} {record.datetime} - {self._format_step(record.step)}"]
                          + fields)
        # sys.stdout is looked up at call time so redirection (and pytest's capture) is honoured;
        # while a progress bar is drawn, the line goes above it.
        write_line(line)


class JSONStreamBackend(Backend):
    """One JSON record per line, each prefixed with "DLLL ":

        DLLL {"timestamp": 1795..., "elapsedtime": 12.5, "datetime": "...", "type": "LOG",
              "step": [0, 20], "data": {"loss": 0.43}}

    A METADATA record has "step": null and "data": {metric: {"unit": ..., "format": ...}}.
    Tuple steps become JSON lists. Non-finite floats are written as NaN/Infinity, which Python's
    json module reads back. Every line is flushed, so a killed run keeps its log.
    Parse with: ``json.loads(line[len("DLLL "):])`` for lines starting with "DLLL ".

    Args:
        path: the log file; parent directories are created.
        append: append to an existing file (True) or start it afresh (False).
        verbosity: the highest record verbosity written.
    """

    def __init__(self, path: Union[str, os.PathLike], append: bool = True,
                 verbosity: int = Verbosity.DEFAULT):
        super().__init__(verbosity)
        self.path = pathlib.Path(path)
        self.append = append
        self._file: Optional[TextIO] = None

    def open(self) -> None:
        if self._file is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a" if self.append else "w", encoding="utf-8")
        except OSError as err:
            raise UNetError(f"cannot open the JSON log file {self.path}: {err.strerror}") from err

    def write(self, record: Record) -> None:
        self.open()
        payload = {"timestamp": record.timestamp, "elapsedtime": record.elapsed,
                   "datetime": record.datetime, "type": record.kind, "step": record.step,
                   "data": record.data}
        self._file.write(JSON_PREFIX + json.dumps(payload) + "\n")
        self._file.flush()

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def parse_log_lines(text: str) -> list[dict[str, Any]]:
    """The LOG records of JSONStreamBackend text, in order (dicts with "type", "step", "data", "timestamp").
    Lines that are not records, and the incomplete last line of a killed run, are skipped."""
    records = []
    for line in text.splitlines():
        if not line.startswith(JSON_PREFIX):
            continue
        try:
            record = json.loads(line[len(JSON_PREFIX):])
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("type") == "LOG" and isinstance(record.get("data"), dict):
            records.append(record)
    return records


def read_log(path: Union[str, os.PathLike]) -> list[dict[str, Any]]:
    """parse_log_lines of a log.json file; [] when there is none yet."""
    path = pathlib.Path(path)
    return parse_log_lines(path.read_text(encoding="utf-8")) if path.is_file() else []


def _tensorboard_step(step: Any) -> tuple[str, int] | None:
    """(tag prefix, integer step) of a record TensorBoard can plot, None for the others.

    An int step is a training step (no prefix); a ("name", int) step such as ("eval", 200) is a
    named series at that step ("eval/..." tags), so validation scores share the training step axis
    while the JSON log keeps them apart from training records.
    """
    if isinstance(step, int) and not isinstance(step, bool):
        return "", step
    if (isinstance(step, tuple) and len(step) == 2 and isinstance(step[0], str)
            and isinstance(step[1], int) and not isinstance(step[1], bool)):
        return f"{step[0]}/", step[1]
    return None


class TensorBoardBackend(Backend):
    """Numeric values logged at integer steps become TensorBoard scalars (tf.summary); so do those
    at ("name", int) steps, as "name/metric" at that step. Also images (`Logger.images`) and the
    hyper-parameters (`Logger.hparams`: the HParams dashboard and a text table).

    Other steps (strings, (epoch, iteration) tuples) and non-numeric values are skipped. TensorFlow
    is imported and the writer created on first use, so importing dllogger never imports TensorFlow.

    Args:
        log_dir: directory for the event files.
        verbosity: the highest record verbosity written.
    """

    def __init__(self, log_dir: Union[str, os.PathLike], verbosity: int = Verbosity.DEFAULT):
        super().__init__(verbosity)
        self.log_dir = pathlib.Path(log_dir)
        self._writer = None

    def open(self) -> None:
        # Creating the directory needs no TensorFlow and makes a bad path fail at start-up.
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UNetError(f"cannot create the TensorBoard log directory {self.log_dir}: "
                            f"{err.strerror}") from err

    def _get_writer(self):
        if self._writer is None:
            import unet_medical  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
            import tensorflow as tf

            self._writer = tf.summary.create_file_writer(str(self.log_dir))
        return self._writer

    def write(self, record: Record) -> None:
        at = _tensorboard_step(record.step) if record.kind == "LOG" else None
        if at is None:
            return
        prefix, step = at
        scalars = {name: value for name, value in record.data.items() if _is_number(value)}
        if not scalars:
            return
        writer = self._get_writer()
        import tensorflow as tf  # loaded by _get_writer, after utils

        with writer.as_default(step=step):
            for name, value in scalars.items():
                tf.summary.scalar(prefix + name, value)

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        writer = self._get_writer()
        import tensorflow as tf

        with writer.as_default(step=step):
            for name, batch in images.items():
                tf.summary.image(name, batch, max_outputs=len(batch))

    def write_hparams(self, params: Mapping[str, Any]) -> None:
        writer = self._get_writer()
        import tensorflow as tf
        from tensorboard.plugins.hparams import api as hp

        table = "\n".join(["| flag | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in params.items()])
        with writer.as_default(step=0):
            hp.hparams(dict(params))
            tf.summary.text("config", table)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
