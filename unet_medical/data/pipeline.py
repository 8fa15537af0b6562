"""The tf.data training pipeline: random crops (and augmentation) as a pure function of the step.

Every training sample is a stateless function of (seed, global sample number): which image (a
per-epoch permutation, i.e. shuffling without replacement), where to crop, and the augmentation seed.
Consequences, all deliberate:
  * a run resumed at step s sees exactly the batches an uninterrupted run sees from step s on;
  * two runs with the same seed get bit-identical input streams (no shuffle-buffer state);
  * with W workers, worker r takes samples [r*B, (r+1)*B) of each global batch of W*B samples, so W
    workers at batch B see the same data as one process at batch W*B.

Images are decoded and normalized once and kept in memory (the "cache"), packed end to end so that
mixed sizes cost their own pixels only; each image and mask is mirror-padded by the network's margin
so that a valid-padding U-Net (572 in, 388 out) can predict labels right up to the image border, as in the paper's overlap-tile strategy.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from unet_medical.base.errors import UNetError

AugmentFn = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]


@dataclasses.dataclass(frozen=True)
class CropGeometry:
    """Network input tile and the label window it predicts (pixels)."""

    input_size: int
    output_size: int

    @property
    def margin(self) -> int:
        return (self.input_size - self.output_size) // 2


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Where crops are taken: a `foreground` fraction of them centred on a random pixel of one of
    `classes` (rare classes; see utils.data.recipe), the rest uniformly."""

    foreground: float = 0.0
    classes: tuple[int, ...] = ()


# At most this many candidate centres per image for foreground sampling: a uniform subsample of a
# class's pixels is as good a choice of centres as all of them, and bounds memory on large images.
MAX_CENTRES_PER_IMAGE = 4096


@dataclasses.dataclass(frozen=True)
class PackedImages:
    """Images of any sizes, mirror-padded by the margin and packed end to end in flat buffers (no
    padding to the largest image: a set mixing 256 x 256 and 1388 x 1040 images costs its own pixels only).

    pixels: float32 (sum_i Hp_i * Wp_i * C,); labels: int32 (sum_i Hp_i * Wp_i,); starts: int64 (N,)
    first pixel of each image; padded: int32 (N, 2) (Hp, Wp) = (H + 2m, W + 2m); sizes: int32 (N, 2) (H, W).
    """

    pixels: np.ndarray
    labels: np.ndarray
    starts: np.ndarray
    padded: np.ndarray
    sizes: np.ndarray
    channels: int


def pack_images(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], margin: int) -> PackedImages:
    """Mirror-pad every image (H, W, C) float32 and mask (H, W) by `margin` and pack them (PackedImages)."""
    pad = ((margin, margin), (margin, margin))
    padded_images = [np.pad(np.asarray(im, np.float32), pad + ((0, 0),), mode="reflect") for im in images]
    padded_masks = [np.pad(np.asarray(m, np.int32), pad, mode="reflect") for m in masks]
    shapes = np.array([m.shape for m in padded_masks], np.int64)
    starts = np.concatenate([[0], np.cumsum(shapes[:, 0] * shapes[:, 1])[:-1]]).astype(np.int64)
    return PackedImages(pixels=np.concatenate([im.ravel() for im in padded_images]),
                        labels=np.concatenate([m.ravel() for m in padded_masks]), starts=starts,
                        padded=shapes.astype(np.int32), sizes=np.array([m.shape[:2] for m in masks], np.int32),
                        channels=int(images[0].shape[-1]))


