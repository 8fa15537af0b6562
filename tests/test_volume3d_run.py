"""--dims 3 through the product: whole-volume items split by case, the patch recipe, the run's record, flag
refusals, prediction of a NIfTI with its input's geometry by sliding windows, and (slow) a whole
train / evaluate / predict run and an exact resume on the synthetic CT set."""
from __future__ import annotations

import json
import pathlib

import nibabel as nib
import numpy as np
import pytest

import main
from unet_medical.base.errors import UNetError
from unet_medical.data import synthetic_volumes as sv
from unet_medical.data.volume_training import case_inputs, load_volume_slices, split_items, volume_record


@pytest.fixture(scope="module")
def ct_dir(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("ct3d")
    sv.write_volume_kind(root, "ct", 3, seed=0)
    return root


def test_items_are_whole_cases_and_prediction_scales_them_as_training_did(ct_dir):
    data = load_volume_slices(ct_dir, dims="3", num_folds=3, fold=2)
    assert len(data.images) == 3 and data.images[0].shape == sv.SHAPE + (1,) and data.masks[0].shape == sv.SHAPE
    train_idx, val_idx = split_items(data, 3, 2)
    assert list(val_idx) == [2] and list(train_idx) == [0, 1]
    record = json.loads(json.dumps(volume_record(data, train_idx, val_idx, (32, 32, 16))))
    assert record["dims"] == "3" and record["patch_size"] == [32, 32, 16] and record["validation_cases"] == ["case_002"]
    inputs = case_inputs(data.volumes.cases[2].image, record)
    assert len(inputs) == 1 and np.array_equal(inputs[0], data.images[2])


def test_dims_auto_chooses_3d_for_near_isotropic_voxels_and_says_why(ct_dir, tmp_path):
    from unet_medical.cli.config import parse_config
    from unet_medical.data.volume_dims import choose_dims

    assert choose_dims(1.25)[0] == "3" and choose_dims(3.0)[0] == "3" and choose_dims(3.2)[0] == "2"
    data = load_volume_slices(ct_dir, dims="auto", num_folds=3)  # 0.8 x 0.8 x 2.5 mm: anisotropy 3.125
    assert data.dims == "2" and data.dims_reason.startswith("median spacing anisotropy 3.12 > 3")
    assert parse_config(["--dims", "auto", "--model_dir", str(tmp_path / "r")]).padding == "same"


def test_the_patch_recipe_follows_the_median_case_and_flags_win():
    from unet_medical.cli.config import Config
    from unet_medical.cli.recipe import volume_choices

    choices = {c.flag: c for c in volume_choices(Config(dims="3", padding="same"), [48, 48, 40], None)}
    assert choices["depth"].value == 3 and choices["patch_size"].value == "48,48,40"
    assert "median case shape 48x48x40" in choices["patch_size"].reason
    assert choices["foreground_sampling"].value == pytest.approx(1 / 3, abs=1e-3)
    given = volume_choices(Config(dims="3", padding="same", patch_size="32,32,16", foreground_sampling=0.5), [48, 48, 40], 2)
    assert {c.flag for c in given} == {"class_weights", "input_scale"}
    with pytest.raises(UNetError, match=r"^--patch_size=32,32,12: every side must be a multiple of 2\*\*depth = 8"):
        volume_choices(Config(dims="3", padding="same", patch_size="32,32,12"), [48, 48, 40], 3)


@pytest.mark.parametrize("flags, message", [
    (["--crop_size", "64"], "--crop_size=64: expected no --crop_size with --dims 3 (give --patch_size)"),
    (["--patch_size", "8,8"], "--patch_size=8,8: expected one positive integer (a cube) or three, e.g. 48,48,32"),
    (["--normalization", "per_image"], "--normalization='per_image': expected auto or global with --dims 3"),
    (["--exec_mode", "benchmark", "--bench_input", "real"], "--bench_input='real': expected synthetic for --dims 3 "
                                                             "benchmarks (patches of --patch_size"),
    (["--exec_mode", "benchmark", "--model_path", "m.onnx"], "--model_path='m.onnx': expected no exported model in "
                                                             "--dims 3 benchmarks"),
])
def test_2d_only_and_malformed_flags_are_refused_in_one_line(tmp_path, flags, message):
    from unet_medical.cli.config import parse_config

    with pytest.raises(UNetError) as caught:
        parse_config(["--exec_mode", "train", "--dims", "3", "--model_dir", str(tmp_path / "run"), *flags])  # last flag wins
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
    assert parse_config(["--dims", "3", "--model_dir", str(tmp_path / "r")]).padding == "same"  # the 3D default


def test_exported_models_predict_3d_volumes_but_tf_trt_and_benchmarks_are_refused():
    from unet_medical.cli.config import Config, check_volumetric

    check_volumetric(Config(dims="3", padding="same", exec_mode="predict", model_path="export/openvino_fp32"))
    with pytest.raises(UNetError, match=r"^--use_trt=True: expected no TF-TRT for --dims 3 networks"):
        check_volumetric(Config(dims="3", padding="same", exec_mode="predict", use_trt=True))


def test_dims_3_on_2d_images_is_refused_naming_the_folder(tmp_path):
    from unet_medical.cli.assemble import load_training_set
    from unet_medical.cli.config import Config
    from unet_medical.data import synthetic

    synthetic.write_isbi_layout(tmp_path, num_slices=2, size=32, seed=0)
    with pytest.raises(UNetError, match=f"^--dims 3: {tmp_path} holds 2D images, not volumes"):
        load_training_set(Config(dims="3", padding="same", data_dir=str(tmp_path)))


def test_a_3d_model_predicts_a_nifti_with_the_inputs_geometry(tmp_path):
    from unet_medical.base import runlog
    from unet_medical.base.artifacts import RunRecord
    from unet_medical.cli.config import Config
    from unet_medical.cli.volume_modes import run_volume_prediction
    from unet_medical.data.volume_training import normalization_record
    from unet_medical.model.unet import UNetSpec, build_unet

    affine = np.array([[0.0, -0.9, 0.1, 12.0], [0.8, 0.0, 0.0, -30.0], [0.0, 0.1, 2.4, 5.5], [0, 0, 0, 1]])
    image = nib.Nifti1Image(np.random.default_rng(0).normal(size=(20, 13, 6)).astype(np.float32), affine)
    (tmp_path / "in").mkdir()
    nib.save(image, tmp_path / "in" / "scan.nii.gz")
    record = {"dims": "3", "context_slices": 0, "channel_names": ["MRI"], "patch_size": [16, 16, 8],
              "normalization": normalization_record((None,), ("MRI",))}
    spec = UNetSpec(n_classes=3, base_filters=4, depth=2, padding="same", dropout=0.0, dims=3)
    info = RunRecord(spec={}, class_names=("background", "organ", "lesion"), step=0, volume=record)
    cfg = Config(exec_mode="predict", model_dir=str(tmp_path / "run"), output_dir=str(tmp_path / "out"),
                 input=str(tmp_path / "in"), dims="3", padding="same", depth=2, base_filters=4)
    written = run_volume_prediction(cfg, runlog.Logger([], rank=0), build_unet(spec), spec, info, record)
    out = nib.load(written[0])
    assert written == [tmp_path / "out" / "scan.nii.gz"] and out.shape == (20, 13, 6)
    assert np.allclose(out.affine, affine, atol=1e-5) and out.get_data_dtype() == np.uint8
    with pytest.raises(UNetError, match="trained on 16,16,8 patches"):
        run_volume_prediction(cfg.replace(patch_size="32", output_dir=str(tmp_path / "o2")),
                              runlog.Logger([], rank=0), build_unet(spec), spec, info, record)


TINY_3D = ["--dims", "3", "--base_filters", "4", "--depth", "2", "--batch_norm", "--batch_size", "2",
           "--patch_size", "32,32,16", "--num_folds", "3", "--learning_rate", "3e-3", "--no-saved_model"]


@pytest.mark.slow
def test_synthetic_ct_trains_evaluates_and_predicts_in_3d(tmp_path):
    data, run = tmp_path / "ct", tmp_path / "run"
    sv.write_volume_kind(data, "ct", 3, seed=0)
    assert main.main(["--exec_mode", "train_and_predict", "--data_dir", str(data), "--model_dir", str(run),
                      "--max_steps", "40", "--dropout", "0", "--log_every", "20", *TINY_3D]) == 0
    results = json.loads((run / "eval_results.json").read_text())
    assert results["dims"] == "3" and sorted(results["per_case"]) == ["case_000"]
    for key in ("organ_dice", "organ_hd95", "organ_nsd", "lesion_dice", "mean_dice", "mean_hd95", "mean_nsd"):
        assert isinstance(results[key], float), key
    assert results["organ_dice"] > 0.5  # measured 0.82 after 40 steps: the patches and windows line up
    model = json.loads((run / "model.json").read_text())
    assert model["spec"]["dims"] == 3 and model["volume"]["patch_size"] == [32, 32, 16]
    log = (run / "log.json").read_text()
    assert '"flag": "foreground_sampling"' in log and '"patch_size": "32,32,16"' in log
    records = [json.loads(line[5:]) for line in log.splitlines()]
    for step in ("TRAINING", "PREDICT"):  # a 3-D run states its peak memory
        (record,) = [r["data"] for r in records if r["step"] == step]
        assert record["peak_memory_mb"] > 100
    for case in ("case_003", "case_006"):
        source = nib.load(data / "imagesTs" / f"{case}_0000.nii.gz")
        out = nib.load(run / "predictions" / "001" / f"{case}.nii.gz")
        assert out.shape == source.shape and np.array_equal(out.affine, source.affine)
    assert main.main(["--exec_mode", "evaluate", "--model_dir", str(run)]) == 0
    again = json.loads((run / "eval_results_last.json").read_text())
    assert again["organ_dice"] == pytest.approx(results["organ_dice"], abs=1e-6)


@pytest.mark.slow
def test_a_resumed_3d_run_reaches_the_weights_of_an_uninterrupted_one(tmp_path, ct_dir):
    common = ["--exec_mode", "train", "--data_dir", str(ct_dir), "--dropout", "0.3", "--checkpoint_every", "2",
              *TINY_3D]
    assert main.main([*common, "--model_dir", str(tmp_path / "a"), "--max_steps", "4"]) == 0
    assert main.main([*common, "--model_dir", str(tmp_path / "b"), "--max_steps", "2"]) == 0
    assert main.main([*common, "--model_dir", str(tmp_path / "b"), "--max_steps", "4", "--resume_training"]) == 0
    a, b = (np.load(tmp_path / run / "checkpoints" / "last.npz") for run in ("a", "b"))
    numeric = [k for k in a.files if a[k].dtype != object]
    assert numeric and all(np.array_equal(a[k], b[k]) for k in numeric)
