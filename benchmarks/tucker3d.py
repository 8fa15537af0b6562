"""Inference time of a 3-D U-Net against its Tucker-2 compressed copy, alternated in one process.

Random weights (the network built here and compressed in this process):
    .venv/bin/python benchmarks/tucker3d.py [--size 128] [--base_filters 32] [--depth 4]
                                            [--rank_factor 0.3] [--rounds 5]
Trained runs (a --dims 3 run and its `--exec_mode compress` run; Dice from their evaluations):
    .venv/bin/python benchmarks/tucker3d.py --model_dir ORIGINAL --compressed_dir COMPRESSED [--size 128]
Factorization time with the BLAS pinned to one thread and with the BLAS library's default, alternated
(ORIGINAL's trained kernels, or the random network's without --model_dir):
    .venv/bin/python benchmarks/tucker3d.py [--model_dir ORIGINAL] --factorization_rounds 3

The network is the project's 3-D U-Net (`build_unet(UNetSpec(dims=3, padding="same", ...))`: two Conv3D
3x3x3 -> [BN] -> ReLU per level, MaxPooling3D 2, Conv3DTranspose 2 stride 2, concatenation, 1x1x1 head).
`unet_medical.model.tucker.tucker_compress` replaces every 3x3x3 conv (and up-conv) whose MACs drop by
1x1x1 -> 3x3x3 -> 1x1x1 at ranks ceil(channels x rank factor). Both models run a (1, S, S, S, 1)
volume through a tf.function, one call each per round (unet_medical.base.timing.time_alternating),
so a shared machine's load affects both alike; latency does not depend on the weights' values.
Prints the CPU, GFLOP and parameters of both models, the per-round times, the medians and the speed ratio;
with trained runs also a Markdown row with the scores of tucker_summary.json (cli.tucker_summary).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time
from typing import Any, Optional

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import unet_medical  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
from threadpoolctl import threadpool_info  # noqa: E402

from unet_medical.base.cpu import describe, read_cpu_info  # noqa: E402
from unet_medical.base.timing import time_alternating  # noqa: E402
from unet_medical.model.complexity import total_macs, total_params  # noqa: E402
from unet_medical.model.tucker import (FACTORIZATION_BLAS_THREADS, blas_thread_limit, ineligibility,  # noqa: E402
                                       is_conv_like, select_ranks, tucker2_factors, tucker2_factors_transposed,
                                       tucker_compress)
from unet_medical.model.unet import UNetSpec, build_unet  # noqa: E402

PRECISIONS = {"fp32": "float32", "bf16": "mixed_bfloat16"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="volume side in voxels (S x S x S)")
    parser.add_argument("--model_dir", help="a trained --dims 3 run: time it instead of a random network")
    parser.add_argument("--compressed_dir", help="its --exec_mode compress run (with --model_dir)")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32",
                        help="Keras dtype policy of both models (bf16: mixed_bfloat16, as --precision auto "
                             "picks on CPUs with AVX512_BF16)")
    parser.add_argument("--base_filters", type=int, default=32, help="random network only")
    parser.add_argument("--depth", type=int, default=4, help="random network only: max-pooling steps")
    parser.add_argument("--batch_norm", action="store_true", help="random network only: BN after each conv")
    parser.add_argument("--rank_factor", type=float, default=0.3, help="random network / factorization timing")
    parser.add_argument("--rank_min", type=int, default=8, help="rank floor (--exec_mode compress's default)")
    parser.add_argument("--factorization_rounds", type=int, default=0,
                        help="time tucker_compress instead, pinned and unpinned BLAS alternated, this many rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (one call per model each)")
    args = parser.parse_args()
    if (args.compressed_dir is None) != (args.model_dir is None) and not args.factorization_rounds:
        parser.error("--model_dir and --compressed_dir go together")
    return args


def forward(model: keras.Model, volume: tf.Tensor):
    """A call that returns only when the output is on the host (the timing helper's contract)."""
    function = tf.function(lambda x: model(x, training=False))
    return lambda: function(volume).numpy()


def random_network(args: argparse.Namespace) -> keras.Model:
    keras.utils.set_random_seed(0)
    # Dropout only acts in training: left out of a latency benchmark.
    return build_unet(UNetSpec(base_filters=args.base_filters, depth=args.depth, padding="same",
                               batch_norm=args.batch_norm, dropout=0.0, dims=3))


def trained_network(run_dir: str) -> keras.Model:
    from unet_medical.cli.assemble import load_trained

    model, spec, _, step = load_trained(run_dir, "last")
    print(f"  {run_dir}: base filters {spec.base_filters}, depth {spec.depth}, batch norm {spec.batch_norm}, "
          f"{spec.n_classes} classes, step {step}")
    return model


def factorize_all(model: keras.Model, rank_factor: float, rank_min: int, threads: Optional[int]) -> int:
    """The Tucker-2 factorizations tucker_compress makes for `model` (every eligible conv), with the BLAS
    limited to `threads` (None: its default); building layers and counting MACs left out. Returns the count."""
    convs = [layer for layer in model.layers if is_conv_like(layer) and ineligibility(layer) is None]
    with blas_thread_limit(threads):
        for layer in convs:
            kernel = layer.get_weights()[0]
            transposed = isinstance(layer, keras.layers.Conv3DTranspose)
            cin, cout = (kernel.shape[-1], kernel.shape[-2]) if transposed else kernel.shape[-2:]
            ranks = select_ranks(int(cin), int(cout), rank_factor=rank_factor, rank_min=rank_min)
            (tucker2_factors_transposed if transposed else tucker2_factors)(kernel, *ranks)
    return len(convs)


def time_factorization(model: keras.Model, args: argparse.Namespace) -> None:
    """The factorizations with the BLAS pinned (the library's default) and unpinned, alternated."""
    settings = {f"{FACTORIZATION_BLAS_THREADS} BLAS thread": FACTORIZATION_BLAS_THREADS, "BLAS default": None}
    counts = {}
    calls = {name: (lambda name=name, threads=threads: counts.__setitem__(
        name, factorize_all(model, args.rank_factor, args.rank_min, threads)))
             for name, threads in settings.items()}
    times = time_alternating(calls, warmup=0, rounds=args.factorization_rounds)
    pools = [f"{p['internal_api']} {p['version']} ({p['num_threads']} threads by default)"
             for p in threadpool_info() if p["user_api"] == "blas"]
    print(f"  BLAS libraries: {', '.join(pools)}")
    for name, seconds in times.items():
        print(f"  {counts[name]} factorizations, {name:14s} rounds (s): {', '.join(f'{s:.2f}' for s in seconds)}; "
              f"median {statistics.median(seconds):.2f} s")


def summary_row(compressed_dir: str, medians: dict[str, float]) -> Optional[str]:
    """Markdown row: rank factor, params, GFLOP, speed ratio and the scores of tucker_summary.json."""
    path = pathlib.Path(compressed_dir) / "tucker_summary.json"
    if not path.is_file():
        print(f"  {path}: not found (a compress run of this version writes it): no score row")
        return None
    s: dict[str, Any] = json.loads(path.read_text())
    original, before, after = (s.get(k) or {} for k in ("original", "before_fine_tune", "after_fine_tune"))

    def score(scores: dict[str, float], key: str, fmt: str = ".4f") -> str:
        return format(scores[key], fmt) if key in scores else "n/a"

    change = s.get("mean_dice_change_points")
    return (f"| {s.get('rank_factor')} | {s['params_before']:,} -> {s['params_after']:,} | "
            f"{s['gflop_before']:.2f} -> {s['gflop_after']:.2f} (patch {'x'.join(map(str, s['input_size']))}) | "
            f"{medians['original']:.3f} -> {medians['tucker']:.3f} s ({medians['original'] / medians['tucker']:.2f}x) | "
            f"{score(original, 'mean_dice')} | {score(before, 'mean_dice')} | {score(after, 'mean_dice')} | "
            f"{'n/a' if change is None else f'{change:+.2f}'} | {score(original, 'mean_hd95', '.2f')} -> "
            f"{score(after, 'mean_hd95', '.2f')} | {s.get('fine_tune_steps')} |")


def main() -> None:
    args = parse_args()
    cpu = read_cpu_info()
    keras.mixed_precision.set_global_policy(PRECISIONS[args.precision])
    print(f"CPU: {describe(cpu)}, {cpu.logical_cores} logical cores")
    print(f"TensorFlow {tf.__version__}; volume 1x{args.size}x{args.size}x{args.size}x1, {args.precision}")
    size = (args.size,) * 3
    if args.factorization_rounds:
        model = trained_network(args.model_dir) if args.model_dir else random_network(args)
        time_factorization(model, args)
        return
    if args.model_dir:
        model, compressed = trained_network(args.model_dir), trained_network(args.compressed_dir)
    else:
        print(f"random 3-D U-Net: base filters {args.base_filters}, depth {args.depth}, batch norm "
              f"{args.batch_norm}, rank factor {args.rank_factor}")
        model = random_network(args)
        start = time.perf_counter()
        compressed, report = tucker_compress(model, rank_factor=args.rank_factor, rank_min=args.rank_min,
                                             input_hw=size)
        decomposed = sum(not r.kept for r in report)
        print(f"Tucker-2: {decomposed}/{len(report)} convs decomposed in {time.perf_counter() - start:.1f} s "
              f"(kept: {', '.join(r.name for r in report if r.kept)})")
    for name, m in (("original", model), ("tucker", compressed)):
        print(f"  {name:8s} {2 * total_macs(m, size) / 1e9:8.1f} GFLOP  {total_params(m) / 1e6:6.2f} M params")

    volume = tf.constant(np.random.default_rng(0).random((1, *size, 1), dtype=np.float32))
    calls = {"original": forward(model, volume), "tucker": forward(compressed, volume)}
    times = time_alternating(calls, warmup=args.warmup, rounds=args.rounds)
    for name, seconds in times.items():
        print(f"  {name:8s} rounds (s): {', '.join(f'{s:.3f}' for s in seconds)}")
    medians = {name: statistics.median(seconds) for name, seconds in times.items()}
    ratios = [a / b for a, b in zip(times["original"], times["tucker"])]
    print(f"median original {medians['original']:.3f} s, tucker {medians['tucker']:.3f} s, "
          f"speed ratio {medians['original'] / medians['tucker']:.2f}x (per round {min(ratios):.2f}-{max(ratios):.2f}x; "
          f"FLOP ratio {total_macs(model, size) / total_macs(compressed, size):.2f}x)")
    if args.compressed_dir:
        row = summary_row(args.compressed_dir, medians)
        if row:
            print(f"| rank factor | parameters | GFLOP / patch | time / {args.size}^3 volume | Dice original | "
                  "before fine-tuning | after | change (points) | HD95 mm original -> after | fine-tune steps |")
            print(row)


if __name__ == "__main__":
    main()
