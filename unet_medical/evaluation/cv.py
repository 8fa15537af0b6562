"""Cross-validation summary: each fold's held-out metrics, their mean and sample standard deviation.

    python -m unet_medical.evaluation.cv RESULTS_DIR

reads RESULTS_DIR/fold_<k>/eval_results.json (written by train_and_evaluate for fold k, e.g. by
examples/unet_CPU_CV5.sh), prints one row per metric (a column per fold, then mean and sd) and
writes the same numbers to RESULTS_DIR/cv_summary.json and RESULTS_DIR/cv_summary.md. The sd is
the sample standard deviation (n - 1 denominator), the usual figure for a spread over k folds; it
is undefined (null) for a single fold. A pure summary: it reads results and trains or evaluates
nothing. When the folds record `num_folds`, every fold 0..num_folds-1 must be there. No TensorFlow.

cv_summary.json: {"folds": [eval_results of fold 0, 1, ...], "mean": {metric: value},
"sd": {metric: value or null}, "n": number of folds, "sd_definition": "..."}.
"""
from __future__ import annotations

import pathlib
import re
import sys
from typing import Any, Mapping, Sequence

import numpy as np

from unet_medical.base.artifacts import EVAL_RESULTS, read_eval_results, write_json
from unet_medical.base.errors import UNetError
from unet_medical.base.fileio import atomic_write_text

# Membrane Dice, then the ISBI 2012 leaderboard's V_rand and V_info, then pixel error: listed first.
METRICS = ("membrane_dice", "v_rand_thinned", "v_info_thinned", "pixel_error")
# eval_results.json entries that describe the evaluation rather than measure the model.
BOOKKEEPING = frozenset({"fold", "num_folds", "step", "num_images", "tta", "num_cases", "nsd_tolerance_mm"})
SUMMARY_JSON = "cv_summary.json"
SUMMARY_MD = "cv_summary.md"
SD_DEFINITION = "sample standard deviation over the folds (n - 1 denominator)"
_FOLD_DIR = re.compile(r"fold_(\d+)$")


def read_fold_results(results_dir: str | pathlib.Path) -> dict[int, dict[str, Any]]:
    """fold index -> its eval_results.json, for every RESULTS_DIR/fold_<k> folder.

    Raises UNetError if there is no fold folder, a fold folder has no readable results, a result
    names another fold than its folder, or the folds' recorded num_folds disagree or are not all there.
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
            results[k] = read_eval_results(path)
        except FileNotFoundError:
            raise UNetError(f"{path}: missing (did fold {k} finish train_and_evaluate?)") from None
        except OSError as exc:
            raise UNetError(f"{path}: not readable ({exc})") from None
        if results[k].get("fold", k) != k:
            raise UNetError(f"{path}: holds the evaluation of fold {results[k]['fold']}, not of fold {k}")
    recorded = {r["num_folds"] for r in results.values() if "num_folds" in r}
    if len(recorded) > 1:
        raise UNetError(f"{root}: the folds were split differently (num_folds {sorted(recorded)})")
    if recorded:
        num_folds = recorded.pop()
        missing = sorted(set(range(num_folds)) - set(results))
        if missing:
            raise UNetError(f"{root}: fold(s) {', '.join(map(str, missing))} missing "
                            f"(num_folds {num_folds}: expected fold_0 .. fold_{num_folds - 1})")
    return results


def metric_names(results: Mapping[int, Mapping[str, Any]]) -> list[str]:
    """The numeric metrics every fold has (METRICS first, the rest sorted); bookkeeping keys excluded."""
    def numeric(fold: Mapping[str, Any]) -> set[str]:
        return {k for k, v in fold.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                and k not in BOOKKEEPING}

    common = set.intersection(*(numeric(fold) for fold in results.values())) if results else set()
    return [m for m in METRICS if m in common] + sorted(common - set(METRICS))


def summarize(results: Mapping[int, Mapping[str, Any]], metrics: Sequence[str] | None = None
              ) -> dict[str, dict[str, Any]]:
    """metric -> {"mean", "sd" (sample, n - 1; None for one fold), "n"} over the folds' values.

    metrics: which to summarize (default: every metric all folds have); a fold without one of them
    is an error naming it.
    """
    summary = {}
    for name in metric_names(results) if metrics is None else metrics:
        values = []
        for k, fold in sorted(results.items()):
            if not isinstance(fold.get(name), (int, float)):
                raise UNetError(f"fold {k}: {EVAL_RESULTS} has no numeric {name!r}")
            values.append(float(fold[name]))
        sd = float(np.std(values, ddof=1)) if len(values) > 1 else None
        summary[name] = {"mean": float(np.mean(values)), "sd": sd, "n": len(values)}
    return summary


def summary_document(results: Mapping[int, Mapping[str, Any]], summary: Mapping[str, Mapping[str, Any]]
                     ) -> dict[str, Any]:
    """What cv_summary.json holds (see the module docstring)."""
    return {"folds": [dict(results[k]) for k in sorted(results)],
            "mean": {m: s["mean"] for m, s in summary.items()}, "sd": {m: s["sd"] for m, s in summary.items()},
            "n": len(results), "sd_definition": SD_DEFINITION}


def table_rows(results: Mapping[int, Mapping[str, Any]], summary: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    """The fold table as text cells: a header row, then per metric its value per fold, mean and sd."""
    folds = sorted(results)
    rows = [["metric", *(f"fold {k}" for k in folds), "mean", "sd"]]
    for m, s in summary.items():
        sd = "n/a" if s["sd"] is None else f"{s['sd']:.4f}"
        rows.append([m, *(f"{float(results[k][m]):.4f}" for k in folds), f"{s['mean']:.4f}", sd])
    return rows


def format_table(results: Mapping[int, Mapping[str, Any]], summary: Mapping[str, Mapping[str, Any]]) -> str:
    """Aligned text table: a row per metric, a column per fold, then mean and sd."""
    rows = table_rows(results, summary)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:], f"sd: {SD_DEFINITION}"])


def format_markdown(results: Mapping[int, Mapping[str, Any]], summary: Mapping[str, Mapping[str, Any]],
                    title: str) -> str:
    """cv_summary.md: the same table in Markdown, with what sd means and the steps evaluated."""
    rows = table_rows(results, summary)
    steps = {k: str(r.get("step", "?")) for k, r in sorted(results.items())}
    # A time budget gives each fold its own step count: name the fold beside each, in fold order.
    at = (f"step {next(iter(steps.values()))}" if len(set(steps.values())) == 1
          else "steps " + ", ".join(f"{step} (fold {k})" for k, step in steps.items()))
    lines = [f"# Cross-validation summary: {title}", "",
             f"{len(results)} folds, each evaluated on its held-out block at {at}. "
             f"mean = arithmetic mean over the folds; sd = {SD_DEFINITION}.", "",
             "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m unet_medical.evaluation.cv RESULTS_DIR", file=sys.stderr)
        return 2
    root = pathlib.Path(args[0])
    try:
        results = read_fold_results(root)
        summary = summarize(results)
    except UNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(results, summary))
    write_json(root / SUMMARY_JSON, summary_document(results, summary))
    atomic_write_text(root / SUMMARY_MD, format_markdown(results, summary, root.name))
    print(f"written: {root / SUMMARY_JSON}, {root / SUMMARY_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
