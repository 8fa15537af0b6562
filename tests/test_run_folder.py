"""A run folder you can trust: its files never run planted code, a refused command leaves them untouched,
a resume keeps the run's recorded fold/architecture/data/quantization, a lock stops a second writer, a
quantized run is recorded as quantized, a crash in the final evaluation can be resumed, OS errors are
one line, and --synthetic never overwrites real data."""
from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest

from unet_medical.cli.main import main as cli_main
from tests.tiny_run import TINY, write_tiny_data



@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> pathlib.Path:
    return write_tiny_data(tmp_path_factory)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir) -> pathlib.Path:
    """A tiny run: 4 steps, fold 0 of 5, evaluated at the end."""
    run = tmp_path_factory.mktemp("runs") / "run"
    assert cli_main(["train", "--data_dir", str(data_dir), "--model_dir", str(run), *TINY]) == 0
    return run


@pytest.fixture
def run(trained, tmp_path) -> pathlib.Path:
    """A private copy of the tiny run."""
    return pathlib.Path(shutil.copytree(trained, tmp_path / "run"))


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1, err
    return err[0]


def lambda_json(marker: pathlib.Path) -> str:
    """Keras JSON of a model whose Lambda layer, once deserialized and called, writes `marker`."""
    import tf_keras as keras

    inputs = keras.Input((None, None, 1))
    planted = keras.layers.Lambda(lambda x, m=str(marker): (open(m, "w").close(), x)[1])(inputs)
    architecture = keras.Model(inputs, keras.layers.Conv2D(2, 1)(planted)).to_json()
    assert marker.exists()  # building it ran the code: the marker works
    marker.unlink()
    return architecture


# ----------------------------------------------------------------------------- 1. planted code never runs
@pytest.mark.parametrize("mode", ["evaluate", "predict", "export"])
def test_planted_lambda_in_model_json_does_not_run(run, tmp_path, capsys, mode):
    marker = tmp_path / "pwned"
    record = json.loads((run / "model.json").read_text())
    record["architecture"] = lambda_json(marker)
    (run / "model.json").write_text(json.dumps(record))
    capsys.readouterr()
    assert cli_main([mode, "--model_dir", str(run)]) == 2
    assert not marker.exists()
    line = one_error_line(capsys)
    assert "model.json" in line and "Lambda" in line


def test_planted_lambda_in_init_from_does_not_run(run, tmp_path, data_dir, capsys):
    marker = tmp_path / "pwned"
    record = json.loads((run / "model.json").read_text())
    record["architecture"] = lambda_json(marker)
    (run / "model.json").write_text(json.dumps(record))
    capsys.readouterr()
    assert cli_main(["train", "--init_from", str(run), "--model_dir", str(tmp_path / "new"), "--max_steps", "1"]) == 2
    assert not marker.exists()
    assert "Lambda" in one_error_line(capsys)


def test_planted_lambda_in_packed_file_does_not_run(tmp_path):
    from unet_medical.base.errors import UNetError
    from unet_medical.base.fileio import atomic_savez
    from unet_medical.model.packing import FORMAT, load_packed

    marker, path = tmp_path / "pwned", tmp_path / "planted.npz"
    header = {"format": FORMAT, "config": {}, "layers": []}
    atomic_savez(path, {"header": np.frombuffer(json.dumps(header).encode(), np.uint8),
                        "architecture": np.frombuffer(lambda_json(marker).encode(), np.uint8)})
    with pytest.raises(UNetError, match=r"planted\.npz: .*Lambda"):
        load_packed(path)
    assert not marker.exists()


def test_safe_mode_alone_refuses_a_marshalled_lambda(tmp_path, monkeypatch):
    """Keras' safe mode is the second line of defence: with the Lambda check switched off, the
    marshalled lambda is still refused, not run."""
    from unet_medical.base.errors import UNetError
    from unet_medical.model import serialization

    marker = tmp_path / "pwned"
    monkeypatch.setattr(serialization, "check_no_code", lambda architecture, source: None)
    with pytest.raises(UNetError, match=r"x\.json: .*safe mode"):
        serialization.model_from_json(lambda_json(marker), "x.json")
    assert not marker.exists()


