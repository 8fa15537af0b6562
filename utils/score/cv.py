"""Cross-validation summary: mean +- standard deviation of each fold's held-out metrics.

    python -m utils.score.cv RESULTS_DIR

reads RESULTS_DIR/fold_<k>/eval_results.json (written by train_and_evaluate for fold k, see
examples/unet_TRAIN_FULL.sh), prints one row per fold and a mean +- std row, and writes the same
numbers to RESULTS_DIR/folds_summary.json. The standard deviation is the sample one (n - 1), the
usual figure for a spread over k folds. No TensorFlow is imported.
"""
from __future__ import annotations

import json
import pathlib
import re
import sys
from typing import Any, Mapping, Sequence

import numpy as np

from utils.artifacts import EVAL_RESULTS, write_json
from utils.errors import UNetError

# Membrane Dice, then the ISBI 2012 leaderboard's V_rand and V_info, then pixel error.
METRICS = ("membrane_dice", "v_rand_thinned", "v_info_thinned", "pixel_error")
SUMMARY_FILE = "folds_summary.json"
_FOLD_DIR = re.compile(r"fold_(\d+)$")


def read_fold_results(results_dir: str | pathlib.Path) -> dict[int, dict[str, Any]]:
    """fold index -> its eval_results.json, for every RESULTS_DIR/fold_<k> folder.

    Raises UNetError if there is no fold folder, or a fold folder has no readable results.
    """
    root = pathlib.Path(results_dir)
    folds = sorted((int(m.group(1)), p) for p in root.glob("fold_*") if p.is_dir()
                   and (m := _FOLD_DIR.search(p.name)))
    if not folds:
        raise UNetError(f"{root}: no fold_<k> folders (expected the model_dirs of train_and_evaluate per fold)")
    results = {}
    for k, folder in folds:
        path = folder / EVAL_RESULTS
        try:
            results[k] = json.loads(path.read_text())
        except FileNotFoundError:
            raise UNetError(f"{path}: missing (did fold {k} finish train_and_evaluate?)") from None
        except (OSError, ValueError) as exc:
            raise UNetError(f"{path}: not readable JSON ({exc})") from None
    return results


def summarize(results: Mapping[int, Mapping[str, Any]], metrics: Sequence[str] = METRICS
              ) -> dict[str, dict[str, float]]:
    """metric -> {"mean", "std" (sample, 0 for one fold), "n"} over the folds' values."""
    summary = {}
    for name in metrics:
        values = []
        for k, fold in sorted(results.items()):
            if not isinstance(fold.get(name), (int, float)):
                raise UNetError(f"fold {k}: {EVAL_RESULTS} has no numeric {name!r}")
            values.append(float(fold[name]))
        std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        summary[name] = {"mean": float(np.mean(values)), "std": std, "n": len(values)}
    return summary


def format_table(results: Mapping[int, Mapping[str, Any]], summary: Mapping[str, Mapping[str, float]]) -> str:
    """Aligned text table: a row per fold, then mean +- std."""
    metrics = list(summary)
    rows = [["fold", *metrics]]
    rows += [[str(k), *(f"{float(results[k][m]):.4f}" for m in metrics)] for k in sorted(results)]
    rows.append(["mean +- std", *(f"{summary[m]['mean']:.4f} +- {summary[m]['std']:.4f}" for m in metrics)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    rule = "-" * len(lines[0])
    return "\n".join([lines[0], rule, *lines[1:-1], rule, lines[-1]])


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m utils.score.cv RESULTS_DIR", file=sys.stderr)
        return 2
    try:
        results = read_fold_results(args[0])
        summary = summarize(results)
    except UNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(results, summary))
    write_json(pathlib.Path(args[0]) / SUMMARY_FILE, {"folds": sorted(results), "metrics": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
