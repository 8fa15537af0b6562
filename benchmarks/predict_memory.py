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
With --volume --graph, the volume goes through a 3-D run's SavedModel computation instead (export.volume_serving,
its int16 serving function: the CT window, the sliding window in a tf.while_loop, the argmax), and with
--spacing and --target_spacing (mm, A,B,C) it is resampled to the target in the graph and the probabilities back.
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
    parser.add_argument("--graph", action="store_true", help="--volume: through the SavedModel's serving graph")
    parser.add_argument("--spacing", default="1,1,1", help="--graph: the volume's spacing in mm, A,B,C")
    parser.add_argument("--target_spacing", default=None, help="--graph: a resampled run's target spacing, A,B,C")
    args = parser.parse_args()
    if args.volume:
        shape = tuple(int(n) for n in args.volume.split(","))
        filters = 16 if args.base_filters == 64 else args.base_filters
        if args.graph:
            target = None if args.target_spacing is None else tuple(float(v) for v in args.target_spacing.split(","))
            graph_memory(shape, args.patch, args.classes, filters, tuple(float(v) for v in args.spacing.split(",")),
                         target)
        else:
            volume_memory(shape, args.patch, args.classes, filters)
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


def volume_case(shape: tuple[int, int, int], patch: int, classes: int, base_filters: int, grid: tuple[int, ...]
                ) -> tuple[object, np.ndarray, int]:
    """(the 3-D U-Net, an int16 (I, J, K, 1) volume of `shape`, the window count on `grid`), after printing them."""
    spec = UNetSpec(base_filters=base_filters, padding="same", depth=4, dims=3, n_classes=classes)
    model = build_unet(spec)
    volume = np.random.default_rng(0).integers(-1000, 1000, shape, dtype=np.int16)[..., None]
    windows = 1
    for n in grid:
        windows *= len(window_starts(max(n, patch), patch, 0.5))
    print(f"volume {shape}, network grid {grid}, patch {patch}^3, {windows} windows; RSS before predicting "
          f"{peak_rss_mb():.0f} MB", flush=True)
    return model, volume, windows


def graph_memory(shape: tuple[int, int, int], patch: int, classes: int, base_filters: int,
                 spacing: tuple[float, ...], target: tuple[float, ...] | None) -> None:
    """Peak RSS of a 3-D SavedModel's int16 serving function on a volume of `shape` at `spacing` mm."""
    from unet_medical.data.volume_resample import resampled_shape
    from unet_medical.export.volume_serving import VolumeServingModule

    grid = shape if target is None else resampled_shape(shape, spacing, target)
    model, volume, _ = volume_case(shape, patch, classes, base_filters, grid)
    module = VolumeServingModule(model, (patch,) * 3, ((-200.0, 300.0),), image_dtype=np.int16, target_spacing=target)
    serve = module.serving_function(np.int16)
    start = time.perf_counter()
    labels = serve(tf.constant(volume[None]), tf.constant(spacing, tf.float64))["labels"].numpy()[0]
    seconds = time.perf_counter() - start
    assert labels.shape == shape
    print(f"volume={'x'.join(map(str, shape))} graph target={target} windows_grid={'x'.join(map(str, grid))} "
          f"peak_rss_mb={peak_rss_mb():.0f} seconds={seconds:.1f}")


def volume_memory(shape: tuple[int, int, int], patch: int, classes: int, base_filters: int) -> None:
    """Peak RSS of sliding-window inference on an int16 volume of `shape` (I, J, K) voxels."""
    model, volume, windows = volume_case(shape, patch, classes, base_filters, shape)
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
