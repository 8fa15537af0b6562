"""Training loss for the U-Net: pixel-wise cross-entropy plus a soft Dice term, computed on logits.

Used inside the training step, so everything is TensorFlow ops; the softmax is taken once
(log-softmax for the cross-entropy, its exponential for Dice) to keep one numerically stable path.
"""
from __future__ import annotations

from typing import Optional

import tensorflow as tf

from unet_medical.base.errors import UNetError

# Ranks of the logits: images (B, H, W, C) and volumes (B, D, H, W, C); labels have one axis less.
LOGIT_RANKS = (4, 5)


def weighted_cross_entropy(log_probs: tf.Tensor, one_hot: tf.Tensor,
                           weights: Optional[tf.Tensor] = None) -> tf.Tensor:
    """Mean over pixels of w(x) * -log p_true(x).

    Args:
        log_probs: (B, H, W, C) float32 log-probabilities.
        one_hot: (B, H, W, C) float32 one-hot labels.
        weights: (B, H, W) pixel weights or None for 1 everywhere. As in the U-Net paper's
            energy sum_x w(x) log p(x), weights scale each pixel's term; the mean is over pixels,
            not normalised by sum(w), so a weight map >= 1 raises the loss where it is large.

    Returns:
        float32 scalar.
    """
    per_pixel = -tf.reduce_sum(one_hot * log_probs, axis=-1)
    if weights is not None:
        per_pixel = per_pixel * tf.cast(weights, tf.float32)
    return tf.reduce_mean(per_pixel)


def soft_dice_per_class(probs: tf.Tensor, one_hot: tf.Tensor, smooth: float = 1.0) -> tf.Tensor:
    """Soft Dice (2 sum p y + s) / (sum p + sum y + s) per class over the whole batch.

    Args:
        probs: (B, H, W, C) (or (B, D, H, W, C)) float32 softmax probabilities.
        one_hot: the same shape, float32 one-hot labels.
        smooth: s > 0, keeps a class absent from the batch (and not predicted) at Dice ~1 and the
            gradient finite.

    Returns:
        float32 (C,).
    """
    batch_and_space = list(range(probs.shape.rank - 1))  # every axis but the classes
    intersection = tf.reduce_sum(probs * one_hot, axis=batch_and_space)
    total = tf.reduce_sum(probs, axis=batch_and_space) + tf.reduce_sum(one_hot, axis=batch_and_space)
    return (2.0 * intersection + smooth) / (total + smooth)


def _check_shapes(logits: tf.Tensor, labels: tf.Tensor, num_classes: int,
                  weights: Optional[tf.Tensor]) -> None:
    """Raise UNetError when static shapes disagree (unknown dimensions are not checked)."""
    if logits.shape.rank is not None and logits.shape.rank not in LOGIT_RANKS:
        raise UNetError(f"logits must be (batch, height, width, classes) or (batch, depth, height, width, "
                        f"classes), got shape {logits.shape}")
    if labels.shape.rank is not None and logits.shape.rank is not None and labels.shape.rank != logits.shape.rank - 1:
        raise UNetError(f"labels must be (batch, height, width) class ids ((batch, depth, height, width) for "
                        f"volumes), got shape {labels.shape}")
    if logits.shape[-1] is not None and logits.shape[-1] != num_classes:
        raise UNetError(f"logits have {logits.shape[-1]} channels but num_classes is {num_classes}")
    if not logits.shape[:-1].is_compatible_with(labels.shape):
        raise UNetError(f"logits of shape {logits.shape} do not match labels of shape "
                        f"{labels.shape}")
    if weights is not None and not tf.TensorShape(weights.shape).is_compatible_with(labels.shape):
        raise UNetError(f"pixel weights of shape {weights.shape} do not match labels of shape "
                        f"{labels.shape}")


def cross_entropy_dice_loss(logits: tf.Tensor, labels: tf.Tensor, num_classes: int,
                            dice_weight: float = 1.0, smooth: float = 1.0,
                            weights: Optional[tf.Tensor] = None) -> tf.Tensor:
    """Cross-entropy + dice_weight * (1 - mean over classes of the batch-wide soft Dice).

    Args:
        logits: (B, H, W, C) (volumes: (B, D, H, W, C)) network output before softmax; float32, float16 or bfloat16 (cast to
            float32 first so mixed-precision training keeps a float32 loss).
        labels: (B, H, W) integer class ids in [0, C). Out-of-range ids are not checked here (the
            data loader validates masks); they would count as "no class" in both terms.
        num_classes: C.
        dice_weight: weight of the Dice term; 0 gives plain cross-entropy.
        smooth: Dice smoothing constant, see soft_dice_per_class.
        weights: optional (B, H, W) pixel weights for the cross-entropy term only.

    Returns:
        float32 scalar; 0 for a perfect, infinitely confident prediction.
    """
    labels = tf.convert_to_tensor(labels)
    logits = tf.convert_to_tensor(logits)
    _check_shapes(logits, labels, num_classes, weights)
    log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
    one_hot = tf.one_hot(tf.cast(labels, tf.int32), num_classes, dtype=tf.float32)
    cross_entropy = weighted_cross_entropy(log_probs, one_hot, weights)
    dice = soft_dice_per_class(tf.exp(log_probs), one_hot, smooth)
    return cross_entropy + dice_weight * (1.0 - tf.reduce_mean(dice))