# ----------------------------------------------------------------------------- 2./3. refusals write nothing
def snapshot(folder: pathlib.Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `folder`: its bytes and mtime (ns)."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("extra", [
    ["--base_filters", "8"],                      # another experiment, no --resume_training
    ["--fold", "2"],
])
def test_retraining_into_a_finished_run_is_refused_before_any_write(run, data_dir, capsys, extra):
    before = snapshot(run)
    capsys.readouterr()
    assert cli_main(["train", "--data_dir", str(data_dir), "--model_dir", str(run), *TINY, *extra]) == 2
    assert "--resume_training" in one_error_line(capsys)
    assert snapshot(run) == before


@pytest.mark.parametrize("flag, value, recorded", [
    ("--fold", "1", "fold=0"), ("--base_filters", "8", "base_filters=4"), ("--dropout", "0.5", "dropout=0"),
    ("--padding", "valid", "padding='same'"), ("--quantization", "FIXED", "quantization='NONE'"),
    ("--num_folds", "3", "num_folds=5")])
def test_resume_refuses_a_flag_that_contradicts_the_record(run, capsys, flag, value, recorded):
    before = snapshot(run)
    capsys.readouterr()
    assert cli_main(["train", "--model_dir", str(run), "--resume_training", flag, value, "--max_steps", "6"]) == 2
    line = one_error_line(capsys)
    assert f"{flag}=" in line and recorded in line, line
    assert snapshot(run) == before


def test_resume_takes_fold_data_and_architecture_from_the_record(trained, tmp_path):
    from unet_medical.cli.config import parse_config

    other = tmp_path / "elsewhere"
    cfg = parse_config(["--exec_mode", "train_and_evaluate", "--model_dir", str(trained), "--resume_training",
                        "--max_steps", "6", "--fold", "0"])  # the recorded fold, given again: fine
    assert (cfg.fold, cfg.num_folds, cfg.base_filters, cfg.depth, cfg.padding, cfg.dropout) == (0, 5, 4, 2, "same", 0)
    assert cfg.batch_norm and cfg.crop_size == 32 and pathlib.Path(cfg.data_dir).is_dir()
    assert cfg.max_steps == 6  # not fixed by the record: a resume may train longer
    fresh = parse_config(["--exec_mode", "train", "--model_dir", str(other), "--resume_training"])
    assert fresh.fold == 0 and fresh.base_filters == 64  # nothing to resume: the flags' defaults


# ----------------------------------------------------------------------------- 4. one writer per folder
def test_a_live_lock_stops_a_second_writer_and_a_stale_one_says_how_to_clear_it(run, capsys):
    import os
    import socket
    import subprocess
    import sys

    before = snapshot(run)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".lock").write_text(f"{sleeper.pid} {socket.gethostname()}\n")
        capsys.readouterr()
        assert cli_main(["evaluate", "--model_dir", str(run)]) == 2
        line = one_error_line(capsys)
        assert f"in use by pid {sleeper.pid}" in line and ".lock" in line
    finally:
        sleeper.kill()
        sleeper.wait()
    assert cli_main(["evaluate", "--model_dir", str(run)]) == 2  # its pid is gone now
    line = one_error_line(capsys)
    assert f"stale lock of pid {sleeper.pid}" in line and f"rm {run / '.lock'}" in line
    assert snapshot(run) == {**before, ".lock": snapshot(run)[".lock"]}
    os.remove(run / ".lock")
    assert cli_main(["evaluate", "--model_dir", str(run)]) == 0
    assert not (run / ".lock").exists()  # released on exit


