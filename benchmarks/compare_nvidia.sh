#!/usr/bin/env bash
# NVIDIA's TF2 UNet_Medical against this project on this machine: training and inference img/s, batch 1,
# the paper U-Net at 572x572, runs alternated (NVIDIA, ours, NVIDIA, ours) for ROUNDS rounds; prints the
# medians, the ratios ours / NVIDIA and the CPU (unet_medical.base.cpu.describe); then, for this project's
# runs, the achieved GFLOP/s as fractions of the peak of the unit that ran and of the same run's
# single-convolution ceiling, the deploy file's speed over the no-flag Keras inference, and the wall time of
# the default export (target: under 3 minutes).
#
#   bash benchmarks/compare_nvidia.sh NVIDIA_DIR [DATA_DIR] [OUT_DIR]
#
# NVIDIA_DIR  folder holding run_nvidia_benchmark.sh (the runner of NVIDIA's unmodified code, with its copy
#             nvidia_unet_medical_tf2/ and deps/), e.g. ../shared/reference
# DATA_DIR    ISBI 2012 layout (default ../shared/data/isbi2012); OUT_DIR (default: a new temporary folder)
#
# NVIDIA's side runs as shipped (its runner: --warmup_steps 2 --max_steps 8, --augment for training, its
# 1-thread intra-op pin). Timing is each side's own: NVIDIA's DLLogger throughput line, this project's
# benchmark_results.json (unet_medical.base.timing), over the same 5 steps after 3 warm-up steps.
# This project's side takes no model or precision flags (the defaults: paper U-Net, --precision auto):
#   training   main.py --exec_mode benchmark --benchmark_mode train --bench_input real (crops, augmentation)
#   inference  main.py --exec_mode benchmark --benchmark_mode predict (no flags: the Keras model), and the same
#              with --model_path RUN/export (mode predict_deploy), i.e. through the
#              deploy file the default export chose on this machine (exported once, before the rounds, with
#              --tile_size 572 from a checkpoint: OURS_RUN_DIR, or OURS_TRAIN_STEPS steps trained here).
# Environment (all optional):
#   ROUNDS=2  NVIDIA_PYTHON=<project python> (needs munch: pip install munch)  OURS_RUN_DIR=<trained run folder,
#   copied, not modified>  OURS_TRAIN_STEPS=100  NVIDIA_RUNNER=<command used instead of
#   NVIDIA_DIR/run_nvidia_benchmark.sh, called as: RUNNER PYTHON DATA_DIR train|predict BATCH>
#   OURS_FLAGS=<extra main.py flags for every run of this project: tests only, e.g. a toy network>
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
usage() { echo "usage: bash benchmarks/compare_nvidia.sh NVIDIA_DIR [DATA_DIR] [OUT_DIR]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 3 ] || usage
nvidia_dir=$1
data_dir=${2:-$here/../shared/data/isbi2012}
out=${3:-$(mktemp -d -t compare_nvidia.XXXXXX)}
[ -d "$nvidia_dir" ] || { echo "error: NVIDIA_DIR $nvidia_dir is not a folder" >&2; exit 2; }
read -r -a runner <<< "${NVIDIA_RUNNER:-}"
if [ ${#runner[@]} -eq 0 ]; then
  runner=(bash "$nvidia_dir/run_nvidia_benchmark.sh")
  [ -f "${runner[1]}" ] || { echo "error: ${runner[1]} not found: NVIDIA_DIR must hold NVIDIA's runner" >&2; exit 2; }
fi
[ -f "$data_dir/train-volume.tif" ] || { echo "error: DATA_DIR $data_dir has no train-volume.tif" >&2; exit 2; }
data_dir=$(cd "$data_dir" && pwd)  # absolute: NVIDIA's runner changes into its own folder
rounds=${ROUNDS:-2}
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "error: ROUNDS=$rounds is not a positive integer" >&2; exit 2; }
py="$here/scripts/python"
nvidia_py=${NVIDIA_PYTHON:-$py}
read -r -a ours_flags <<< "${OURS_FLAGS:-}"
batch=1
steps=(--bench_warmup_steps 3 --bench_steps 5)  # NVIDIA: 3 untimed steps, 6 timestamps = 5 step times
mkdir -p "$out"
results="$out/results.tsv"
: > "$results"
log() { echo "[compare_nvidia $(date +%H:%M:%S)] $*" >&2; }
logged() {  # logged LOG command...: run, output to LOG; on failure show its end and stop
  local file=$1; shift
  "$@" > "$file" 2>&1 || { echo "error: $* failed; end of $file:" >&2; tail -n 20 "$file" >&2; exit 1; }
}

# This project's deploy file, once, before any timing.
run="$out/ours_run"
if [ -n "${OURS_RUN_DIR:-}" ]; then
  mkdir -p "$run"
  cp -r "$OURS_RUN_DIR/model.json" "$OURS_RUN_DIR/checkpoints" "$run/"
  [ -f "$OURS_RUN_DIR/config.yaml" ] && cp "$OURS_RUN_DIR/config.yaml" "$run/"
else
  log "training a checkpoint for the deploy file (${OURS_TRAIN_STEPS:-100} steps, defaults)"
  # --no-saved_model: the deploy file is exported from the checkpoint below; the run's SavedModel is not used
  logged "$out/ours_train_checkpoint.log" "$py" "$here/main.py" --exec_mode train --no-saved_model \
    --max_steps "${OURS_TRAIN_STEPS:-100}" --data_dir "$data_dir" --model_dir "$run" --log_every 10 "${ours_flags[@]}"
fi
log "default export (every candidate, parity, fastest kept) at a 572-pixel tile"
export_start=$EPOCHREALTIME
logged "$out/ours_export.log" "$py" "$here/main.py" --exec_mode export --data_dir "$data_dir" --model_dir "$run" \
  --tile_size 572 "${ours_flags[@]}"
export_seconds=$(awk -v a="$export_start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
log "default export took ${export_seconds} s"
deploy=$("$py" -c 'import json, sys; print(json.load(open(sys.argv[1]))["selection"]["chosen"])' "$run/export/export.json")
log "deploy file: $run/export/$deploy"

for r in $(seq 1 "$rounds"); do
  for mode in train predict; do
    log "round $r: NVIDIA $mode"
    nvidia_log="$out/nvidia_${mode}_r$r.log"
    logged "$nvidia_log" "${runner[@]}" "$nvidia_py" "$data_dir" "$mode" "$batch"
    value=$("$py" "$here/benchmarks/compare_nvidia.py" nvidia-throughput "$mode" < "$nvidia_log")
    printf '%s\tnvidia\t%s\t%s\n' "$r" "$mode" "$value" >> "$results"

    ours_modes=("$mode"); [ "$mode" = predict ] && ours_modes=(predict predict_deploy)
    for ours_mode in "${ours_modes[@]}"; do
      log "round $r: ours $ours_mode"
      dir="$out/ours_${ours_mode}_r$r"
      case "$ours_mode" in
        train) what=(--benchmark_mode train --bench_input real) ;;
        predict) what=(--benchmark_mode predict) ;;  # no flags: the Keras model, --precision auto
        predict_deploy) what=(--benchmark_mode predict --model_path "$run/export") ;;
      esac
      logged "$dir.log" "$py" "$here/main.py" --exec_mode benchmark "${what[@]}" --batch_size "$batch" "${steps[@]}" \
        --data_dir "$data_dir" --model_dir "$dir" "${ours_flags[@]}"
      value=$("$py" "$here/benchmarks/compare_nvidia.py" ours-throughput "$dir/benchmark_results.json")
      printf '%s\tours\t%s\t%s\n' "$r" "$ours_mode" "$value" >> "$results"
    done
  done
done

echo "NVIDIA: ${runner[*]}; ours: deploy file $deploy (inference), defaults (training); logs in $out"
"$py" "$here/benchmarks/compare_nvidia.py" summarize "$results" --json "$out/compare_nvidia.json" --runs_dir "$out" \
  --export_seconds "$export_seconds"
