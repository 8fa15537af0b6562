#!/usr/bin/env bash
# The accuracy / size / speed study on CPU: RESULTS_DIR/study.csv, study.md and pareto.png.
# Interrupted? Run it again: finished variants are skipped, the interrupted one resumes.
# Usage: bash examples/unet_STUDY_CPU.sh DATA_DIR RESULTS_DIR [study.yaml]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/python" -m unet_medical.cli.study --config "${3:-$here/examples/study_cpu.yaml}" --data_dir "$1" --results_dir "$2"
