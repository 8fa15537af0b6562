#!/usr/bin/env bash
# Inference throughput and latency, FP32, model only: the paper U-Net on synthetic 572x572 tiles, batch 1,
# 100 untimed then 500 timed batches (random weights: no training needed). Results in
# RESULTS_DIR/benchmark_results.json; --bench_input real times tiled prediction of DATA_DIR's test images.
# Usage: bash examples/unet_INFER_BENCHMARK.sh DATA_DIR RESULTS_DIR [extra flags, e.g. --batch_size 8]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/python" "$here/main.py" --exec_mode predict --benchmark --bench_input synthetic --data_dir "$1" \
  --model_dir "$2" --batch_size 1 --bench_warmup_steps 100 --bench_steps 500 "${@:3}"
