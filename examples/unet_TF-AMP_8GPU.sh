#!/usr/bin/env bash
# 8 GPUs, automatic mixed precision: as unet_FP32_8GPU.sh (global batch 64, linear learning-rate scaling
# x8 with 100 warm-up steps, no --xla; Horovod if it imports, else MirroredStrategy) plus --amp
# (float16 with loss scaling on GPU, bfloat16 on CPU).
# Usage: bash examples/unet_TF-AMP_8GPU.sh DATA_DIR RESULTS_DIR [extra main.py flags, e.g. --fold 2]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bash "$here/scripts/launch_multi.sh" 8 --lr_scaling linear --exec_mode train_and_evaluate --data_dir "$1" \
  --model_dir "$2" --batch_size 8 --learning_rate 1e-4 --warmup_steps 100 --max_steps 800 --log_every 20 \
  --evaluate_every 200 --checkpoint_every 50 --augment --amp --fold 0 --num_folds 5 "${@:3}"
