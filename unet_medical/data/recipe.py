"""The adaptive default recipe: training settings chosen from a data set's fingerprint, each with its reason.

Every rule is a pure function of the fingerprint (utils.data.fingerprint) and the network's geometry;
a value given on the command line always wins (and is reported as such). The rules, and why:
- normalization: "per_image" when images differ in exposure, stain or polarity (the coefficient of
  variation of their median or their spread over 0.2, or both polarities in at least 10 % of images),
  else "global" (one fixed scale keeps absolute intensity, which homogeneous sets such as EM rely on).
- input scale: 1, or the largest power of 1/2 that shrinks the 90th-percentile object width to at most
  3/4 of the largest affordable crop (512 px): objects wider than 384 px are seen downsampled, the crop then
  still holds the whole object with context around it (nnU-Net lowers the resolution where objects are
  large). Predictions are upsampled back and scored at the input's resolution.
- crop size: twice the 90th-percentile object width (the object plus as much context again), at least
  256 (the scale a depth-4 U-Net's receptive field covers), at most 512 (steps stay affordable on a CPU)
  and never larger than the smallest image; a multiple of 2^depth so every pooling stays even. Widths and
  image sides are measured at the input scale.
- depth: the smallest depth from 4 to 7 whose bottleneck receptive field (9 * 2^depth - 4 px: 140, 284,
  572, 1148) covers the 90th-percentile object width (or the whole crop, if objects are wider), while the
  deepest feature map stays at least 4 px wide (nnU-Net pools until the map is 4-8 px). Small objects keep
  depth 4 (ISBI EM, nuclei, vessels: widths 16-51 px). Images under 64 px on a side (slices of small MR
  crops) get fewer poolings, as many as leave the crop's deepest map 4 px wide, rather than a crop cut down
  to a multiple of 16 (a 31 px side: depth 2 and a 28 px crop, not depth 4 and 16 px).
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
import math
from typing import Any

from unet_medical.model.unet import receptive_field

HETEROGENEOUS_CV = 0.2
MIXED_POLARITY = 0.1
RARE_FRACTION = 0.15
THIN_WIDTH = 8.0
THIN_CLASS_WEIGHT = 1.5
FOREGROUND_SAMPLING = 1.0 / 3.0
MIN_CROP, MAX_CROP = 256, 512
MIN_DEPTH, MAX_DEPTH = 4, 7
DEEPEST_MAP = 4  # px: the narrowest bottleneck map the depth rule accepts (nnU-Net stops at 4-8 px)
OBJECT_SHARE = 0.75  # a (scaled) object may span at most this share of the largest crop
SMALLEST_SCALE = 0.125


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


def widest_object(fingerprint: dict[str, Any]) -> float:
    """The 90th-percentile object width (pixels) of the class with the widest objects."""
    return max((o["width"]["p90"] for o in fingerprint["objects"].values()), default=0.0)


def scaled_side(side: int, scale: float) -> int:
    """An image side (pixels) after resampling by `scale`: floor(side * scale + 0.5), at least 1.
    The one rounding rule of data.resample and the SavedModel's in-graph resize."""
    return max(1, int(math.floor(side * scale + 0.5)))


def choose_input_scale(fingerprint: dict[str, Any]) -> Choice:
    """1, or the largest power of 1/2 (down to 1/8) bringing the widest objects to OBJECT_SHARE of MAX_CROP."""
    widest, fits = widest_object(fingerprint), OBJECT_SHARE * MAX_CROP
    scale = 1.0
    while scale * widest > fits and scale > SMALLEST_SCALE:
        scale /= 2
    if scale == 1.0:
        return Choice("input_scale", 1.0, f"the 90th-percentile object width ({widest:.0f} px) fits a "
                      f"{MAX_CROP} px crop with context (<= {fits:.0f} px): full resolution")
    return Choice("input_scale", scale, f"the 90th-percentile object width ({widest:.0f} px) exceeds "
                  f"{fits:.0f} px ({OBJECT_SHARE:.0%} of the largest crop, {MAX_CROP} px): images downsampled by "
                  f"{scale:g} ({scale * widest:.0f} px objects), predictions upsampled back to the input size")


def _crop_target(fingerprint: dict[str, Any], scale: float) -> tuple[float, int, int]:
    """(scaled widest object width, wanted crop before alignment, scaled smallest image side), pixels."""
    widest = widest_object(fingerprint) * scale
    smallest = scaled_side(fingerprint["smallest_side"], scale)
    return widest, min(max(MIN_CROP, math.ceil(2 * widest)), MAX_CROP, smallest), smallest


def poolings_for_side(side: int) -> int:
    """The most poolings, 1 to MIN_DEPTH, after which a crop of `side` px (aligned down to 2^d) is still
    DEEPEST_MAP px wide: floor(log2(side / DEEPEST_MAP)), so MIN_DEPTH for any side of 64 px or more."""
    if side < 2 * DEEPEST_MAP:
        return 1
    return min(MIN_DEPTH, int(math.floor(math.log2(side / DEEPEST_MAP))))