def foreground_centres(masks: Sequence[np.ndarray], classes: Sequence[int], seed: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate crop centres (y, x) on pixels of `classes`, at most MAX_CENTRES_PER_IMAGE per image.

    Returns (centres int32 (M, 2), first int64 (N,), count int64 (N,)): image i's centres are
    centres[first[i]:first[i] + count[i]]; an image without such pixels has count 0.
    """
    rng = np.random.default_rng(seed)
    chunks, counts = [], []
    for mask in masks:
        ys, xs = np.nonzero(np.isin(mask, classes))
        if len(ys) > MAX_CENTRES_PER_IMAGE:
            keep = np.sort(rng.choice(len(ys), MAX_CENTRES_PER_IMAGE, replace=False))
            ys, xs = ys[keep], xs[keep]
        chunks.append(np.stack([ys, xs], axis=1).astype(np.int32))
        counts.append(len(ys))
    counts_arr = np.array(counts, np.int64)
    first = np.concatenate([[0], np.cumsum(counts_arr)[:-1]]).astype(np.int64)
    centres = np.concatenate(chunks) if sum(counts) else np.zeros((1, 2), np.int32)
    return centres, first, counts_arr


def make_train_dataset(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], names: Sequence[str],
                       geometry: CropGeometry, *, batch_size: int, seed: int, start_step: int,
                       max_steps: int, augment: AugmentFn | None = None, rank: int = 0,
                       world_size: int = 1, sampling: Sampling = Sampling()) -> tf.data.Dataset:
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
    packed = pack_images(images, masks, geometry.margin)
    pixels_t, labels_t = tf.constant(packed.pixels), tf.constant(packed.labels)
    starts_t, padded_t, sizes_t = tf.constant(packed.starts), tf.constant(packed.padded), tf.constant(packed.sizes)
    centres, first, count = foreground_centres(masks, sampling.classes, seed) if sampling.foreground > 0 else (
        np.zeros((1, 2), np.int32), np.zeros(len(masks), np.int64), np.zeros(len(masks), np.int64))
    centres_t, first_t, count_t = tf.constant(centres), tf.constant(first), tf.constant(count)
    num_images, channels = len(masks), packed.channels
    global_batch = batch_size * world_size
    size_in, margin = geometry.input_size, geometry.margin
    window = tf.range(size_in, dtype=tf.int64)

    def crop_offset(idx: tf.Tensor, g: tf.Tensor) -> tf.Tensor:
        """(y, x) of the label window in the unpadded image: uniform, or centred on a rare-class pixel."""
        limits = tf.cast(tf.gather(sizes_t, idx) - out + 1, tf.int64)
        u = tf.random.stateless_uniform([2], seed=tf.stack([tf.cast(seed, tf.int64) + 1_000_003, g]))
        uniform = tf.minimum(tf.cast(u * tf.cast(limits, tf.float32), tf.int64), limits - 1)
        if sampling.foreground <= 0:
            return uniform
        v = tf.random.stateless_uniform([2], seed=tf.stack([tf.cast(seed, tf.int64) + 3_000_017, g]))
        n = tf.gather(count_t, idx)
        pick = tf.gather(first_t, idx) + tf.minimum(tf.cast(v[1] * tf.cast(n, tf.float32), tf.int64),
                                                    tf.maximum(n - 1, 0))
        # tf.where below evaluates both branches: an image without candidates at the end of the list
        # (first == len(centres), e.g. the last slices of a volume) must still gather a valid row.
        pick = tf.minimum(pick, len(centres) - 1)
        centred = tf.clip_by_value(tf.cast(tf.gather(centres_t, pick), tf.int64) - out // 2, 0, limits - 1)
        return tf.where((v[0] < sampling.foreground) & (n > 0), centred, uniform)

    def sample(local_index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        step = local_index // batch_size
        g = step * global_batch + rank * batch_size + local_index % batch_size
        epoch = g // num_images
        order = tf.argsort(tf.random.stateless_uniform([num_images], seed=tf.stack([seed, epoch])))
        idx = tf.cast(tf.gather(order, g % num_images), tf.int64)
        offset = crop_offset(idx, g)
        width = tf.cast(tf.gather(padded_t, idx)[1], tf.int64)
        flat = (tf.gather(starts_t, idx) + (offset[0] + window)[:, None] * width
                + (offset[1] + window)[None, :])  # (I, I) pixel numbers of the crop
        mask = tf.gather(labels_t, flat)
        image = tf.gather(pixels_t, flat[..., None] * channels + tf.range(channels, dtype=tf.int64))
        if augment is not None:
            aug_seed = tf.stack([tf.cast(seed, tf.int64) + 2_000_029, g])
            image, mask = augment(image, mask, aug_seed)
        mask = mask[margin:margin + out, margin:margin + out]
        image = tf.ensure_shape(image, [size_in, size_in, channels])
        mask = tf.ensure_shape(tf.cast(mask, tf.int32), [out, out])
        return image, mask

    dataset = tf.data.Dataset.range(start_step * batch_size, max_steps * batch_size)
    dataset = dataset.map(sample, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    return without_autotune_thread(dataset.prefetch(tf.data.AUTOTUNE))


def without_autotune_thread(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` without tf.data's autotuning model thread: AUTOTUNE map parallelism becomes the core
    count, and an AUTOTUNE prefetch buffer still grows when it runs dry.

    TF 2.21 joins that thread when the iterator is deleted, and the thread wakes only at its next
    optimization, scheduled at doubling intervals of up to 60 s: a training loop that stopped its stream
    after 70 s waited 12.0 s to delete it (3 ms without the thread), and budgeted runs waited 10-41 s
    before their final evaluation. Measured on the 2-D stream alone, the rate is the same either way
    (about 41 batches/s of 256 px crops on 2 Zen 4 cores), far above a training step's."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)
