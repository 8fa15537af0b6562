"""CLI (python -m unet_medical.cli.augment_tool): a preview grid of the training augmentation and its speed
against the training step, through the training reader, pipeline and step.

    python -m unet_medical.cli.augment_tool --preview OUT.png --data_dir DIR [--n 8 --seed 0 --slice 0 --preset all_on]
    python -m unet_medical.cli.augment_tool --benchmark --data_dir DIR

Nothing here re-implements training: the data set is read by utils.data.layouts (any layout), crops
come from utils.data.pipeline.make_train_dataset, and the training rate is runtime.benchmark's
timed training step of the paper U-Net (572 -> 388, batch 1).
"""
from __future__ import annotations

import argparse
import math
import pathlib
import sys

import numpy as np
import tensorflow as tf

from unet_medical.cli.config import Config
from unet_medical.data.augment import AugmentConfig, build_augment_fn
from unet_medical.data.layouts import SegmentationData, load_training_data
from unet_medical.data.normalize import normalize_image
from unet_medical.data.pipeline import AugmentFn, CropGeometry, make_train_dataset
from unet_medical.base.errors import UNetError, run_cli
from unet_medical.base.fileio import atomic_write
from unet_medical.base.timing import latency_stats, throughput, time_steps

_PRESETS = {"default": AugmentConfig, "all_on": AugmentConfig.all_on}
_CLASS0_RGB = np.array([255.0, 40.0, 40.0], np.float32)


def _overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """uint8 RGB (H, W, 3): the image in grey (first channel) with class-0 pixels (ISBI: membrane) tinted red."""
    grey = np.repeat(np.clip(image[..., :1], 0.0, 1.0) * 255.0, 3, axis=-1)
    tinted = (mask == 0)[..., None]
    return np.where(tinted, (1 - alpha) * grey + alpha * _CLASS0_RGB, grey).astype(np.uint8)


