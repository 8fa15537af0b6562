"""A model card (Markdown) written beside every exported model: `model_dir/export/MODEL_CARD.md`.

It states what a user needs to decide whether to deploy an artefact: the data and folds it was
trained and evaluated on, its held-out metrics (with the spread across folds when the sibling
`fold_<k>` runs of a cross-validation exist), its quantization / compression settings, the size of
every exported file, their latency measured on this machine at export time, and the machine; after
a default export (no --export_format), which candidate formats competed for the deploy file, how fast
each was here, and which one was kept (utils.export.select).
"""
from __future__ import annotations

import json
import os
import pathlib
import platform
import time
from typing import Any

from unet_medical.base.artifacts import (EVAL_RESULTS, MODEL_JSON, RunRecord, load_run_record, read_eval_results,
                                         read_run_config)
from unet_medical.base.fileio import atomic_write_text

CARD = "MODEL_CARD.md"
METRICS = ("membrane_dice", "interior_dice", "mean_dice", "membrane_iou", "pixel_error", "v_rand_thinned", "v_info_thinned")


def machine_description() -> str:
    """CPU (utils.cpu.describe: model, family/model, vector flags), cores, GPUs, TensorFlow and Python."""
    import tensorflow as tf

    from unet_medical.base.cpu import describe, read_cpu_info

    gpus = tf.config.list_physical_devices("GPU")
    return (f"{describe(read_cpu_info())}, {os.cpu_count()} logical cores, {len(gpus)} GPU(s), "
            f"TensorFlow {tf.__version__}, Python {platform.python_version()}")


def _training_precision(record: RunRecord | None, config: dict[str, Any]) -> str:
    """The Keras policy training ran in (model.json since --precision; older runs: from --amp)."""
    return (record.precision if record else None) or ("mixed" if config.get("amp") else "float32")


def _fold_spread(model_dir: pathlib.Path) -> str | None:
    from unet_medical.evaluation.cv import METRICS, metric_names, read_fold_results, summarize

    try:
        results = read_fold_results(model_dir.parent)
    except Exception:  # noqa: BLE001 - no sibling folds is the common case, not an error
        return None
    if len(results) < 2:
        return None
    summary = summarize(results, [m for m in metric_names(results) if m in METRICS])
    rows = [f"| {m} | {s['mean']:.4f} | {s['sd']:.4f} | {len(results)} |" for m, s in summary.items()]
    return "\n".join(["| metric | mean over folds | sample sd | folds |", "|---|---|---|---|", *rows])


def _tucker(model_dir: pathlib.Path, config: dict[str, Any]) -> str:
    if not (model_dir / "tucker_report.csv").exists():
        return "none"
    return f"see tucker_report.csv (rank factor {config.get('rank_factor')}, rank {config.get('rank')})"


def _selection_lines(selection: dict[str, Any] | None) -> list[str]:
    """The default export's competition (export.json "selection"), as a Markdown section."""
    if not selection:
        return []
    patch = selection.get("patch_shape")  # a 3-D run's candidates are timed on one patch
    sample = f"{'x'.join(map(str, patch))}-voxel patch" if patch else f"{selection.get('tile_size')}-pixel tile"
    lines = ["## Deploy file", "",
             f"`--exec_mode export` without `--export_format` exported every candidate that can win on this CPU "
             f"(the others are listed as skipped, with why), checked each against the "
             f"Keras model, timed the ones that passed on one {sample} at batch 1 "
             f"({selection.get('rounds')} alternating rounds after {selection.get('warmup')} warm-up) and kept the "
             f"fastest: **`{selection.get('chosen')}`** (run it with `--model_path MODEL_DIR/export`, which "
             "resolves to it, or with its own path). The others were deleted.", "",
             "| candidate | format | precision | parity | median (ms) | p90 (ms) | kept |",
             "|---|---|---|---|---|---|---|"]
    for c in selection.get("candidates", []):
        lat = c.get("latency") or {}
        status = c.get("status", "")
        parity = "passed" if status in ("timed", "eliminated") else (
            f"skipped: {c.get('reason', '')}"[:120] if status == "skipped" else (c.get("error") or status)[:80])
        median = "" if "median_ms" not in lat else f"{lat['median_ms']:.1f}"
        p90 = "" if "p90_ms" not in lat else f"{lat['p90_ms']:.1f}"
        lines.append(f"| `{c.get('file')}` | {c.get('format')} | {c.get('precision')} | {parity} | {median} | {p90} "
                     f"| {'yes' if c.get('file') == selection.get('chosen') else ''} |")
    return [*lines, "", f"Timed on: {selection.get('cpu', '?')}.", ""]


