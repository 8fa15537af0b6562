#!/usr/bin/env bash
# CPU recipe (about 16 minutes on 2 cores): same-padding U-Net, 16 base filters, batch norm, fold 0 of 5, a 15-minute
# budget for training, its evaluations and the decision on validation (--max_steps fixed from the step time measured
# after warm-up; a --max_steps given here wins), then RESULTS_DIR/eval_results.json and RESULTS_DIR/saved_model. The
# whole run stays under 20 minutes: loading, the SavedModel and the report take the rest. The data decides
# normalization, input scale, depth (4 for objects up to 140 px: ISBI, nuclei, vessels; deeper for large lesions),
# crop size, foreground sampling and class weights (RESULTS_DIR/dataset_fingerprint.json says what and why;
# --depth N overrides), and the batch: 4 crops for 2-D, 2 patches for a 3-D U-Net (--batch_size N overrides).
# Usage: bash examples/unet_CPU_TRAIN.sh DATA_DIR RESULTS_DIR [extra main.py flags, e.g. --max_steps 600]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/python" "$here/main.py" --exec_mode train_and_evaluate --data_dir "$1" --model_dir "$2" \
  --padding same --base_filters 16 --batch_norm --dropout 0 --learning_rate 1e-3 \
  --warmup_steps 50 --lr_schedule cosine --time_budget 15 --log_every 25 --checkpoint_every 50 --fold 0 \
  --num_folds 5 --augment "${@:3}"
