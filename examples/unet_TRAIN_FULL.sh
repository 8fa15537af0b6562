#!/usr/bin/env bash
# Full 5-fold cross-validation on 1 GPU (the unet_FP32_1GPU.sh settings; append --amp for TF-AMP):
# fold k trains into RESULTS_DIR/fold_k and evaluates its held-out block, then a table of every
# fold's metrics with their mean and sample sd is printed (and written to RESULTS_DIR/cv_summary.json
# and cv_summary.md). Rerunning resumes unfinished folds.
# Usage: bash examples/unet_TRAIN_FULL.sh DATA_DIR RESULTS_DIR [extra main.py flags]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
for fold in 0 1 2 3 4; do
  "$here/scripts/python" "$here/main.py" --exec_mode train_and_evaluate --data_dir "$1" --model_dir "$2/fold_$fold" \
    --batch_size 8 --learning_rate 1e-4 --max_steps 6400 --log_every 100 --checkpoint_every 400 --augment --xla \
    --resume_training --fold "$fold" --num_folds 5 "${@:3}"
done
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" "$here/scripts/python" -m unet_medical.evaluation.cv "$2"
