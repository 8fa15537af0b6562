"""Peak memory of tiled inference on a large image, or of sliding-window inference on a large volume.

    python benchmarks/predict_memory.py [--size 4096] [--max_tile_size 1024] [--base_filters 64]
    python benchmarks/predict_memory.py --volume 512,512,300 [--patch 64] [--classes 3] [--base_filters 16]

Builds the paper U-Net (valid padding, 64 base filters; random weights: memory does not depend on
them), predicts one SIZE x SIZE image through utils.inference (the same path as predict/evaluate)
and prints the process's peak resident memory (getrusage ru_maxrss), the tile plan and the time.
The last line is machine-readable: `size=S tiles=N peak_rss_mb=M seconds=T`.
With --volume, a same-padding 3-D U-Net (depth 4, the CPU recipe's 16 base filters) predicts a CT-like
int16 volume through inference.sliding_window (the path of a --dims 3 evaluate/predict), label map included;
the last line is `volume=IxJxK windows=N peak_rss_mb=M seconds=T`.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import unet_medical  # noqa: E402,F401
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from unet_medical.base.cpu import peak_memory_mb as peak_rss_mb  # noqa: E402
from unet_medical.model.unet import UNetSpec, build_unet  # noqa: E402
from unet_medical.inference.sliding_window import sliding_window_predict, window_starts  # noqa: E402
from unet_medical.inference.tiling import keras_predictor, plan_tiles, tile_starts, tiled_predict  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--max_tile_size", type=int, default=1024)
    parser.add_argument("--base_filters", type=int, default=64)
    parser.add_argument("--padding", default="valid", choices=("valid", "same"))
    parser.add_argument("--volume", default=None, help="I,J,K: a volume through the 3-D sliding window instead")
    parser.add_argument("--patch", type=int, default=64, help="--volume: window side in voxels")
    parser.add_argument("--classes", type=int, default=3, help="--volume: output classes")
    args = parser.parse_args()
    if args.volume:
        volume_memory(tuple(int(n) for n in args.volume.split(",")), args.patch, args.classes,
                      16 if args.base_filters == 64 else args.base_filters)
        return
    spec = UNetSpec(base_filters=args.base_filters, padding=args.padding)
    model = build_unet(spec)
    image = np.random.default_rng(0).random((args.size, args.size, 1), dtype=np.float32)
    plan = plan_tiles(spec, image.shape[:2], max_tile_size=args.max_tile_size)
    tiles = len(tile_starts(args.size, plan.core)) ** 2
    print(f"plan: tile {plan.tile_size}, margin {plan.margin}, context {plan.context}, core {plan.core}, "
          f"{tiles} tiles; RSS before predicting {peak_rss_mb():.0f} MB", flush=True)
    start = time.perf_counter()
    probs = tiled_predict(keras_predictor(model), image, plan, batch_size=1)
    seconds = time.perf_counter() - start
    assert probs.shape == (args.size, args.size, 2) and np.isfinite(probs).all()
    print(f"size={args.size} tiles={tiles} peak_rss_mb={peak_rss_mb():.0f} seconds={seconds:.1f}")


def volume_memory(shape: tuple[int, int, int], patch: int, classes: int, base_filters: int) -> None:
    """Peak RSS of sliding-window inference on an int16 volume of `shape` (I, J, K) voxels."""
    spec = UNetSpec(base_filters=base_filters, padding="same", depth=4, dims=3, n_classes=classes)
    model = build_unet(spec)
    volume = np.random.default_rng(0).integers(-1000, 1000, shape, dtype=np.int16)[..., None]
    windows = 1
    for n in shape:
        windows *= len(window_starts(max(n, patch), patch, 0.5))
    print(f"volume {shape}, patch {patch}^3, {windows} windows; RSS before predicting {peak_rss_mb():.0f} MB",
          flush=True)
    start = time.perf_counter()
    normalized = (volume.astype(np.float32) - 40.0) / 400.0  # a CT window's scale: memory, not accuracy
    probs = sliding_window_predict(lambda batch: tf.nn.softmax(model(batch, training=False)).numpy(), normalized,
                                   (patch,) * 3, batch_size=2)
    labels = np.argmax(probs, axis=-1).astype(np.uint8)
    seconds = time.perf_counter() - start
    assert labels.shape == shape and np.isfinite(probs).all()
    print(f"volume={'x'.join(map(str, shape))} windows={windows} peak_rss_mb={peak_rss_mb():.0f} "
          f"seconds={seconds:.1f}")


if __name__ == "__main__":
    main()
