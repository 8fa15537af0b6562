"""The default --dims for volumes (volume_dims.DEFAULT_DIMS = auto): 3D for near-isotropic sets whose median
case fits a useful patch under a 3D-capable configuration, 2D otherwise, each with a RECIPE line naming the
measured anisotropy and the reason; and (slow) a default-dims run whose recorded dims evaluate, predict and
a resume inherit."""
from __future__ import annotations

import json
import pathlib

import pytest

import main
from unet_medical.base import runlog
from unet_medical.cli.config import Config, parse_config, volumetric_conflict
from unet_medical.cli.volume_modes import prepare_training
from unet_medical.data import synthetic_volumes as sv
from unet_medical.data.volume_dims import AUTO, DEFAULT_DIMS, MIN_3D_SIDE, choose_dims
from unet_medical.data.volume_training import load_volume_slices
from unet_medical.data.volumes import read_volume
from tests.recording import RecordingLogger


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("mr_small")
    sv.write_volume_kind(root, "mr_small", 3, seed=0)
    return root


def test_the_default_is_auto_and_one_rule_decides():
    assert DEFAULT_DIMS == AUTO and Config().dims == AUTO
    assert parse_config(["--model_dir", "/tmp/unused-dims-default"]).dims == AUTO
    dims, reason = choose_dims(1.0, 36)
    assert dims == "3" and reason.startswith("median spacing anisotropy 1 <= 3")
    dims, reason = choose_dims(3.125, 40)
    assert dims == "2" and reason.startswith("median spacing anisotropy 3.12 > 3")
    dims, reason = choose_dims(1.0, MIN_3D_SIDE - 1)
    assert dims == "2" and f"shortest side is {MIN_3D_SIDE - 1} voxels" in reason
    dims, reason = choose_dims(1.2, 36, "--padding='valid': expected same")
    assert dims == "2" and "anisotropy 1.2" in reason and "ruled out: --padding='valid'" in reason


def test_flags_a_3d_run_would_refuse_keep_auto_on_2d_slices():
    assert volumetric_conflict(Config(padding="same")) == ""
    assert "--padding='valid'" in volumetric_conflict(Config())  # the paper's default padding
    assert "--augment_params" in volumetric_conflict(Config(padding="same", augment_params="flip_h_prob=0.5"))


def test_isotropic_volumes_get_3d_with_a_recipe_line_naming_the_anisotropy(small_dir):
    data = load_volume_slices(small_dir, dims=DEFAULT_DIMS, num_folds=3)
    first = read_volume(small_dir / "labelsTr" / "case_000.nii.gz")
    assert data.dims == "3" and len(data.images) == 3 and data.images[0].shape == first.shape + (1,)
    logger = RecordingLogger()
    prepare_training(Config(padding="same"), data, logger)
    line = next(d for step, d in logger.records if step == "RECIPE" and d["flag"] == "dims")
    assert line["value"] == "3" and line["reason"].startswith("--dims auto: median spacing anisotropy 1 <= 3")
    valid = load_volume_slices(small_dir, dims=DEFAULT_DIMS, num_folds=3, no_3d=volumetric_conflict(Config()))
    assert valid.dims == "2" and "--padding='valid'" in valid.dims_reason


@pytest.mark.slow
def test_a_default_dims_run_records_3d_and_later_modes_inherit_it(small_dir, tmp_path):
    run = tmp_path / "run"
    common = ["--data_dir", str(small_dir), "--model_dir", str(run), "--padding", "same", "--base_filters", "4",
              "--batch_size", "2", "--num_folds", "3", "--dropout", "0", "--no-saved_model", "--checkpoint_every", "2"]
    assert main.main(["--exec_mode", "train", *common, "--max_steps", "2"]) == 0
    assert json.loads((run / "model.json").read_text())["volume"]["dims"] == "3"
    assert "dims: '3'" in (run / "config.yaml").read_text() or "dims: \"3\"" in (run / "config.yaml").read_text()
    reasons = [r["data"]["reason"] for r in runlog.read_log(run / "log.json")
               if r["step"] == "RECIPE" and r["data"].get("flag") == "dims"]
    assert reasons and "anisotropy 1 <= 3" in reasons[0]
    assert main.main(["--exec_mode", "train", *common, "--max_steps", "4", "--resume_training"]) == 0
    assert main.main(["--exec_mode", "evaluate", "--model_dir", str(run)]) == 0
    assert main.main(["--exec_mode", "predict", "--model_dir", str(run), "--data_dir", str(small_dir)]) == 0
    params = [r["data"] for r in runlog.read_log(run / "log.json") if r["step"] == "PARAMETER" and "dims" in r["data"]]
    assert params[0]["dims"] == "auto"  # the first training run's flags, before the data decided
    resumed = [p for p in params if p.get("resume_training")]
    recorded = [p for p in params if "dims_reason" in p]  # evaluate and predict: the run's record
    assert resumed and resumed[0]["dims"] == "3" and len(recorded) == 2 and all(p["dims"] == "3" for p in recorded)
    assert json.loads((run / "eval_results_last.json").read_text())["dims"] == "3"
    assert len(list((run / "predictions").rglob("*.nii.gz"))) == sv.NUM_TEST
