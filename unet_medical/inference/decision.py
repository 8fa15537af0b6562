"""How class probabilities become a label map: the argmax, or a foreground threshold, with or without TTA.

A run's decision is chosen on its validation fold when training ends (unet_medical.evaluation.decision),
recorded in model.json as {"threshold": t or None, "tta": bool, ...}, and applied by evaluate, predict,
the exported files' runtime path and the SavedModel's graph (export.serving), each through the rule below.

The threshold rule, for K classes of which one, `background`, is the background:
    foreground score s = 1 - p[background]
    label = background where s <= t, else the most probable non-background class.
With one foreground class this is "foreground where p > t"; at t = 0.5 it is the argmax (up to ties). With
two foreground classes (organ and lesion, two touching structures) the threshold moves the boundary between
foreground and background only; which structure a foreground pixel belongs to stays their argmax.

Flags: --threshold auto (the run's recorded choice; at training time: choose it) | argmax | a number in
(0, 1); --tta / --no-tta (unset: the run's recorded choice). No TensorFlow here.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from unet_medical.base.errors import UNetError
from unet_medical.inference.config import is_threshold

AUTO = "auto"
ARGMAX = "argmax"


@dataclasses.dataclass(frozen=True)
class Decision:
    """threshold: None for the argmax, else t in (0, 1) on the foreground score; tta: average the 8
    flips/rotations of each tile (inference.tiling.predict_tiles) before deciding."""

    threshold: float | None = None
    tta: bool = False

    def describe(self) -> str:
        rule = "argmax" if self.threshold is None else f"foreground threshold {self.threshold:g}"
        return f"{rule}, {'with' if self.tta else 'without'} test-time flips"


def parse_threshold(value: str | float | None) -> str | float:
    """The --threshold flag's value: "auto", "argmax" or a float in (0, 1). UNetError naming the flag."""
    if value is None or value in (AUTO, ARGMAX):
        return AUTO if value is None else value
    if not is_threshold(value):
        raise UNetError(f"--threshold={value!r}: expected auto, argmax or a number strictly between 0 and 1")
    return float(value)


def resolve_decision(threshold_flag: str | float | None, tta_flag: bool | None,
                     recorded: Mapping[str, Any] | None) -> Decision:
    """The decision evaluate/predict/export apply: flags win, else the run's recorded choice, else argmax
    without TTA (runs recorded before the choice existed)."""
    recorded = recorded or {}
    parsed = parse_threshold(threshold_flag)
    if parsed == AUTO:
        threshold = recorded.get("threshold")
    else:
        threshold = None if parsed == ARGMAX else float(parsed)
    tta = bool(recorded.get("tta", False)) if tta_flag is None else bool(tta_flag)
    return Decision(None if threshold is None else float(threshold), tta)


def foreground_classes(num_classes: int, background: int) -> list[int]:
    return [c for c in range(num_classes) if c != background]


def decide_labels(probs: np.ndarray, threshold: float | None, background: int) -> np.ndarray:
    """(..., K) float probabilities -> (...) int64 class ids by the module's rule (argmax if threshold is None)."""
    if threshold is None or probs.shape[-1] < 2:
        return probs.argmax(axis=-1)
    others = foreground_classes(probs.shape[-1], background)
    best_other = np.asarray(others)[probs[..., others].argmax(axis=-1)]
    score = 1.0 - probs[..., background]
    return np.where(score > threshold, best_other, background)
