"""Surface scores against an independent brute-force reference (all surface-voxel pairs in NumPy) and
analytic cases (cubes offset by k voxels at anisotropic spacing)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from unet_medical.base.errors import UNetError
from unet_medical.evaluation import surface

SPACING = (0.8, 0.8, 3.0)


def brute_surface_points(mask: np.ndarray, spacing) -> np.ndarray:
    """(N, 3) mm centres of mask voxels with a face neighbour outside (padding = outside), by shifting."""
    padded = np.pad(mask, 1)
    inner = np.ones_like(mask)
    for axis in range(3):
        for step in (-1, 1):
            inner &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
    return np.argwhere(mask & ~inner) * np.asarray(spacing)


def brute_scores(pred, label, spacing, tolerance):
    a, b = brute_surface_points(pred, spacing), brute_surface_points(label, spacing)
    pairwise = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)  # all pairs
    a_to_b, b_to_a = pairwise.min(axis=1), pairwise.min(axis=0)
    hd95 = max(np.percentile(a_to_b, 95), np.percentile(b_to_a, 95))
    nsd = ((a_to_b <= tolerance).sum() + (b_to_a <= tolerance).sum()) / (len(a) + len(b))
    return hd95, nsd


def blob(rng, shape=(14, 12, 8)) -> np.ndarray:
    smooth = ndimage.gaussian_filter(rng.normal(size=shape), 1.5)
    return smooth > np.quantile(smooth, 0.7)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("tolerance", [0.5, 1.0, 3.0])
def test_matches_brute_force_on_random_blobs(seed, tolerance):
    rng = np.random.default_rng(seed)
    pred, label = blob(rng), blob(rng)
    hd95, nsd = surface.hd95_and_nsd(pred, label, SPACING, tolerance)
    ref_hd95, ref_nsd = brute_scores(pred, label, SPACING, tolerance)
    assert hd95 == pytest.approx(ref_hd95, rel=1e-9) and nsd == pytest.approx(ref_nsd, rel=1e-12)


@pytest.mark.parametrize("axis,k", [(0, 1), (0, 3), (2, 1), (2, 2)])
def test_cubes_offset_by_k_voxels(axis, k):
    """Cubes of n voxels offset by k along one axis: Dice (n - k) / n, Hausdorff (percentile 100)
    k * spacing[axis], NSD 1 at that tolerance and < 1 just below it."""
    n, shape = 6, (16, 16, 14)
    label = np.zeros(shape, bool)
    label[4:4 + n, 4:4 + n, 3:3 + n] = True
    pred = np.roll(label, k, axis=axis)
    shift_mm = k * SPACING[axis]
    hd100, nsd = surface.hd95_and_nsd(pred, label, SPACING, shift_mm, percentile=100)
    assert hd100 == pytest.approx(shift_mm) and nsd == 1.0
    assert surface.hd95_and_nsd(pred, label, SPACING, shift_mm - 1e-6)[1] < 1.0
    scores = surface.case_scores(pred.astype(np.uint8), label.astype(np.uint8), SPACING, ("bg", "cube"))
    assert scores["cube"]["dice"] == pytest.approx((n - k) / n)


def test_identical_masks_and_empty_classes():
    label = np.zeros((10, 10, 6), np.uint8)
    label[2:6, 2:7, 1:4] = 1
    both_absent_and_one_absent = surface.case_scores(label, label, SPACING, ("bg", "a", "b"))
    assert both_absent_and_one_absent["a"] == {"dice": 1.0, "hd95_mm": 0.0, "nsd": 1.0}
    assert both_absent_and_one_absent["b"] == {"dice": 1.0, "hd95_mm": 0.0, "nsd": 1.0}  # absent from both
    missed = surface.case_scores(np.zeros_like(label), label, SPACING, ("bg", "a"))["a"]
    diagonal = np.linalg.norm(np.array([9, 9, 5]) * SPACING)
    assert missed == {"dice": 0.0, "hd95_mm": pytest.approx(diagonal), "nsd": 0.0}
    invented = surface.case_scores(label, np.zeros_like(label), SPACING, ("bg", "a"))["a"]
    assert invented["hd95_mm"] == pytest.approx(diagonal) and invented["dice"] == 0.0


def test_a_mask_touching_the_image_border_has_a_surface_there():
    full = np.ones((4, 5, 3), bool)
    assert surface.surface(full).sum() == full.size - 2 * 3 * 1  # only the (2, 3, 1) core is interior


def test_means_and_mistakes():
    cases = [{"a": {"dice": 1.0, "hd95_mm": 0.0, "nsd": 1.0}}, {"a": {"dice": 0.5, "hd95_mm": 4.0, "nsd": 0.0}}]
    assert surface.mean_scores(cases) == {"a": {"dice": 0.75, "hd95_mm": 2.0, "nsd": 0.5}}
    with pytest.raises(UNetError, match="must be 3D volumes of one shape"):
        surface.case_scores(np.zeros((2, 2, 2), int), np.zeros((2, 2, 3), int), SPACING, ("bg", "a"))
    with pytest.raises(UNetError, match="spacing"):
        surface.case_scores(np.zeros((2, 2, 2), int), np.zeros((2, 2, 2), int), (1, 0, 1), ("bg", "a"))
