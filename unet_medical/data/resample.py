"""Resampling by the run's input scale (--input_scale): images down before the network, class
probabilities back up to the input's size, training masks down with the images.

One TensorFlow op does every resize, `tf.image.resize(bilinear, antialias=True)`, here on NumPy arrays
and in the SavedModel's graph (export.serving) alike, so predict and the SavedModel give the same masks.
Antialiasing matters when shrinking: a plain bilinear resize by 1/4 reads one pixel in 16 and aliases
texture; with antialias the triangle filter widens to the scale and averages every pixel. Its weights are
non-negative, so values stay within the input's range (images in [0, 1], probabilities summing to 1).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from unet_medical.data.recipe import scaled_side


def scaled_shape(hw: Sequence[int], scale: float) -> tuple[int, int]:
    """(H, W) pixels after resampling by `scale` (data.recipe.scaled_side's rounding)."""
    return scaled_side(int(hw[0]), scale), scaled_side(int(hw[1]), scale)


def resize_tf(x: tf.Tensor, size: tf.Tensor | Sequence[int]) -> tf.Tensor:
    """(B, H, W, C) or (H, W, C) float32 -> the same at `size` (H', W'): bilinear with antialias."""
    return tf.cast(tf.image.resize(x, size, method="bilinear", antialias=True), tf.float32)


def resize_image(image: np.ndarray, hw: Sequence[int]) -> np.ndarray:
    """(H, W, C) float32 image or probabilities -> (H', W', C) float32 at hw = (H', W')."""
    if tuple(image.shape[:2]) == tuple(hw):
        return np.asarray(image, np.float32)
    return resize_tf(tf.convert_to_tensor(image, tf.float32), list(hw)).numpy()


def resize_mask(mask: np.ndarray, hw: Sequence[int], n_classes: int) -> np.ndarray:
    """(H, W) class ids -> (H', W') class ids (the mask's dtype): each class's share of every output
    pixel, resized like the image, then the largest share (nnU-Net resamples labels one-hot likewise),
    so a label map shrinks without the jagged edges and lost thin parts of nearest-neighbour sampling."""
    if tuple(mask.shape[:2]) == tuple(hw):
        return mask
    one_hot = (mask[..., None] == np.arange(n_classes)).astype(np.float32)
    return resize_image(one_hot, hw).argmax(-1).astype(mask.dtype)


def rescale_pairs(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], scale: float,
                  n_classes: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Training images (H, W, C) float32 and masks (H, W) resampled by `scale` (unchanged at 1)."""
    if scale == 1:
        return list(images), list(masks)
    shapes = [scaled_shape(im.shape[:2], scale) for im in images]
    return ([resize_image(im, hw) for im, hw in zip(images, shapes)],
            [resize_mask(m, hw, n_classes) for m, hw in zip(masks, shapes)])
