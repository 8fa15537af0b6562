#!/usr/bin/env bash
# 1 GPU, FP32 (TF32 on Ampere+): the paper U-Net (572 -> 388 crops) on one ISBI fold, batch 8, 6400 steps
# with XLA, then evaluation of the held-out block (RESULTS_DIR/eval_results.json).
# Usage: bash examples/unet_FP32_1GPU.sh DATA_DIR RESULTS_DIR [extra main.py flags, e.g. --fold 2]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/python" "$here/main.py" --exec_mode train_and_evaluate --data_dir "$1" --model_dir "$2" \
  --batch_size 8 --learning_rate 1e-4 --max_steps 6400 --log_every 100 --evaluate_every 1600 \
  --checkpoint_every 400 --augment --xla --precision fp32 --fold 0 --num_folds 5 "${@:3}"
