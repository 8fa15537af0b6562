"""The adaptive default recipe: training settings chosen from a data set's fingerprint, each with its reason.

Every rule is a pure function of the fingerprint (utils.data.fingerprint) and the network's geometry;
a value given on the command line always wins (and is reported as such). The rules, and why:
- normalization: "per_image" when images differ in exposure, stain or polarity (the coefficient of
  variation of their median or their spread over 0.2, or both polarities in at least 10 % of images),
  else "global" (one fixed scale keeps absolute intensity, which homogeneous sets such as EM rely on).
- crop size: twice the 90th-percentile object width (the object plus as much context again), at least
  256 (the scale a depth-4 U-Net's receptive field covers), at most 512 (steps stay affordable on a CPU)
  and never larger than the smallest image; a multiple of 2^depth so every pooling stays even.
- foreground sampling: a third of the crops centred on a pixel of a rare class (under 15 % of pixels),
  as nnU-Net oversamples foreground, so crops that hold no object do not dominate the gradient.
- class weights: a thin minority class (under 15 % of pixels, median thickness along its skeleton at
  most 8 px: vessels, membranes of a sparse set) weighs 1.5 in the cross-entropy. With weight w the argmax of a
  calibrated model fires at posterior 1 / (1 + w) = 0.4, the F1-optimal threshold for F1 near 0.8
  (Lipton et al. 2014: the optimal threshold is F1* / 2); thin structures otherwise lose their
  uncertain edge pixels to the majority class.
"""
from __future__ import annotations

import dataclasses
from typing import Any

HETEROGENEOUS_CV = 0.2
MIXED_POLARITY = 0.1
RARE_FRACTION = 0.15
THIN_WIDTH = 8.0
THIN_CLASS_WEIGHT = 1.5
FOREGROUND_SAMPLING = 1.0 / 3.0
MIN_CROP, MAX_CROP = 256, 512


@dataclasses.dataclass(frozen=True)
class Choice:
    """One setting of the recipe: its flag, the value in effect and why."""

    flag: str
    value: Any
    reason: str


def choose_normalization(fingerprint: dict[str, Any]) -> Choice:
    n = fingerprint["images"]
    for c, stats in enumerate(fingerprint["intensity"]):
        cv = max(stats["median_cv"], stats["spread_cv"])
        if cv > HETEROGENEOUS_CV:
            return Choice("normalization", "per_image", f"images differ in intensity (channel {c}: coefficient "
                          f"of variation {cv:.2f} > {HETEROGENEOUS_CV} across images): per-image percentile clip "
                          "and rescale")
        minority = min(stats["bright_on_dark"], stats["dark_on_bright"])
        if n and minority / n >= MIXED_POLARITY:
            return Choice("normalization", "per_image", f"images differ in polarity (channel {c}: "
                          f"{stats['bright_on_dark']} bright-on-dark, {stats['dark_on_bright']} dark-on-bright): "
                          "per-image percentile clip and rescale")
    return Choice("normalization", "global", "images share one intensity scale (coefficients of variation <= "
                  f"{HETEROGENEOUS_CV}, one polarity): fixed global scaling keeps absolute intensity")


def choose_crop_size(fingerprint: dict[str, Any], depth: int) -> Choice:
    align = 2 ** depth
    widest = max((o["width"]["p90"] for o in fingerprint["objects"].values()), default=0.0)
    wanted = max(MIN_CROP, int(-(-2 * widest // align)) * align)
    limit = fingerprint["smallest_side"] // align * align
    crop = min(wanted, MAX_CROP, limit)
    if crop < align:
        crop = align
    why = f"2 x the 90th-percentile object width ({widest:.0f} px), at least {MIN_CROP}, at most {MAX_CROP}"
    if crop == limit and limit < min(wanted, MAX_CROP):
        why += f", limited by the smallest image side ({fingerprint['smallest_side']} px)"
    return Choice("crop_size", crop, why + f"; a multiple of 2^depth = {align}")


def rare_classes(fingerprint: dict[str, Any]) -> list[str]:
    """Classes under RARE_FRACTION of all pixels, never the most frequent one."""
    fractions = fingerprint["class_fraction"]
    majority = max(fractions, key=fractions.get)
    return [name for name, f in fractions.items() if name != majority and f < RARE_FRACTION]


def choose_foreground_sampling(fingerprint: dict[str, Any]) -> Choice:
    rare = rare_classes(fingerprint)
    if not rare:
        return Choice("foreground_sampling", 0.0, f"no class under {RARE_FRACTION:.0%} of pixels: uniform crops")
    listed = ", ".join(f"{n} {fingerprint['class_fraction'][n]:.1%}" for n in rare)
    return Choice("foreground_sampling", round(FOREGROUND_SAMPLING, 4),
                  f"rare classes ({listed}): a third of the crops centred on one of their pixels")


def choose_class_weights(fingerprint: dict[str, Any]) -> Choice:
    names = list(fingerprint["class_fraction"])
    thin = [n for n in rare_classes(fingerprint) if fingerprint["objects"][n]["thickness"]["median"] <= THIN_WIDTH]
    if not thin:
        return Choice("class_weights", "none", "no thin minority class: unweighted cross-entropy")
    weights = [THIN_CLASS_WEIGHT if n in thin else 1.0 for n in names]
    listed = ", ".join(f"{n} (median thickness {fingerprint['objects'][n]['thickness']['median']:.1f} px)"
                       for n in thin)
    return Choice("class_weights", ",".join(f"{w:g}" for w in weights),
                  f"thin minority classes {listed}: weight {THIN_CLASS_WEIGHT} moves the argmax to posterior "
                  f"{1 / (1 + THIN_CLASS_WEIGHT):.2f}, near the F1-optimal threshold")


def choose_recipe(fingerprint: dict[str, Any], requested: dict[str, Any], depth: int,
                  crop_is_free: bool = True) -> list[Choice]:
    """The recipe's settings: for each flag, the command line's value if `requested` holds one that is
    not "auto"/None, else the rule's. `crop_is_free` is False where the architecture fixes the crop
    (valid padding: the paper's 572 tile)."""
    rules = {"normalization": lambda: choose_normalization(fingerprint),
             "foreground_sampling": lambda: choose_foreground_sampling(fingerprint),
             "class_weights": lambda: choose_class_weights(fingerprint)}
    if crop_is_free:
        rules["crop_size"] = lambda: choose_crop_size(fingerprint, depth)
    choices = []
    for flag, rule in rules.items():
        given = requested.get(flag)
        choices.append(rule() if given in (None, "auto") else Choice(flag, given, "given on the command line"))
    return choices


def parse_class_weights(text: str, num_classes: int) -> list[float] | None:
    """'none' -> None; 'w0,w1,...' -> one positive float per class (ValueError otherwise)."""
    if text == "none":
        return None
    weights = [float(w) for w in text.split(",")]
    if len(weights) != num_classes or min(weights) <= 0:
        raise ValueError(f"expected {num_classes} positive comma-separated weights, got {text!r}")
    return weights
