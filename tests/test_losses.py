"""utils.training.losses against TensorFlow's own cross-entropy and a NumPy soft-Dice reference."""
import numpy as np
import pytest

import unet_medical  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

from unet_medical.base.errors import UNetError
from unet_medical.training.losses import cross_entropy_dice_loss

NUM_CLASSES = 3


def _batch(seed, shape=(2, 6, 5)):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=shape + (NUM_CLASSES,)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, size=shape).astype(np.int32)
    return logits, labels


def _numpy_soft_dice_loss(logits, labels, smooth):
    """1 - mean over classes of the batch-wide soft Dice, from a float64 softmax."""
    z = logits.astype(np.float64)
    probs = np.exp(z - z.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    one_hot = np.eye(NUM_CLASSES)[labels]
    inter = (probs * one_hot).sum(axis=(0, 1, 2))
    total = probs.sum(axis=(0, 1, 2)) + one_hot.sum(axis=(0, 1, 2))
    return 1.0 - np.mean((2 * inter + smooth) / (total + smooth))


@pytest.mark.parametrize("seed", range(3))
def test_cross_entropy_term_matches_tf_sparse_softmax(seed):
    logits, labels = _batch(seed)
    ours = cross_entropy_dice_loss(logits, labels, NUM_CLASSES, dice_weight=0.0)
    ref = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels,
                                                                        logits=logits))
    assert ours.dtype == tf.float32 and ours.shape == ()
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=1e-6)


@pytest.mark.parametrize("smooth", [1.0, 1e-3])
@pytest.mark.parametrize("dice_weight", [0.5, 2.0])
def test_dice_term_matches_numpy_reference(smooth, dice_weight):
    logits, labels = _batch(7)
    ce = cross_entropy_dice_loss(logits, labels, NUM_CLASSES, dice_weight=0.0).numpy()
    total = cross_entropy_dice_loss(logits, labels, NUM_CLASSES, dice_weight=dice_weight,
                                    smooth=smooth).numpy()
    expected = dice_weight * _numpy_soft_dice_loss(logits, labels, smooth)
    np.testing.assert_allclose(total - ce, expected, rtol=1e-5)


def test_pixel_weights_scale_the_cross_entropy_only():
    logits, labels = _batch(3)
    rng = np.random.default_rng(3)
    weights = rng.uniform(0.5, 5.0, size=labels.shape).astype(np.float32)
    per_pixel = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    expected_ce = np.mean(weights * per_pixel.numpy())
    ce = cross_entropy_dice_loss(logits, labels, NUM_CLASSES, dice_weight=0.0, weights=weights)
    np.testing.assert_allclose(ce.numpy(), expected_ce, rtol=1e-6)
    ones = np.ones_like(weights)
    np.testing.assert_allclose(
        cross_entropy_dice_loss(logits, labels, NUM_CLASSES, weights=ones).numpy(),
        cross_entropy_dice_loss(logits, labels, NUM_CLASSES).numpy(), rtol=1e-6)


def test_confident_correct_logits_give_near_zero_loss():
    _, labels = _batch(1)
    one_hot = np.eye(NUM_CLASSES, dtype=np.float32)[labels]
    logits = 30.0 * one_hot - 15.0  # margin 30: softmax is one-hot to ~1e-13
    loss = cross_entropy_dice_loss(logits, labels, NUM_CLASSES).numpy()
    assert 0.0 <= loss < 1e-5
    # The same margin on wrong classes is a large loss.
    wrong = np.roll(logits, 1, axis=-1)
    assert cross_entropy_dice_loss(wrong, labels, NUM_CLASSES).numpy() > 10.0


@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_gradient_is_finite(scale):
    logits, labels = _batch(5)
    x = tf.Variable(logits * scale)
    with tf.GradientTape() as tape:
        loss = cross_entropy_dice_loss(x, labels, NUM_CLASSES)
    grad = tape.gradient(loss, x)
    assert grad.shape == logits.shape
    assert np.all(np.isfinite(grad.numpy()))
    assert np.any(grad.numpy() != 0)


@pytest.mark.parametrize("dtype, rtol", [(tf.float16, 1e-5), (tf.bfloat16, 1e-5)])
def test_low_precision_logits_give_float32_loss(dtype, rtol):
    logits, labels = _batch(2)
    low = tf.cast(logits, dtype)
    loss = cross_entropy_dice_loss(low, labels, NUM_CLASSES)
    assert loss.dtype == tf.float32
    # Same value as float32 maths on the rounded logits: the loss itself is not computed in 16 bits.
    ref = cross_entropy_dice_loss(tf.cast(low, tf.float32), labels, NUM_CLASSES)
    np.testing.assert_allclose(loss.numpy(), ref.numpy(), rtol=rtol)
    x = tf.Variable(low)
    with tf.GradientTape() as tape:
        loss = cross_entropy_dice_loss(x, labels, NUM_CLASSES)
    assert np.all(np.isfinite(tf.cast(tape.gradient(loss, x), tf.float32).numpy()))


def test_works_inside_tf_function_with_unknown_batch():
    logits, labels = _batch(4)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, NUM_CLASSES], tf.float32),
                                  tf.TensorSpec([None, None, None], tf.int32)])
    def loss_fn(x, y):
        return cross_entropy_dice_loss(x, y, NUM_CLASSES)

    np.testing.assert_allclose(loss_fn(logits, labels).numpy(),
                               cross_entropy_dice_loss(logits, labels, NUM_CLASSES).numpy(),
                               rtol=1e-6)


def test_rejects_mismatched_shapes():
    logits, labels = _batch(0)
    with pytest.raises(UNetError, match="num_classes is 2"):
        cross_entropy_dice_loss(logits, labels, 2)
    with pytest.raises(UNetError, match="do not match labels"):
        cross_entropy_dice_loss(logits, labels[:, :-1], NUM_CLASSES)
    with pytest.raises(UNetError, match="pixel weights"):
        cross_entropy_dice_loss(logits, labels, NUM_CLASSES, weights=np.ones((2, 6), np.float32))


def test_loss_registry_default_is_todays_loss_and_unknown_names_fail_in_one_line():
    from unet_medical.cli.config import parse_config
    from unet_medical.training.loss_registry import DEFAULT_LOSS, LOSSES

    assert DEFAULT_LOSS == "ce_dice" and LOSSES.get(DEFAULT_LOSS) is cross_entropy_dice_loss
    assert parse_config(["--exec_mode", "train"]).loss == "ce_dice"
    with pytest.raises(UNetError, match="--loss"):
        parse_config(["--loss", "no_such_loss"])
