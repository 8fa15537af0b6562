"""Tests of inference/sliding_window.py against an independent brute-force reference: for every voxel,
the weighted mean over the windows that contain it of that window's prediction, windows and weights
computed here from their definitions."""
import itertools
import math

import numpy as np
import pytest

from unet_medical.base.errors import UNetError
from unet_medical.inference.sliding_window import (gaussian_importance, mirror_flips, predict_mirrored,
                                                   sliding_window_predict,
                                                   window_starts)


def position_dependent(batch: np.ndarray) -> np.ndarray:
    """A predictor whose output depends on where a voxel sits in its window and on the window's
    content: window averaging must be done right for the result to match the reference."""
    p = batch.shape[1:4]
    ramp = np.add.outer(np.add.outer(np.arange(p[0]), 2 * np.arange(p[1])), 3 * np.arange(p[2])).astype(np.float32)
    mean = batch.mean(axis=(1, 2, 3, 4), keepdims=True)[..., 0]
    first = batch[..., 0] + 0.01 * ramp + mean
    return np.stack([first, -first], axis=-1)


def reference(predict, volume, patch, overlap, sigma_scale=1 / 8):
    """Brute force: pad, enumerate windows (the same start rule, written independently), and for each
    voxel divide the summed weighted predictions by the summed weights of the windows covering it."""
    shape = volume.shape[:3]
    before = [max(0, p - s) // 2 for s, p in zip(shape, patch)]
    padded = np.zeros([max(s, p) for s, p in zip(shape, patch)] + [volume.shape[3]], np.float64)
    padded[before[0]:before[0] + shape[0], before[1]:before[1] + shape[1], before[2]:before[2] + shape[2]] = volume
    starts_per_axis = []
    for n, p in zip(padded.shape[:3], patch):
        count = 1 if n == p else math.ceil((n - p) / (p * (1 - overlap))) + 1
        starts_per_axis.append(sorted({round(i * (n - p) / max(count - 1, 1)) for i in range(count)}))
    grids = np.meshgrid(*[np.arange(p) for p in patch], indexing="ij")
    weight = np.exp(-0.5 * sum(((g - (p - 1) / 2) / (p * sigma_scale)) ** 2 for g, p in zip(grids, patch)))
    num = np.zeros(padded.shape[:3] + (2,))
    den = np.zeros(padded.shape[:3])
    for a, b, c in itertools.product(*starts_per_axis):
        window = padded[a:a + patch[0], b:b + patch[1], c:c + patch[2]][None].astype(np.float32)
        out = predict(window)[0]
        num[a:a + patch[0], b:b + patch[1], c:c + patch[2]] += out * weight[..., None]
        den[a:a + patch[0], b:b + patch[1], c:c + patch[2]] += weight
    result = num / den[..., None]
    return result[before[0]:before[0] + shape[0], before[1]:before[1] + shape[1], before[2]:before[2] + shape[2]]


@pytest.mark.parametrize("shape, patch, overlap", [((20, 17, 9), (8, 8, 4), 0.5), ((8, 8, 4), (8, 8, 4), 0.5),
                                                   ((5, 12, 3), (8, 8, 4), 0.25), ((13, 13, 13), (6, 6, 6), 0.0)])
def test_matches_brute_force_reference(shape, patch, overlap):
    volume = np.random.default_rng(0).normal(size=shape + (1,)).astype(np.float32)
    got = sliding_window_predict(position_dependent, volume, patch, overlap=overlap, batch_size=3)
    assert got.shape == shape + (2,)
    np.testing.assert_allclose(got, reference(position_dependent, volume, patch, overlap), rtol=1e-4, atol=1e-4)


def test_identity_constant_and_one_patch_volumes():
    volume = np.random.default_rng(1).random((11, 9, 7, 2)).astype(np.float32)
    np.testing.assert_allclose(sliding_window_predict(lambda b: b, volume, (4, 4, 4)), volume, rtol=1e-5, atol=1e-6)
    constant = sliding_window_predict(lambda b: np.full(b.shape[:4] + (3,), 0.25, np.float32), volume, (4, 4, 4))
    np.testing.assert_allclose(constant, 0.25, rtol=1e-6)
    exact = volume[:8, :8, :4]
    np.testing.assert_allclose(sliding_window_predict(position_dependent, exact, (8, 8, 4)),
                               position_dependent(exact[None])[0], rtol=1e-5, atol=1e-6)


def test_windows_cover_every_voxel_with_the_requested_overlap():
    for length, patch in [(48, 32), (40, 40), (100, 16), (33, 8)]:
        starts = window_starts(length, patch, 0.5)
        assert starts[0] == 0 and starts[-1] == length - patch
        assert all(0 < b - a <= patch // 2 for a, b in zip(starts, starts[1:]))
    with pytest.raises(UNetError, match="shorter than the patch"):
        window_starts(3, 4, 0.5)


def test_gaussian_weights_peak_in_the_centre_with_sigma_an_eighth_of_the_patch():
    weights = gaussian_importance((16, 8, 8))
    assert weights.shape == (16, 8, 8) and weights.max() == pytest.approx(1.0) and weights.min() > 0
    centre = weights[:, 3, 3]  # along axis 0: exp(-x^2 / (2 sigma^2)), sigma = 2, x from the centre 7.5
    assert centre[7] / centre[5] == pytest.approx(math.exp(-0.5 * ((0.5 / 2) ** 2 - (2.5 / 2) ** 2)), rel=1e-5)


@pytest.mark.parametrize("axes", [(0, 1, 2), (0, 2), (1,), ()])
def test_mirroring_over_some_axes_is_the_mean_over_their_flips(axes):
    # Independent reference: every subset of `axes`, flipped in and back out by explicit slicing.
    batch = np.random.default_rng(3).random((2, 4, 5, 6, 1)).astype(np.float32)
    weights = np.random.default_rng(4).random((1, 4, 5, 6, 1)).astype(np.float32)
    predict = lambda b: b * weights  # noqa: E731  (position-dependent: a flip changes the result)
    expected = np.zeros_like(batch)
    subsets = [s for n in range(len(axes) + 1) for s in itertools.combinations(axes, n)]
    for subset in subsets:
        index = tuple(slice(None, None, -1) if axis - 1 in subset else slice(None) for axis in range(5))
        expected += predict(batch[index])[index]
    np.testing.assert_allclose(predict_mirrored(predict, batch, axes), expected / len(subsets), rtol=1e-6)
    assert len(mirror_flips(axes)) == 2 ** len(axes) and mirror_flips(axes)[0] == ()


def test_mirroring_undoes_its_flips_and_bad_inputs_are_refused():
    batch = np.random.default_rng(2).random((2, 4, 4, 4, 1)).astype(np.float32)
    np.testing.assert_allclose(predict_mirrored(lambda b: b, batch), batch, rtol=1e-6)
    with pytest.raises(UNetError, match="overlap"):
        sliding_window_predict(lambda b: b, batch[0], (4, 4, 4), overlap=1.0)
    with pytest.raises(UNetError, match=r"\(I, J, K, C\)"):
        sliding_window_predict(lambda b: b, batch[0, ..., 0], (4, 4, 4))