def write_preview(out_path: str | pathlib.Path, data_dir: str | pathlib.Path, n: int = 8,
                  seed: int = 0, slice_index: int = 0, preset: str = "default",
                  tile: int = 256) -> pathlib.Path:
    """Write a PNG grid: one training image, then `n` draws of the training augmentation of it."""
    from PIL import Image, ImageDraw

    out_path = pathlib.Path(out_path)
    if not out_path.parent.is_dir():
        raise UNetError(f"--preview {out_path}: directory {out_path.parent} does not exist")
    if n < 1:
        raise UNetError(f"--n {n}: expected at least 1 augmentation")
    data = load_training_data(data_dir)
    if not 0 <= slice_index < len(data.images):
        raise UNetError(f"--slice {slice_index}: expected 0..{len(data.images) - 1} for {data_dir}")
    image, mask = normalize_image(data.images[slice_index]), data.masks[slice_index].astype(np.int32)
    augment = tf.function(build_augment_fn(_PRESETS[preset]()))
    tiles = [("original", _overlay(image, mask))]
    for i in range(n):
        aug_image, aug_mask = augment(image, mask, tf.constant([seed, i], tf.int64))
        tiles.append((f"seed ({seed}, {i})", _overlay(aug_image.numpy(), aug_mask.numpy())))
    cols = min(len(tiles), 3)
    sheet = Image.new("RGB", (cols * tile, math.ceil(len(tiles) / cols) * tile), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (caption, rgb) in enumerate(tiles):
        x, y = (k % cols) * tile, (k // cols) * tile
        sheet.paste(Image.fromarray(rgb).resize((tile, tile), Image.BILINEAR), (x, y))
        draw.text((x + 4, y + 4), caption, fill=(255, 255, 0))
    # The temporary file has no image suffix: the format comes from the destination's (PNG if unknown).
    image_format = Image.registered_extensions().get(out_path.suffix.lower(), "PNG")
    atomic_write(out_path, lambda tmp: sheet.save(tmp, format=image_format))
    return out_path


def augment_dataset(data: SegmentationData, crop: int, augment: AugmentFn | None, seed: int = 0,
                    batches: int = 1_000_000, margin: int = 0) -> tf.data.Dataset:
    """The training input stream at batch 1: (image (1, crop, crop, C) float32, labels (1, L, L) int32)
    with L = crop - 2 * margin (a valid-padding network's label window), for `batches` steps."""
    images = [normalize_image(im) for im in data.images]
    return make_train_dataset(images, list(data.masks), list(data.names), CropGeometry(crop, crop - 2 * margin),
                              batch_size=1, seed=seed, start_step=0, max_steps=batches, augment=augment)


def benchmark_augment(data: SegmentationData, crop: int, config: AugmentConfig, warmup: int = 20,
                      batches: int = 100, margin: int = 0) -> dict[str, float]:
    """Images per second through the training pipeline with `config`'s augmentation, and the
    percentiles (ms) of the wait for each batch."""
    iterator = iter(augment_dataset(data, crop, build_augment_fn(config), batches=warmup + batches, margin=margin))
    times = time_steps(lambda _: next(iterator), warmup, batches)
    stats = latency_stats(times)
    return {"img_per_s": throughput(1, times)["img_per_s"],
            **{f"p{p}_ms": stats[f"latency_ms_p{p}"] for p in (50, 90, 99)}}


def benchmark_train_step(data_dir: str, steps: int = 3) -> float:
    """Training images per second of the paper U-Net (batch 1, 572 -> 388, all augmentations on real
    crops), timed by runtime.benchmark exactly as --exec_mode benchmark --benchmark_mode train does."""
    from unet_medical.cli.benchmark import train_benchmark
    from unet_medical.training import distributed

    cfg = Config(exec_mode="benchmark", benchmark_mode="train", bench_input="real", data_dir=str(data_dir),
                 bench_warmup_steps=1, bench_steps=steps, batch_size=1)
    times, info = train_benchmark(cfg, distributed.create("single"))
    return throughput(info["images_per_step"], times)["img_per_s"]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m unet_medical.cli.augment_tool", description=__doc__.split("\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--preview", metavar="OUT.png", help="write a PNG grid of augmented training images")
    action.add_argument("--benchmark", action="store_true",
                        help="augmented pipeline throughput vs. the paper U-Net's training step rate")
    parser.add_argument("--data_dir", required=True, help="a training data set (any layout main.py reads)")
    parser.add_argument("--n", type=int, default=8, help="preview: number of augmentations (default: 8)")
    parser.add_argument("--seed", type=int, default=0, help="preview: first element of every seed (default: 0)")
    parser.add_argument("--slice", type=int, default=0, help="preview: index of the training image (default: 0)")
    parser.add_argument("--preset", choices=sorted(_PRESETS), default="default",
                        help="preview: AugmentConfig preset (benchmark always uses all_on) (default: default)")
    parser.add_argument("--batches", type=int, default=100, help="benchmark: timed batches per size (default: 100)")
    parser.add_argument("--train_steps", type=int, default=3, help="benchmark: timed training steps (default: 3)")
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
    from unet_medical.model.unet import margin, paper_unet_spec

    data = load_training_data(args.data_dir)
    rates = {}
    for crop in (572, 512):  # crops of the paper U-Net, whose labels are 2 x 92 pixels smaller
        stats = benchmark_augment(data, crop, AugmentConfig.all_on(), batches=args.batches,
                                  margin=margin(paper_unet_spec()))
        rates[crop] = stats["img_per_s"]
        gaps = " ".join(f"{k}={stats[k]:.1f}" for k in ("p50_ms", "p90_ms", "p99_ms"))
        print(f"augment crop={crop} img_per_s={stats['img_per_s']:.1f} {gaps}", flush=True)
    train_rate = benchmark_train_step(args.data_dir, args.train_steps)
    print(f"train crop=572 batch=1 img_per_s={train_rate:.3f}")
    print(f"augment_img_per_s={rates[572]:.1f} train_img_per_s={train_rate:.3f} "
          f"ratio={rates[572] / train_rate:.0f}")


if __name__ == "__main__":
    sys.exit(main())
