#!/usr/bin/env bash
# 8 GPUs, FP32, batch 8 per GPU: global batch 64, so 800 steps see as many images as unet_FP32_1GPU.sh's
# 6400, and --lr_scaling linear multiplies the learning rate by 8 (Goyal et al. 2017), reached after 100
# warm-up steps. scripts/launch_multi.sh picks the backend and prints it: Horovod (8 processes, one per
# GPU; build it with scripts/install_horovod.sh) when it imports, else one process with tf.distribute
# MirroredStrategy over the local GPUs (same per-GPU batch and scaling). Rank 0 alone logs, evaluates and
# writes checkpoints into RESULTS_DIR. No --xla: Horovod's allreduce inside an XLA-compiled step needs
# HOROVOD_ENABLE_XLA_OPS=1 (GPU builds), and XLA has no CPU collectives.
# Usage: bash examples/unet_FP32_8GPU.sh DATA_DIR RESULTS_DIR [extra main.py flags, e.g. --fold 2]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bash "$here/scripts/launch_multi.sh" 8 --lr_scaling linear --exec_mode train_and_evaluate --data_dir "$1" \
  --model_dir "$2" --batch_size 8 --learning_rate 1e-4 --warmup_steps 100 --max_steps 800 --log_every 20 \
  --evaluate_every 200 --checkpoint_every 50 --augment --precision fp32 --fold 0 --num_folds 5 "${@:3}"
