"""What predict and evaluate leave in a run folder: each predict its own fresh folder (never mixed with an
earlier one, nor two inputs colliding on one output name), written image by image as the maps are made;
every score and prediction names the weights file (and its SHA-256), precision and inputs that made it."""
from __future__ import annotations

import hashlib
import json
import pathlib
import shutil

import numpy as np
import pytest
import tifffile
from PIL import Image

from unet_medical.base.errors import UNetError
from unet_medical.cli.config import parse_config
from unet_medical.cli.main import main as cli_main
from tests.tiny_run import TINY, write_tiny_data
from unet_medical.inference import tiling



@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> pathlib.Path:
    return write_tiny_data(tmp_path_factory)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir) -> pathlib.Path:
    run = tmp_path_factory.mktemp("runs") / "run"
    assert cli_main(["--exec_mode", "train_and_evaluate", "--data_dir", str(data_dir), "--model_dir", str(run), *TINY]) == 0
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


def sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_standalone_evaluate_keeps_the_training_scores_and_records_its_weights(run, data_dir):
    training_scores = (run / "eval_results.json").read_bytes()
    assert json.loads(training_scores)["provenance"]["checkpoint"] == "in memory at the evaluated step"
    assert cli_main(["evaluate", "--model_dir", str(run), "--checkpoint", "best", "--precision", "fp32"]) == 0
    assert (run / "eval_results.json").read_bytes() == training_scores  # the model card's and CV's file
    results = json.loads((run / "eval_results_best.json").read_text())
    origin = results["provenance"]
    assert "mean_dice" in results and results["step"] > 0
    assert origin["model_file"] == str((run / "checkpoints" / "best.npz").resolve())
    assert origin["model_sha256"] == sha256(run / "checkpoints" / "best.npz")
    assert origin["checkpoint"] == "best" and origin["precision"] == "float32"
    assert origin["data"] == str(data_dir.resolve())
    assert origin["files"] == [case["name"] for case in results["per_case"]] and len(origin["files"]) == 2


def test_each_predict_folder_records_its_weights_and_inputs(run, tmp_path):
    inputs = image_folder(tmp_path / "in", ["u.png", "v.png"])
    assert cli_main(["predict", "--model_dir", str(run), "--input", str(inputs), "--precision", "fp32"]) == 0
    origin = json.loads((run / "predictions" / "001" / "provenance.json").read_text())
    assert origin["model_sha256"] == sha256(run / "checkpoints" / "last.npz") and origin["checkpoint"] == "last"
    assert origin["files"] == ["u.png", "v.png"] and origin["data"] == str(inputs.resolve())
    assert origin["precision"] == "float32"


def test_an_exported_model_without_model_dir_writes_into_its_own_run(run, tmp_path):
    (run / "export").mkdir(exist_ok=True)
    (run / "export" / "model.onnx").write_bytes(b"onnx")
    for mode in ("evaluate", "predict"):
        assert parse_config(["--exec_mode", mode, "--model_path", str(run / "export" / "model.onnx")]
                            ).model_dir == str(run)
    stray = tmp_path / "model.onnx"
    stray.write_bytes(b"onnx")
    with pytest.raises(UNetError, match="--model_path=.*give --model_dir"):
        parse_config(["--exec_mode", "predict", "--model_path", str(stray)])
    assert parse_config(["--exec_mode", "predict", "--model_path", str(stray), "--model_dir", str(tmp_path / "o")]
                        ).model_dir == str(tmp_path / "o")


def test_evaluate_scores_the_recorded_validation_images_after_images_were_added(data_dir, tmp_path):
    """Fold 0 of 5 of 10 slices validates on slices 0-1; with 15 slices a recount would make it 0-2,
    and slice 2 is one the model trained on."""
    data, run = pathlib.Path(shutil.copytree(data_dir, tmp_path / "data")), tmp_path / "run"
    assert cli_main(["--exec_mode", "train_and_evaluate", "--data_dir", str(data), "--model_dir", str(run),
                     *TINY]) == 0
    for stack in ("train-volume.tif", "train-labels.tif"):  # five more slices at the end of each stack
        slices = tifffile.imread(data / stack)
        tifffile.imwrite(data / stack, np.concatenate([slices, slices[:5]]), photometric="minisblack")
    assert cli_main(["evaluate", "--model_dir", str(run)]) == 0
    results = json.loads((run / "eval_results_last.json").read_text())
    validation = ["train-volume.tif[0]", "train-volume.tif[1]"]
    assert [case["name"] for case in results["per_case"]] == validation and results["num_images"] == 2
    record = json.loads((run / "model.json").read_text())
    assert record["validation_files"] == results["provenance"]["files"] == validation
    assert len(record["train_files"]) == 8 and "train-volume.tif[2]" in record["train_files"]


