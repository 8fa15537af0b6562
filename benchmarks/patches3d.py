"""What 3-D augmentation costs next to the 3-D training step it feeds (data.patches3d, issue 21).

    .venv/bin/python benchmarks/patches3d.py [--patch 64] [--batch 4] [--base_filters 16] [--rounds 5]

Times, alternated in one process (unet_medical.base.timing.time_alternating), one training batch of
--batch patches of --patch voxels per side cut from four CT-like volumes of 160x160x120 voxels:
- `crop`: no augmentation (a plain crop);
- `default`: data.patches3d.VolumeAugment() as a --dims 3 run uses it (flips, in-plane 90-degree turns,
  intensity; a rotation and zoom on 20 % of the patches; no elastic deformation);
- `elastic 20 %`: the same with the elastic deformation on 20 % of the patches (elastic_prob=0.2);
- `elastic always`: elastic_prob=1 and affine_prob=1, the most a patch can cost;
- `train step`: one optimizer step of the CPU recipe's 3-D U-Net (examples/unet_CPU_TRAIN.sh: base
  filters 16, batch norm, depth 4) on such a batch (Adam, cross-entropy; the project's CE + Dice adds a
  few element-wise ops to the same convolutions).
The batches are built on one core by tf.numpy_function while the step runs on the others, so the share
that matters is a batch's time over a step's. Prints the CPU, medians and ranges in ms, and those shares.
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import unet_medical  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from unet_medical.base.cpu import describe, read_cpu_info  # noqa: E402
from unet_medical.base.timing import time_alternating  # noqa: E402
from unet_medical.data.patches3d import VolumeAugment, patch_batch, prepare_patch_source  # noqa: E402
from unet_medical.model.unet import UNetSpec, build_unet  # noqa: E402


def volumes(count: int, shape: tuple[int, int, int], seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """`count` (image (I, J, K, 1) float32 in [0, 1], labels (I, J, K) uint8 with classes 1 and 2)."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    images, masks = [], []
    for _ in range(count):
        centre = rng.uniform(-0.3, 0.3, 3)
        radius = sum((g - c) ** 2 for g, c in zip(grid, centre))
        labels = (radius < 0.4).astype(np.uint8) + (radius < 0.05)
        images.append((0.3 + 0.2 * labels + rng.normal(0, 0.05, shape)).astype(np.float32)[..., None])
        masks.append(labels)
    return images, masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--base_filters", type=int, default=16)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    patch = (args.patch,) * 3
    images, masks = volumes(4, (160, 160, 120))
    source = prepare_patch_source(images, masks, ["a", "b", "c", "d"], patch, (1, 2), seed=0)
    augments = {"crop": None, "default": VolumeAugment(), "elastic 20 %": VolumeAugment(elastic_prob=0.2),
                "elastic always": VolumeAugment(elastic_prob=1.0, affine_prob=1.0)}
    step = iter(range(10**9))

    def batch_of(augment: VolumeAugment | None):
        return lambda: patch_batch(source, next(step), batch_size=args.batch, seed=1, augment=augment)

    model = build_unet(UNetSpec(base_filters=args.base_filters, depth=args.depth, padding="same", batch_norm=True,
                                dropout=0.0, dims=3, n_classes=3))
    optimizer = keras.optimizers.Adam(1e-3)
    x, y = (tf.constant(a) for a in patch_batch(source, 0, batch_size=args.batch, seed=1))

    @tf.function
    def train_step() -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, model(x, training=True),
                                                                              from_logits=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    calls = {name: batch_of(augment) for name, augment in augments.items()}
    calls["train step"] = lambda: train_step().numpy()
    times = time_alternating(calls, warmup=1, rounds=args.rounds)
    print(describe(read_cpu_info()))
    print(f"batch of {args.batch} patches of {args.patch}^3 voxels; 3-D U-Net base {args.base_filters}, "
          f"depth {args.depth}; {args.rounds} alternating rounds")
    step_ms = statistics.median(times["train step"]) * 1e3
    for name, seconds in times.items():
        ms = [s * 1e3 for s in seconds]
        share = "" if name == "train step" else f"   {statistics.median(ms) / step_ms:6.1%} of a train step"
        print(f"{name:>15}: median {statistics.median(ms):8.1f} ms  (range {min(ms):.1f}-{max(ms):.1f}){share}")


if __name__ == "__main__":
    main()
