#!/usr/bin/env bash
# 8 GPUs with Horovod (one process per GPU; build it with scripts/install_horovod.sh), FP32, batch 8 per
# GPU. The global batch is 64, so 800 steps see as many images as unet_FP32_1GPU.sh's 6400, and
# --lr_scaling linear multiplies the learning rate by 8 (Goyal et al. 2017), reached after 100
# warm-up steps. Rank 0 alone logs, evaluates and writes checkpoints into RESULTS_DIR. No --xla:
# Horovod's allreduce inside an XLA-compiled step needs HOROVOD_ENABLE_XLA_OPS=1 (GPU builds).
# Usage: bash examples/unet_FP32_8GPU.sh DATA_DIR RESULTS_DIR [extra main.py flags, e.g. --fold 2]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/python" -m horovod.runner.launch -np 8 "$here/scripts/python" "$here/main.py" \
  --distribution horovod --lr_scaling linear --exec_mode train_and_evaluate --data_dir "$1" --model_dir "$2" \
  --batch_size 8 --learning_rate 1e-4 --warmup_steps 100 --max_steps 800 --log_every 20 --evaluate_every 200 \
  --checkpoint_every 50 --augment --fold 0 --num_folds 5 "${@:3}"
