#!/usr/bin/env bash
# Offline quick start (no data download, a few minutes on 2 CPU cores): set up .venv, generate synthetic
# EM-like data, train a small same-padding U-Net on fold 0, evaluate it and predict the test stack.
# Usage: bash examples/unet_QUICKSTART.sh [RESULTS_DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
results="${1:-$here/results/quickstart}"
bash "$here/scripts/setup.sh"
[ -f "$here/data/synthetic/train-volume.tif" ] || \
  "$here/scripts/python" "$here/download_dataset.py" --synthetic --data_dir "$here/data/synthetic" --size 256
"$here/scripts/python" "$here/main.py" --exec_mode train_and_predict --data_dir "$here/data/synthetic" \
  --model_dir "$results" --padding same --base_filters 8 --depth 3 --batch_norm --dropout 0 --crop_size 128 \
  --batch_size 4 --learning_rate 2e-3 --warmup_steps 20 --max_steps 150 --log_every 25 --checkpoint_every 50 --resume_training
echo "Done: $results/eval_results.json and $results/predictions/001/"
