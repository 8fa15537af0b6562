#!/usr/bin/env bash
# Predict DATA_DIR/test-volume.tif with the model trained in RESULTS_DIR (its last checkpoint), overlap-tile
# at native resolution; probability and label maps go to RESULTS_DIR/predictions/NNN/ (a fresh folder per predict).
# Usage: bash examples/unet_INFER.sh DATA_DIR RESULTS_DIR [extra flags, e.g. --checkpoint best --tta]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/python" "$here/main.py" --exec_mode predict --data_dir "$1" --model_dir "$2" --batch_size 4 "${@:3}"
