"""The default export: the deploy file that is fastest on this machine at equal quality.

`--exec_mode export` without `--export_format` takes the candidates of `candidates()`, among them the
SavedModel of the Keras model at the run's precision (bf16 where predict runs bfloat16), so the choice is
never slower than not exporting. Those that measurements say cannot win on this CPU (`SKIP_RULES`, one
table with the reasons) are recorded as skipped; the others are exported through
`unet_medical.export.formats.export_model` (each checked against the float32 Keras model on
PARITY_IMAGES held-out slices: label agreement >= 99.5 %, >= 99 % for int8; the Keras predictions are
made once for all) and those that passed are timed on one tile at batch 1, alternating
(A B C A B C ..., so load from other processes hits all alike; a candidate over 1.5x the best after two
rounds stops). The fastest by median latency is kept, the others deleted. export.json records every
candidate (skip reason, parity, timing or the error that excluded it) under "selection", with the chosen
file under "chosen"; `--model_path MODEL_DIR/export` then runs the chosen file. `select_fastest` is the
selection itself: a --dims 3 run's candidates (cli.volume_export) go through it too, timed on one patch.
Every step logs an EXPORT line when it starts; calibration and parity predictions show their progress.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import time
from typing import Any, Callable, Sequence

import numpy as np

from unet_medical.model.unet import UNetSpec, margin as model_margin
from unet_medical.base.cpu import BF16_FLAGS, CpuInfo, choose_precision, describe, has_int8_dot_product
from unet_medical.base.errors import UNetError
from unet_medical.export.formats import (ExportInputs, artifact_name, calibration_tiles, export_model, forget_artifact,
                                         record_artifact, record_selection)
from unet_medical.export.parity import SharedExportWork
from unet_medical.inference.artifact_formats import format_of
from unet_medical.inference.runtimes import load_exported
from unet_medical.base.timing import latency_summary_ms, time_alternating

SELECTION_WARMUP = 1
SELECTION_ROUNDS = 5
# After this many timed rounds, a candidate whose median latency is over ELIMINATION_RATIO times the best
# one's stops being timed: at 1.5x, round-to-round noise (alternated, so load hits all alike) cannot close
# the gap, and every round saved is one more call of each slow file (seconds each for the paper net).
ELIMINATION_ROUNDS = 2
ELIMINATION_RATIO = 1.5


# Held-out images every default-export candidate is checked on (an explicit --export_format uses all of them).
# A quantization or conversion error is a property of the weights and ranges, so it shows on every slice
# alike: two slices spread over the held-out fold are 0.5 M pixels of ISBI 2012, where the int8 threshold
# (99 %) still leaves only 5,000 pixels of slack, at a third of the six slices' cost per candidate.
PARITY_IMAGES = 2


# Parity images per dtype the SavedModel's serving signatures are checked on in the default export (an explicit
# --export_format checks all). They are the `tile` function, checked on every parity image, inside predict's
# in-graph tiling: one whole image per signature exercises that glue (normalization, padding, stitching).
SERVING_IMAGES_PER_DTYPE = 1

# int8 calibration tiles of each default-export candidate (an explicit --export_format uses formats.CALIBRATION_TILES).
# TFLite's calibrator runs the float graph on one thread: 2.6 s per 572-pixel tile of the paper net on a quiet
# Zen 4, 4-6 s under load. Min-max ranges of EM tiles settle within a few tiles: label agreement of the paper
# net with Keras, TFLite int8 / OpenVINO int8, 700-pixel tiles: 99.70 / 99.87 % calibrated on 4 tiles, 99.70 /
# 99.88 % on 8; 572-pixel tiles, 16: 99.68 / 99.84 %. A poor calibration fails parity and leaves the choice.
CALIBRATION_TILES = 4


def parity_subset(indices: Sequence[int] | np.ndarray, count: int = PARITY_IMAGES) -> np.ndarray:
    """`count` of the held-out image `indices`, evenly spread (first and last included), in order."""
    indices = np.asarray(indices)
    if len(indices) <= count:
        return indices
    return indices[np.unique(np.linspace(0, len(indices) - 1, count).round().astype(int))]


def keras_candidate(run_policy: str) -> tuple[str, str]:
    """The SavedModel that computes as the Keras model of the run does (`run_policy`: the Keras dtype policy
    predict would use, base.precision.decide_precision): bf16 under mixed_bfloat16, fp32 otherwise. It is the
    "no export" baseline, so the deploy file is never slower than running the checkpoint."""
    return ("savedmodel", "bf16" if run_policy == "mixed_bfloat16" else "fp32")


def candidates(cpu: CpuInfo, gpus: list[dict] | int, precision: str | None = None,
               run_policy: str | None = None) -> list[tuple[str, str]]:
    """(format, precision) pairs competing for the deploy file on this machine, in export order.

    SavedModel fp32 (TensorFlow) and, where the run computes in bfloat16 (`run_policy`; None: what
    base.cpu.choose_precision picks for this CPU), the SavedModel of the Keras model at that precision;
    TFLite int8 (XNNPACK), ONNX Runtime int8, OpenVINO int8 (NNCF) and OpenVINO float: bf16 where
    choose_precision picks bfloat16 (AVX512_BF16 or AMX), fp32 elsewhere. Formats whose packages are
    missing are left out; `precision` keeps only candidates of that precision. Which of them cannot win
    on this CPU is `skip_reasons`' decision, taken when they are exported (select_fastest).
    """
    cpu_bf16 = choose_precision("auto", cpu, gpus)[0] == "mixed_bfloat16"
    float_ov = "bf16" if cpu_bf16 else "fp32"
    keras = keras_candidate(run_policy or choose_precision("auto", cpu, gpus)[0])
    pairs = list(dict.fromkeys([("savedmodel", "fp32"), keras, ("tflite", "int8"), ("onnx", "int8"),
                                ("openvino", "int8"), ("openvino", float_ov)]))
    available = [(f, p) for f, p in pairs
                 if all(importlib.util.find_spec(m) is not None for m in format_of(f).needs(p))]
    if precision is not None:
        available = [(f, p) for f, p in available if p == precision]
    if not available:
        raise UNetError(f"--export_precision={precision}: no default-export candidate has this precision "
                        f"(candidates: {', '.join(f'{f} {p}' for f, p in pairs)}); give --export_format too")
    return available


@dataclasses.dataclass(frozen=True)
class SkipRule:
    """Candidates that measurements say cannot be the fastest file on a CPU like this one.

    skips: (format, precision) -> whether the rule is about this candidate.
    applies: (cpu, every candidate of this export) -> whether it holds here.
    reason: what was measured, printed and recorded in export.json's "selection".
    """

    skips: Callable[[str, str], bool]
    applies: Callable[[CpuInfo, frozenset[tuple[str, str]]], bool]
    reason: str


# The one place that decides which candidates are not worth exporting (docs/facts.md has the measurements).
# Exporting, checking and timing one candidate of the paper network costs a minute or more on 2 cores.
SKIP_RULES: tuple[SkipRule, ...] = (
    SkipRule(lambda fmt, precision: precision == "int8", lambda cpu, pairs: not has_int8_dot_product(cpu),
             "this CPU has no VNNI or AMX-INT8: int8 kernels ran no faster than float without them "
             "(Zen 3, AVX2: TFLite int8 0.97-1.06x TFLite fp32)"),
    SkipRule(lambda fmt, precision: (fmt, precision) == ("onnx", "int8"),
             lambda cpu, pairs: ("tflite", "int8") in pairs,
             "ONNX Runtime int8 was slower than TFLite int8 on every CPU measured (paper U-Net per tile: Xeon with "
             "AMX 2,690 vs 927 ms, Zen 4 2,361 vs 819 ms; Zen 4, 64-filter net: 0.88x Keras fp32 vs 2.51x)"),
    # Only where bfloat16 is native: a --precision bf16 run on a CPU that emulates it lets both SavedModels compete.
    SkipRule(lambda fmt, precision: (fmt, precision) == ("savedmodel", "fp32"),
             lambda cpu, pairs: ("savedmodel", "bf16") in pairs and cpu.has_any(*BF16_FLAGS),
             "the bf16 SavedModel competes and runs the same network in bfloat16, which this CPU computes "
             "natively (Zen 4: Keras bf16 inference 1.65x fp32; Xeon with AMX: fp32 SavedModel the slowest "
             "candidate, 3,174 ms per tile)"),
)


def skip_reasons(cpu: CpuInfo, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """{(format, precision): why it cannot win} for the candidates of `pairs` a SKIP_RULES rule skips on `cpu`
    (the first rule that applies gives the reason). At least one candidate is always kept."""
    present = frozenset(pairs)
    skipped = {}
    for fmt, precision in pairs:
        for rule in SKIP_RULES:
            if rule.skips(fmt, precision) and rule.applies(cpu, present):
                skipped[(fmt, precision)] = rule.reason
                break
    if len(skipped) == len(present):  # e.g. --export_precision int8 on a CPU without VNNI: try them anyway
        return {}
    return skipped


def timing_tile(inputs: ExportInputs, spec: UNetSpec) -> np.ndarray:
    """One real (1, T, T, C) float32 tile cut from the training slices as inference pads them."""
    return calibration_tiles(inputs.calibration_images, inputs.tile_size, model_margin(spec) + inputs.context, 1)


def export_fastest(model: Any, spec: UNetSpec, class_names: Sequence[str], export_dir: str | pathlib.Path,
                   inputs: ExportInputs, pairs: Sequence[tuple[str, str]], *, extra: dict[str, Any] | None = None,
                   warmup: int = SELECTION_WARMUP, rounds: int = SELECTION_ROUNDS,
                   cpu: CpuInfo | None = None, check_parity: bool = True, logger: Any = None,
                   precision_models: dict[str, Any] | None = None) -> dict[str, Any]:
    """Export every (format, precision) of `pairs` that can win here, keep the fastest that passed parity;
    return its entry.

    precision_models: {precision: the Keras model rebuilt in that precision} for the artefacts written from
        it (the bf16 SavedModel); every parity check still compares with `model` (float32).
    The entry carries "latency" (median/p90/max ms of the alternating runs); export.json gets the
    "selection" record described in the module docstring. UNetError if no candidate passed.
    """
    shared = SharedExportWork()  # the Keras reference predictions and serving modules, made once for all candidates
    inputs = dataclasses.replace(inputs, serving_images_per_dtype=SERVING_IMAGES_PER_DTYPE)

    def export_one(fmt: str, precision: str) -> dict[str, Any]:
        source = (precision_models or {}).get(precision) if fmt == "savedmodel" else None
        return export_model(model, spec, class_names, export_dir, fmt, precision, inputs, extra=extra,
                            check_parity=check_parity, logger=logger, artifact_model=source, shared=shared,
                            calibration_count=CALIBRATION_TILES)

    return select_fastest(export_dir, pairs, export_one, timing_tile(inputs, spec), {"tile_size": inputs.tile_size},
                          warmup=warmup, rounds=rounds, cpu=cpu, logger=logger)


def select_fastest(export_dir: str | pathlib.Path, pairs: Sequence[tuple[str, str]],
                   export_one: Callable[[str, str], dict[str, Any]], sample: np.ndarray, described: dict[str, Any],
                   *, warmup: int = SELECTION_WARMUP, rounds: int = SELECTION_ROUNDS, cpu: CpuInfo | None = None,
                   logger: Any = None) -> dict[str, Any]:
    """The selection itself, for 2-D tiles and 3-D patches alike.

    Args:
        pairs: the (format, precision) candidates, exported in this order; those `skip_reasons` rules out on
            `cpu` (default: this machine's) are recorded as "skipped" with the reason and not exported.
        export_one: (format, precision) -> the artefact's export.json entry (recorded there), raising
            UNetError when it cannot be written or fails parity (the candidate is then left out).
        sample: the batch-1 input every passing candidate is timed on ((1, T, T, C) tile, (1, D, H, W, C) patch).
        described: what `sample` is, for export.json's "selection" ({"tile_size": T} or {"patch_shape": [...]}).
        logger: a runlog.Logger for EXPORT lines: one per skipped candidate, one when a candidate starts and
            one when it ends, one per timing round (None: silent).
    """
    from unet_medical.base.cpu import read_cpu_info

    cpu = cpu or read_cpu_info()
    export_dir = pathlib.Path(export_dir)
    if (export_dir / "export.json").is_file():  # a failed selection must not leave an older choice standing
        record_selection(export_dir, None)
    skipped = skip_reasons(cpu, pairs)
    records: list[dict[str, Any]] = []
    entries: dict[str, dict[str, Any]] = {}
    exported = [pair for pair in pairs if pair not in skipped]
    for fmt, precision in pairs:
        if (fmt, precision) in skipped:
            records.append({"format": fmt, "precision": precision, "file": artifact_name(fmt, precision),
                            "status": "skipped", "reason": skipped[(fmt, precision)]})
            _log(logger, {"candidate": f"{fmt} {precision}", "status": "skipped", "reason": skipped[(fmt, precision)]})
    for number, (fmt, precision) in enumerate(exported, 1):
        record = {"format": fmt, "precision": precision, "file": artifact_name(fmt, precision)}
        start = time.perf_counter()
        _log(logger, {"candidate": f"{number}/{len(exported)}", "format": fmt, "precision": precision,
                      "status": "exporting"})
        try:
            entry = export_one(fmt, precision)
        except UNetError as exc:  # failed parity or conversion: excluded, the others still compete
            records.append({**record, "status": "failed", "error": str(exc)})
        else:
            parity = entry.get("parity") or {}
            record["label_agreement"] = min((r["label_agreement"] for r in parity.values()), default=None)
            records.append({**record, "status": "exported"})
            entries[record["file"]] = entry
        records[-1]["seconds"] = round(time.perf_counter() - start, 1)
        _log(logger, {"candidate": f"{number}/{len(exported)}", "format": fmt, "precision": precision,
                      "status": records[-1]["status"], "label_agreement": record.get("label_agreement"),
                      "seconds": records[-1]["seconds"]})
    if not entries:
        details = "; ".join(f"{r['format']} {r['precision']}: {r.get('error') or r.get('reason')}" for r in records)
        raise UNetError(f"default export: no candidate passed ({details})")

    runners = {name: load_exported(export_dir / name) for name in entries}
    times = time_with_elimination({name: (lambda r=runner: r(sample)) for name, runner in runners.items()},
                                  warmup, rounds, logger)
    latency = {name: latency_summary_ms(seconds) for name, seconds in times.items()}
    finalists = {name: summary for name, summary in latency.items() if summary["runs"] == rounds}
    chosen = min(finalists, key=lambda name: finalists[name]["median_ms"])
    del runners  # release the runtimes before deleting their files
    for record in records:
        if record["file"] in latency:
            record.update(status="timed" if record["file"] in finalists else "eliminated",
                          latency=latency[record["file"]])
    for name in entries:
        if name != chosen:
            forget_artifact(export_dir, name)
    entry = {**entries[chosen], "latency": latency[chosen], "deploy": True}
    record_artifact(export_dir, entry)
    record_selection(export_dir, {
        "chosen": chosen, "rule": "fastest median latency among the candidates that passed parity",
        **described, "batch": 1, "warmup": warmup, "rounds": rounds, "timing": "alternating",
        "elimination": f"after {ELIMINATION_ROUNDS} rounds, candidates slower than {ELIMINATION_RATIO}x the "
                       "best median stop being timed",
        "cpu": describe(cpu), "candidates": records})
    return entry


def time_with_elimination(calls: dict[str, Callable[[], Any]], warmup: int, rounds: int,
                          logger: Any = None) -> dict[str, list[float]]:
    """Alternating wall times (s) as base.timing.time_alternating, round by round: after ELIMINATION_ROUNDS
    rounds, calls whose median is over ELIMINATION_RATIO x the best stop (their list is then shorter than
    `rounds`). {name: [s per round]}."""
    if warmup:
        time_alternating(calls, warmup, 0)
    times: dict[str, list[float]] = {name: [] for name in calls}
    running = dict(calls)
    for number in range(1, rounds + 1):
        for name, seconds in time_alternating(running, 0, 1).items():
            times[name] += seconds
        _log(logger, {"timing": f"round {number}/{rounds}",
                      **{name: f"{1e3 * times[name][-1]:.0f} ms" for name in running}})
        if number == ELIMINATION_ROUNDS and len(running) > 1:
            best = min(float(np.median(times[name])) for name in running)
            running = {name: call for name, call in running.items()
                       if float(np.median(times[name])) <= ELIMINATION_RATIO * best}
    return times


def _log(logger: Any, data: dict[str, Any]) -> None:
    if logger is not None:
        logger.log("EXPORT", data)
