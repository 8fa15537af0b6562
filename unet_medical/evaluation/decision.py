"""Choosing a run's decision (inference.decision) on its validation fold: the foreground threshold and
whether test-time flips pay.

The score is the foreground Dice pooled over the validation images (every pixel of every image counted
once, as the run's eval_results.json pools), averaged over the foreground classes: the F1 that vessel and
lesion benchmarks report. The background's own Dice is left out: it is near 1 whatever the threshold.

Candidates are taken in order of cost, and a costlier one must beat the current choice by MIN_GAIN:
    argmax  ->  best threshold  ->  argmax with flips  ->  best threshold with flips
Flips cost eight forward passes per tile. A threshold costs nothing at inference, but one fitted to a
validation fold of a handful of images also fits its noise: MIN_GAIN is half a Dice point, the order of
the fold-to-fold spread of the 5-fold tables in the README, so a smaller gain keeps the argmax.
The gain is measured on the images the choice was made on, so it is optimistic; the record says so.
Volumes (choose_mirroring) climb the same ladder with the argmax only: their score is the mean per-case Dice
of evaluation.volumes, and the costlier step is mirroring (8 flips of each window or slice).
Pure NumPy.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from unet_medical.evaluation.metrics import dice_from_confusion, confusion_matrix
from unet_medical.inference.decision import Decision, decide_labels, foreground_classes

THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05, 0.10, ..., 0.95
MIN_GAIN = 0.005


def foreground_dice(probs: Sequence[np.ndarray], truth: Sequence[np.ndarray], background: int,
                    threshold: float | None) -> float:
    """Pooled Dice of the foreground classes, averaged over them, of labels decided at `threshold`.

    Args:
        probs: per image, (H, W, K) float class probabilities.
        truth: per image, (H, W) integer class ids.
        background: the background class index.
        threshold: None for the argmax, else the foreground threshold of inference.decision.
    """
    num_classes = probs[0].shape[-1]
    counts = np.zeros((num_classes, num_classes), np.int64)
    for p, t in zip(probs, truth):
        counts += confusion_matrix(t, decide_labels(p, threshold, background), num_classes)
    dice = dice_from_confusion(counts)
    return float(np.mean(dice[foreground_classes(num_classes, background)]))


def threshold_curve(probs: Sequence[np.ndarray], truth: Sequence[np.ndarray], background: int,
                    thresholds: Sequence[float] = THRESHOLDS) -> dict[float, float]:
    """{t: foreground_dice at t} over `thresholds`."""
    return {float(t): foreground_dice(probs, truth, background, float(t)) for t in thresholds}


def choose_decision(probs_by_tta: Mapping[bool, Sequence[np.ndarray]], truth: Sequence[np.ndarray],
                    background: int, scan_thresholds: bool = True, fixed_threshold: float | None = None,
                    min_gain: float = MIN_GAIN) -> dict[str, Any]:
    """The decision record of model.json: {"threshold", "tta", "scores", "chosen_dice", "gain", "reason"}.

    Args:
        probs_by_tta: validation probabilities without flips (key False) and/or with them (key True); the
            keys present are the TTA settings allowed (one key when --tta/--no-tta was given).
        truth: the validation masks, (H, W) class ids per image.
        background: the background class.
        scan_thresholds: False when --threshold fixed the rule: then `fixed_threshold` (None = argmax) is
            used and only TTA is chosen.
    """
    scores: dict[str, Any] = {}
    ladder: list[tuple[Decision, float, str]] = []  # (decision, score, name) in order of cost
    for tta in sorted(probs_by_tta):  # False first: flips cost 8 passes
        probs, suffix = probs_by_tta[tta], "_tta" if tta else ""
        if not scan_thresholds:
            score = foreground_dice(probs, truth, background, fixed_threshold)
            scores[f"fixed{suffix}"] = {"threshold": fixed_threshold, "dice": score}
            ladder.append((Decision(fixed_threshold, tta), score, f"fixed{suffix}"))
            continue
        base = foreground_dice(probs, truth, background, None)
        curve = threshold_curve(probs, truth, background)
        best_t = max(curve, key=lambda t: (curve[t], -abs(t - 0.5)))  # ties: the one nearest 0.5
        scores[f"argmax{suffix}"] = base
        scores[f"threshold{suffix}"] = {"threshold": best_t, "dice": curve[best_t],
                                        "curve": {f"{t:.2f}": round(d, 5) for t, d in curve.items()}}
        ladder += [(Decision(None, tta), base, f"argmax{suffix}"), (Decision(best_t, tta), curve[best_t],
                                                                     f"threshold{suffix}")]
    return choose_on_ladder(ladder, min_gain, "validation foreground Dice", scores)


def choose_on_ladder(ladder: Sequence[tuple[Decision, float, str]], min_gain: float, score_name: str,
                     scores: dict[str, Any]) -> dict[str, Any]:
    """The one rule: the cheapest candidate is the baseline; each costlier one, in order, replaces the
    current choice only if its score is >= the current one's + `min_gain`.

    Args:
        ladder: (decision, score, name) from the cheapest to the costliest.
        score_name: what the score is, for the reason ("validation foreground Dice", ...).
        scores: the record's "scores" block (every candidate's, as measured).
    Returns the decision record of model.json (choose_decision's docstring).
    """
    chosen, chosen_score, chosen_name = ladder[0]
    baseline = chosen_score
    for decision, score, name in ladder[1:]:
        if score >= chosen_score + min_gain:
            chosen, chosen_score, chosen_name = decision, score, name
    reason = (f"{chosen.describe()}: {score_name} {chosen_score:.4f} against {baseline:.4f} for "
              f"{ladder[0][0].describe()}; a costlier rule must gain >= {min_gain:g} (chosen on the validation "
              "images themselves, so the gain is optimistic)")
    return {"threshold": chosen.threshold, "tta": chosen.tta, "chosen": chosen_name, "scores": scores,
            "chosen_dice": chosen_score, "gain": chosen_score - baseline, "min_gain": min_gain, "reason": reason}


def choose_mirroring(dice_by_tta: Mapping[bool, float], min_gain: float = MIN_GAIN) -> dict[str, Any]:
    """The decision record of a volume run: the argmax always (no threshold is scanned for volumes), with
    test-time mirroring only if it gains `min_gain`.

    Args:
        dice_by_tta: the validation score without (False) and/or with (True) mirroring: the mean over the
            validation cases and foreground classes of the per-case Dice (evaluation.volumes' mean_dice).
            The keys present are the settings allowed (one key when --tta/--no-tta was given).
    """
    ladder = [(Decision(None, tta), float(dice_by_tta[tta]), "argmax_tta" if tta else "argmax")
              for tta in sorted(dice_by_tta)]  # False first: mirroring costs 8 passes
    return choose_on_ladder(ladder, min_gain, "validation mean per-case Dice",
                            {name: score for _, score, name in ladder})
