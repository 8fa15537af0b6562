"""Per-case volume scores in millimetres: Dice, 95th-percentile Hausdorff distance (HD95) and normalized
surface distance (NSD, "surface Dice") at a tolerance, per class, using the voxel spacing.

Definitions (pure NumPy/SciPy; the metrics the Medical Segmentation Decathlon and the Metrics Reloaded
recommendations report):
- The surface S(M) of a mask M is its voxels with at least one of their 6 face neighbours outside M;
  the image border counts as outside, so a mask touching the edge has a surface there.
- d(p, S) is the Euclidean distance in mm between voxel centres, with `spacing` per axis: exact, from
  scipy's Euclidean distance transform with sampling=spacing (no isotropic resampling needed).
- HD95 = max(P95{d(p, S_label) : p in S_pred}, P95{d(g, S_pred) : g in S_label}), the larger of the
  two directed 95th percentiles (MONAI's definition; np.percentile's linear interpolation).
- NSD(tau) = (#{p in S_pred : d(p, S_label) <= tau} + #{g in S_label : d(g, S_pred) <= tau})
             / (#S_pred + #S_label), counting surface voxels (Nikolov et al. 2021 weight by surfel area;
  on these voxel surfaces the two agree to within the surface's staircase).
- Dice = 2 |P n L| / (|P| + |L|) (evaluation.metrics).

A class absent from both the prediction and the label scores Dice 1, HD95 0 and NSD 1: there was
nothing to find and nothing was found, the same 0/0 = 1 rule as evaluation.metrics. A class present in
only one of them scores Dice 0, NSD 0 and HD95 = the image diagonal, norm((shape - 1) * spacing) in mm:
the largest distance two voxels of this image can have, a finite worst case that keeps means
computable (an infinite HD95 would make every mean over cases infinite).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from unet_medical.base.errors import UNetError
from unet_medical.evaluation.metrics import dice_per_class

_FACE_NEIGHBOURS = ndimage.generate_binary_structure(3, 1)


def surface(mask: np.ndarray) -> np.ndarray:
    """Boolean (I, J, K): voxels of `mask` with a face neighbour outside it (the border counts as outside)."""
    mask = np.asarray(mask, dtype=bool)
    return mask & ~ndimage.binary_erosion(mask, structure=_FACE_NEIGHBOURS, border_value=0)


def directed_surface_distances(from_mask: np.ndarray, to_mask: np.ndarray,
                               spacing: Sequence[float]) -> np.ndarray:
    """(N,) mm: for each surface voxel of from_mask, the distance to the nearest surface voxel of to_mask.

    Both masks must be non-empty and of one shape (I, J, K); spacing is (3,) mm along I, J, K.
    """
    to_surface = surface(to_mask)
    distance_to = ndimage.distance_transform_edt(~to_surface, sampling=tuple(float(s) for s in spacing))
    return distance_to[surface(from_mask)]


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Largest distance in mm between two voxel centres of an image of `shape` (I, J, K)."""
    return float(np.linalg.norm((np.asarray(shape, dtype=np.float64) - 1) * np.asarray(spacing, np.float64)))


def hd95_and_nsd(pred: np.ndarray, label: np.ndarray, spacing: Sequence[float], tolerance_mm: float,
                 percentile: float = 95.0) -> tuple[float, float]:
    """(HD at `percentile` in mm, NSD at tolerance_mm) of two boolean masks (I, J, K); empty cases per
    the module docstring."""
    pred, label = np.asarray(pred, bool), np.asarray(label, bool)
    if not pred.any() and not label.any():
        return 0.0, 1.0
    if not pred.any() or not label.any():
        return image_diagonal_mm(pred.shape, spacing), 0.0
    pred_to_label = directed_surface_distances(pred, label, spacing)
    label_to_pred = directed_surface_distances(label, pred, spacing)
    hd = max(float(np.percentile(pred_to_label, percentile)), float(np.percentile(label_to_pred, percentile)))
    within = np.count_nonzero(pred_to_label <= tolerance_mm) + np.count_nonzero(label_to_pred <= tolerance_mm)
    return hd, within / (len(pred_to_label) + len(label_to_pred))


def case_scores(pred: np.ndarray, label: np.ndarray, spacing: Sequence[float], class_names: Sequence[str],
                tolerance_mm: float = 1.0) -> dict[str, dict[str, float]]:
    """Scores of one case, per foreground class: {class name: {"dice", "hd95_mm", "nsd"}}.

    Args:
        pred, label: (I, J, K) integer class maps on one voxel grid.
        spacing: (3,) voxel spacing in mm along I, J, K (Volume.spacing).
        class_names: names of classes 0..C-1; class 0 (background) is not scored.
        tolerance_mm: NSD tolerance (the acceptable boundary error for the structure, in mm).
    """
    pred, label = np.asarray(pred), np.asarray(label)
    if pred.shape != label.shape or pred.ndim != 3:
        raise UNetError(f"prediction {pred.shape} and label {label.shape} must be 3D volumes of one shape")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise UNetError(f"spacing {tuple(spacing)}: expected 3 positive voxel sizes in mm")
    if tolerance_mm < 0:
        raise UNetError(f"NSD tolerance {tolerance_mm} mm: expected >= 0")
    dice = dice_per_class(label, pred, len(class_names))
    scores = {}
    for index, name in enumerate(class_names[1:], start=1):
        hd95, nsd = hd95_and_nsd(pred == index, label == index, spacing, tolerance_mm)
        scores[name] = {"dice": float(dice[index]), "hd95_mm": hd95, "nsd": nsd}
    return scores


def mean_scores(per_case: Sequence[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Mean of each class's scores over cases ({class: {score: mean}})."""
    if not per_case:
        raise UNetError("no cases to average")
    return {name: {key: float(np.mean([case[name][key] for case in per_case])) for key in scores}
            for name, scores in per_case[0].items()}
