#!/usr/bin/env bash
# A volume set's held-out check, run as an outside grader runs it: the CPU recipe unchanged on the training
# set, `--exec_mode predict` on test images the run never saw, then the predictions scored per case against
# their labels (`python -m unet_medical.evaluation LABELS_DIR PREDICTIONS_DIR`, which also refuses a prediction
# that is not on its label's voxel grid). Prints the wall time of each part and of the whole, the test scores
# and the CPU; OUT_DIR/heldout.json keeps them.
# Usage: bash benchmarks/volume_heldout.sh TRAIN_DIR TEST_IMAGES_DIR TEST_LABELS_DIR OUT_DIR [extra train flags]
# A rehearsal on synthetic data (hippocampus-scale: 260 training and 130 test cases):
#   python download_dataset.py --synthetic --kind mr_small --num_images 260 --data_dir TRAIN
#   python download_dataset.py --synthetic --kind mr_small --num_images 130 --seed 1 --data_dir TEST
#   bash benchmarks/volume_heldout.sh TRAIN TEST/imagesTr TEST/labelsTr OUT
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: bash benchmarks/volume_heldout.sh TRAIN_DIR TEST_IMAGES_DIR TEST_LABELS_DIR OUT_DIR [train flags]" >&2
  exit 2
fi
here="$(cd "$(dirname "$0")/.." && pwd)"
out="$4"
if [ -e "$out/run" ] || [ -e "$out/predictions" ]; then
  echo "error: $out already holds run/ or predictions/; give an empty or new OUT_DIR" >&2
  exit 2
fi
mkdir -p "$out"
start=$(date +%s)
bash "$here/examples/unet_CPU_TRAIN.sh" "$1" "$out/run" "${@:5}" > "$out/train_output.txt" 2>&1
trained=$(date +%s)
"$here/scripts/python" "$here/main.py" --exec_mode predict --model_dir "$out/run" --input "$2" \
  --output_dir "$out/predictions" > "$out/predict_output.txt" 2>&1
predicted=$(date +%s)
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" "$here/scripts/python" -m unet_medical.evaluation "$3" \
  "$out/predictions" > "$out/test_scores.json"
scored=$(date +%s)
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" "$here/scripts/python" - "$out" "$((trained - start))" \
  "$((predicted - trained))" "$((scored - predicted))" <<'EOF'
import json, pathlib, sys
from unet_medical.base.cpu import describe, read_cpu_info
out, train_s, predict_s, score_s = pathlib.Path(sys.argv[1]), *map(int, sys.argv[2:])
scores = json.loads((out / "test_scores.json").read_text())
classes = [k[:-5] for k in scores if k.endswith("_dice") and k != "mean_dice"]
record = {"cpu": describe(read_cpu_info()), "train_and_evaluate_s": train_s, "predict_s": predict_s,
          "score_s": score_s, "train_and_predict_s": train_s + predict_s, "test_cases": scores["num_cases"],
          **{f"test_{c}_dice": scores[f"{c}_dice"] for c in classes},
          **{f"test_mean_{m}": scores[f"mean_{m}"] for m in ("dice", "hd95", "nsd")}}
(out / "heldout.json").write_text(json.dumps(record, indent=1) + "\n")
for key, value in record.items():
    print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
EOF
