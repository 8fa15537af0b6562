"""Inference time of a 3-D U-Net against its Tucker-2 compressed copy, alternated in one process.

    .venv/bin/python benchmarks/tucker3d.py [--size 128] [--base_filters 32] [--depth 4]
                                            [--rank_factor 0.3] [--rounds 5]

The network is the project's 3-D U-Net (`build_unet(UNetSpec(dims=3, padding="same", ...))`: two Conv3D
3x3x3 -> [BN] -> ReLU per level, MaxPooling3D 2, Conv3DTranspose 2 stride 2, concatenation, 1x1x1 head).
`unet_medical.model.tucker.tucker_compress` replaces every 3x3x3 conv (and up-conv) whose MACs drop by
1x1x1 -> 3x3x3 -> 1x1x1 at ranks ceil(channels x rank factor). Both models run a (1, S, S, S, 1)
float32 volume through a tf.function, one call each per round (unet_medical.base.timing.time_alternating),
so a shared machine's load affects both alike. Weights are random: latency does not depend on them.
Prints the CPU, GFLOP and parameters of both models, the per-round times, the medians and the speed ratio.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

# The factorization (tensorly on NumPy) runs once, before any timing. On a machine whose cores are shared,
# OpenBLAS's spinning threads made it 7-40x slower (27 s instead of 0.7 s for a 3x3x3x128x128 kernel).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import unet_medical  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from unet_medical.base.cpu import describe, read_cpu_info  # noqa: E402
from unet_medical.base.timing import time_alternating  # noqa: E402
from unet_medical.model.complexity import total_macs, total_params  # noqa: E402
from unet_medical.model.tucker import tucker_compress  # noqa: E402
from unet_medical.model.unet import UNetSpec, build_unet  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="volume side in voxels (S x S x S)")
    parser.add_argument("--base_filters", type=int, default=32)
    parser.add_argument("--depth", type=int, default=4, help="max-pooling steps")
    parser.add_argument("--batch_norm", action="store_true", help="BatchNormalization after each conv")
    parser.add_argument("--rank_factor", type=float, default=0.3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (one call per model each)")
    return parser.parse_args()


def forward(model: keras.Model, volume: tf.Tensor):
    """A call that returns only when the output is on the host (the timing helper's contract)."""
    function = tf.function(lambda x: model(x, training=False))
    return lambda: function(volume).numpy()


def main() -> None:
    args = parse_args()
    cpu = read_cpu_info()
    print(f"CPU: {describe(cpu)}, {cpu.logical_cores} logical cores")
    print(f"TensorFlow {tf.__version__}; volume 1x{args.size}x{args.size}x{args.size}x1 float32, "
          f"3-D U-Net base filters {args.base_filters}, depth {args.depth}, batch norm {args.batch_norm}, "
          f"rank factor {args.rank_factor}")
    keras.utils.set_random_seed(0)
    # Dropout only acts in training: left out of a latency benchmark.
    model = build_unet(UNetSpec(base_filters=args.base_filters, depth=args.depth, padding="same",
                                batch_norm=args.batch_norm, dropout=0.0, dims=3))
    size = (args.size,) * 3
    start = time.perf_counter()
    compressed, report = tucker_compress(model, rank_factor=args.rank_factor, input_hw=size)
    decomposed = sum(not r.kept for r in report)
    print(f"Tucker-2: {decomposed}/{len(report)} convs decomposed in {time.perf_counter() - start:.1f} s "
          f"(kept: {', '.join(r.name for r in report if r.kept)})")
    for name, m in (("original", model), ("tucker", compressed)):
        print(f"  {name:8s} {2 * total_macs(m, size) / 1e9:8.1f} GFLOP  {total_params(m) / 1e6:6.2f} M params")

    volume = tf.constant(np.random.default_rng(0).random((1, *size, 1), dtype=np.float32))
    calls = {"original": forward(model, volume), "tucker": forward(compressed, volume)}
    times = time_alternating(calls, warmup=args.warmup, rounds=args.rounds)
    for name, seconds in times.items():
        print(f"  {name:8s} rounds (s): {', '.join(f'{s:.2f}' for s in seconds)}")
    medians = {name: statistics.median(seconds) for name, seconds in times.items()}
    print(f"median original {medians['original']:.2f} s, tucker {medians['tucker']:.2f} s, "
          f"speed ratio {medians['original'] / medians['tucker']:.2f}x "
          f"(FLOP ratio {total_macs(model, size) / total_macs(compressed, size):.2f}x)")


if __name__ == "__main__":
    main()
