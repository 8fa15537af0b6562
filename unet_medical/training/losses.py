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
    cross_entropy, dice_loss, _, _ = _cross_entropy_and_dice(logits, labels, num_classes, smooth, weights)
    return cross_entropy + dice_weight * dice_loss


def _cross_entropy_and_dice(logits: tf.Tensor, labels: tf.Tensor, num_classes: int, smooth: float,
                            weights: Optional[tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """(cross-entropy, 1 - mean soft Dice, probabilities, one-hot labels) of float32 softmax(logits); the
    arguments as cross_entropy_dice_loss's, shapes checked."""
    labels = tf.convert_to_tensor(labels)
    logits = tf.convert_to_tensor(logits)
    _check_shapes(logits, labels, num_classes, weights)
    log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
    probs = tf.exp(log_probs)
    one_hot = tf.one_hot(tf.cast(labels, tf.int32), num_classes, dtype=tf.float32)
    cross_entropy = weighted_cross_entropy(log_probs, one_hot, weights)
    return cross_entropy, 1.0 - tf.reduce_mean(soft_dice_per_class(probs, one_hot, smooth)), probs, one_hot


# --- clDice (Shit et al., "clDice - a Novel Topology-Preserving Loss Function for Tubular Structure
# Segmentation", CVPR 2021): Dice measured between each mask and the other's soft skeleton.

# Soft-skeleton iterations: each cross erosion thins a structure by one pixel on each side, so k
# iterations skeletonize structures up to about 2k + 1 px wide: five cover the thin classes the recipe
# names (median thickness up to 8 px: vessels, membranes). A wider object keeps only the rim of its
# skeleton, which still rewards connectivity along its thin parts. Each iteration costs an erosion and a
# dilation per class, forward and backward, on full-size maps: on a CPU that is not small beside the
# network (benchmarks/recipe_ab.py), so the iterations stay few and the skeleton is compiled by XLA.
SKELETON_ITERATIONS = 5
# Share of the Dice term given to clDice (the paper's alpha; it reports 0.1-0.5 working on vessels).
CLDICE_SHARE = 0.5


def _pool(x: tf.Tensor, window: tuple[int, ...]) -> tf.Tensor:
    """Max over a window, stride 1, same size: outside the image is ignored (TF pads max pools with -inf)."""
    return tf.nn.max_pool(x, ksize=(1, *window, 1), strides=1, padding="SAME")


def soft_erode(x: tf.Tensor) -> tf.Tensor:
    """Grey erosion by the cross (4- or 6-neighbourhood): the minimum of one-axis 3-pixel minima.

    Args:
        x: (B, H, W, C) or (B, D, H, W, C) float values in [0, 1].
    Returns:
        The same shape. Pixels outside the image do not take part (a binary object touching the border
        is not eroded from that side), as scipy.ndimage.binary_erosion with border_value=1.
    """
    spatial = x.shape.rank - 2
    minima = []
    for axis in range(spatial):
        window = tuple(3 if a == axis else 1 for a in range(spatial))
        minima.append(-_pool(-x, window))
    return tf.reduce_min(tf.stack(minima), axis=0)


def soft_dilate(x: tf.Tensor) -> tf.Tensor:
    """Grey dilation by the full 3x3 (3x3x3) square; same shapes as soft_erode."""
    return _pool(x, (3,) * (x.shape.rank - 2))


def soft_skeleton(x: tf.Tensor, iterations: int = SKELETON_ITERATIONS) -> tf.Tensor:
    """The clDice paper's soft skeleton (its Algorithm 1), per channel.

    Lantuéjoul's skeleton, the union over k of E^k(x) minus its opening, made soft: the difference is a
    ReLU and the union is s + d - s d. On a binary mask it is exactly the morphological skeleton with
    the cross erosion and square dilation above (the tests check it against scipy.ndimage).

    Args:
        x: (B, H, W, C) or (B, D, H, W, C) float32 in [0, 1] (probabilities or one-hot labels).
        iterations: erosions applied; structures wider than about 2 x iterations + 1 px keep only
            part of their skeleton.
    Returns:
        The same shape, values in [0, 1].
    """
    eroded = soft_erode(x)
    skeleton = tf.nn.relu(x - soft_dilate(eroded))
    for _ in range(iterations):
        # The opening of E^k(x) is the dilation of E^(k+1)(x), the next iteration's image: one erosion each.
        x, eroded = eroded, soft_erode(eroded)
        ridge = tf.nn.relu(x - soft_dilate(eroded))
        skeleton = skeleton + ridge - skeleton * ridge
    return skeleton


# The skeleton is dozens of small element-wise ops on full-size maps; XLA fuses them. The whole loss, forward
# and backward on 4 x 256 x 256 x 2 logits (Zen 4, 2 cores): 298 ms with 10 iterations unfused, 82 ms with 5
# fused, against 8 ms for ce_dice.
_compiled_skeleton = tf.function(soft_skeleton, jit_compile=True)


def soft_cldice_per_class(probs: tf.Tensor, one_hot: tf.Tensor, iterations: int = SKELETON_ITERATIONS,
                          smooth: float = 1.0) -> tf.Tensor:
    """clDice per class over the whole batch: the harmonic mean of topology precision and sensitivity.

    Topology precision is the share of the predicted soft skeleton inside the label, sensitivity the
    share of the label's skeleton inside the prediction; both with the smoothing of soft_dice_per_class.

    Args:
        probs, one_hot: (B, H, W, C) (or (B, D, H, W, C)) float32 probabilities and one-hot labels.
        iterations: see soft_skeleton.
        smooth: s > 0.
    Returns:
        float32 (C,); 1 when both skeletons lie inside the other mask.
    """
    batch_and_space = list(range(probs.shape.rank - 1))
    predicted_skeleton = _compiled_skeleton(probs, iterations)
    label_skeleton = _compiled_skeleton(one_hot, iterations)
    precision = ((tf.reduce_sum(predicted_skeleton * one_hot, axis=batch_and_space) + smooth)
                 / (tf.reduce_sum(predicted_skeleton, axis=batch_and_space) + smooth))
    sensitivity = ((tf.reduce_sum(label_skeleton * probs, axis=batch_and_space) + smooth)
                   / (tf.reduce_sum(label_skeleton, axis=batch_and_space) + smooth))
    return 2.0 * precision * sensitivity / (precision + sensitivity)


def cross_entropy_dice_cldice_loss(logits: tf.Tensor, labels: tf.Tensor, num_classes: int,
                                   dice_weight: float = 1.0, smooth: float = 1.0,
                                   weights: Optional[tf.Tensor] = None) -> tf.Tensor:
    """Cross-entropy + dice_weight x ((1 - a)(1 - mean soft Dice) + a (1 - mean foreground clDice)).

    a = CLDICE_SHARE. clDice is taken over the foreground classes only (the background's skeleton is
    the gaps between objects, not a structure to keep connected). Same arguments and returns as
    cross_entropy_dice_loss; with one class it equals that loss's Dice part.
    """
    cross_entropy, dice_loss, probs, one_hot = _cross_entropy_and_dice(logits, labels, num_classes, smooth, weights)
    if num_classes < 2:
        return cross_entropy + dice_weight * dice_loss
    cldice_loss = 1.0 - tf.reduce_mean(soft_cldice_per_class(probs[..., 1:], one_hot[..., 1:], smooth=smooth))
    return cross_entropy + dice_weight * ((1.0 - CLDICE_SHARE) * dice_loss + CLDICE_SHARE * cldice_loss)
