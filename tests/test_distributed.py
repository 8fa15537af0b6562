"""Distribution backends: W workers at batch B train to the same weights as one process at batch W*B.

The integration tests launch real processes on 127.0.0.1 (tf.distribute MultiWorkerMirrored with
TF_CONFIG, horovodrun --gloo, MirroredStrategy over two logical CPUs), all at once, and compare
each chief's last checkpoint with a single-process run. Equal weights need equal gradients:
  * --no-batch_norm: BatchNorm normalizes with the statistics of each worker's own batch (2 images)
    instead of the single run's 4, a different function of the inputs;
  * --dice_weight 0: the soft Dice term is computed over each worker's batch, and a mean of
    per-worker Dice losses is not the Dice of the whole batch; the pixel-mean cross-entropy of
    equal-sized batches averages exactly;
  * --dropout 0 and --no-augment keep the run small and focused (the pipeline already makes the
    sample stream identical for 2x2 and 1x4 at a given seed).
Rank 1's initial weights are perturbed before training (see LAUNCHER), so the runs only agree if
broadcast_variables really gives every worker rank 0's values.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import tensorflow as tf

from unet_medical.training import distributed
from unet_medical.base.errors import UNetError

REPO = pathlib.Path(__file__).resolve().parents[1]
PYTHON = sys.executable
HOROVODRUN = pathlib.Path(PYTHON).parent / "horovodrun"
TIMEOUT_S = 900  # generous: the machine is shared; a hang (collective never joined) still ends

TRAIN_FLAGS = ["--exec_mode", "train", "--padding", "same", "--base_filters", "4", "--depth", "2",
               "--crop_size", "64", "--dropout", "0", "--no-batch_norm", "--dice_weight", "0",
               "--no-augment", "--max_steps", "3", "--log_every", "1", "--checkpoint_every", "100",
               "--learning_rate", "1e-2", "--seed", "3",
               # float32 whatever the CPU: the tolerances compare reduction orders, not bfloat16 rounding
               "--precision", "fp32",
               "--no-saved_model"]  # the checkpoints are compared, not the four chiefs' SavedModels

# Runs main.main with a per-rank --model_dir; on rank != 0 it shifts every initial weight by 0.5
# (after the model is built, before training) so that only a working broadcast can reconcile them.
# UNET_TEST_LOGICAL_CPUS=n splits the CPU into n logical devices (MirroredStrategy replicas).
LAUNCHER = r'''
import os, sys
sys.path.insert(0, os.environ["UNET_REPO"])
import unet_medical
import tensorflow as tf
cpus = int(os.environ.get("UNET_TEST_LOGICAL_CPUS", "1"))
if cpus > 1:
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * cpus)
import main
import unet_medical.cli.assemble as runner
rank = int(os.environ.get("HOROVOD_RANK", os.environ.get("UNET_TEST_RANK", "0")))
build = runner.build_unet
def perturbed_build(spec):
    model = build(spec)
    if rank != 0:
        for w in model.weights:
            if w.dtype.is_floating:
                w.assign(w + 0.5)
    return model
runner.build_unet = perturbed_build
sys.exit(main.main(sys.argv[1:] + ["--model_dir", os.path.join(os.environ["UNET_OUT"], f"rank{rank}")]))
'''


def free_ports(count: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def horovod_available() -> bool:
    return importlib.util.find_spec("horovod") is not None and HOROVODRUN.exists()


class Launch:
    """A group of processes writing into `out/rank{r}`; `log` collects their output."""

    def __init__(self, name: str, out: pathlib.Path, argvs: list[tuple[list[str], dict[str, str]]]):
        self.name, self.out = name, out
        self.log = out / "output.txt"
        out.mkdir(parents=True)
        self._log_file = open(self.log, "w")
        self.procs = [subprocess.Popen(argv, env=env, cwd=REPO, stdout=self._log_file, stderr=subprocess.STDOUT)
                      for argv, env in argvs]

    def wait(self, deadline: float) -> list[int | None]:
        codes = []
        for p in self.procs:
            try:
                codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(None)
        self._log_file.close()
        return codes

    def failure(self, codes: list[int | None]) -> str:
        tail = self.log.read_text()[-4000:]
        return f"{self.name}: exit codes {codes} (None = killed after {TIMEOUT_S} s)\n{tail}"


@pytest.fixture(scope="module")
def launches(isbi_data_dir, tmp_path_factory) -> dict[str, tuple[Launch, list[int | None]]]:
    """Start every configuration at once (they share 2 cores), then wait for all of them."""
    root = tmp_path_factory.mktemp("distributed")
    launcher = root / "launch.py"
    launcher.write_text(LAUNCHER)
    flags = [*TRAIN_FLAGS, "--data_dir", str(isbi_data_dir)]
    base_env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG",) and not k.startswith("HOROVOD_")}
    base_env["UNET_REPO"] = str(REPO)

    def env(out: pathlib.Path, **extra: str) -> dict[str, str]:
        return {**base_env, "UNET_OUT": str(out), **extra}

    groups = {}
    out = root / "single"
    groups["single"] = Launch("single", out, [([PYTHON, str(launcher), *flags, "--batch_size", "4"], env(out))])

    out = root / "multi_worker"
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    groups["multi_worker"] = Launch("multi_worker", out, [
        ([PYTHON, str(launcher), *flags, "--batch_size", "2", "--distribution", "multi_worker"],
         env(out, UNET_TEST_RANK=str(i),
             TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})))
        for i in range(2)])

    out = root / "mirrored"
    groups["mirrored"] = Launch("mirrored", out, [
        ([PYTHON, str(launcher), *flags, "--batch_size", "4", "--distribution", "mirrored"],
         env(out, UNET_TEST_LOGICAL_CPUS="2"))])

    if horovod_available():
        out = root / "horovod"
        groups["horovod"] = Launch("horovod", out, [
            ([str(HOROVODRUN), "-np", "2", "-H", "localhost:2", "--gloo", PYTHON, str(launcher), *flags,
              "--batch_size", "2", "--distribution", "horovod"], env(out))])

    deadline = time.monotonic() + TIMEOUT_S
    return {name: (group, group.wait(deadline)) for name, group in groups.items()}


def checkpoint_arrays(model_dir: pathlib.Path) -> dict[str, np.ndarray]:
    with np.load(model_dir / "checkpoints" / "last.npz") as data:
        return {k: data[k] for k in data.files if k != "header"}


def assert_matches_single(launches, name: str) -> None:
    single, single_codes = launches["single"]
    group, codes = launches[name]
    assert single_codes == [0], single.failure(single_codes)
    assert codes == [0] * len(codes), group.failure(codes)
    reference = checkpoint_arrays(single.out / "rank0")
    chief = checkpoint_arrays(group.out / "rank0")
    assert chief.keys() == reference.keys()  # model and optimizer (Adam moments, step) alike
    for key, want in reference.items():
        # atol relative to the array's scale: Adam's second moments are ~1e-8, weights ~1e-1.
        atol = 1e-5 * float(np.max(np.abs(want))) if want.size else 0.0
        np.testing.assert_allclose(chief[key], want, rtol=1e-4, atol=atol, err_msg=f"{name}: {key}")
    assert not np.allclose(reference["model/00000"], 0.0)


def assert_only_chief_wrote(launches, name: str) -> None:
    group, _ = launches[name]
    assert (group.out / "rank0" / "log.json").is_file()
    other = group.out / "rank1"
    written = sorted(p.name for p in other.iterdir()) if other.exists() else []
    assert "checkpoints" not in written and "log.json" not in written, written


@pytest.mark.slow
def test_multi_worker_two_processes_match_one_process(launches):
    assert_matches_single(launches, "multi_worker")
    assert_only_chief_wrote(launches, "multi_worker")


@pytest.mark.slow
def test_mirrored_over_two_devices_matches_one_device(launches):
    assert_matches_single(launches, "mirrored")


@pytest.mark.slow
def test_horovod_two_processes_match_one_process(launches):
    if "horovod" not in launches:
        message = (f"horovod is not installed in {PYTHON} (or {HOROVODRUN} is missing): "
                   "run scripts/install_horovod.sh (about 5-15 minutes)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    assert_matches_single(launches, "horovod")
    assert_only_chief_wrote(launches, "horovod")


# --------------------------------------------------------------------------- in-process unit tests

def test_tf_config_ranks_chief_first_then_workers():
    cluster = {"chief": ["a:1"], "worker": ["b:1", "c:1"]}
    ranks = [distributed.tf_config_rank_and_size(json.dumps({"cluster": cluster, "task": task}))
             for task in ({"type": "chief", "index": 0}, {"type": "worker", "index": 0},
                          {"type": "worker", "index": 1})]
    assert ranks == [(0, 3), (1, 3), (2, 3)]
    only_workers = json.dumps({"cluster": {"worker": ["b:1", "c:1"]}, "task": {"type": "worker", "index": 1}})
    assert distributed.tf_config_rank_and_size(only_workers) == (1, 2)


@pytest.mark.parametrize("tf_config, fragment", [
    (None, "needs TF_CONFIG"),
    ("{not json", "not valid"),
    (json.dumps({"cluster": {"worker": ["a:1"]}}), "not valid"),
    (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}), "worker:1"),
    (json.dumps({"cluster": {"worker": ["a:1"], "evaluator": ["e:1"]}, "task": {"type": "evaluator", "index": 0}}),
     "evaluator"),
])
def test_bad_tf_config_is_a_user_error(tf_config, fragment):
    with pytest.raises(UNetError, match=fragment):
        distributed.tf_config_rank_and_size(tf_config)


def test_multi_worker_without_tf_config_fails_before_touching_the_runtime(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(UNetError, match="TF_CONFIG"):
        distributed.create("multi_worker")


def test_missing_horovod_points_to_the_install_script(monkeypatch):
    monkeypatch.setitem(sys.modules, "horovod.tensorflow", None)  # makes the import fail
    with pytest.raises(UNetError, match="scripts/install_horovod.sh"):
        distributed.create("horovod")


def test_unknown_backend_is_a_user_error():
    with pytest.raises(UNetError, match="--distribution"):
        distributed.create("parameter_server")


def test_mirrored_scope_makes_batchnorm_statistics_sync_on_write():
    """ON_READ statistics would make the chief's checkpoint read a collective the others never join."""
    import tf_keras as keras

    backend = distributed.create("mirrored")
    with backend.scope():
        layer = keras.layers.BatchNormalization()
        layer.build((None, 4, 4, 3))
    assert layer.moving_mean.synchronization == tf.VariableSynchronization.ON_WRITE
    assert layer.moving_mean.aggregation == tf.VariableAggregation.MEAN
    assert backend.rank == 0 and backend.size == 1 and backend.is_chief


