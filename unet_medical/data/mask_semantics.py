"""What a data set's mask values mean, decided once from all masks together, and their class ids.

Publishers store masks in many ways: binary 0/1, 0/255 or 0/65535; class ids 0..K-1; colour palette
indices; instance label images (one id per object); binary masks with anti-aliased edges; binary
masks saved as JPEG. Deciding file by file is wrong: a nuclei image with 3 objects looks like 3
classes, one with 40 like instances, and an anti-aliased edge value looks like a class of its own.
So the values of every mask are pooled, one interpretation is chosen for the set (and described in
one line for the run log), and anything ambiguous raises UNetError naming the flag that settles it.

The interpretations, tried in this order (K = --num_classes):
- exact: values within {0, 1}, {0, 255} or, for 16-bit masks, {0, 65535} (K unset or 2), or within
  0..K-1 (K > 2): taken as they are.
- instance labels (K unset): 0 plus more than INSTANCE_VALUES ids, at least 90 % of them one
  connected blob in their mask: foreground = id > 0.
- anti-aliased binary (K unset or 2, lossless files): 0 and the full-scale value (255, 65535 or 1.0)
  plus intermediate values that sit only on edges (no 3x3 block of one intermediate value, which
  would be a region of its own: a class): thresholded at half scale.
- lossy (JPEG, lossy WebP): the codec's ringing spreads every level into a cloud of values. Two
  levels (K unset or 2) are the modes either side of a two-means (Otsu) split of the pooled histogram,
  thresholded at their midpoint; K > 2 levels are k * 255 / (K - 1), each pixel to the nearest. A
  mask holding a 3x3 block of values far from every level (a quarter of the level spacing) has more
  levels than that: refused, naming the file.
"""
from __future__ import annotations

import collections
import dataclasses
import warnings
from typing import Sequence

import numpy as np
from scipy import ndimage

from unet_medical.base.errors import UNetError

_MAX_SHOWN = 10  # names or values listed in one error message

# More distinct values than this in a set without --num_classes may be instance ids (see above).
INSTANCE_VALUES = 8
INSTANCE_BLOB_SHARE = 0.9  # share of (mask, id) pairs that must be one connected blob
# Levels of a lossy mask closer than this (8-bit grey levels) cannot be told apart from codec noise.
LOSSY_MIN_GAP = 16.0
# A connected run of this many 3x3 blocks of off-level values is a region (a level of its own), not ringing.
SOLID_PIXELS = 4


class DataWarning(UserWarning):
    """Suspicious but usable data (for example masks that hold a single class)."""


@dataclasses.dataclass(frozen=True)
class MaskSemantics:
    """One interpretation of a data set's mask values.

    Attributes:
        description: one line for the run log ("binary 0/255", "lossy binary (JPEG): ...").
        threshold: class 1 = value > threshold (binary interpretations); None otherwise.
        levels: lossy class levels: class k = the nearest level's index; None otherwise.
        Neither threshold nor levels: the values are the class ids.
    """

    description: str
    threshold: float | None = None
    levels: tuple[float, ...] | None = None

    def class_ids(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) values -> (H, W) uint8 class ids."""
        if self.threshold is not None:
            return (mask > self.threshold).astype(np.uint8)
        if self.levels is not None:
            distance = np.abs(mask.astype(np.float32)[..., None] - np.asarray(self.levels, np.float32))
            return np.argmin(distance, axis=-1).astype(np.uint8)
        return mask.astype(np.uint8)


def mask_values(mask: np.ndarray) -> np.ndarray:
    """Sorted distinct values of a mask (bincount for uint8: ~10x faster than np.unique)."""
    if mask.dtype == np.bool_:  # astype, not view: a bool's byte may be 255 (Pillow's 1-bit images)
        return np.flatnonzero(np.bincount(mask.ravel().astype(np.uint8), minlength=2))
    if mask.dtype == np.uint8:
        return np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    return np.unique(mask)


def _shown(values: np.ndarray) -> str:
    return ", ".join(str(v) for v in values[:_MAX_SHOWN].tolist()) + (", ..." if len(values) > _MAX_SHOWN else "")


def _checked_values(mask: np.ndarray, source: str) -> np.ndarray:
    """The mask's distinct values, after the checks every interpretation needs."""
    if mask.size == 0:
        raise UNetError(f"{source}: empty mask (shape {mask.shape}); expected a labelled image")
    if not (mask.dtype == np.bool_ or np.issubdtype(mask.dtype, np.integer)
            or np.issubdtype(mask.dtype, np.floating)):
        raise UNetError(f"{source}: unsupported mask dtype {mask.dtype}; expected integer class ids")
    values = mask_values(mask)
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        raise UNetError(f"{source}: mask holds NaN or infinite values; expected integer class ids")
    return values


