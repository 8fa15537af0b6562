"""CLI (python -m runtime.augment_tool): a preview grid of the training augmentation and its speed
against the training step, through the training reader, pipeline and step.
"""
from __future__ import annotations

import argparse
import math
import pathlib
import time

import numpy as np
import tensorflow as tf

from utils.errors import UNetError, run_cli
from utils.data.augment import AugmentConfig, _split, build_augment_fn
from utils.data.pipeline import AugmentFn
import sys


_PRESETS = {"default": AugmentConfig, "all_on": AugmentConfig.all_on,
            "flips_only": AugmentConfig.flips_only, "off": AugmentConfig.off}



_MEMBRANE_RGB = np.array([255.0, 40.0, 40.0], np.float32)



def read_isbi_training_stack(data_dir: str | pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """ISBI 2012 train-volume.tif and train-labels.tif from `data_dir`.

    Returns images uint8 (N, H, W) and masks int32 (N, H, W) with class 1 = interior (label 255)
    and class 0 = membrane (label 0), the project's class ids.
    """
    import tifffile

    data_dir = pathlib.Path(data_dir)
    stacks = []
    for name in ("train-volume.tif", "train-labels.tif"):
        path = data_dir / name
        if not path.is_file():
            raise UNetError(f"--data_dir {data_dir}: {name} not found (expected the ISBI 2012 layout)")
        try:
            stack = tifffile.imread(path)
        except Exception as exc:  # tifffile raises many types for corrupt files
            raise UNetError(f"{path}: not a readable TIFF stack ({exc})") from exc
        if stack.ndim == 2:
            stack = stack[None]
        if stack.ndim != 3 or stack.dtype != np.uint8:
            raise UNetError(f"{path}: expected a uint8 (N, H, W) stack, got {stack.dtype} {stack.shape}")
        stacks.append(stack)
    volume, labels = stacks
    if volume.shape != labels.shape:
        raise UNetError(f"{data_dir}: train-volume.tif {volume.shape} and train-labels.tif "
                        f"{labels.shape} differ in shape")
    return volume, (labels > 127).astype(np.int32)



def _overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """uint8 RGB (H, W, 3): grey image with membrane pixels (class 0) tinted red."""
    grey = np.repeat(np.clip(image[..., :1], 0.0, 1.0) * 255.0, 3, axis=-1)
    membrane = (mask == 0)[..., None]
    return np.where(membrane, (1 - alpha) * grey + alpha * _MEMBRANE_RGB, grey).astype(np.uint8)



def write_preview(out_path: str | pathlib.Path, data_dir: str | pathlib.Path, n: int = 8,
                  seed: int = 0, slice_index: int = 0, preset: str = "default",
                  tile: int = 256) -> pathlib.Path:
    """Write a PNG grid: the original slice, then `n` augmentations, membranes in red."""
    from PIL import Image, ImageDraw

    out_path = pathlib.Path(out_path)
    if not out_path.parent.is_dir():
        raise UNetError(f"--preview {out_path}: directory {out_path.parent} does not exist")
    if n < 1:
        raise UNetError(f"--n {n}: expected at least 1 augmentation")
    volume, masks = read_isbi_training_stack(data_dir)
    if not 0 <= slice_index < len(volume):
        raise UNetError(f"--slice {slice_index}: expected 0..{len(volume) - 1} for {data_dir}")
    image = volume[slice_index, ..., None].astype(np.float32) / 255.0
    mask = masks[slice_index]
    augment = tf.function(build_augment_fn(_PRESETS[preset]()))
    tiles = [("original", _overlay(image, mask))]
    for i in range(n):
        aug_image, aug_mask = augment(image, mask, tf.constant([seed, i], tf.int64))
        tiles.append((f"seed ({seed}, {i})", _overlay(aug_image.numpy(), aug_mask.numpy())))

    cols = min(len(tiles), 3)
    rows = math.ceil(len(tiles) / cols)
    sheet = Image.new("RGB", (cols * tile, rows * tile), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (caption, rgb) in enumerate(tiles):
        x, y = (k % cols) * tile, (k // cols) * tile
        sheet.paste(Image.fromarray(rgb).resize((tile, tile), Image.BILINEAR), (x, y))
        draw.text((x + 4, y + 4), caption, fill=(255, 255, 0))
    sheet.save(out_path)
    return out_path



def augment_dataset(volume: np.ndarray, masks: np.ndarray, crop: int, augment: AugmentFn,
                    seed: int = 0) -> tf.data.Dataset:
    """Endless batches of one (image (1, crop, crop, 1) float32, mask (1, crop, crop) int32).

    Random slice, random crop (the stack mirror-padded when crop exceeds it), then `augment`, in a
    parallel map: the shape of a training input pipeline, for benchmarking.
    """
    pad = max(0, math.ceil((crop - min(volume.shape[1:])) / 2))
    widths = ((0, 0), (pad, pad), (pad, pad))
    images_t = tf.constant(np.pad(volume, widths, mode="reflect"))
    masks_t = tf.constant(np.pad(masks, widths, mode="reflect"))

    def sample(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        item_seed = tf.stack([tf.constant(seed, tf.int64), index])
        pick_seed, crop_seed, aug_seed = _split(item_seed, 3)
        k = tf.random.stateless_uniform([], pick_seed, 0, images_t.shape[0], dtype=tf.int32)
        both = tf.stack([tf.cast(images_t[k], tf.float32) / 255.0, tf.cast(masks_t[k], tf.float32)], -1)
        both = tf.image.stateless_random_crop(both, [crop, crop, 2], crop_seed)
        return augment(both[..., :1], tf.cast(both[..., 1], tf.int32), aug_seed)

    dataset = tf.data.Dataset.counter().map(sample, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(1).prefetch(tf.data.AUTOTUNE)



def benchmark_augment(volume: np.ndarray, masks: np.ndarray, crop: int, config: AugmentConfig,
                      warmup: int = 20, batches: int = 100) -> dict[str, float]:
    """Images per second through `augment_dataset` (warmup batches excluded) and the percentiles
    of the time between consecutive batches, milliseconds."""
    iterator = iter(augment_dataset(volume, masks, crop, build_augment_fn(config)))
    for _ in range(warmup):
        next(iterator)
    gaps = []
    start = last = time.perf_counter()
    for _ in range(batches):
        next(iterator)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
    elapsed = last - start
    p50, p90, p99 = np.percentile(np.array(gaps) * 1e3, [50, 90, 99])
    return {"img_per_s": batches / elapsed, "p50_ms": p50, "p90_ms": p90, "p99_ms": p99}



def benchmark_train_step(volume: np.ndarray, masks: np.ndarray, steps: int = 3) -> float:
    """Training images per second of the paper U-Net (batch 1, 572 -> 388) with Adam.

    One warmup step (tracing) is excluded; then `steps` timed steps of GradientTape + Adam.
    """
    import tf_keras as keras

    from model.unet import build_unet, margin, output_size, paper_unet_spec
    from utils.training.losses import cross_entropy_dice_loss

    spec = paper_unet_spec()
    size_in = 572
    size_out, border = output_size(spec, size_in), margin(spec)
    model = build_unet(spec)
    optimizer = keras.optimizers.Adam(1e-4)
    batch = next(iter(augment_dataset(volume, masks, size_in, build_augment_fn(AugmentConfig()))))
    image, labels = batch[0], batch[1][:, border:border + size_out, border:border + size_out]

    @tf.function
    def train_step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = cross_entropy_dice_loss(model(x, training=True), y, spec.n_classes)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    train_step(image, labels).numpy()
    start = time.perf_counter()
    for _ in range(steps):
        train_step(image, labels).numpy()
    return steps / (time.perf_counter() - start)



def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m runtime.augment_tool", description=__doc__.split("\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--preview", metavar="OUT.png", help="write a PNG grid of augmented slices")
    action.add_argument("--benchmark", action="store_true",
                        help="augmentation throughput vs. paper U-Net training step rate")
    parser.add_argument("--data_dir", required=True, help="directory with the ISBI 2012 TIFF stacks")
    parser.add_argument("--n", type=int, default=8, help="preview: number of augmentations")
    parser.add_argument("--seed", type=int, default=0, help="preview: first element of every seed")
    parser.add_argument("--slice", type=int, default=0, help="preview: slice of train-volume.tif")
    parser.add_argument("--preset", choices=sorted(_PRESETS), default="default",
                        help="preview: AugmentConfig preset (benchmark always uses all_on)")
    parser.add_argument("--batches", type=int, default=100, help="benchmark: timed batches per size")
    parser.add_argument("--train_steps", type=int, default=3, help="benchmark: timed training steps")
    return parser.parse_args(argv)



def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    return run_cli(lambda: run_preview(args) if args.preview else run_benchmark(args))



def run_preview(args: argparse.Namespace) -> None:
    print(write_preview(args.preview, args.data_dir, args.n, args.seed, args.slice, args.preset))



def run_benchmark(args: argparse.Namespace) -> None:
    """Augmented img/s at 572 and 512 next to the paper U-Net's training img/s (last line: the ratio)."""
    if args.batches < 1 or args.train_steps < 1:
        raise UNetError(f"--batches {args.batches} / --train_steps {args.train_steps}: expected at least 1")
    volume, masks = read_isbi_training_stack(args.data_dir)
    rates = {}
    for crop in (572, 512):
        stats = benchmark_augment(volume, masks, crop, AugmentConfig.all_on(), batches=args.batches)
        rates[crop] = stats["img_per_s"]
        gaps = " ".join(f"{k}={stats[k]:.1f}" for k in ("p50_ms", "p90_ms", "p99_ms"))
        print(f"augment crop={crop} img_per_s={stats['img_per_s']:.1f} {gaps}", flush=True)
    train_rate = benchmark_train_step(volume, masks, args.train_steps)
    print(f"train crop=572 batch=1 img_per_s={train_rate:.3f}")
    print(f"augment_img_per_s={rates[572]:.1f} train_img_per_s={train_rate:.3f} "
          f"ratio={rates[572] / train_rate:.0f}")


if __name__ == "__main__":
    sys.exit(main())
