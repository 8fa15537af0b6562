#!/usr/bin/env bash
# Training throughput on 1 GPU, FP32: 100 untimed then 500 timed steps of the paper U-Net (572 -> 388)
# fed by the real input pipeline; img/s and latency percentiles in RESULTS_DIR/benchmark_results.json.
# Usage: bash examples/unet_TRAIN_BENCHMARK.sh DATA_DIR RESULTS_DIR [extra flags, e.g. --batch_size 16]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/python" "$here/main.py" --exec_mode train --benchmark --bench_input real --data_dir "$1" \
  --model_dir "$2" --batch_size 8 --bench_warmup_steps 100 --bench_steps 500 --augment --xla "${@:3}"
