#!/usr/bin/env bash
# Training throughput on 1 GPU with automatic mixed precision: unet_TRAIN_BENCHMARK.sh plus --amp.
# Usage: bash examples/unet_TRAIN_BENCHMARK_TF-AMP.sh DATA_DIR RESULTS_DIR [extra flags, e.g. --batch_size 16]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/python" "$here/main.py" --exec_mode train --benchmark --bench_input real --data_dir "$1" \
  --model_dir "$2" --batch_size 8 --bench_warmup_steps 100 --bench_steps 500 --augment --xla --amp "${@:3}"
