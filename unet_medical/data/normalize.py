"""Intensity normalization: the one rule every stage applies to an image before the network sees it.

Two modes, chosen per data set (utils.data.recipe) and recorded in the run (model.json), so training,
evaluation, prediction and every exported file apply the same one:
- "global": uint8 / 255, uint16 / 65535, float passes through: every image on one fixed scale. Right
  for homogeneous sets (one microscope, one protocol: ISBI EM), where absolute intensity means something.
- "per_image": per image and channel, clip to the 0.5 and 99.5 percentiles and rescale that range to
  [0, 1]. A robust z-score (as nnU-Net's per-image normalization) that keeps the [0, 1] range the
  augmentation's gamma and contrast transforms assume; right where images differ in stain, exposure
  or polarity.
"""
from __future__ import annotations

import numpy as np

NORMALIZATIONS = ("global", "per_image")
CLIP_PERCENTILES = (0.5, 99.5)

_MAX_VALUE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def normalize_image(image: np.ndarray, mode: str = "global") -> np.ndarray:
    """An image (H, W, C) uint8, uint16 or float, as float32 (H, W, C) in [0, 1] by `mode` (see above)."""
    image = np.asarray(image)
    if mode == "per_image":
        return _per_image(image)
    if mode != "global":
        raise ValueError(f"normalization {mode!r}: expected one of {NORMALIZATIONS}")
    if image.dtype in _MAX_VALUE:
        return image.astype(np.float32) / np.float32(_MAX_VALUE[image.dtype])
    if np.issubdtype(image.dtype, np.floating):
        return image.astype(np.float32, copy=False)
    raise TypeError(f"normalize_image expects uint8, uint16 or float, got {image.dtype}")


def _per_image(image: np.ndarray) -> np.ndarray:
    if not (image.dtype in _MAX_VALUE or np.issubdtype(image.dtype, np.floating)):
        raise TypeError(f"normalize_image expects uint8, uint16 or float, got {image.dtype}")
    x = image.astype(np.float32)
    lo, hi = np.percentile(x, CLIP_PERCENTILES, axis=(0, 1)).astype(np.float32)  # (C,) each
    span = hi - lo
    # A constant channel carries no information: it maps to 0 rather than dividing by 0.
    scale = np.where(span > 0, 1.0 / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)
    return ((np.clip(x, lo, hi) - lo) * scale).astype(np.float32)


def normalize_images_tf(images, mode: str = "global"):
    """The in-graph twin of normalize_image for a batch (B, H, W, C) of raw images (uint8, uint16 or
    float) -> float32 (B, H, W, C); percentiles interpolate linearly as NumPy's default does."""
    import tensorflow as tf

    dtype = np.dtype(images.dtype.as_numpy_dtype)
    x = tf.cast(images, tf.float32)
    if mode == "global":
        return x / _MAX_VALUE[dtype] if dtype in _MAX_VALUE else x
    if mode != "per_image":
        raise ValueError(f"normalization {mode!r}: expected one of {NORMALIZATIONS}")
    shape = tf.shape(x)
    flat = tf.sort(tf.reshape(tf.transpose(x, [0, 3, 1, 2]), [shape[0], shape[3], -1]), axis=-1)  # (B, C, N)
    n = tf.cast(tf.shape(flat)[-1], tf.float32)

    def percentile(q: float) -> tf.Tensor:
        position = q / 100.0 * (n - 1.0)
        below = tf.floor(position)
        frac = position - below
        lower = tf.gather(flat, tf.cast(below, tf.int32), axis=-1)
        upper = tf.gather(flat, tf.minimum(tf.cast(below, tf.int32) + 1, tf.cast(n, tf.int32) - 1), axis=-1)
        return (lower + frac * (upper - lower))[:, None, None, :]  # (B, 1, 1, C)

    lo, hi = percentile(CLIP_PERCENTILES[0]), percentile(CLIP_PERCENTILES[1])
    span = hi - lo
    scale = tf.where(span > 0, 1.0 / tf.where(span > 0, span, 1.0), 0.0)
    return (tf.clip_by_value(x, lo, hi) - lo) * scale
