"""Evaluation results of predicted volumes: per-case surface scores (evaluation.surface) averaged over cases.

eval_results.json keeps the 2D results' flat style so curves, the CV summary and scripts read it alike:
    {class}_dice, {class}_hd95 (mm), {class}_nsd    per foreground class, mean over the validation cases
    mean_dice, mean_hd95, mean_nsd                   mean of those over the foreground classes (the MSD
                                                     convention: background is not scored; the 2D
                                                     mean_dice includes it)
    per_case                                         {case: {class: {"dice", "hd95_mm", "nsd"}}}
    nsd_tolerance_mm, num_cases                      how it was measured
Empty-class rules (a class absent from prediction and label scores Dice 1, HD95 0, NSD 1) are
evaluation.surface's.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from unet_medical.base.errors import UNetError
from unet_medical.evaluation.surface import case_scores, mean_scores

# surface.case_scores key -> suffix of the flat eval_results key
_KEYS = {"dice": "dice", "hd95_mm": "hd95", "nsd": "nsd"}


def score_volumes(predictions: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
                  spacings: Mapping[str, Sequence[float]], class_names: Sequence[str],
                  tolerance_mm: float) -> dict[str, Any]:
    """eval_results entries (module docstring) of predicted label maps against the true ones.

    Args:
        predictions, labels: case name -> (I, J, K) integer class map on the case's voxel grid.
        spacings: case name -> (3,) voxel spacing in mm along I, J, K.
        class_names: names of classes 0..C-1 (0 = background, not scored).
        tolerance_mm: NSD tolerance in mm.
    """
    missing = sorted(set(predictions) ^ set(labels))
    if missing:
        raise UNetError(f"cases {', '.join(missing[:5])} have a prediction or a label map but not both")
    if not predictions:
        raise UNetError("no validation case to score")
    per_case = {name: case_scores(predictions[name], labels[name], spacings[name], class_names, tolerance_mm)
                for name in sorted(predictions)}
    means = mean_scores(list(per_case.values()))
    results: dict[str, Any] = {f"{cls}_{_KEYS[key]}": value for cls, scores in means.items()
                               for key, value in scores.items()}
    for key, suffix in _KEYS.items():
        results[f"mean_{suffix}"] = float(np.mean([scores[key] for scores in means.values()]))
    results.update(per_case=per_case, nsd_tolerance_mm=float(tolerance_mm), num_cases=len(per_case))
    return results
