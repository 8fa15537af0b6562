"""Segmentation metrics on whole images: Dice, IoU, pixel error and the ISBI 2012 V_rand / V_info.

Pure NumPy/SciPy, no TensorFlow: evaluation runs on full-size label maps after tiled inference.

Conventions shared by every function here:
- Class maps are integer arrays of class ids in [0, num_classes); any shape.
- Segment (instance) maps are integer label images; 0 means "no cell" (membrane).
- A score whose numerator and denominator are both empty (0 / 0) is 1.0: there was nothing to get
  wrong. This makes a class absent from both ground truth and prediction score Dice = IoU = 1.

ISBI 2012 scores follow Arganda-Carreras et al. (2015), "Crowdsourcing the creation of image
segmentation algorithms for connectomics", Front. Neuroanat. 9:142, restricted to the ground-truth
foreground (gt label != 0), with S the predicted and T the ground-truth segmentation:

    V_rand_split = sum_ij p_ij^2 / sum_k t_k^2     (1 when no gt cell is split)
    V_rand_merge = sum_ij p_ij^2 / sum_k s_k^2     (1 when no predicted segment merges gt cells)
    V_info_split = I(S; T) / H(S)                  (1 when no gt cell is split)
    V_info_merge = I(S; T) / H(T)                  (1 when no predicted segment merges gt cells)
    V = 2 / (1 / split + 1 / merge)                (harmonic mean; 1 is perfect)

Counting follows scikit-image (``skimage.metrics.adapted_rand_error`` and
``variation_of_information`` with ``ignore_labels=(0,)``), so the numbers can be checked against it:
the Rand sums count ordered pixel pairs, n * (n - 1) instead of n^2, and predicted label 0 inside
the gt foreground is one ordinary segment. Fiji's ISBI script instead treats predicted-boundary
pixels as singletons and thins boundaries first, so leaderboard numbers differ slightly.
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence, Tuple, Union

import numpy as np
from scipy import ndimage

from unet_medical.base.errors import UNetError
from unet_medical.base.registry import Registry
from unet_medical.inference.decision import decide_labels

ISBI_CLASS_NAMES = ("membrane", "interior")
INTERIOR_CLASS = 1

ArrayOrSlices = Union[np.ndarray, Sequence[np.ndarray]]

# Per-class scores reported by every evaluation as "{class}_{metric}": fn((C, C) confusion) -> float64 (C,).
# A plugin adds one with `@PER_CLASS_METRICS.register("name")`; it appears in eval_results.json.
PER_CLASS_METRICS: Registry[Callable[[np.ndarray], np.ndarray]] = Registry(
    "per-class metric", flag="unet_medical.evaluation.metrics.PER_CLASS_METRICS")


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, with an empty denominator giving 1.0 (nothing to get wrong).

    Every caller's numerator is bounded by its denominator, so denominator == 0 means 0 / 0.
    """
    return 1.0 if denominator == 0 else float(numerator) / float(denominator)


def _harmonic_mean(a: float, b: float) -> float:
    """2 / (1/a + 1/b), written so that a zero score gives 0 instead of a division error."""
    return 0.0 if a + b == 0 else 2.0 * a * b / (a + b)