def choose_depth(fingerprint: dict[str, Any], scale: float = 1.0) -> Choice:
    """Smallest depth in [MIN_DEPTH, MAX_DEPTH] whose receptive field covers the scaled widest object, or
    the crop if objects are wider; fewer (poolings_for_side) when the smallest image side is under 64 px.

    Covering at most the crop also keeps the deepest map of the crop at least DEEPEST_MAP px wide, with no
    cap of its own: depth d > MIN_DEPTH is chosen only when receptive_field(d - 1) = 9 * 2^(d-1) - 4 < crop,
    so crop / 2^d > 4.5 - 2 / 2^d, i.e. at least 4 px after aligning the crop to 2^d (nnU-Net: 4-8 px).
    """
    widest, crop, smallest = _crop_target(fingerprint, scale)
    few = poolings_for_side(smallest)
    if few < MIN_DEPTH:
        final_crop = choose_crop_size(fingerprint, few, scale).value
        return Choice("depth", few, f"the smallest image side is {smallest} px (at scale {scale:g}), under "
                      f"{DEEPEST_MAP * 2 ** MIN_DEPTH}: {few} poolings leave its {final_crop} px crop a "
                      f"{final_crop // 2 ** few} px deepest map (nnU-Net pools until 4-8 px)")
    needed = min(widest, crop)
    depth = next((d for d in range(MIN_DEPTH, MAX_DEPTH + 1) if receptive_field(d) >= needed), MAX_DEPTH)
    target = (f"{needed:.0f} px (the 90th-percentile object width{', or the crop,' if widest > crop else ''} "
              f"at scale {scale:g})")
    if depth == MIN_DEPTH:
        why = f"receptive field {receptive_field(depth)} px >= {target}; depth {MIN_DEPTH} is the least"
    else:
        why = (f"receptive field {receptive_field(depth)} px >= {target}, {receptive_field(depth - 1)} px at "
               f"depth {depth - 1} is not")
    final_crop = choose_crop_size(fingerprint, depth, scale).value
    return Choice("depth", depth, why + f"; the deepest map of the {final_crop} px crop is {final_crop // 2 ** depth} px")


def choose_crop_size(fingerprint: dict[str, Any], depth: int, scale: float = 1.0) -> Choice:
    align = 2 ** depth
    widest, _, smallest = _crop_target(fingerprint, scale)
    wanted = max(MIN_CROP, int(-(-2 * widest // align)) * align)
    limit = smallest // align * align
    crop = min(wanted, MAX_CROP, limit)
    if crop < align:
        crop = align
    at = f" at scale {scale:g}" if scale != 1 else ""
    why = f"2 x the 90th-percentile object width ({widest:.0f} px{at}), at least {MIN_CROP}, at most {MAX_CROP}"
    if crop == limit and limit < min(wanted, MAX_CROP):
        why += f", limited by the smallest image side ({smallest} px{at})"
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


def choose_recipe(fingerprint: dict[str, Any], requested: dict[str, Any], depth: int | None = None,
                  crop_is_free: bool = True) -> list[Choice]:
    """The recipe's settings: for each flag, the command line's value if `requested` holds one that is
    not "auto"/None, else the rule's. `depth` is the network's depth when it is fixed (typed, or the
    --init_from run's); None lets the rule choose it. `crop_is_free` is False where the architecture fixes
    the crop (valid padding: the paper's 572 tile), which also keeps the paper's depth 4."""
    choices: dict[str, Choice] = {}

    def decide(flag: str, rule: Any) -> Any:
        given = requested.get(flag)
        choices[flag] = rule() if given in (None, "auto") else Choice(flag, given, "given on the command line")
        return choices[flag].value

    decide("normalization", lambda: choose_normalization(fingerprint))
    scale = decide("input_scale", lambda: choose_input_scale(fingerprint))
    if depth is not None:
        choices["depth"] = Choice("depth", depth, "given on the command line (or by the --init_from run)")
    elif crop_is_free:
        depth = decide("depth", lambda: choose_depth(fingerprint, scale))
    else:
        depth = decide("depth", lambda: Choice("depth", MIN_DEPTH, "valid padding: the paper's depth 4"))
    if crop_is_free:
        decide("crop_size", lambda: choose_crop_size(fingerprint, depth, scale))
    decide("foreground_sampling", lambda: choose_foreground_sampling(fingerprint))
    decide("class_weights", lambda: choose_class_weights(fingerprint))
    return list(choices.values())


def parse_class_weights(text: str, num_classes: int) -> list[float] | None:
    """'none' -> None; 'w0,w1,...' -> one positive float per class (ValueError otherwise)."""
    if text == "none":
        return None
    weights = [float(w) for w in text.split(",")]
    if len(weights) != num_classes or min(weights) <= 0:
        raise ValueError(f"expected {num_classes} positive comma-separated weights, got {text!r}")
    return weights