def write_model_card(model_dir: str | os.PathLike, export_dir: str | os.PathLike,
                     artifacts: dict[str, dict[str, Any]], selection: dict[str, Any] | None = None) -> pathlib.Path:
    """(Re)write export_dir/MODEL_CARD.md from model_dir's run files, export.json's `artifacts` (each
    entry's `latency` is what export measured) and, after a default export, its `selection`."""
    model_dir, export_dir = pathlib.Path(model_dir), pathlib.Path(export_dir)
    config = read_run_config(model_dir)
    record = load_run_record(model_dir) if (model_dir / MODEL_JSON).exists() else None
    evaluation = read_eval_results(model_dir / EVAL_RESULTS) if (model_dir / EVAL_RESULTS).exists() else {}
    lines = [f"# Model card: {model_dir.name}", "",
             "U-Net (Ronneberger et al. 2015) for semantic segmentation, trained with this repository's "
             "`main.py`.", "", "## Model", ""]
    spec = record.spec if record else {}
    quantization = (record.quantization_config or {"quantization": record.quantization}) if record else {}
    lines += [f"- Architecture: {spec.get('padding', '?')}-padding U-Net, {spec.get('base_filters', '?')} base "
              f"filters, depth {spec.get('depth', '?')}, batch norm {spec.get('batch_norm', '?')}, instance norm "
              f"{spec.get('instance_norm', False)}, dropout "
              f"{spec.get('dropout', '?')}; input channels {spec.get('in_channels', '?')}; classes "
              f"{', '.join(record.class_names if record else [])}.",
              f"- Quantization: {json.dumps(quantization)}.",
              f"- Tucker compression: {_tucker(model_dir, config)}.",
              f"- Initialized from: {config.get('init_from') or 'random (seed ' + str(config.get('seed')) + ')'}.",
              "", "## Data and evaluation", "",
              f"- Training data: `{config.get('data_dir', '?')}`; fold {config.get('fold', '?')} of "
              f"{config.get('num_folds', '?')} held out (a contiguous block of slices).",
              f"- Training: {config.get('max_steps', '?')} steps, batch {config.get('batch_size', '?')}, crops "
              f"{config.get('crop_size', '?')}, learning rate {config.get('learning_rate', '?')}, augmentation "
              f"{config.get('augment', '?')}, precision {_training_precision(record, config)}; "
              "exported files compute in float32 unless their precision below says otherwise.", ""]
    if evaluation:
        lines += [f"Held-out metrics (step {evaluation.get('step')}, {evaluation.get('num_images')} images, "
                  f"native resolution, overlap-tile inference, TTA {evaluation.get('tta')}):", "",
                  "| metric | value |", "|---|---|",
                  *[f"| {m} | {evaluation[m]:.4f} |" for m in METRICS if m in evaluation], ""]
    else:
        lines += ["No held-out evaluation found in the model folder (run `--exec_mode evaluate`).", ""]
    if record and record.decision:  # the rule predict and the SavedModel apply (inference.decision)
        lines += [f"Labels: {record.decision.get('reason', '')}. The metrics above are the argmax's; the "
                  "SavedModel, predict and the exported files' runtime apply this rule.", ""]
    spread = _fold_spread(model_dir)
    if spread:
        lines += ["Across cross-validation folds (sibling `fold_<k>` runs):", "", spread, ""]
    lines += [*_selection_lines(selection), "## Exported files", "",
              "| file | format | precision | size (MB) | label agreement with Keras (parity images) "
              "| latency per tile, median (ms) | tile |", "|---|---|---|---|---|---|---|"]
    for name, entry in sorted(artifacts.items()):
        parity = entry.get("parity") or {}
        agreement = min((p.get("label_agreement", 1.0) for p in parity.values()), default=None)
        lat = (entry.get("latency") or {}).get("median_ms")
        tile = entry.get("parity_tile_size") or "x".join(map(str, entry.get("patch_shape") or [])) \
            or entry.get("tile_size") or ""
        lines.append(f"| `{name}` | {entry.get('format')} | {entry.get('precision')} | "
                     f"{entry.get('size_bytes', 0) / 1e6:.3f} | {'' if agreement is None else f'{agreement:.4%}'} | "
                     f"{'' if lat is None else f'{lat:.1f}'} | {tile} |")
    lines += ["", "## Measured on", "", f"- {machine_description()}",
              f"- Latency: one batch-1 tile after warm-up, median of the timed runs, measured at export time "
              f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}); other jobs on the machine affect it.", ""]
    return atomic_write_text(export_dir / CARD, "\n".join(lines))