# --- Class-level scores --------------------------------------------------------------------------


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Count pixels by (true class, predicted class).

    Args:
        y_true: integer class ids, any shape.
        y_pred: integer class ids, same shape as ``y_true``.
        num_classes: C; every id must lie in [0, C).

    Returns:
        int64 array (C, C); entry [i, j] counts pixels of true class i predicted as class j.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise UNetError(f"labels and predictions must have the same shape, got {y_true.shape} "
                        f"and {y_pred.shape}")
    if num_classes < 1:
        raise UNetError(f"num_classes must be >= 1, got {num_classes}")
    for name, arr in (("labels", y_true), ("predictions", y_pred)):
        if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != bool:
            raise UNetError(f"{name} must hold integer class ids, got dtype {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise UNetError(f"{name} must hold class ids in [0, {num_classes}), got values in "
                            f"[{arr.min()}, {arr.max()}]")
    codes = y_true.astype(np.int64).ravel() * num_classes + y_pred.astype(np.int64).ravel()
    return np.bincount(codes, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@PER_CLASS_METRICS.register("dice")
def dice_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Hard Dice 2TP / (2TP + FP + FN) per class from a (C, C) confusion matrix; float64 (C,)."""
    tp = np.diag(cm).astype(np.float64)
    denominator = cm.sum(axis=0) + cm.sum(axis=1)  # (TP + FP) + (TP + FN)
    return np.array([_ratio(2 * t, d) for t, d in zip(tp, denominator)])


@PER_CLASS_METRICS.register("iou")
def iou_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Hard IoU (Jaccard) TP / (TP + FP + FN) per class from a (C, C) confusion matrix.

    Returns float64 (C,).
    """
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    return np.array([_ratio(t, u) for t, u in zip(tp, union)])


def dice_per_class(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Hard Dice per class, float64 (C,); a class absent from both maps scores 1.0."""
    return dice_from_confusion(confusion_matrix(y_true, y_pred, num_classes))


def iou_per_class(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Hard IoU per class, float64 (C,); a class absent from both maps scores 1.0."""
    return iou_from_confusion(confusion_matrix(y_true, y_pred, num_classes))


def pixel_error(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of pixels whose label differs, in [0, 1]; 0.0 for empty inputs."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise UNetError(f"labels and predictions must have the same shape, got {y_true.shape} "
                        f"and {y_pred.shape}")
    return float(np.count_nonzero(y_true != y_pred)) / y_true.size if y_true.size else 0.0


# --- Segment-level (ISBI 2012) scores ------------------------------------------------------------


def segment_cells(interior_mask: np.ndarray) -> np.ndarray:
    """Label the 4-connected components of a 2-D cell-interior mask.

    Args:
        interior_mask: (H, W) bool or 0/1, True = cell interior.

    Returns:
        int32 (H, W) label image: 1..K for the K cells, 0 for membrane.
    """
    interior_mask = np.asarray(interior_mask)
    if interior_mask.ndim != 2:
        raise UNetError(f"segment_cells expects a 2-D mask, got shape {interior_mask.shape}")
    four_connected = ndimage.generate_binary_structure(2, 1)
    labels, _ = ndimage.label(interior_mask.astype(bool), structure=four_connected)
    return labels.astype(np.int32)


def _foreground_contingency(gt_labels: np.ndarray, pred_labels: np.ndarray
                            ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse contingency table over pixels where gt_labels != 0.

    Returns (n_ij, a, b) as float64 1-D arrays: the non-zero cell counts of the table, the gt
    segment sizes and the predicted segment sizes. Only occupied cells are kept (via np.unique on
    pair codes), so thousands of segments cost O(N log N), never a dense table.
    """
    gt_labels = np.asarray(gt_labels)
    pred_labels = np.asarray(pred_labels)
    if gt_labels.shape != pred_labels.shape:
        raise UNetError(f"ground-truth and predicted segmentations must have the same shape, got "
                        f"{gt_labels.shape} and {pred_labels.shape}")
    foreground = gt_labels != 0
    gt_ids, gt_index = np.unique(gt_labels[foreground], return_inverse=True)
    pred_ids, pred_index = np.unique(pred_labels[foreground], return_inverse=True)
    pair_codes = gt_index.astype(np.int64) * len(pred_ids) + pred_index
    _, n_ij = np.unique(pair_codes, return_counts=True)
    a = np.bincount(gt_index, minlength=len(gt_ids))
    b = np.bincount(pred_index, minlength=len(pred_ids))
    return n_ij.astype(np.float64), a.astype(np.float64), b.astype(np.float64)


def rand_scores(gt_labels: np.ndarray, pred_labels: np.ndarray) -> Dict[str, float]:
    """Foreground-restricted Rand scores (higher is better, 1 is perfect).

    Args:
        gt_labels: integer ground-truth segments, any shape; 0 = membrane, excluded.
        pred_labels: integer predicted segments, same shape (0 is an ordinary segment here).

    Returns:
        {"v_rand", "v_rand_split", "v_rand_merge"}; v_rand == 1 - skimage's adapted Rand error,
        v_rand_split == its "precision" and v_rand_merge == its "recall". All 1.0 when the ground
        truth has no foreground pixel pairs.
    """
    n_ij, a, b = _foreground_contingency(gt_labels, pred_labels)
    n = a.sum()
    # Ordered pairs of distinct pixels in the same segment: sum n (n - 1) = sum n^2 - N.
    same_in_both = n_ij @ n_ij - n
    same_in_gt = a @ a - n
    same_in_pred = b @ b - n
    split = _ratio(same_in_both, same_in_gt)
    merge = _ratio(same_in_both, same_in_pred)
    return {"v_rand": _harmonic_mean(split, merge), "v_rand_split": split, "v_rand_merge": merge}


def _entropy_bits(counts: np.ndarray) -> float:
    """Shannon entropy in bits of the distribution given by positive counts."""
    p = counts / counts.sum()
    return float(-(p @ np.log2(p)))


def info_scores(gt_labels: np.ndarray, pred_labels: np.ndarray) -> Dict[str, float]:
    """Foreground-restricted information-theoretic scores (higher is better, 1 is perfect).

    Args:
        gt_labels: integer ground-truth segments, any shape; 0 = membrane, excluded.
        pred_labels: integer predicted segments, same shape.

    Returns:
        {"v_info", "v_info_split", "v_info_merge"} with split = I / H(pred), merge = I / H(gt).
        I = H(gt) - H(gt | pred), where H(gt | pred) is the "false merges" entropy that
        skimage's variation_of_information returns second. All 1.0 without gt foreground.
    """
    n_ij, a, b = _foreground_contingency(gt_labels, pred_labels)
    if a.size == 0:
        return {"v_info": 1.0, "v_info_split": 1.0, "v_info_merge": 1.0}
    h_gt = _entropy_bits(a)
    h_pred = _entropy_bits(b)
    # I = H(gt) + H(pred) - H(gt, pred) needs only the occupied cell counts, not their positions.
    h_joint = _entropy_bits(n_ij)
    # Rounding can push I a hair outside [0, min(H)]; clip so the scores stay in [0, 1].
    mutual_info = min(max(h_gt + h_pred - h_joint, 0.0), h_gt, h_pred)
    split = _ratio(mutual_info, h_pred)
    merge = _ratio(mutual_info, h_gt)
    return {"v_info": _harmonic_mean(split, merge), "v_info_split": split, "v_info_merge": merge}


# --- Evaluation entry point ----------------------------------------------------------------------


def _as_slices(stack: ArrayOrSlices, name: str, ndim: int) -> list:
    """Split an (N, ...) array or a sequence into a list of per-slice arrays of rank ``ndim``."""
    slices = [np.asarray(s) for s in stack]
    for i, s in enumerate(slices):
        if s.ndim != ndim:
            raise UNetError(f"{name}[{i}] must have {ndim} dimensions, got shape {s.shape}")
    return slices


def segmentation_metrics(prob: ArrayOrSlices, y_true: ArrayOrSlices,
                         class_names: Sequence[str], threshold: float | None = None,
                         background: int = 0) -> Dict[str, float]:
    """All evaluation scores for a stack of predicted probability maps.

    Args:
        prob: (N, H, W, C) float class probabilities, or a list of (H, W, C) arrays (sizes may
            differ between slices). The prediction is argmax over C, or with `threshold` the
            foreground threshold of unet_medical.inference.decision with `background` as background.
        y_true: (N, H, W) integer class ids, or a list of (H, W) arrays matching ``prob``.
        class_names: C names, e.g. ("membrane", "interior").

    Returns:
        Plain floats: "{name}_{metric}" per class for every PER_CLASS_METRICS entry (dice, iou, ...), "mean_dice" and "pixel_error",
        all pooled over every pixel of every slice. When class_names is ("membrane", "interior")
        (ISBI EM, class 1 = cell interior) also the ISBI 2012 challenge's own scores,
        "v_rand_thinned" and "v_info_thinned" with their best thresholds (utils.score.isbi: Fiji's
        thinning and maximum over thresholds), and "v_rand_argmax" / "v_info_argmax": the same
        foreground-restricted counting on the argmax map without thinning (4-connected interior
        components of prediction and ground truth, averaged over slices).
    """
    class_names = tuple(class_names)
    prob_slices = _as_slices(prob, "predicted probabilities", 3)
    true_slices = _as_slices(y_true, "labels", 2)
    if not prob_slices:
        raise UNetError("segmentation_metrics needs at least one slice, got none")
    if len(prob_slices) != len(true_slices):
        raise UNetError(f"got {len(prob_slices)} predicted slices but {len(true_slices)} label "
                        f"slices")
    num_classes = len(class_names)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    for i, (p, t) in enumerate(zip(prob_slices, true_slices)):
        if p.shape != t.shape + (num_classes,):
            raise UNetError(f"slice {i}: probabilities of shape {p.shape} do not match labels of "
                            f"shape {t.shape} with {num_classes} classes {class_names}")
        pred = decide_labels(p, threshold, background)
        cm += confusion_matrix(t, pred, num_classes)

    per_class = {metric: PER_CLASS_METRICS.get(metric)(cm) for metric in PER_CLASS_METRICS.names()}
    results: Dict[str, float] = {}
    for c, name in enumerate(class_names):
        results.update({f"{name}_{metric}": float(scores[c]) for metric, scores in per_class.items()})
    results["mean_dice"] = float(per_class["dice"].mean())
    results["pixel_error"] = float(1.0 - np.trace(cm) / cm.sum()) if cm.sum() else 0.0

    if class_names == ISBI_CLASS_NAMES:
        v_rand, v_info = [], []
        for p, t in zip(prob_slices, true_slices):  # on the argmax, whatever the decision: hence the name
            pred = np.argmax(p, axis=-1)
            gt_cells = segment_cells(t == INTERIOR_CLASS)
            pred_cells = segment_cells(pred == INTERIOR_CLASS)
            v_rand.append(rand_scores(gt_cells, pred_cells)["v_rand"])
            v_info.append(info_scores(gt_cells, pred_cells)["v_info"])
        # Plain counting on the argmax map: not the leaderboard's scores, hence the suffix.
        results["v_rand_argmax"] = float(np.mean(v_rand))
        results["v_info_argmax"] = float(np.mean(v_info))
        results.update(thinned_isbi_scores([p[..., INTERIOR_CLASS] for p in prob_slices], true_slices))
    return results


def thinned_isbi_scores(interior_probs: Sequence[np.ndarray], true_slices: Sequence[np.ndarray]
                        ) -> Dict[str, float]:
    """The ISBI 2012 leaderboard's V_rand / V_info (utils.score.isbi) of slices of any sizes.

    Args:
        interior_probs: per slice, (H, W) probability of the cell interior in [0, 1].
        true_slices: per slice, (H, W) class ids (1 = interior).

    Returns:
        "v_rand_thinned", "v_rand_thinned_threshold", "v_info_thinned", "v_info_thinned_threshold":
        per-slice scores averaged at each threshold, then the maximum over thresholds (the first
        threshold reaching it), as Fiji's getMaximalVRandAfterThinning / getMaximalVInfoAfterThinning.
    """
    from unet_medical.evaluation.isbi import score_stack

    curves = [score_stack(np.asarray(t == INTERIOR_CLASS, np.uint8) * 255, np.asarray(p, np.float32))
              for p, t in zip(interior_probs, true_slices)]
    out: Dict[str, float] = {}
    for name, key in (("v_rand", "v_rand_per_threshold"), ("v_info", "v_info_per_threshold")):
        mean_curve = np.mean([getattr(c, key) for c in curves], axis=0)
        best = int(np.nanargmax(mean_curve)) if np.isfinite(mean_curve).any() else 0
        out[f"{name}_thinned"] = float(mean_curve[best])
        out[f"{name}_thinned_threshold"] = float(curves[0].thresholds[best])
    return out

