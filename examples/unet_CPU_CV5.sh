#!/usr/bin/env bash
# 5-fold cross-validation with the CPU recipe (examples/unet_CPU_TRAIN.sh) at 10 minutes per fold (--time_budget 10,
# before your flags, so a flag of yours wins; about 11 minutes per fold on 2 cores):
# fold k (0-4 of 5) trains into RESULTS_DIR/fold_k and evaluates its held-out block. Rerunning is safe: a finished
# fold (eval_results.json at --max_steps) is skipped, an interrupted one resumes from its checkpoint. Finally
# RESULTS_DIR/cv_summary.json and cv_summary.md hold every fold's metrics, their mean and sample sd, and
# RESULTS_DIR/report.html shows the fold table with links to each fold's own report.html.
# Usage: bash examples/unet_CPU_CV5.sh DATA_DIR RESULTS_DIR [extra main.py flags, not --fold/--num_folds]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
if [ $# -lt 2 ]; then
  echo "usage: bash examples/unet_CPU_CV5.sh DATA_DIR RESULTS_DIR [extra main.py flags]" >&2
  exit 2
fi
for arg in "${@:3}"; do
  case "$arg" in
    --fold|--fold=*|--num_folds|--num_folds=*)
      echo "error: $arg: unet_CPU_CV5.sh runs folds 0-4 of --num_folds 5 itself; drop $arg" >&2
      exit 2 ;;
  esac
done
for fold in 0 1 2 3 4; do
  dir="$2/fold_$fold"
  resume=()
  if [ -f "$dir/checkpoints/last.npz" ]; then resume=(--resume_training); fi
  echo "=== fold $fold of 5: $dir" >&2
  bash "$here/examples/unet_CPU_TRAIN.sh" "$1" "$dir" --time_budget 10 "${@:3}" --fold "$fold" --num_folds 5 --skip_finished \
    "${resume[@]}"
done
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" "$here/scripts/python" -m unet_medical.evaluation.cv "$2"
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" "$here/scripts/python" -m unet_medical report "$2"
