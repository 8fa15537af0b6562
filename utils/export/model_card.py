"""A model card (Markdown) written beside every exported model: `model_dir/export/MODEL_CARD.md`.

It states what a user needs to decide whether to deploy an artefact: the data and folds it was
trained and evaluated on, its held-out metrics (with the spread across folds when the sibling
`fold_<k>` runs of a cross-validation exist), its quantization / compression settings, the size of
every exported file, their latency measured on this machine at export time, and the machine.
"""
from __future__ import annotations

import json
import os
import pathlib
import platform
import statistics
import time
from typing import Any, Callable

import numpy as np

from utils.artifacts import EVAL_RESULTS, RUN_CONFIG
from utils.fileio import atomic_write_text

CARD = "MODEL_CARD.md"
METRICS = ("membrane_dice", "interior_dice", "mean_dice", "membrane_iou", "pixel_error", "v_rand", "v_info")


def measure_latency_ms(predict: Callable[[np.ndarray], Any], tile: np.ndarray, warmup: int = 1,
                       runs: int = 5) -> dict[str, float]:
    """Median and max wall time (ms) of `predict(tile)` after `warmup` untimed calls."""
    for _ in range(warmup):
        predict(tile)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        predict(tile)
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(times), "max_ms": max(times), "runs": runs}


def machine_description() -> str:
    """CPU model, cores and TensorFlow version, e.g. 'Intel(R) Xeon(R) Processor, 2 cores, TF 2.21.0'."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return f"{cpu}, {os.cpu_count()} cores, {len(gpus)} GPU(s), TensorFlow {tf.__version__}, Python {platform.python_version()}"


def _training_precision(extra: dict[str, Any], config: dict[str, Any]) -> str:
    """The Keras policy training ran in (model.json since --precision; older runs: from --amp)."""
    return extra.get("precision") or ("mixed" if config.get("amp") else "float32")


def _fold_spread(model_dir: pathlib.Path) -> str | None:
    from utils.score.cv import read_fold_results, summarize

    try:
        results = read_fold_results(model_dir.parent)
    except Exception:  # noqa: BLE001 - no sibling folds is the common case, not an error
        return None
    if len(results) < 2:
        return None
    summary = summarize(results)
    rows = [f"| {m} | {s['mean']:.4f} | {s['std']:.4f} | {len(results)} |" for m, s in summary.items()]
    return "\n".join(["| metric | mean over folds | std | folds |", "|---|---|---|---|", *rows])


def write_model_card(model_dir: str | os.PathLike, export_dir: str | os.PathLike,
                     artifacts: dict[str, dict[str, Any]]) -> pathlib.Path:
    """(Re)write export_dir/MODEL_CARD.md from model_dir's run files and export.json's `artifacts`
    (each entry's `latency` is what finish_artifact measured)."""
    import yaml

    model_dir, export_dir = pathlib.Path(model_dir), pathlib.Path(export_dir)
    config = yaml.safe_load((model_dir / RUN_CONFIG).read_text()) if (model_dir / RUN_CONFIG).exists() else {}
    model = json.loads((model_dir / "model.json").read_text()) if (model_dir / "model.json").exists() else {}
    evaluation = json.loads((model_dir / EVAL_RESULTS).read_text()) if (model_dir / EVAL_RESULTS).exists() else {}
    extra = model.get("extra", {})
    lines = [f"# Model card: {model_dir.name}", "",
             "U-Net (Ronneberger et al. 2015) for semantic segmentation, trained with this repository's "
             "`main.py`.", "", "## Model", ""]
    spec = model.get("spec", {})
    lines += [f"- Architecture: {spec.get('padding', '?')}-padding U-Net, {spec.get('base_filters', '?')} base "
              f"filters, depth {spec.get('depth', '?')}, batch norm {spec.get('batch_norm', '?')}, dropout "
              f"{spec.get('dropout', '?')}; input channels {spec.get('in_channels', '?')}; classes "
              f"{', '.join(model.get('class_names', []))}.",
              f"- Quantization: {json.dumps(extra.get('quantization_config') or {'quantization': extra.get('quantization', 'NONE')})}.",
              f"- Tucker compression: {'see tucker_report.csv (rank factor ' + str(config.get('rank_factor')) + ', rank ' + str(config.get('rank')) + ')' if (model_dir / 'tucker_report.csv').exists() else 'none'}.",
              f"- Initialized from: {config.get('init_from') or 'random (seed ' + str(config.get('seed')) + ')'}.",
              "", "## Data and evaluation", "",
              f"- Training data: `{config.get('data_dir', '?')}`; fold {config.get('fold', '?')} of "
              f"{config.get('num_folds', '?')} held out (a contiguous block of slices).",
              f"- Training: {config.get('max_steps', '?')} steps, batch {config.get('batch_size', '?')}, crops "
              f"{config.get('crop_size', '?')}, learning rate {config.get('learning_rate', '?')}, augmentation "
              f"{config.get('augment', '?')}, precision {_training_precision(extra, config)}; "
              "exported files compute in float32 unless their precision below says otherwise.", ""]
    if evaluation:
        lines += [f"Held-out metrics (step {evaluation.get('step')}, {evaluation.get('num_images')} images, "
                  f"native resolution, overlap-tile inference, TTA {evaluation.get('tta')}):", "",
                  "| metric | value |", "|---|---|",
                  *[f"| {m} | {evaluation[m]:.4f} |" for m in METRICS if m in evaluation], ""]
    else:
        lines += ["No held-out evaluation found in the model folder (run `--exec_mode evaluate`).", ""]
    spread = _fold_spread(model_dir)
    if spread:
        lines += ["Across cross-validation folds (sibling `fold_<k>` runs):", "", spread, ""]
    lines += ["## Exported files", "",
              "| file | format | precision | size (MB) | label agreement with Keras (held-out) | latency per tile, median (ms) | tile |",
              "|---|---|---|---|---|---|---|"]
    for name, entry in sorted(artifacts.items()):
        parity = entry.get("parity") or {}
        agreement = min((p.get("label_agreement", 1.0) for p in parity.values()), default=None)
        lat = (entry.get("latency") or {}).get("median_ms")
        lines.append(f"| `{name}` | {entry.get('format')} | {entry.get('precision')} | "
                     f"{entry.get('size_bytes', 0) / 1e6:.3f} | {'' if agreement is None else f'{agreement:.4%}'} | "
                     f"{'' if lat is None else f'{lat:.1f}'} | {entry.get('parity_tile_size') or entry.get('tile_size') or ''} |")
    lines += ["", "## Measured on", "", f"- {machine_description()}",
              f"- Latency: one batch-1 tile after one warm-up call, median of 5, measured at export time "
              f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}); other jobs on the machine affect it.", ""]
    return atomic_write_text(export_dir / CARD, "\n".join(lines))