def _is_integral(values: np.ndarray) -> bool:
    return bool(np.all(np.mod(values, 1) == 0)) if np.issubdtype(values.dtype, np.floating) else True


def _full_scale(masks: Sequence[np.ndarray]) -> float:
    """The value a binary mask's foreground takes at full scale: 65535 (uint16), 1.0 (float), else 255."""
    if all(m.dtype == np.uint16 for m in masks):
        return 65535.0
    if all(np.issubdtype(m.dtype, np.floating) for m in masks):
        return 1.0
    return 255.0


# --------------------------------------------------------------------------- spatial tests (2-D masks)
def _flat_pixels(mask: np.ndarray) -> np.ndarray:
    """Pixels whose 3x3 neighbourhood holds one value (the border repeats the edge), bool like mask."""
    return ndimage.maximum_filter(mask, size=3, mode="nearest") == ndimage.minimum_filter(mask, size=3, mode="nearest")


def _largest_region(pixels: np.ndarray) -> int:
    """Size (pixels) of the largest 8-connected component of a bool array; 0 if it is empty."""
    labels, n = ndimage.label(pixels, structure=np.ones((3,) * pixels.ndim))
    return int(np.bincount(labels.ravel())[1:].max()) if n else 0


def _blob_counts(mask: np.ndarray) -> tuple[int, int]:
    """(ids, ids forming exactly one 8-connected blob) of an instance label image."""
    from skimage.measure import label  # labels connected regions of equal value, unlike ndimage.label

    components = label(mask, background=0, connectivity=mask.ndim)
    _, first = np.unique(components.ravel(), return_index=True)
    owner = mask.ravel()[first]
    owner = owner[owner != 0]
    _, per_id = np.unique(owner, return_counts=True)
    return len(per_id), int(np.sum(per_id == 1))


def _looks_like_instances(masks: Sequence[np.ndarray], union: np.ndarray) -> bool:
    """0 plus many ids, (nearly) each one connected blob in its mask: an instance label image."""
    if len(union) <= INSTANCE_VALUES or union.min() != 0 or not _is_integral(union):
        return False
    if any(m.ndim != 2 for m in masks):
        return False
    counts = np.array([_blob_counts(m) for m in masks])
    return bool(counts[:, 0].sum() and counts[:, 1].sum() >= INSTANCE_BLOB_SHARE * counts[:, 0].sum())


def _looks_anti_aliased(masks: Sequence[np.ndarray], union: np.ndarray, high: float) -> bool:
    """0 and full scale plus intermediate values on edges only (never a flat 3x3 block of one value)."""
    if union.min() != 0 or union.max() != high or any(m.ndim != 2 for m in masks):
        return False
    between = 0
    for mask in masks:
        intermediate = (mask != 0) & (mask != high)
        if np.any(intermediate & _flat_pixels(mask)):
            return False
        between += int(intermediate.sum())
    # Soft labels (a probability map saved as PNG) are not a binary mask with smooth edges.
    return between < 0.5 * sum(m.size for m in masks)


# --------------------------------------------------------------------------- lossless decision
def _binary_high(values: np.ndarray, allowed: Sequence[int]) -> int | None:
    """The full-scale value h of a mask whose values lie within {0, h} (h in allowed), else None."""
    present = set(values.tolist())
    return next((high for high in allowed if present <= {0, high}), None)


def _binary_levels(masks: Sequence[np.ndarray]) -> tuple[int, ...]:
    """Foreground values of binary masks: 1 and 255; 65535 too if every mask is 16-bit (elsewhere a label)."""
    return (1, 255, 65535) if all(m.dtype == np.uint16 for m in masks) else (1, 255)


def _exact(values_of: Sequence[np.ndarray], union: np.ndarray, masks: Sequence[np.ndarray],
           num_classes: int | None) -> MaskSemantics | None:
    """The interpretation of values that need no judgement, or None."""
    if num_classes in (None, 2):
        high = _binary_high(union, _binary_levels(masks))
        if high is not None:
            return MaskSemantics(f"binary 0/{high}", threshold=high / 2)
        highs = [_binary_high(v, _binary_levels([m])) for v, m in zip(values_of, masks)]
        if None not in highs:  # 1-bit or 0/1 files among 0/255 ones: each is binary, class 1 = value > 0
            counts = collections.Counter(h for h, v in zip(highs, values_of) if v.max() > 0)
            mix = ", ".join(f"0/{h} in {n} files" for h, n in sorted(counts.items()))
            return MaskSemantics(f"binary, mixed conventions ({mix})", threshold=0.0)
        return None
    if _is_integral(union) and union.min() >= 0 and union.max() < num_classes:
        return MaskSemantics(f"class ids 0..{num_classes - 1}")
    return None


