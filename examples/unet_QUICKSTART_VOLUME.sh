#!/usr/bin/env bash
# Offline volume quick start (no download, a few minutes on 2 CPU cores): set up .venv, generate a synthetic CT set
# in the MSD layout (12 training + 4 test cases of 48x48x40 voxels), train a small 2D U-Net on the slices of
# fold 0's training cases, score the held-out cases in 3D (Dice, HD95, NSD in mm) and write one NIfTI label map
# per test case with its input's geometry.
# Usage: bash examples/unet_QUICKSTART_VOLUME.sh [RESULTS_DIR] [extra main.py flags, e.g. --dims 2.5]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
results="${1:-$here/results/quickstart_volume}"
bash "$here/scripts/setup.sh"
[ -f "$here/data/synthetic_ct/dataset.json" ] || \
  "$here/scripts/python" "$here/download_dataset.py" --synthetic --kind ct --data_dir "$here/data/synthetic_ct"
"$here/scripts/python" "$here/main.py" --exec_mode train_and_predict --data_dir "$here/data/synthetic_ct" \
  --model_dir "$results" --padding same --base_filters 8 --depth 3 --batch_norm --dropout 0 --crop_size 48 \
  --batch_size 4 --learning_rate 2e-3 --warmup_steps 20 --max_steps 1200 --log_every 100 --checkpoint_every 200 \
  --resume_training "${@:2}"
echo "Done: $results/eval_results.json and $results/predictions/001/*.nii.gz"
