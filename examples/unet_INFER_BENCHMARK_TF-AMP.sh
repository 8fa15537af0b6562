#!/usr/bin/env bash
# Inference throughput and latency with automatic mixed precision: unet_INFER_BENCHMARK.sh plus --amp.
# Usage: bash examples/unet_INFER_BENCHMARK_TF-AMP.sh DATA_DIR RESULTS_DIR [extra flags, e.g. --batch_size 8]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/python" "$here/main.py" --exec_mode predict --benchmark --bench_input synthetic --data_dir "$1" \
  --model_dir "$2" --batch_size 1 --bench_warmup_steps 100 --bench_steps 500 --amp "${@:3}"
