"""A raw volume through a 3-D run's whole serving computation on each runtime, alternated in one process.

    .venv/bin/python benchmarks/volume_runtimes.py [--volume 192,192,96] [--base_filters 16] [--depth 4]
        [--patch 64] [--window percentiles|ct] [--spacing 1,1,1 --target_spacing 1,1,1] [--onnx] [--rounds 3]

The network is the CPU recipe's 3-D U-Net (examples/unet_CPU_TRAIN.sh: base 16, batch norm; random weights:
latency does not depend on their values) inside export.volume_serving.VolumeServingModule, the computation a
3-D run's SavedModel, `model_volume.onnx` and `model_volume.xml` carry: normalization (a CT window, or the
case's own percentiles), resampling to --target_spacing and back when given, the Gaussian sliding window of
--patch windows. Rows: the TensorFlow graph (what the SavedModel runs), OpenVINO at f32 and, where the CPU
has bfloat16 and the run does not resample, bf16 (export.volume.whole_volume_file), with --onnx
onnxruntime (the conversion takes about a minute), and what `--exec_mode predict` runs on a checkpoint: the
Keras network under inference.sliding_window.sliding_window_predict (batches of --batch_size windows), in
float32 and, where the CPU has bfloat16, in mixed bfloat16 (predict's --precision auto there), and what
`--exec_mode predict --model_path RUN/export/openvino_<precision>` runs: the exported patch network on OpenVINO
under the same sliding window. The predict rows are fed the graph's own normalization, and a resampling run's
predict rows leave out the resampling. Each row is checked against the graph's probabilities
(max difference, share of equal labels) before it is timed (unet_medical.base.timing.time_alternating,
one untimed round first). Also times the case percentiles as the graph finds them (bisection with counts,
export.volume_serving.percentiles_tf) against a full tf.sort of the same values.
Prints the CPU, per-round times, medians and each row's speed against the graph.
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile
from typing import Callable

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import unet_medical  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from unet_medical.base.cpu import BF16_FLAGS, describe, read_cpu_info  # noqa: E402
from unet_medical.base.timing import time_alternating  # noqa: E402
from unet_medical.data.volume_slices import PERCENTILES  # noqa: E402
from unet_medical.export.volume import whole_volume_file  # noqa: E402
from unet_medical.export.volume_serving import VolumeServingModule, percentiles_tf  # noqa: E402
from unet_medical.export.formats import write_openvino  # noqa: E402
from unet_medical.inference.runtimes import openvino_predictor  # noqa: E402
from unet_medical.inference.sliding_window import sliding_window_predict  # noqa: E402
from unet_medical.inference.tiling import keras_predictor  # noqa: E402
from unet_medical.model.unet import UNetSpec, build_unet  # noqa: E402

CT_WINDOW = (-200.0, 300.0)


def triple(text: str, kind: type = float) -> tuple:
    values = tuple(kind(v) for v in text.split(","))
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: expected three comma-separated values")
    return values


def bfloat16_copy(model: tf.keras.Model, spec: UNetSpec) -> tf.keras.Model:
    """The same network and weights built under mixed_bfloat16, as predict rebuilds a checkpoint on a bf16 CPU."""
    policy = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        copy = build_unet(spec)
    finally:
        tf.keras.mixed_precision.set_global_policy(policy)
    copy.set_weights(model.get_weights())
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volume", type=lambda t: triple(t, int), default=(192, 192, 96))
    parser.add_argument("--base_filters", type=int, default=16)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--window", choices=("percentiles", "ct"), default="percentiles")
    parser.add_argument("--spacing", type=triple, default=(1.0, 1.0, 1.0))
    parser.add_argument("--target_spacing", type=triple, default=None)
    parser.add_argument("--onnx", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=4, help="windows per network call on predict's path "
                        "(the CPU recipe's --batch_size)")
    args = parser.parse_args()
    cpu = read_cpu_info()
    tf.keras.utils.set_random_seed(0)
    spec = UNetSpec(n_classes=3, base_filters=args.base_filters, depth=args.depth, padding="same",
                    batch_norm=True, dropout=0.0, dims=3)
    model = build_unet(spec)
    module = VolumeServingModule(model, (args.patch,) * 3, (None if args.window == "percentiles" else CT_WINDOW,),
                                 image_dtype=np.int16, target_spacing=args.target_spacing)
    volume = np.random.default_rng(0).integers(-1000, 1500, args.volume + (1,)).astype(np.int16)
    spacing = np.asarray(args.spacing, np.float64)
    graph = module.serving_function(np.int16)
    rows = {"TensorFlow graph": lambda: graph(volumes=tf.constant(volume[None]),
                                              spacing=tf.constant(spacing))["probabilities"].numpy()[0]}
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="volume_runtimes."))
    module.write_volume("openvino", workdir / "model_volume.xml")
    precisions = ["fp32"] + (["bf16"] if cpu.has_any(*BF16_FLAGS) and whole_volume_file(
        "openvino", "bf16", args.target_spacing is not None) else [])
    for precision in precisions:
        serve = module.volume_server("openvino", workdir / "model_volume.xml", precision)
        rows[f"OpenVINO {precision}"] = lambda serve=serve: serve(volume, spacing)
    if args.onnx:
        module.write_volume("onnx", workdir / "model_volume.onnx")
        serve = module.volume_server("onnx", workdir / "model_volume.onnx")
        rows["onnxruntime fp32"] = lambda serve=serve: serve(volume, spacing)
    normalize = tf.function(module.normalize)

    def predict_path(predictor) -> Callable[[], np.ndarray]:
        """What predict runs: the graph's normalization, then the NumPy sliding window over `predictor`."""
        return lambda: sliding_window_predict(predictor, normalize(tf.constant(volume[None]))[0].numpy(),
                                              module.patch, overlap=module.overlap, batch_size=args.batch_size)

    write_openvino(module, workdir / "openvino_patches", "fp32", None)
    # patch networks run at bf16 wherever the CPU has it (the NaN of resampled whole-volume graphs is not theirs)
    for precision in ["fp32"] + (["bf16"] if cpu.has_any(*BF16_FLAGS) else []):
        rows[f"predict Keras {precision}"] = predict_path(
            keras_predictor(model if precision == "fp32" else bfloat16_copy(model, spec)))
        rows[f"predict OpenVINO {precision}"] = predict_path(openvino_predictor(workdir / "openvino_patches", precision))
    print(describe(cpu))
    print(f"int16 volume {'x'.join(map(str, args.volume))}, 3-D U-Net base {args.base_filters} depth {args.depth}, "
          f"{args.patch}^3 windows, {args.window}"
          + (f", resampled {args.spacing} -> {args.target_spacing} mm" if args.target_spacing else ""))
    reference = rows["TensorFlow graph"]()
    for name, run in rows.items():
        if name != "TensorFlow graph":
            got = run()
            print(f"{name:>22}: max |dp| {np.abs(got - reference).max():.2e}, labels equal on "
                  f"{np.mean(got.argmax(-1) == reference.argmax(-1)):.4%} of voxels")
    times = time_alternating(rows, warmup=1, rounds=args.rounds)
    base = statistics.median(times["TensorFlow graph"])
    for name, seconds in times.items():
        median = statistics.median(seconds)
        print(f"{name:>22}: median {median:8.2f} s  {base / median:5.2f}x the graph   "
              f"rounds {', '.join(f'{s:.2f}' for s in seconds)}")
    values = tf.constant(volume.reshape(1, -1).astype(np.float64))
    bisection = tf.function(lambda v: percentiles_tf(v, PERCENTILES))
    full_sort = tf.function(lambda v: tf.sort(v, axis=-1)[:, 0])
    times = time_alternating({"bisection": lambda: bisection(values), "tf.sort": lambda: full_sort(values)},
                             warmup=1, rounds=args.rounds)
    print(f"case percentiles of {volume.size:,} voxels in TensorFlow: bisection "
          f"{statistics.median(times['bisection']):.2f} s, full sort {statistics.median(times['tf.sort']):.2f} s")


if __name__ == "__main__":
    main()
