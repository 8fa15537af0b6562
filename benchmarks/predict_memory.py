"""Peak memory of tiled inference on a large image (issue: bounded memory for any image size).

    python benchmarks/predict_memory.py [--size 4096] [--max_tile_size 1024] [--base_filters 64]

Builds the paper U-Net (valid padding, 64 base filters; random weights: memory does not depend on
them), predicts one SIZE x SIZE image through utils.inference (the same path as predict/evaluate)
and prints the process's peak resident memory (getrusage ru_maxrss), the tile plan and the time.
The last line is machine-readable: `size=S tiles=N peak_rss_mb=M seconds=T`.
"""
from __future__ import annotations

import argparse
import pathlib
import resource
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import unet_medical  # noqa: E402,F401
import numpy as np  # noqa: E402

from unet_medical.model.unet import UNetSpec, build_unet  # noqa: E402
from unet_medical.inference.tiling import keras_predictor, plan_tiles, tile_starts, tiled_predict  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--max_tile_size", type=int, default=1024)
    parser.add_argument("--base_filters", type=int, default=64)
    parser.add_argument("--padding", default="valid", choices=("valid", "same"))
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