def test_tf_distribute_gradients_are_divided_by_the_replica_count():
    """Keras' apply_gradients sums over replicas; dividing first makes the update an average."""
    four_replicas = types.SimpleNamespace(num_replicas_in_sync=4)
    backend = distributed.TFDistributeBackend("multi_worker", four_replicas, rank=1, size=2)
    assert backend.local_replicas == 2 and not backend.is_chief
    scaled = backend.reduce_gradients([tf.constant([2.0, 4.0]), None])
    np.testing.assert_allclose(scaled[0].numpy(), [0.5, 1.0])
    assert scaled[1] is None


def test_xla_over_several_cpu_replicas_is_refused_up_front():
    """XLA has no CPU collectives: compiling the all-reduce would fail deep inside TensorFlow."""
    if tf.config.list_logical_devices("GPU"):
        pytest.skip("GPUs present: XLA collectives are supported there")
    backend = distributed.TFDistributeBackend("multi_worker", types.SimpleNamespace(num_replicas_in_sync=2),
                                              rank=0, size=2)
    with pytest.raises(UNetError, match="--xla"):
        backend.compile_step(lambda images, labels: images, xla=True)


def test_horovod_install_script_is_valid_bash():
    bash = shutil.which("bash")
    assert subprocess.run([bash, "-n", str(REPO / "scripts" / "install_horovod.sh")]).returncode == 0
