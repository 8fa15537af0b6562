#!/usr/bin/env bash
# As unet_INFER.sh, with automatic mixed precision (float16 on GPU, bfloat16 on CPU).
# Usage: bash examples/unet_INFER_TF-AMP.sh DATA_DIR RESULTS_DIR [extra flags, e.g. --checkpoint best --tta]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/python" "$here/main.py" --exec_mode predict --data_dir "$1" --model_dir "$2" --batch_size 4 --amp "${@:3}"
