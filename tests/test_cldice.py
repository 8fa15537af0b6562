"""The clDice loss (training.losses): soft morphology against scipy.ndimage, the skeleton against
Lantuéjoul's binary skeleton, and the loss against a NumPy reference built from those."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import ndimage

import unet_medical  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

from unet_medical.training.losses import (
    CLDICE_SHARE, SKELETON_ITERATIONS, cross_entropy_dice_cldice_loss, cross_entropy_dice_loss, soft_cldice_per_class,
    soft_dice_per_class, soft_dilate, soft_erode, soft_skeleton)


def _channels(x: np.ndarray) -> np.ndarray:
    """(spatial...) -> (1, spatial..., 1) float32 for the TF functions."""
    return x[None, ..., None].astype(np.float32)


def _np_erode(x: np.ndarray) -> np.ndarray:
    # mode="nearest" repeats the edge pixel, which a 3-wide window already holds: the same as ignoring outside.
    return ndimage.grey_erosion(x, footprint=ndimage.generate_binary_structure(x.ndim, 1), mode="nearest")


def _np_dilate(x: np.ndarray) -> np.ndarray:
    return ndimage.grey_dilation(x, size=(3,) * x.ndim, mode="nearest")


def _np_soft_skeleton(x: np.ndarray, iterations: int) -> np.ndarray:
    skeleton = np.maximum(x - _np_dilate(_np_erode(x)), 0)
    for _ in range(iterations):
        x = _np_erode(x)
        ridge = np.maximum(x - _np_dilate(_np_erode(x)), 0)
        skeleton = skeleton + ridge - skeleton * ridge
    return skeleton


def _lantuejoul_skeleton(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Union over k <= iterations of E^k(X) minus its opening, by scipy's binary morphology."""
    cross = ndimage.generate_binary_structure(mask.ndim, 1)
    square = np.ones((3,) * mask.ndim, bool)

    def opening(m):
        return ndimage.binary_dilation(ndimage.binary_erosion(m, cross, border_value=1), square)

    skeleton = mask & ~opening(mask)
    eroded = mask
    for _ in range(iterations):
        eroded = ndimage.binary_erosion(eroded, cross, border_value=1)
        skeleton |= eroded & ~opening(eroded)
    return skeleton


@pytest.mark.parametrize("shape", [(9, 7), (5, 6, 7)])
def test_soft_erosion_and_dilation_equal_scipy_grey_morphology(shape):
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    np.testing.assert_allclose(soft_erode(tf.constant(_channels(x))).numpy()[0, ..., 0], _np_erode(x), atol=0)
    np.testing.assert_allclose(soft_dilate(tf.constant(_channels(x))).numpy()[0, ..., 0], _np_dilate(x), atol=0)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), three_d=st.booleans(), iterations=st.integers(0, 6),
       density=st.floats(0.3, 0.9))
def test_soft_skeleton_of_a_binary_mask_is_lantuejouls_skeleton(seed, three_d, iterations, density):
    rng = np.random.default_rng(seed)
    shape = (8, 9, 10) if three_d else (24, 21)
    # Smoothed noise thresholded: blobs and bars of several widths, some touching the border.
    mask = ndimage.gaussian_filter(rng.random(shape), 1.5) > np.quantile(
        ndimage.gaussian_filter(rng.random(shape), 1.5), 1 - density)
    got = soft_skeleton(tf.constant(_channels(mask)), iterations).numpy()[0, ..., 0]
    np.testing.assert_array_equal(got, _lantuejoul_skeleton(mask, iterations).astype(np.float32))


@pytest.mark.parametrize("shape", [(2, 16, 12, 3), (1, 6, 8, 7, 2)])
def test_soft_skeleton_of_probabilities_matches_numpy_per_channel(shape):
    x = np.random.default_rng(1).random(shape).astype(np.float32)
    got = soft_skeleton(tf.constant(x), 4).numpy()
    for b in range(shape[0]):
        for c in range(shape[-1]):
            np.testing.assert_allclose(got[b, ..., c], _np_soft_skeleton(x[b, ..., c].astype(np.float64), 4),
                                       atol=1e-6)
    assert got.min() >= 0 and got.max() <= 1


def _bar_masks():
    """A label bar 5 px thick, a prediction broken by a 6-px gap, and one 3 px thick without a gap."""
    label = np.zeros((24, 80), np.float32)
    label[10:15, 10:70] = 1
    broken = label.copy()
    broken[:, 37:43] = 0
    thin = np.zeros_like(label)
    thin[11:14, 10:70] = 1
    return label, broken, thin


