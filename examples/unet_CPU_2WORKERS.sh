#!/usr/bin/env bash
# Two local worker processes with tf.distribute MultiWorkerMirroredStrategy (TF_CONFIG on 127.0.0.1):
# unet_CPU_TRAIN.sh's recipe with its batch of 4 split as 2 per worker, so the global batch and the
# learning rate are unchanged. Both share RESULTS_DIR: worker 0 (the chief) alone logs, evaluates and
# writes checkpoints there, and with --resume_training every worker restarts from the same
# checkpoint. Two workers on one 2-core machine demonstrate the mechanics; they are no speed-up.
# Usage: bash examples/unet_CPU_2WORKERS.sh DATA_DIR RESULTS_DIR [extra main.py flags]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
read -r port0 port1 < <("$here/scripts/python" -c 'import socket; s=[socket.socket() for _ in range(2)]; [x.bind(("127.0.0.1", 0)) for x in s]; print(*[x.getsockname()[1] for x in s])')
cluster="{\"worker\": [\"127.0.0.1:$port0\", \"127.0.0.1:$port1\"]}"
pids=()
for i in 0 1; do
  TF_CONFIG="{\"cluster\": $cluster, \"task\": {\"type\": \"worker\", \"index\": $i}}" \
    "$here/scripts/python" "$here/main.py" --distribution multi_worker --exec_mode train_and_evaluate \
    --data_dir "$1" --model_dir "$2" --padding same --base_filters 16 --depth 4 --batch_norm --dropout 0 \
    --crop_size 256 --batch_size 2 --learning_rate 1e-3 --warmup_steps 50 --lr_schedule cosine --max_steps 600 \
    --log_every 25 --evaluate_every 200 --checkpoint_every 50 --fold 0 --num_folds 5 --augment "${@:3}" &
  pids+=($!)
done
# A worker that fails leaves the other blocked in a collective: stop it too.
status=0
for _ in "${pids[@]}"; do
  wait -n "${pids[@]}" 2>/dev/null || { rc=$?; [ "$status" != 0 ] || status=$rc; kill "${pids[@]}" 2>/dev/null || true; }
done
exit "$status"