def _invalid(values_of: Sequence[np.ndarray], masks: Sequence[np.ndarray], names: Sequence[str],
             union: np.ndarray, num_classes: int | None) -> UNetError:
    """The error for a set no interpretation fits, naming the first mask that breaks the rules."""
    binary = num_classes in (None, 2)
    limit = 2 if binary else int(num_classes)

    def fits(values: np.ndarray, mask: np.ndarray) -> bool:
        if binary:
            return _binary_high(values, _binary_levels([mask])) is not None
        return _is_integral(values) and values.min() >= 0 and values.max() < limit

    hint = ""
    if binary and _is_integral(union) and union.min() >= 0 and union.max() < 64:  # looks like class ids
        hint = f"; for {int(union.max()) + 1} classes set num_classes={int(union.max()) + 1}"
    expected = ("{0, 255} or {0, 1} for binary masks" if binary
                else f"class ids 0..{limit - 1} (num_classes={limit})")
    for values, mask, name in zip(values_of, masks, names):
        if not fits(values, mask):
            return UNetError(f"{name}: mask values {{{_shown(values)}}} are not valid labels: expected "
                             f"{expected}{hint}")
    return UNetError(f"{names[0]}: mask values {{{_shown(union)}}} over the data set are not valid labels: "
                     f"expected {expected}{hint}")


def decide_lossless(masks: Sequence[np.ndarray], names: Sequence[str], num_classes: int | None) -> MaskSemantics:
    """The one interpretation of a set of losslessly stored masks (see the module docstring).

    Args:
        masks: each (H, W) bool, integer or float values.
        names: one per mask, for messages.
        num_classes: None, 2 (binary) or K > 2 (class ids 0..K-1).
    """
    values_of = [_checked_values(m, n) for m, n in zip(masks, names)]
    union = np.unique(np.concatenate(values_of))
    exact = _exact(values_of, union, masks, num_classes)
    if exact is not None:
        return exact
    if num_classes is None and _looks_like_instances(masks, union):
        few = len(union) <= 2 * INSTANCE_VALUES + 1  # few enough ids to be classes: say how to read them so
        note = f"; if they are class ids set num_classes={int(union.max()) + 1}" if few else ""
        return MaskSemantics(f"instance labels ({len(union) - 1} ids, each a connected blob): foreground = id > 0"
                             + note, threshold=0.0)
    high = _full_scale(masks)
    if num_classes in (None, 2) and _looks_anti_aliased(masks, union, high):
        return MaskSemantics(f"anti-aliased binary 0/{high:g} ({len(union) - 2} edge values between): "
                             f"thresholded at {high / 2:g}", threshold=high / 2)
    raise _invalid(values_of, masks, names, union, num_classes)


# --------------------------------------------------------------------------- lossy decision
def two_means_modes(histogram: np.ndarray) -> tuple[float, float]:
    """The modes of the two clusters of a value histogram split by two-means (Otsu's threshold).

    Args:
        histogram: (L,) pixel counts of values 0..L-1.
    Returns:
        (low mode, high mode); equal when the histogram has a single cluster.
    """
    counts = histogram.astype(np.float64)
    levels = np.arange(len(counts), dtype=np.float64)
    weight = np.cumsum(counts)[:-1]
    total = counts.sum()
    mean_low = np.cumsum(counts * levels)[:-1] / np.maximum(weight, 1e-12)
    mean_high = (np.sum(counts * levels) - np.cumsum(counts * levels)[:-1]) / np.maximum(total - weight, 1e-12)
    between = weight * (total - weight) * (mean_high - mean_low) ** 2
    split = int(np.argmax(between)) + 1  # values < split form the low cluster
    if counts[:split].sum() == 0 or counts[split:].sum() == 0:
        mode = float(np.argmax(counts))
        return mode, mode
    # Modes, not means: ringing spreads a tail of values towards the other level and would pull a mean.
    return float(np.argmax(counts[:split])), float(split + np.argmax(counts[split:]))


def _off_level_region(mask: np.ndarray, levels: np.ndarray, spacing: float) -> int:
    """Largest run (pixels) of 3x3 blocks whose values are all over spacing / 4 from every level."""
    off = np.min(np.abs(mask.astype(np.float32)[..., None] - levels.astype(np.float32)), axis=-1) > spacing / 4
    return _largest_region(ndimage.minimum_filter(off, size=3, mode="nearest"))