def test_a_recorded_validation_image_that_is_gone_is_one_line(tmp_path):
    from unet_medical.cli.lineage import select_by_name

    assert select_by_name(["a.png", "b.png", "c.png"], ["c.png", "a.png"], "D", "R").tolist() == [2, 0]
    with pytest.raises(UNetError, match=r"D: 1 of the 2 validation images R recorded \(first: z.png\)"):
        select_by_name(["a.png", "b.png"], ["a.png", "z.png"], "D", "R")


def weight_arrays(model) -> list[np.ndarray]:
    return [np.asarray(w) for w in model.weights]


@pytest.mark.slow  # ~25 s: writes a SavedModel
def test_the_savedmodel_holds_the_weights_evaluate_and_predict_use_by_default(data_dir, tmp_path, monkeypatch):
    """Scores that fall at every evaluation make best.npz (step 2) differ from last.npz (step 4)."""
    import tensorflow as tf

    from unet_medical.cli import modes
    from unet_medical.cli.assemble import restore_model

    real = modes.make_fold_evaluator

    def falling_scores(*args, **kwargs):
        evaluate = real(*args, **kwargs)
        return lambda model, step, **rule: {**evaluate(model, step, **rule), "mean_dice": 1.0 / step}

    monkeypatch.setattr(modes, "make_fold_evaluator", falling_scores)
    run = tmp_path / "run"
    flags = [f for f in TINY if f != "--no-saved_model"]
    assert cli_main(["--exec_mode", "train_and_evaluate", "--data_dir", str(data_dir), "--model_dir", str(run),
                     "--evaluate_every", "2", *flags]) == 0
    monkeypatch.undo()
    default, _, info = restore_model(parse_config(["--exec_mode", "predict", "--model_dir", str(run)]))
    best, _, best_info = restore_model(parse_config(["--exec_mode", "predict", "--model_dir", str(run),
                                                     "--checkpoint", "best"]))
    assert (info.step, best_info.step) == (4, 2)  # the two files differ, so the test can tell them apart
    reader = tf.train.load_checkpoint(str(run / "saved_model" / "variables" / "variables"))
    served = [np.asarray(reader.get_tensor(key)) for key in reader.get_variable_to_shape_map()
              if key != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    for weights in weight_arrays(default):
        assert any(s.shape == weights.shape and np.array_equal(s, weights) for s in served)
    assert not all(any(s.shape == w.shape and np.array_equal(s, w) for s in served) for w in weight_arrays(best))
    assert json.loads((run / "eval_results.json").read_text())["step"] == info.step


def test_predict_refuses_images_of_another_dtype_unless_normalized_per_image(run, tmp_path, capsys):
    assert json.loads((run / "model.json").read_text())["image_dtype"] == "uint8"
    stack = tmp_path / "deep.tif"  # 12-bit data in uint16: /65535 would make it 16x darker than training
    tifffile.imwrite(stack, np.random.default_rng(0).integers(0, 4096, (2, 48, 48), dtype=np.uint16))
    capsys.readouterr()
    assert cli_main(["predict", "--model_dir", str(run), "--input", str(stack)]) == 2
    line = one_error_line(capsys)
    assert "deep.tif" in line and "uint16" in line and "uint8" in line and "per_image" in line
    assert not any((run / "predictions").rglob("*.tif"))
    record = json.loads((run / "model.json").read_text())
    (run / "model.json").write_text(json.dumps({**record, "normalization": "per_image"}))
    assert cli_main(["predict", "--model_dir", str(run), "--input", str(stack)]) == 0
    assert tifffile.imread(run / "predictions" / "001" / "deep-masks.tif").shape == (2, 48, 48)
