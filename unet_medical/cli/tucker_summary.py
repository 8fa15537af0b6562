"""One record per `--exec_mode compress` run: what the compression cost and what it bought.

model_dir/tucker_summary.json holds the rank rule, parameters and GFLOP of the whole network before and
after the decomposition (at the size its MACs were counted: the 2-D crop or the 3-D patch), and the
scores of the held-out cases three times: the trained original (--init_from's eval_results.json, only if
it scored exactly the same cases), the decomposed model before fine-tuning (eval_before_finetune.json)
and after it (eval_results.json), with the mean-Dice change in points. tucker_report.csv beside it has
the per-layer detail. Written in two steps: the model part when the network is decomposed, the scores
when the fine-tuning run has finished (`add_scores`).
"""
from __future__ import annotations

import pathlib
from typing import Any, Mapping, Optional

from unet_medical.base.artifacts import EVAL_RESULTS, read_eval_results, read_json_object, write_json
from unet_medical.base.errors import UNetError

SUMMARY_FILE = "tucker_summary.json"
BEFORE_FINETUNE = "eval_before_finetune.json"
# Score keys copied from the evaluations: per-class and mean Dice / IoU, HD95 (mm), NSD; the ISBI scores.
_SCORE_SUFFIXES = ("_dice", "_iou", "_hd95", "_nsd", "v_rand_thinned", "v_info_thinned")


def scores_of(results: Mapping[str, Any]) -> dict[str, float]:
    """The segmentation scores of an eval_results document (floats whose key ends in a score suffix)."""
    return {key: float(value) for key, value in sorted(results.items())
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key.endswith(_SCORE_SUFFIXES)}


def evaluated_cases(results: Mapping[str, Any]) -> Optional[list[str]]:
    """The sorted case (or image) names an evaluation scored, from its provenance; None if not recorded."""
    files = (results.get("provenance") or {}).get("files")
    return sorted(files) if isinstance(files, list) else None


def write_model_part(model_dir: str | pathlib.Path, *, rank_factor: Optional[float], rank: Optional[int],
                     rank_min: int, input_size: tuple[int, ...], layers: int, decomposed: int,
                     params: tuple[int, int], macs: tuple[int, int]) -> pathlib.Path:
    """Start model_dir/tucker_summary.json with the decomposition's cost.

    Args:
        input_size: (H, W) pixels or (D, H, W) voxels at which `macs` were counted.
        layers, decomposed: convolutions in the report, and how many of them were decomposed.
        params, macs: (before, after) floating-point weights and multiply-accumulates per forward pass
            of the whole network (FLOP = 2 x MAC).
    """
    return write_json(pathlib.Path(model_dir) / SUMMARY_FILE, {
        "rank_factor": rank_factor, "rank": rank, "rank_min": rank_min, "input_size": list(input_size),
        "convs": layers, "convs_decomposed": decomposed,
        "params_before": params[0], "params_after": params[1],
        "gflop_before": 2 * macs[0] / 1e9, "gflop_after": 2 * macs[1] / 1e9,
        "flop_ratio": macs[0] / macs[1] if macs[1] else None})


def add_scores(model_dir: str | pathlib.Path, init_from: str | pathlib.Path) -> dict[str, Any]:
    """Complete model_dir/tucker_summary.json with the scores once fine-tuning has been evaluated.

    "original" is --init_from's own eval_results.json when it scored the same cases as this run (else
    None, and "original_note" says why: a Dice change over other cases would mean nothing).
    "mean_dice_change_points" = 100 x (mean Dice after fine-tuning - original's); None without both.

    Raises:
        UNetError: this run's eval_results.json is missing or unreadable.
    """
    run = pathlib.Path(model_dir)
    path = run / SUMMARY_FILE
    if not (run / EVAL_RESULTS).is_file():
        raise UNetError(f"{run / EVAL_RESULTS}: missing (the compressed run was not evaluated)")
    # A run resumed from a folder written before this file existed gets the scores alone.
    summary = read_json_object(path) if path.is_file() else {}
    after = read_eval_results(run / EVAL_RESULTS)
    before = read_eval_results(run / BEFORE_FINETUNE) if (run / BEFORE_FINETUNE).is_file() else None
    original, note = _original_scores(pathlib.Path(init_from), evaluated_cases(after))
    summary.update({
        "init_from": str(init_from), "fine_tune_steps": after.get("step"), "cases": len(evaluated_cases(after) or []),
        "original": original, "original_note": note,
        "before_fine_tune": None if before is None else scores_of(before), "after_fine_tune": scores_of(after)})
    change = None
    if original is not None and "mean_dice" in original and "mean_dice" in summary["after_fine_tune"]:
        change = 100.0 * (summary["after_fine_tune"]["mean_dice"] - original["mean_dice"])
    summary["mean_dice_change_points"] = change
    write_json(path, summary)
    return summary


def headline(summary: Mapping[str, Any]) -> dict[str, float | int | str]:
    """The summary's numbers for one log line: cost ratios and the mean Dice of the three models."""
    line = {key: summary[key] for key in ("rank_factor", "rank", "convs_decomposed", "params_before", "params_after",
                                          "gflop_before", "gflop_after", "fine_tune_steps", "mean_dice_change_points")
            if isinstance(summary.get(key), (int, float))}
    for model in ("original", "before_fine_tune", "after_fine_tune"):
        scores = summary.get(model) or {}
        if "mean_dice" in scores:
            line[f"{model}_mean_dice"] = scores["mean_dice"]
    return line


def _original_scores(init_from: pathlib.Path, cases: Optional[list[str]]) -> tuple[Optional[dict[str, float]], str]:
    """(scores of the trained original, note): None with the reason when they are not comparable."""
    path = init_from / EVAL_RESULTS
    if not path.is_file():
        return None, f"{path}: not found (evaluate the original on the same fold to compare)"
    original = read_eval_results(path)
    if cases is None or evaluated_cases(original) != cases:
        return None, f"{path}: scored other cases than this run's held-out fold"
    return scores_of(original), f"{path}: the same {len(cases)} held-out cases"
