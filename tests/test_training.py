"""The training loop end to end on real ISBI slices with a tiny network: resume after SIGKILL gives
the same weights as an uninterrupted run; NaN stops the run and keeps the last good checkpoint."""
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

import main
from unet_medical.training import checkpoint as ckpt
from unet_medical.cli.config import parse_config

REPO = pathlib.Path(__file__).resolve().parents[1]
# --no-saved_model: these tests compare checkpoints and logs; the SavedModel has its own tests.
TINY = ["--padding", "same", "--base_filters", "4", "--depth", "2", "--batch_norm", "--dropout", "0",
        "--crop_size", "96", "--batch_size", "2", "--learning_rate", "1e-3", "--num_folds", "10",
        "--fold", "9", "--log_every", "1", "--no-saved_model"]


def run_main(args, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, str(REPO / "main.py"), *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kwargs)


def model_arrays(path):
    with np.load(path) as data:
        return [data[k] for k in sorted(data.files) if k.startswith("model/")]


def logged_steps(log_path):
    if not log_path.exists():
        return []
    steps = []
    for line in log_path.read_text().splitlines():
        record = json.loads(line[5:]) if line.startswith("DLLL ") else None
        if record and isinstance(record.get("step"), int):
            steps.append(record["step"])
    return steps


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, isbi_data_dir):
    common = ["--exec_mode", "train", "--data_dir", str(isbi_data_dir), "--max_steps", "40",
              "--checkpoint_every", "4", *TINY]
    straight = run_main([*common, "--model_dir", str(tmp_path / "straight")])
    assert straight.wait(timeout=300) == 0, straight.stderr.read()

    killed_dir = tmp_path / "killed"
    kill_after = random.Random().randint(6, 30)
    proc = run_main([*common, "--model_dir", str(killed_dir)])
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(s >= kill_after for s in logged_steps(killed_dir / "log.json")):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted_at = ckpt.read_header(killed_dir / "checkpoints" / "last.npz").step
    assert interrupted_at < 40, "the run finished before it could be killed: the test proves nothing"

    # The killed process left its run lock: a resume says so in one line, with the command that clears it.
    refused = run_main([*common, "--model_dir", str(killed_dir), "--resume_training"])
    assert refused.wait(timeout=300) == 2
    message = refused.stderr.read()
    assert "stale lock" in message and f"rm {killed_dir / '.lock'}" in message, message
    (killed_dir / ".lock").unlink()
    resumed = run_main([*common, "--model_dir", str(killed_dir), "--resume_training"])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert ckpt.read_header(killed_dir / "checkpoints" / "last.npz").step == 40
    for a, b in zip(model_arrays(tmp_path / "straight" / "checkpoints" / "last.npz"),
                    model_arrays(killed_dir / "checkpoints" / "last.npz")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_refuses_to_train_over_an_existing_checkpoint(tmp_path, isbi_data_dir, capsys):
    args = ["--exec_mode", "train", "--data_dir", str(isbi_data_dir), "--model_dir", str(tmp_path),
            "--max_steps", "2", "--checkpoint_every", "1", *TINY]
    assert main.main(args) == 0
    before = (tmp_path / "checkpoints" / "last.npz").read_bytes()
    assert main.main(args) == 2
    assert "--resume_training" in capsys.readouterr().err
    assert (tmp_path / "checkpoints" / "last.npz").read_bytes() == before


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, isbi_data_dir, monkeypatch):
    import unet_medical.training.loop as training
    from unet_medical.cli.assemble import make_logger
    from unet_medical.cli.modes import run_training
    from unet_medical.training import distributed

    from unet_medical.training.loss_registry import DEFAULT_LOSS, LOSSES

    original = LOSSES.get(DEFAULT_LOSS)
    calls = tf.Variable(0)

    def poisoned(*args, **kwargs):
        calls.assign_add(1)
        return original(*args, **kwargs) + tf.where(calls > 7, np.nan, 0.0)

    monkeypatch.setattr(LOSSES, "_entries", dict(LOSSES._entries))  # the registration ends with the test
    LOSSES.register("nan_after_7_steps", poisoned)
    cfg = parse_config(["--exec_mode", "train", "--data_dir", str(isbi_data_dir), "--model_dir", str(tmp_path),
                        "--max_steps", "20", "--checkpoint_every", "5", "--loss", "nan_after_7_steps", *TINY])
    with pytest.raises(training.TrainingDiverged, match="at step 8"):
        run_training(cfg, make_logger(cfg, 0), distributed.create())
    info = ckpt.read_header(tmp_path / "checkpoints" / "last.npz")
    assert info.step == 5
    assert all(np.isfinite(a).all() for a in model_arrays(tmp_path / "checkpoints" / "last.npz"))


@pytest.mark.parametrize("args,needle", [
    (["--data_dir", "/nonexistent/data"], "/nonexistent/data"),
    (["--padding", "sideways"], "--padding"),
    pytest.param(["--crop_size", "100", "--padding", "valid"], "--crop_size=100", marks=pytest.mark.slow),
])
def test_cli_errors_are_one_clear_line(tmp_path, capsys, args, needle, isbi_data_dir):
    argv = ["--exec_mode", "train", "--data_dir", str(isbi_data_dir), "--model_dir", str(tmp_path),
            "--max_steps", "1", *args]
    assert main.main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
