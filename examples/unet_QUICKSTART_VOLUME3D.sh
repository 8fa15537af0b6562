#!/usr/bin/env bash
# Offline 3D quick start (no download, a few minutes on 2 CPU cores): set up .venv, generate the synthetic CT set
# in the MSD layout (12 training + 4 test cases of 48x48x40 voxels), train a small 3D U-Net (--dims 3) on patches of
# fold 0's training cases (the patch size is the recipe's, from the median case shape), score the held-out cases
# (Dice, HD95, NSD in mm) by Gaussian-weighted sliding windows and write one NIfTI label map per test case with its
# input's geometry.
# Usage: bash examples/unet_QUICKSTART_VOLUME3D.sh [RESULTS_DIR] [extra main.py flags, e.g. --patch_size 32,32,16]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
results="${1:-$here/results/quickstart_volume3d}"
bash "$here/scripts/setup.sh"
[ -f "$here/data/synthetic_ct/dataset.json" ] || \
  "$here/scripts/python" "$here/download_dataset.py" --synthetic --kind ct --data_dir "$here/data/synthetic_ct"
"$here/scripts/python" "$here/main.py" --exec_mode train_and_predict --data_dir "$here/data/synthetic_ct" \
  --model_dir "$results" --dims 3 --base_filters 8 --depth 3 --batch_norm --dropout 0 --batch_size 2 \
  --learning_rate 2e-3 --warmup_steps 20 --max_steps 600 --log_every 100 --checkpoint_every 200 \
  --resume_training "${@:2}"
echo "Done: $results/eval_results.json and $results/predictions/001/*.nii.gz"
