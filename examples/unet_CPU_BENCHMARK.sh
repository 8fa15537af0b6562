#!/usr/bin/env bash
# CPU benchmark of the paper U-Net (572x572 -> 388x388, --precision auto: bfloat16 on CPUs with AVX512_BF16/AMX,
# else FP32; append --precision fp32 for the FP32 peak fraction; random weights), batch 1 and 2: inference
# (model only, 1 untimed + 5 timed batches) and training steps (1 untimed + 3 timed). Each run writes
# RESULTS_DIR/{predict,train}_bs{1,2}/benchmark_results.json (img/s, latency p50/p90/p95/p99, share of
# the CPU's FP32 peak). About 5 minutes on 2 cores.
# Usage: bash examples/unet_CPU_BENCHMARK.sh DATA_DIR RESULTS_DIR [extra main.py flags]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
for mode in predict train; do
  steps=$([ "$mode" = predict ] && echo 5 || echo 3)
  for batch in 1 2; do
    "$here/scripts/python" "$here/main.py" --exec_mode benchmark --benchmark_mode "$mode" --bench_input synthetic \
      --data_dir "$1" --model_dir "$2/${mode}_bs$batch" --batch_size "$batch" --bench_warmup_steps 1 \
      --bench_steps "$steps" "${@:3}"
  done
done