def decide_lossy(masks: Sequence[np.ndarray], names: Sequence[str], num_classes: int | None,
                 codec: str = "JPEG") -> MaskSemantics:
    """The one interpretation of a set of lossy (JPEG, WebP) masks: see the module docstring.

    Args:
        masks: each (H, W) uint8 gray levels (colour masks reduced to luminance before).
        names: one per mask, for messages.
        num_classes: None, 2 (binary) or K > 2.
        codec: the lossy format, for messages.
    """
    values_of = [_checked_values(m, n) for m, n in zip(masks, names)]
    union = np.unique(np.concatenate(values_of))
    exact = _exact(values_of, union, masks, num_classes)
    # Levels far apart that the codec left intact (flat masks, a high quality): nothing to guess. Close
    # levels (0/1, class ids 0..K-1) may look intact while noise moved pixels to a neighbouring id.
    if exact is not None and exact.threshold is not None and exact.threshold >= LOSSY_MIN_GAP:
        return exact
    if union.max() < LOSSY_MIN_GAP and union.max() > 0:
        raise UNetError(f"{names[0]}: {codec} mask with values up to {union.max()} (class ids or 0/1 stored lossy) "
                        "cannot be told from compression noise; save the masks lossless (PNG/TIFF), or as 0/255")
    if union.min() < 0 or union.max() > 255 or not _is_integral(union):
        raise UNetError(f"{names[0]}: lossy mask with values in [{union.min()}, {union.max()}]; expected 8-bit gray")
    classes = num_classes or 2
    histogram = sum(np.bincount(m.ravel().astype(np.int64), minlength=256) for m in masks)
    if classes == 2:
        low, high = two_means_modes(histogram)
        if high - low < LOSSY_MIN_GAP:  # one cluster: the masks hold a single class; mid-grey decides which
            low, high = (low, 255.0) if low < 127.5 else (0.0, low)
        levels = np.array([low, high])
    else:
        levels = np.arange(classes) * 255.0 / (classes - 1)
        if union.max() < levels[1] / 2:
            raise UNetError(f"{names[0]}: class ids 0..{classes - 1} stored as {codec} (values up to {union.max()}) "
                            "cannot be told from compression noise; save the masks lossless (PNG/TIFF)")
    spacing = float(np.min(np.diff(levels)))
    for mask, name in zip(masks, names):
        if _off_level_region(mask, levels, spacing) >= SOLID_PIXELS:
            shown = ", ".join(f"{v:g}" for v in levels)
            flag = ("; set num_classes=K if the masks hold K equally spaced class levels" if num_classes is None
                    else "")
            raise UNetError(f"{name}: {codec} mask with regions of values far from the levels {{{shown}}}: more "
                            f"than {classes} levels, which a lossy format makes ambiguous{flag}, or save the "
                            "masks lossless (PNG/TIFF)")
    if classes == 2:
        threshold = float(levels.mean())
        return MaskSemantics(f"lossy binary ({codec}): thresholded at {threshold:g}, the midpoint of the value "
                             f"clusters {levels[0]:g} and {levels[1]:g}", threshold=threshold)
    return MaskSemantics(f"lossy class levels ({codec}): each value to the nearest of "
                         f"{', '.join(f'{v:g}' for v in levels)}", levels=tuple(float(v) for v in levels))


# --------------------------------------------------------------------------- a whole data set
def masks_to_class_ids(masks: Sequence[np.ndarray], names: Sequence[str], num_classes: int | None,
                       lossy: Sequence[bool], source: str, codec: str = "JPEG") -> tuple[list[np.ndarray], str]:
    """Class ids of every mask of a data set, read with one interpretation for the set.

    Lossless and lossy files are decided as two groups (a lossy cloud of values needs thresholds that
    would misread 0/1 PNGs). A lossy group whose values had to be thresholded gets one DataWarning.

    Args:
        masks: each (H, W) values as read (as_mask).
        names: one per mask, for messages.
        num_classes: None, 2 or K > 2.
        lossy: one per mask: True for masks stored with a lossy codec.
        source: the data set, for the warning.
        codec: the lossy format's name, for messages.
    Returns:
        ((H, W) uint8 class ids per mask, a one-line description of the interpretation for the log).
    """
    out: list[np.ndarray | None] = [None] * len(masks)
    parts = []
    for is_lossy in (False, True):
        index = [i for i, flag in enumerate(lossy) if flag == is_lossy]
        if not index:
            continue
        group, group_names = [masks[i] for i in index], [names[i] for i in index]
        semantics = (decide_lossy(group, group_names, num_classes, codec) if is_lossy
                     else decide_lossless(group, group_names, num_classes))
        if is_lossy and semantics.description.startswith("lossy"):
            warnings.warn(f"{source}: {len(index)} {codec} mask(s) read as {semantics.description}",
                          DataWarning, stacklevel=3)
        parts.append(semantics.description + (f" ({len(index)} {codec} masks)" if is_lossy and len(index) < len(masks)
                                              else ""))
        for i in index:
            out[i] = semantics.class_ids(masks[i])
    return [m for m in out if m is not None], "; ".join(parts)
