#!/usr/bin/env bash
# Run main.py data-parallel on N replicas with the backend this machine has (the multi-GPU recipes'
# shared launcher):
#   horovod   when `import horovod.tensorflow` works: N processes (python -m horovod.runner.launch
#             -np N --gloo), main.py --distribution horovod, one replica (GPU) per process;
#   mirrored  otherwise: one process, main.py --distribution mirrored (tf.distribute.MirroredStrategy
#             over every local GPU, or the CPU as one replica).
# Before starting it prints one line: "launch_multi: backend=<horovod|mirrored> replicas=<R> (...)".
#
# The recipe's flags keep their Horovod meaning under mirrored: --batch_size is per replica and
# --lr_scaling scales by the replicas. With R > 1 local GPUs the launcher therefore passes
# --batch_size R*B, the scaled --learning_rate and --lr_scaling none (MirroredStrategy splits one
# process's batch over its devices and counts one worker). With one replica nothing changes.
#
# Usage: bash scripts/launch_multi.sh N [main.py flags ...]
# Environment:
#   UNET_FORCE_BACKEND=horovod|mirrored   skip the detection (horovod fails if it is not importable)
#   UNET_LAUNCH_DRY_RUN=1                 print the backend line and the command, run nothing
#   UNET_LAUNCH_GPUS=n                    with UNET_LAUNCH_DRY_RUN=1 only: pretend n local GPUs
#   UNET_LAUNCH_REPLICAS=n                Horovod only: n processes instead of the recipe's N (an 8-GPU recipe
#                                         on a 4-GPU node); --lr_scaling then scales by n
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
py="$here/scripts/python"
[ $# -ge 1 ] && [[ "$1" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 N [main.py flags ...]" >&2; exit 2; }
np=$1
shift
override=""
if [ -n "${UNET_LAUNCH_REPLICAS:-}" ]; then
  [[ "$UNET_LAUNCH_REPLICAS" =~ ^[1-9][0-9]*$ ]] || {
    echo "launch_multi: UNET_LAUNCH_REPLICAS=$UNET_LAUNCH_REPLICAS: expected a positive whole number" >&2; exit 2; }
  [ "$UNET_LAUNCH_REPLICAS" = "$np" ] || override="; UNET_LAUNCH_REPLICAS=$UNET_LAUNCH_REPLICAS overrides the recipe's $np"
  np=$UNET_LAUNCH_REPLICAS
fi
force="${UNET_FORCE_BACKEND:-}"
case "$force" in ""|horovod|mirrored) ;; *)
  echo "launch_multi: UNET_FORCE_BACKEND=$force: expected horovod or mirrored" >&2; exit 2 ;;
esac
dry_run="${UNET_LAUNCH_DRY_RUN:-0}"

# One interpreter start answers both questions: can Horovod's TensorFlow ops load, how many GPUs.
if [ "$dry_run" = 1 ] && [ -n "${UNET_LAUNCH_GPUS:-}" ] && [ "$force" = mirrored ]; then
  have_horovod=0 gpus=$UNET_LAUNCH_GPUS
else
  read -r have_horovod gpus < <(TF_CPP_MIN_LOG_LEVEL=3 TF_USE_LEGACY_KERAS=1 "$py" - 2>/dev/null <<'EOF' || echo "0 0"
try:
    import horovod.tensorflow  # noqa: F401  (loads the compiled ops: fails if built against another TF)
    have = 1
except Exception:
    have = 0
import tensorflow as tf
print(have, len(tf.config.list_physical_devices("GPU")))
EOF
  )
  [ "$dry_run" = 1 ] && [ -n "${UNET_LAUNCH_GPUS:-}" ] && gpus=$UNET_LAUNCH_GPUS
fi
devices=$([ "$gpus" -gt 0 ] && echo "$gpus GPU(s)" || echo "CPU only")

backend=${force:-$([ "$have_horovod" = 1 ] && echo horovod || echo mirrored)}
if [ "$backend" = horovod ]; then
  [ "$have_horovod" = 1 ] || { echo "launch_multi: UNET_FORCE_BACKEND=horovod, but 'import horovod.tensorflow'" \
    "fails with $("$py" -c 'import sys; print(sys.executable)'): bash scripts/install_horovod.sh" >&2; exit 1; }
  echo "launch_multi: backend=horovod replicas=$np ($np processes via horovod.runner.launch --gloo; $devices$override)"
  cmd=("$py" -m horovod.runner.launch -np "$np" -H "localhost:$np" --gloo "$py" "$here/main.py" "$@" \
       --distribution horovod)
else
  replicas=$([ "$gpus" -gt 0 ] && echo "$gpus" || echo 1)
  why=$([ -n "$force" ] && echo "UNET_FORCE_BACKEND=mirrored" || echo "horovod.tensorflow not importable")
  extra=()
  if [ "$replicas" -gt 1 ]; then  # per-replica batch and learning-rate scaling, as under Horovod
    read -r -a extra < <(PYTHONPATH="$here" "$py" - "$replicas" "$@" <<'EOF'
import math, sys
from unet_medical.cli.config import parse_config
replicas, cfg = int(sys.argv[1]), parse_config(sys.argv[2:])
factor = {"none": 1.0, "linear": replicas, "sqrt": math.sqrt(replicas)}[cfg.lr_scaling]
print(f"--batch_size {cfg.batch_size * replicas} --learning_rate {cfg.learning_rate * factor!r} --lr_scaling none")
EOF
    )
  fi
  echo "launch_multi: backend=mirrored replicas=$replicas (one process, tf.distribute.MirroredStrategy;" \
       "$devices; $why)${extra[*]:+; passes ${extra[*]}}"
  cmd=("$py" "$here/main.py" "$@" ${extra[@]+"${extra[@]}"} --distribution mirrored)
fi
if [ "$dry_run" = 1 ]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
exec "${cmd[@]}"