def test_cldice_prefers_a_thinner_vessel_to_a_broken_one_where_dice_prefers_the_break():
    label, broken, thin = _bar_masks()

    def scores(prediction):
        p, y = tf.constant(_channels(prediction)), tf.constant(_channels(label))
        return float(soft_dice_per_class(p, y)[0]), float(soft_cldice_per_class(p, y)[0])

    dice_broken, cl_broken = scores(broken)
    dice_thin, cl_thin = scores(thin)
    assert dice_broken > dice_thin + 0.1
    assert cl_thin > cl_broken + 0.03
    assert cl_thin == pytest.approx(1.0, abs=1e-6)  # its skeleton lies in the label and covers the label's


def _np_loss(logits: np.ndarray, labels: np.ndarray, num_classes: int, iterations: int) -> float:
    z = logits.astype(np.float64)
    log_probs = z - z.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    probs = np.exp(log_probs)
    one_hot = np.eye(num_classes)[labels]
    axes = tuple(range(probs.ndim - 1))
    cross_entropy = -(one_hot * log_probs).sum(-1).mean()
    dice = (2 * (probs * one_hot).sum(axes) + 1) / (probs.sum(axes) + one_hot.sum(axes) + 1)

    def skeleton(v):
        return np.stack([np.stack([_np_soft_skeleton(v[b, ..., c], iterations) for c in range(v.shape[-1])], -1)
                         for b in range(v.shape[0])])

    p, y = probs[..., 1:], one_hot[..., 1:]
    sp, sy = skeleton(p), skeleton(y)
    precision = ((sp * y).sum(axes) + 1) / (sp.sum(axes) + 1)
    sensitivity = ((sy * p).sum(axes) + 1) / (sy.sum(axes) + 1)
    cldice = 2 * precision * sensitivity / (precision + sensitivity)
    return cross_entropy + (1 - CLDICE_SHARE) * (1 - dice.mean()) + CLDICE_SHARE * (1 - cldice.mean())


@pytest.mark.parametrize("shape,num_classes", [((2, 20, 18), 3), ((1, 8, 10, 9), 2)])
def test_the_loss_matches_a_numpy_reference(shape, num_classes):
    rng = np.random.default_rng(2)
    logits = rng.normal(scale=2.0, size=shape + (num_classes,)).astype(np.float32)
    labels = (ndimage.gaussian_filter(rng.random(shape), 1.0) * num_classes * 1.99).astype(np.int32) % num_classes
    got = float(cross_entropy_dice_cldice_loss(logits, labels, num_classes))
    assert got == pytest.approx(_np_loss(logits, labels, num_classes, SKELETON_ITERATIONS), rel=1e-5)


def test_the_loss_has_finite_gradients_in_low_precision_and_is_registered():
    from unet_medical.cli.config import parse_config
    from unet_medical.training.loss_registry import LOSSES

    rng = np.random.default_rng(3)
    logits = tf.Variable(rng.normal(scale=30.0, size=(2, 16, 16, 2)).astype(np.float32))
    labels = rng.integers(0, 2, size=(2, 16, 16))
    with tf.GradientTape() as tape:
        value = cross_entropy_dice_cldice_loss(tf.cast(logits, tf.bfloat16), labels, 2)
    gradient = tape.gradient(value, logits)
    assert value.dtype == tf.float32 and np.isfinite(value.numpy())
    assert np.isfinite(gradient.numpy()).all() and np.abs(gradient.numpy()).sum() > 0
    assert LOSSES.get("ce_dice_cldice") is cross_entropy_dice_cldice_loss
    assert parse_config(["--exec_mode", "train", "--loss", "ce_dice_cldice"]).loss == "ce_dice_cldice"


def test_perfect_logits_score_near_zero_and_match_ce_dice_there():
    labels = np.zeros((1, 20, 20), np.int32)
    labels[:, 5:15, 8:11] = 1
    logits = np.where(np.eye(2)[labels] > 0, 20.0, -20.0).astype(np.float32)
    assert float(cross_entropy_dice_cldice_loss(logits, labels, 2)) == pytest.approx(0.0, abs=1e-5)
    assert float(cross_entropy_dice_loss(logits, labels, 2)) == pytest.approx(0.0, abs=1e-5)
