"""The default export: the deploy file that is fastest on this machine at equal quality.

`--exec_mode export` without `--export_format` exports every candidate of `candidates()` through
`unet_medical.export.formats.export_model` (each checked against the Keras model on the held-out slices:
label agreement >= 99.5 %, >= 99 % for int8), times the ones that passed on one tile at batch 1
through `unet_medical.base.timing.time_alternating` (A B C A B C ..., so load from other processes hits all alike),
keeps the fastest by median latency and deletes the others. export.json records every candidate
(parity, timing or the error that excluded it) under "selection", with the chosen file under
"chosen"; `--model_path MODEL_DIR/export` then runs the chosen file. `select_fastest` is the selection
itself: a --dims 3 run's candidates (cli.volume_export) go through it too, timed on one patch.
"""
from __future__ import annotations

import importlib.util
import pathlib
import time
from typing import Any, Callable, Sequence

import numpy as np

from unet_medical.model.unet import UNetSpec, margin as model_margin
from unet_medical.base.cpu import CpuInfo, choose_precision, describe
from unet_medical.base.errors import UNetError
from unet_medical.export.formats import (ExportInputs, artifact_name, calibration_tiles, export_model, forget_artifact,
                                  record_artifact, record_selection)
from unet_medical.inference.artifact_formats import format_of
from unet_medical.inference.runtimes import load_exported
from unet_medical.base.timing import latency_summary_ms, time_alternating

SELECTION_WARMUP = 1
SELECTION_ROUNDS = 7


def candidates(cpu: CpuInfo, gpus: list[dict] | int, precision: str | None = None) -> list[tuple[str, str]]:
    """(format, precision) pairs competing for the deploy file on this machine, in export order.

    SavedModel fp32 (TensorFlow), TFLite int8 (XNNPACK), ONNX Runtime int8, OpenVINO int8 (NNCF) and
    OpenVINO float: bf16 where utils.cpu.choose_precision picks bfloat16 for this CPU (AVX512_BF16 or
    AMX), fp32 elsewhere. Formats whose packages are missing are left out; `precision` keeps only
    candidates of that precision.
    """
    float_ov = "bf16" if choose_precision("auto", cpu, gpus)[0] == "mixed_bfloat16" else "fp32"
    pairs = [("savedmodel", "fp32"), ("tflite", "int8"), ("onnx", "int8"), ("openvino", "int8"),
             ("openvino", float_ov)]
    available = [(f, p) for f, p in pairs
                 if all(importlib.util.find_spec(m) is not None for m in format_of(f).needs(p))]
    if precision is not None:
        available = [(f, p) for f, p in available if p == precision]
    if not available:
        raise UNetError(f"--export_precision={precision}: no default-export candidate has this precision "
                        f"(candidates: {', '.join(f'{f} {p}' for f, p in pairs)}); give --export_format too")
    return available


def timing_tile(inputs: ExportInputs, spec: UNetSpec) -> np.ndarray:
    """One real (1, T, T, C) float32 tile cut from the training slices as inference pads them."""
    return calibration_tiles(inputs.calibration_images, inputs.tile_size, model_margin(spec) + inputs.context, 1)


def export_fastest(model: Any, spec: UNetSpec, class_names: Sequence[str], export_dir: str | pathlib.Path,
                   inputs: ExportInputs, pairs: Sequence[tuple[str, str]], *, extra: dict[str, Any] | None = None,
                   warmup: int = SELECTION_WARMUP, rounds: int = SELECTION_ROUNDS,
                   cpu: CpuInfo | None = None, check_parity: bool = True, logger: Any = None) -> dict[str, Any]:
    """Export every (format, precision) of `pairs`, keep the fastest that passed parity; return its entry.

    The entry carries "latency" (median/p90/max ms of the alternating runs); export.json gets the
    "selection" record described in the module docstring. UNetError if no candidate passed.
    """
    def export_one(fmt: str, precision: str) -> dict[str, Any]:
        return export_model(model, spec, class_names, export_dir, fmt, precision, inputs, extra=extra,
                            check_parity=check_parity)

    return select_fastest(export_dir, pairs, export_one, timing_tile(inputs, spec), {"tile_size": inputs.tile_size},
                          warmup=warmup, rounds=rounds, cpu=cpu, logger=logger)


def select_fastest(export_dir: str | pathlib.Path, pairs: Sequence[tuple[str, str]],
                   export_one: Callable[[str, str], dict[str, Any]], sample: np.ndarray, described: dict[str, Any],
                   *, warmup: int = SELECTION_WARMUP, rounds: int = SELECTION_ROUNDS, cpu: CpuInfo | None = None,
                   logger: Any = None) -> dict[str, Any]:
    """The selection itself, for 2-D tiles and 3-D patches alike.

    Args:
        pairs: the (format, precision) candidates, exported in this order.
        export_one: (format, precision) -> the artefact's export.json entry (recorded there), raising
            UNetError when it cannot be written or fails parity (the candidate is then left out).
        sample: the batch-1 input every passing candidate is timed on ((1, T, T, C) tile, (1, D, H, W, C) patch).
        described: what `sample` is, for export.json's "selection" ({"tile_size": T} or {"patch_shape": [...]}).
        logger: a runlog.Logger for one EXPORT progress line per candidate (None: silent).
    """
    from unet_medical.base.cpu import read_cpu_info

    export_dir = pathlib.Path(export_dir)
    if (export_dir / "export.json").is_file():  # a failed selection must not leave an older choice standing
        record_selection(export_dir, None)
    records: list[dict[str, Any]] = []
    entries: dict[str, dict[str, Any]] = {}
    for number, (fmt, precision) in enumerate(pairs, 1):
        record = {"format": fmt, "precision": precision, "file": artifact_name(fmt, precision)}
        start = time.perf_counter()
        try:
            entry = export_one(fmt, precision)
        except UNetError as exc:  # failed parity or conversion: excluded, the others still compete
            records.append({**record, "status": "failed", "error": str(exc)})
        else:
            parity = entry.get("parity") or {}
            record["label_agreement"] = min((r["label_agreement"] for r in parity.values()), default=None)
            records.append({**record, "status": "exported"})
            entries[record["file"]] = entry
        if logger is not None:
            logger.log("EXPORT", {"candidate": f"{number}/{len(pairs)}", "format": fmt, "precision": precision,
                                  "status": records[-1]["status"], "label_agreement": record.get("label_agreement"),
                                  "seconds": round(time.perf_counter() - start, 1)})
    if not entries:
        details = "; ".join(f"{r['format']} {r['precision']}: {r['error']}" for r in records)
        raise UNetError(f"default export: no candidate passed ({details})")

    runners = {name: load_exported(export_dir / name) for name in entries}
    times = time_alternating({name: (lambda r=runner: r(sample)) for name, runner in runners.items()}, warmup, rounds)
    latency = {name: latency_summary_ms(seconds) for name, seconds in times.items()}
    chosen = min(latency, key=lambda name: latency[name]["median_ms"])
    del runners  # release the runtimes before deleting their files
    for record in records:
        if record["file"] in latency:
            record.update(status="timed", latency=latency[record["file"]])
    for name in entries:
        if name != chosen:
            forget_artifact(export_dir, name)
    entry = {**entries[chosen], "latency": latency[chosen], "deploy": True}
    record_artifact(export_dir, entry)
    record_selection(export_dir, {
        "chosen": chosen, "rule": "fastest median latency among the candidates that passed parity",
        **described, "batch": 1, "warmup": warmup, "rounds": rounds, "timing": "alternating",
        "cpu": describe(cpu or read_cpu_info()), "candidates": records})
    return entry
