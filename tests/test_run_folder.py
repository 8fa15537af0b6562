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
from unet_medical.data import synthetic

TINY = ["--padding", "same", "--base_filters", "4", "--depth", "2", "--batch_norm", "--dropout", "0",
        "--crop_size", "32", "--batch_size", "2", "--max_steps", "4", "--log_every", "2",
        "--checkpoint_every", "2", "--no-saved_model"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("data")
    synthetic.write_isbi_layout(out, num_slices=10, size=64, seed=0)
    return out


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
