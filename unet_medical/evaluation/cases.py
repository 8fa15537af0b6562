"""Scores of each validation image (case) on its own, and which case is the best and which the worst.

The pooled scores of `unet_medical.evaluation.metrics.segmentation_metrics` say how good a model is
overall; the per-case scores say where it fails. eval_results.json stores them as its `per_case`
list, and the run report (cli/report.py) shows them as a table and the best and worst case as
input | prediction | truth overlays. Pure NumPy, no TensorFlow.

A case record:
    {"index": 7, "name": "train-volume.tif[7]", "dice": {"membrane": 0.81, "interior": 0.93},
     "mean_dice": 0.87, "pixel_error": 0.06}
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from unet_medical.base.errors import UNetError
from unet_medical.evaluation.metrics import dice_per_class, pixel_error

RANK_KEY = "mean_dice"  # what "best" and "worst" mean: the same score that picks best.npz


def case_scores(predicted: Sequence[np.ndarray], truth: Sequence[np.ndarray], class_names: Sequence[str],
                names: Sequence[str], indices: Sequence[int]) -> list[dict[str, Any]]:
    """One record per case (see the module docstring), in the order given.

    Args:
        predicted: per case, (H, W) integer class ids (the argmax of the probabilities).
        truth: per case, (H, W) integer class ids, the same shape as its prediction.
        class_names: C names; Dice is reported for each (a class absent from both maps scores 1.0).
        names: per case, the image's name in the data set.
        indices: per case, the image's index in the data set (to find it again).
    """
    if not len(predicted) == len(truth) == len(names) == len(indices):
        raise UNetError(f"case_scores: {len(predicted)} predictions, {len(truth)} masks, {len(names)} names "
                        f"and {len(indices)} indices must be as many")
    cases = []
    for pred, true, name, index in zip(predicted, truth, names, indices):
        dice = dice_per_class(true, pred, len(class_names))
        cases.append({"index": int(index), "name": str(name),
                      "dice": {c: float(d) for c, d in zip(class_names, dice)},
                      "mean_dice": float(dice.mean()), "pixel_error": pixel_error(true, pred)})
    return cases


def best_and_worst(cases: Sequence[Mapping[str, Any]], key: str = RANK_KEY) -> tuple[int, int]:
    """Positions in `cases` of the highest and the lowest `key` (the first one on a tie).

    With a single case both are 0. Raises UNetError for no cases or a case without a numeric `key`.
    """
    if not cases:
        raise UNetError("best_and_worst: no cases to rank")
    scores = []
    for i, case in enumerate(cases):
        value = case.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise UNetError(f"best_and_worst: case {i} ({case.get('name', '?')}) has no numeric {key!r}")
        scores.append(float(value))
    # argmax/argmin return the first extreme, so equal scores keep the data set's order.
    return int(np.argmax(scores)), int(np.argmin(scores))
