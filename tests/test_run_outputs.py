"""What predict and evaluate leave in a run folder: each predict its own fresh folder (never mixed with an
earlier one, nor two inputs colliding on one output name), written image by image as the maps are made."""
from __future__ import annotations

import pathlib
import shutil

import numpy as np
import pytest
import tifffile
from PIL import Image

from unet_medical.cli.main import main as cli_main
from unet_medical.data import synthetic
from unet_medical.inference import tiling

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
    run = tmp_path_factory.mktemp("runs") / "run"
    assert cli_main(["train", "--data_dir", str(data_dir), "--model_dir", str(run), *TINY]) == 0
    return run


@pytest.fixture
def run(trained, tmp_path) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(trained, tmp_path / "run"))


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1, err
    return err[0]


def image_folder(folder: pathlib.Path, names: list[str]) -> pathlib.Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(folder / name)
    return folder


def files_under(folder: pathlib.Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_two_inputs_with_one_stem_are_refused_naming_both(run, tmp_path, capsys):
    inputs = image_folder(tmp_path / "in", ["a.png", "a.tif", "b.png"])
    capsys.readouterr()
    assert cli_main(["predict", "--model_dir", str(run), "--input", str(inputs)]) == 2
    line = one_error_line(capsys)
    assert "a.png" in line and "a.tif" in line
    assert not any((run / "predictions").rglob("*.tif"))


def test_each_predict_writes_a_fresh_folder_never_mixed_with_an_earlier_one(run, tmp_path, capsys):
    first = image_folder(tmp_path / "first", ["x.png"])
    second = image_folder(tmp_path / "second", ["y.png"])
    assert cli_main(["predict", "--model_dir", str(run), "--input", str(first)]) == 0
    assert cli_main(["predict", "--model_dir", str(run), "--input", str(second)]) == 0
    folders = sorted(p for p in (run / "predictions").iterdir() if p.is_dir())
    assert len(folders) == 2
    assert {"x-mask.tif", "x-probabilities.tif"} <= files_under(folders[0])
    assert {"y-mask.tif", "y-probabilities.tif"} <= files_under(folders[1])
    assert not any(pathlib.Path(name).name.startswith("x") for name in files_under(folders[1]))
    # An explicit --output_dir that already holds files is refused rather than mixed into.
    capsys.readouterr()
    assert cli_main(["predict", "--model_dir", str(run), "--input", str(second),
                     "--output_dir", str(folders[0])]) == 2
    assert "--output_dir" in one_error_line(capsys)
    assert not any(pathlib.Path(name).name.startswith("y") for name in files_under(folders[0]))


def test_predictions_are_written_as_they_are_made(run, tmp_path, monkeypatch):
    """A predict that dies on the third image (out of memory) keeps the first two on disk."""
    inputs = image_folder(tmp_path / "in", ["p1.png", "p2.png", "p3.png", "p4.png"])
    real, calls = tiling.tiled_predict, []

    def dies_on_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise MemoryError("out of memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(tiling, "tiled_predict", dies_on_the_third)
    with pytest.raises(MemoryError):
        cli_main(["predict", "--model_dir", str(run), "--input", str(inputs)])
    (folder,) = (run / "predictions").iterdir()
    written = files_under(folder)
    assert {"p1-mask.tif", "p1-probabilities.tif", "p2-mask.tif", "p2-probabilities.tif"} <= written
    assert not any(pathlib.Path(name).name.startswith("p3") for name in written)
    assert tifffile.imread(folder / "p1-mask.tif").shape == (48, 48)
