"""Latency and throughput of every export runtime, side by side in one process, as a Markdown table.

    .venv/bin/python benchmarks/export_runtimes.py [--data_dir ../shared/data/isbi2012] [--runs 10]

Times one forward pass of a (1, S, S, 1) tile (default 512 x 512, batch 1) of a same-padding U-Net
(default 64 base filters, depth 4: the paper's widths) through Keras (tf.function), the SavedModel
`tile` signature, ONNX Runtime FP32/INT8, TFLite FP32/FP16/INT8 and OpenVINO FP32/BF16/INT8, all exported by
utils.export.export_model. Weights are untrained (latency does not depend on them; parity is
therefore not checked here, and int8 is calibrated on real training tiles of --data_dir only so its
ranges are realistic). Runs are interleaved (utils.timing.time_alternating: one call per runtime per
round), so load from other processes on a shared machine affects every runtime alike; the table gives
medians and p90.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import unet_medical  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from unet_medical.model.complexity import total_macs, total_params  # noqa: E402
from unet_medical.model.unet import UNetSpec, build_unet  # noqa: E402
from unet_medical.data.layouts import load_training_data  # noqa: E402
from unet_medical.data.normalize import normalize_image  # noqa: E402
from unet_medical.export.formats import ExportInputs, export_model  # noqa: E402
from unet_medical.inference.tiling import keras_predictor  # noqa: E402
from unet_medical.inference.runtimes import load_exported  # noqa: E402
from unet_medical.base.timing import time_alternating  # noqa: E402

RUNTIMES = [("SavedModel (TF)", "savedmodel", "fp32"), ("ONNX Runtime", "onnx", "fp32"),
            ("ONNX Runtime", "onnx", "int8"), ("TFLite (XNNPACK)", "tflite", "fp32"),
            ("TFLite (XNNPACK)", "tflite", "fp16"), ("TFLite (XNNPACK)", "tflite", "int8"),
            ("OpenVINO", "openvino", "fp32"), ("OpenVINO", "openvino", "bf16"), ("OpenVINO", "openvino", "int8")]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data" / "isbi2012"),
                        help="ISBI layout; its training slices calibrate int8")
    parser.add_argument("--size", type=int, default=512, help="tile side in pixels")
    parser.add_argument("--base_filters", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per runtime")
    parser.add_argument("--runs", type=int, default=10, help="timed calls per runtime")
    parser.add_argument("--calibration", type=int, default=8, help="int8 calibration tiles")
    parser.add_argument("--out_dir", default=None, help="where the artefacts go (default: a temporary folder)")
    return parser.parse_args()


def size_mb(path: pathlib.Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def main() -> None:
    args = parse_args()
    spec = UNetSpec(padding="same", base_filters=args.base_filters, depth=args.depth)
    model = build_unet(spec)
    data = load_training_data(args.data_dir)
    images = [normalize_image(im) for im in data.images]
    inputs = ExportInputs(parity_images=[], calibration_images=images, tile_size=args.size, context=0)
    out_dir = pathlib.Path(args.out_dir or tempfile.mkdtemp(prefix="unet_export_bench_"))
    out_dir.mkdir(parents=True, exist_ok=True)

    weights = out_dir / "keras.weights.h5"
    model.save_weights(str(weights))
    rows = [("Keras (tf.function)", "fp32", keras_predictor(model), size_mb(weights), 0.0)]
    for name, fmt, precision in RUNTIMES:
        start = time.perf_counter()
        entry = export_model(model, spec, data.class_names, out_dir, fmt, precision, inputs,
                             check_parity=False, calibration_count=args.calibration)
        export_s = time.perf_counter() - start
        path = out_dir / entry["file"]
        rows.append((name, precision, load_exported(path), size_mb(path), export_s))
        print(f"exported {entry['file']} in {export_s:.0f} s", file=sys.stderr)

    tile = images[0][:args.size, :args.size][None]
    if tile.shape[1:3] != (args.size, args.size):
        tile = np.random.default_rng(0).random((1, args.size, args.size, 1), dtype=np.float32)
    reference = rows[0][2](tile)
    diffs = [float(np.abs(predictor(tile) - reference).max()) for _, _, predictor, _, _ in rows]
    timed = time_alternating({i: (lambda p=row[2]: p(tile)) for i, row in enumerate(rows)}, args.warmup, args.runs)
    times = [timed[i] for i in range(len(rows))]

    keras_median = statistics.median(times[0])
    gflop = 2 * total_macs(model, (args.size, args.size)) / 1e9
    print(f"\nU-Net same padding, {args.base_filters} base filters, depth {args.depth}: "
          f"{total_params(model) / 1e6:.1f}M parameters, {gflop:.1f} GFLOP per {args.size}x{args.size} tile; "
          f"batch 1; {args.runs} interleaved runs after {args.warmup} warm-up; {os.cpu_count()} CPU threads "
          f"({platform.processor() or platform.machine()}); TensorFlow {tf.__version__}.\n")
    print("| runtime | precision | median ms | p90 ms | img/s | x Keras FP32 | file MB | max abs dp vs Keras |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for (name, precision, _, mb, _), samples, diff in zip(rows, times, diffs):
        median = statistics.median(samples)
        p90 = float(np.percentile(samples, 90))
        print(f"| {name} | {precision.upper()} | {median * 1e3:.0f} | {p90 * 1e3:.0f} | {1 / median:.2f} | "
              f"{keras_median / median:.2f} | {mb:.1f} | {diff:.2g} |")


if __name__ == "__main__":
    main()
