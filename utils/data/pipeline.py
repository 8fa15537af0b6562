"""The tf.data training pipeline: random crops (and augmentation) as a pure function of the step.

Every training sample is a stateless function of (seed, global sample number): which image (a
per-epoch permutation, i.e. shuffling without replacement), where to crop, and the augmentation seed.
Consequences, all deliberate:
  * a run resumed at step s sees exactly the batches an uninterrupted run sees from step s on;
  * two runs with the same seed get bit-identical input streams (no shuffle-buffer state);
  * with W workers, worker r takes samples [r*B, (r+1)*B) of each global batch of W*B samples, so W
    workers at batch B see the same data as one process at batch W*B.

Images are decoded and normalized once and kept in memory (the "cache"); each image and mask is
mirror-padded by the network's margin so that a valid-padding U-Net (572 in, 388 out) can predict
labels right up to the image border, as in the paper's overlap-tile strategy.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from utils.errors import UNetError

AugmentFn = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]


@dataclasses.dataclass(frozen=True)
class CropGeometry:
    """Network input tile and the label window it predicts (pixels)."""

    input_size: int
    output_size: int

    @property
    def margin(self) -> int:
        return (self.input_size - self.output_size) // 2


def pad_stack(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], margin: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mirror-pad every image (H, W, C) float32 and mask (H, W) by `margin`, then stack them.

    Images of different sizes are zero-filled at the bottom/right up to the largest size; the crop
    sampler never reaches that filler because it draws offsets from each image's own size.
    Returns (images (N, Hmax+2m, Wmax+2m, C) float32, masks (N, Hmax+2m, Wmax+2m) int32,
    sizes (N, 2) int32 of the unpadded (H, W)).
    """
    sizes = np.array([m.shape[:2] for m in masks], dtype=np.int32)
    h, w = sizes.max(axis=0) + 2 * margin
    channels = images[0].shape[-1]
    out_images = np.zeros((len(images), h, w, channels), np.float32)
    out_masks = np.zeros((len(masks), h, w), np.int32)
    pad = ((margin, margin), (margin, margin))
    for i, (image, mask) in enumerate(zip(images, masks)):
        padded_image = np.pad(image, pad + ((0, 0),), mode="reflect")
        padded_mask = np.pad(mask, pad, mode="reflect")
        out_images[i, :padded_image.shape[0], :padded_image.shape[1]] = padded_image
        out_masks[i, :padded_mask.shape[0], :padded_mask.shape[1]] = padded_mask
    return out_images, out_masks, sizes


def make_train_dataset(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], names: Sequence[str],
                       geometry: CropGeometry, *, batch_size: int, seed: int, start_step: int,
                       max_steps: int, augment: AugmentFn | None = None, rank: int = 0,
                       world_size: int = 1) -> tf.data.Dataset:
    """Batches (images (B, I, I, C) float32, labels (B, O, O) int32) for steps start_step..max_steps-1.

    `images` are normalized float32 (H, W, C); `masks` int class ids (H, W); `names` are used in
    error messages. I = geometry.input_size, O = geometry.output_size.
    """
    out = geometry.output_size
    for name, mask in zip(names, masks):
        if min(mask.shape[:2]) < out:
            raise UNetError(
                f"{name}: image is {mask.shape[0]}x{mask.shape[1]} pixels, smaller than the "
                f"{out}x{out} training label crop; use a smaller --crop_size")
    padded_images, padded_masks, sizes = pad_stack(images, masks, geometry.margin)
    images_t = tf.constant(padded_images)
    masks_t = tf.constant(padded_masks)
    sizes_t = tf.constant(sizes)
    num_images = len(masks)
    global_batch = batch_size * world_size
    size_in, margin = geometry.input_size, geometry.margin

    def sample(local_index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        step = local_index // batch_size
        g = step * global_batch + rank * batch_size + local_index % batch_size
        epoch = g // num_images
        order = tf.argsort(tf.random.stateless_uniform([num_images], seed=tf.stack([seed, epoch])))
        idx = tf.cast(tf.gather(order, g % num_images), tf.int64)
        crop_seed = tf.stack([tf.cast(seed, tf.int64) + 1_000_003, g])
        hw = tf.gather(sizes_t, idx)
        limits = tf.cast(hw - out + 1, tf.int64)
        u = tf.random.stateless_uniform([2], seed=crop_seed, dtype=tf.float32)
        offset = tf.minimum(tf.cast(u * tf.cast(limits, tf.float32), tf.int64), limits - 1)
        y, x = offset[0], offset[1]
        image = images_t[idx, y:y + size_in, x:x + size_in]
        mask = masks_t[idx, y:y + size_in, x:x + size_in]
        if augment is not None:
            aug_seed = tf.stack([tf.cast(seed, tf.int64) + 2_000_029, g])
            image, mask = augment(image, mask, aug_seed)
        mask = mask[margin:margin + out, margin:margin + out]
        image = tf.ensure_shape(image, [size_in, size_in, padded_images.shape[-1]])
        mask = tf.ensure_shape(tf.cast(mask, tf.int32), [out, out])
        return image, mask

    dataset = tf.data.Dataset.range(start_step * batch_size, max_steps * batch_size)
    dataset = dataset.map(sample, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    return dataset.prefetch(tf.data.AUTOTUNE)