def test_the_lock_is_released_when_the_command_fails(run, capsys):
    (run / "checkpoints" / "last.npz").write_bytes(b"damaged")
    assert cli_main(["evaluate", "--model_dir", str(run), "--checkpoint", "last"]) == 2
    assert "last.npz" in one_error_line(capsys)
    assert not (run / ".lock").exists()


# ----------------------------------------------------------------------------- 6. crash in the final evaluation
@pytest.mark.slow  # seconds of setup or a subprocess: the fast subset stays under 2 minutes
def test_a_crash_in_the_final_evaluation_is_finished_by_a_resume(data_dir, tmp_path, monkeypatch):
    from unet_medical.cli import modes

    run = tmp_path / "run"
    real = modes.evaluate_images

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies during the final evaluation, after last.npz at max_steps

    monkeypatch.setattr(modes, "evaluate_images", crash)
    with pytest.raises(KeyboardInterrupt):
        cli_main(["train", "--data_dir", str(data_dir), "--model_dir", str(run), *TINY])
    assert (run / "checkpoints" / "last.npz").is_file() and not (run / "checkpoints" / "best.npz").exists()
    assert not (run / ".lock").exists()
    monkeypatch.setattr(modes, "evaluate_images", real)
    assert cli_main(["train", "--model_dir", str(run), "--resume_training"]) == 0
    assert (run / "checkpoints" / "best.npz").is_file()
    assert json.loads((run / "eval_results.json").read_text())["step"] == 4
    assert cli_main(["evaluate", "--model_dir", str(run), "--checkpoint", "best"]) == 0


# ----------------------------------------------------------------------------- 7. OS errors are one line
def test_a_model_dir_under_a_regular_file_is_one_line_naming_it(data_dir, tmp_path, capsys):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    capsys.readouterr()
    assert cli_main(["train", "--data_dir", str(data_dir), "--model_dir", str(blocker / "run"), *TINY]) == 2
    line = one_error_line(capsys)
    assert str(blocker) in line and "Not a directory" in line, line


def test_a_full_disk_while_writing_a_record_is_one_line(run, tmp_path, capsys, monkeypatch):
    import errno
    import os

    from unet_medical.base import fileio

    def full(path, write):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(fileio, "atomic_write", full)
    capsys.readouterr()
    assert cli_main(["evaluate", "--model_dir", str(run)]) == 2
    line = one_error_line(capsys)
    assert "No space left on device" in line and str(run) in line, line


# ----------------------------------------------------------------------------- 8. one rank writes results
@pytest.mark.parametrize("mode", ["evaluate", "predict"])
def test_a_worker_that_is_not_the_chief_writes_no_results(run, monkeypatch, mode):
    """With several workers (--distribution), rank 1 of 2 runs the mode but leaves the run folder alone:
    results come from the chief only."""
    from unet_medical.cli import modes
    from unet_medical.training import distributed

    class SecondWorker(distributed.SingleProcess):
        rank, size = 1, 2

    monkeypatch.setattr(modes.distributed, "create", lambda name: SecondWorker())
    before = snapshot(run)
    assert cli_main([mode, "--model_dir", str(run)]) == 0
    assert snapshot(run) == before


# ----------------------------------------------------------------------------- 9. versioned run files
def test_a_run_writes_versioned_files_and_refuses_a_newer_model_json_in_one_line(run, capsys):
    from unet_medical.base.artifacts import SCHEMA_KEY, SCHEMA_VERSION

    for name in ("model.json", "eval_results.json"):
        assert json.loads((run / name).read_text())[SCHEMA_KEY] == SCHEMA_VERSION, name
    record = json.loads((run / "model.json").read_text())
    (run / "model.json").write_text(json.dumps({**record, SCHEMA_KEY: SCHEMA_VERSION + 1}))
    capsys.readouterr()
    assert cli_main(["evaluate", "--model_dir", str(run)]) == 2
    line = one_error_line(capsys)
    assert str(run / "model.json") in line and "is newer than this version" in line, line
