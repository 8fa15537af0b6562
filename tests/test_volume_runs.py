"""Medical volumes through the product as a 2D slice network: the --dims registry, slices and windows per
fold, the run's volume record, per-case scores, NIfTI/DICOM prediction inputs and outputs with the input's
geometry, the case leak guard, and (slow) a whole train / evaluate / predict run on the synthetic CT set."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import yaml

from tests.test_volumes import write_oblique_series
from unet_medical.base.errors import UNetError
from unet_medical.data import synthetic_volumes as sv
from unet_medical.data.volume_dims import DIMS, slice_input, slice_mode
from unet_medical.data.volume_slices import ct_window
from unet_medical.data.volume_training import (case_inputs, load_volume_slices, normalization_record,
                                               prediction_cases, split_items, volume_record,
                                               windows_from_record)
from unet_medical.evaluation.volumes import score_volumes

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ct_dir(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("ct")
    sv.write_volume_kind(root, "ct", 3, seed=0)
    return root


# ---- --dims ------------------------------------------------------------------------------------------

def test_dims_registry_knows_3d_and_refuses_unknown_values():
    assert slice_mode("3").volumetric and not slice_mode("2.5").volumetric
    with pytest.raises(UNetError, match="expected one of 2, 2.5, 3"):
        slice_mode("4")
    assert DIMS["2"].channels(1, 5) == 1 and DIMS["2.5"].channels(2, 1) == 6 and DIMS["3"].channels(2, 1) == 2


def test_dims_3_refuses_2d_only_flags_at_the_command_line_before_anything_runs(tmp_path):
    run = subprocess.run([sys.executable, "-m", "unet_medical", "--exec_mode", "train", "--dims", "3",
                          "--padding", "valid", "--data_dir", str(tmp_path), "--model_dir", str(tmp_path / "run")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert run.stderr.strip().splitlines()[-1] == ("error: --padding='valid': expected same for --dims 3 (the 3D "
                                                   "U-Net pads its convolutions)")
    assert not (tmp_path / "run").exists()


def test_slice_input_takes_neighbours_as_channels_and_repeats_the_edges():
    volume = np.arange(2 * 2 * 4 * 2).reshape(2, 2, 4, 2)  # (I, J, K, C)
    middle = slice_input(volume, 1, 1)
    assert middle.shape == (2, 2, 6)
    assert np.array_equal(middle, np.concatenate([volume[:, :, k] for k in (0, 1, 2)], axis=-1))
    first, last = slice_input(volume, 0, 2), slice_input(volume, 3, 1)
    assert np.array_equal(first, np.concatenate([volume[:, :, k] for k in (0, 0, 0, 1, 2)], axis=-1))
    assert np.array_equal(last, np.concatenate([volume[:, :, k] for k in (2, 3, 3)], axis=-1))
    assert np.array_equal(slice_input(volume, 2, 0), volume[:, :, 2])


# ---- slices, folds and the run's record ----------------------------------------------------------------

def test_folds_split_by_case_and_the_ct_window_sees_only_training_cases(ct_dir):
    data = load_volume_slices(ct_dir, num_folds=3, fold=0)
    train_idx, val_idx = split_items(data, 3, 0)
    assert set(data.case_of_slice[train_idx]).isdisjoint(data.case_of_slice[val_idx])
    assert set(data.case_of_slice[val_idx]) == {0} and len(val_idx) == sv.SHAPE[2]
    assert data.windows[0] == pytest.approx(ct_window(data.volumes.cases[1:], 0))
    assert data.windows[0] != pytest.approx(ct_window(data.volumes.cases, 0))
    record = volume_record(data, train_idx, val_idx)
    assert record["train_cases"] == ["case_001", "case_002"] and record["validation_cases"] == ["case_000"]
    assert record["spacing_median_mm"] == pytest.approx(sv.VOXEL_MM) and record["anisotropy"] == pytest.approx(3.125)
    assert windows_from_record(json.loads(json.dumps(record["normalization"]))) == data.windows


def test_prediction_cuts_and_scales_a_volume_exactly_as_training_did(ct_dir):
    data = load_volume_slices(ct_dir, dims="2.5", context_slices=1, num_folds=3, fold=1)
    assert data.images[0].shape == sv.SHAPE[:2] + (3,)
    record = volume_record(data, *split_items(data, 3, 1))
    assert record["dims"] == "2.5" and record["context_slices"] == 1
    case = data.volumes.cases[2]
    inputs = case_inputs(case.image, json.loads(json.dumps(record)))
    for k, item in enumerate(data.slices_of(2)):
        assert np.array_equal(inputs[k], data.images[item])


def test_mr_normalization_is_recorded_per_case():
    record = normalization_record((None,), ("MRI",))
    assert record == [{"channel": "MRI", "rule": "per_case_percentiles", "percentiles": [0.5, 99.5]}]
    assert windows_from_record(record) == (None,)


# ---- scores ------------------------------------------------------------------------------------------

def test_volume_scores_average_cases_per_class_with_2d_style_keys():
    label = np.zeros((10, 10, 6), np.uint8)
    label[2:6, 2:6, 1:4] = 1
    label[7:9, 7:9, 2:4] = 2
    shifted = np.roll(label, 1, axis=2)  # every surface voxel moves one slice: 2.5 mm
    results = score_volumes({"a": label, "b": shifted}, {"a": label, "b": label},
                            {"a": (1.0, 1.0, 2.5), "b": (1.0, 1.0, 2.5)}, ("background", "organ", "lesion"), 2.0)
    assert results["per_case"]["a"]["organ"] == {"dice": 1.0, "hd95_mm": 0.0, "nsd": 1.0}
    assert results["per_case"]["b"]["organ"]["hd95_mm"] == pytest.approx(2.5)
    assert results["organ_dice"] == pytest.approx((1.0 + results["per_case"]["b"]["organ"]["dice"]) / 2)
    assert results["organ_hd95"] == pytest.approx(1.25)
    assert results["mean_dice"] == pytest.approx((results["organ_dice"] + results["lesion_dice"]) / 2)
    assert results["num_cases"] == 2 and results["nsd_tolerance_mm"] == 2.0
    assert {"lesion_hd95", "lesion_nsd", "mean_hd95", "mean_nsd"} <= set(results)


# ---- prediction inputs and outputs ------------------------------------------------------------------

def test_prediction_inputs_from_an_msd_folder_a_file_and_refusals(ct_dir, tmp_path):
    msd = prediction_cases(ct_dir, 1)  # 3 training cases: the test cases are case_003 .. case_006
    assert [name for name, _ in msd] == ["case_003", "case_004", "case_005", "case_006"]
    assert msd[0][1].array.shape == sv.SHAPE + (1,)
    single = prediction_cases(ct_dir / "imagesTs" / "case_004_0000.nii.gz", 1)
    assert single[0][0] == "case_004"
    with pytest.raises(UNetError, match="case_003 has channel files \\[0\\], the model needs \\[0, 1\\]"):
        prediction_cases(ct_dir / "imagesTs", 2)
    with pytest.raises(UNetError, match="no DICOM image files"):
        prediction_cases(tmp_path, 1)


def tiny_run(tmp_path: pathlib.Path, record: dict, in_channels: int = 1):
    from unet_medical.base import runlog
    from unet_medical.base.artifacts import RunRecord
    from unet_medical.cli.config import Config
    from unet_medical.model.unet import UNetSpec, build_unet

    spec = UNetSpec(n_classes=3, in_channels=in_channels, base_filters=4, depth=2, padding="same",
                    batch_norm=False, dropout=0.0)
    info = RunRecord(spec={}, class_names=("background", "organ", "lesion"), step=0, volume=record)
    cfg = Config(exec_mode="predict", model_dir=str(tmp_path / "run"), output_dir=str(tmp_path / "out"),
                 padding="same", depth=2, base_filters=4)
    return cfg, build_unet(spec), spec, info, runlog.Logger([], rank=0)


def test_predicted_nifti_keeps_the_inputs_header_geometry_and_codes(tmp_path):
    from unet_medical.cli.volume_modes import run_volume_prediction

    affine = np.array([[0.0, -0.9, 0.1, 12.0], [0.8, 0.0, 0.0, -30.0], [0.0, 0.1, 2.4, 5.5], [0, 0, 0, 1]])
    image = nib.Nifti1Image(np.random.default_rng(0).normal(size=(20, 18, 5)).astype(np.float32), None)
    image.set_qform(affine, code=1)
    image.set_sform(affine @ np.diag([1.0, 1.0, 1.0, 1.0]) + np.array([[0, 0, 0, 3.0]] + [[0] * 4] * 3), code=2)
    (tmp_path / "in").mkdir()
    nib.save(image, tmp_path / "in" / "scan.nii.gz")
    record = {"dims": "2", "context_slices": 0, "channel_names": ["MRI"],
              "normalization": normalization_record((None,), ("MRI",))}
    cfg, model, spec, info, logger = tiny_run(tmp_path, record)
    written = run_volume_prediction(cfg.replace(input=str(tmp_path / "in")), logger, model, spec, info, record)
    assert written == [tmp_path / "out" / "scan.nii.gz"]
    out, source = nib.load(written[0]), nib.load(tmp_path / "in" / "scan.nii.gz")
    assert out.shape == source.shape and out.get_data_dtype() == np.uint8
    for getter in ("get_qform", "get_sform"):
        (a, code_a), (b, code_b) = getattr(out.header, getter)(coded=True), getattr(source.header, getter)(coded=True)
        assert code_a == code_b and np.allclose(a, b, atol=1e-5)
    assert (out.header.get_qform(coded=True)[1], out.header.get_sform(coded=True)[1]) == (1, 2)
    assert set(np.unique(np.asarray(out.dataobj))) <= {0, 1, 2}


def test_a_dicom_series_is_predicted_into_a_nifti_with_the_series_affine(tmp_path):
    from unet_medical.cli.volume_modes import run_volume_prediction
    from unet_medical.data.volumes import read_dicom_series

    write_oblique_series(tmp_path / "series")
    record = {"dims": "2.5", "context_slices": 1, "channel_names": ["CT"],
              "normalization": normalization_record(((-200.0, 400.0),), ("CT",))}
    cfg, model, spec, info, logger = tiny_run(tmp_path, record, in_channels=3)
    written = run_volume_prediction(cfg.replace(input=str(tmp_path / "series")), logger, model, spec, info, record)
    series = read_dicom_series(tmp_path / "series")
    out = nib.load(written[0])
    assert written[0].name == "series.nii.gz" and out.shape == series.shape == (12, 10, 6)
    assert np.allclose(out.affine, series.affine, atol=1e-4)
    assert not np.allclose(series.affine[:3, :3], np.diag(np.diag(series.affine[:3, :3])))  # oblique


def test_foreground_sampling_survives_slices_without_foreground_at_the_end():
    """The last slices of a volume often hold no foreground: their candidate index is one past the list."""
    from unet_medical.data.pipeline import CropGeometry, Sampling, make_train_dataset

    masks = [np.zeros((16, 16), np.uint8) for _ in range(4)]
    masks[0][4:8, 4:8] = 1
    images = [np.zeros((16, 16, 1), np.float32) for _ in masks]
    batches = make_train_dataset(images, masks, [str(i) for i in range(4)], CropGeometry(16, 16), batch_size=4,
                                 seed=0, start_step=0, max_steps=3, sampling=Sampling(foreground=0.9, classes=(1,)))
    labels = [b[1].numpy() for b in batches]
    assert len(labels) == 3 and all(batch.shape == (4, 16, 16) for batch in labels)


# ---- the leak guard ------------------------------------------------------------------------------------

def test_evaluation_refuses_cases_the_run_trained_on(tmp_path, ct_dir):
    from unet_medical.base.artifacts import RunRecord, save_run_record
    from unet_medical.cli.config import Config
    from unet_medical.cli.volume_modes import check_evaluation_cases

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"data_dir": str(ct_dir), "fold": 0, "num_folds": 3,
                                                     "exec_mode": "train"}))
    save_run_record(run, RunRecord(spec={}, class_names=("background", "organ", "lesion"),
                                   volume={"train_cases": ["case_001", "case_002"]}))
    cfg = Config(exec_mode="evaluate", model_dir=str(run), data_dir=str(ct_dir), fold=1, num_folds=3)
    with pytest.raises(UNetError, match=r"1 of the 1 evaluation cases \(first: case_001\) were training cases"):
        check_evaluation_cases(cfg, run, ["case_001"])
    check_evaluation_cases(cfg, run, ["case_000"])  # the run's own validation case passes
    check_evaluation_cases(cfg.replace(data_dir=str(tmp_path)), run, ["case_001"])  # other data: no overlap


# ---- the whole product ----------------------------------------------------------------------------------

TINY = ["--padding", "same", "--base_filters", "8", "--depth", "3", "--batch_norm", "--dropout", "0",
        "--crop_size", "48", "--batch_size", "4"]


def main_py(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, str(REPO / "main.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_synthetic_ct_trains_evaluates_and_predicts_nifti_with_the_input_geometry(tmp_path):
    data, run = tmp_path / "ct", tmp_path / "run"
    sv.write_volume_kind(data, "ct", seed=0)
    done = main_py("--exec_mode", "train_and_predict", "--data_dir", str(data), "--model_dir", str(run),
                   "--max_steps", "60", *TINY)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((run / "eval_results.json").read_text())
    for key in ("organ_dice", "organ_hd95", "organ_nsd", "lesion_dice", "mean_dice", "mean_hd95", "mean_nsd"):
        assert isinstance(results[key], float), key
    assert results["num_cases"] == 3 and sorted(results["per_case"]) == ["case_000", "case_001", "case_002"]
    assert results["organ_dice"] > 0.3  # 60 steps find the organ; this checks the volume is stacked right
    record = json.loads((run / "model.json").read_text())["volume"]
    assert record["dims"] == "2" and record["validation_cases"] == ["case_000", "case_001", "case_002"]
    # the slices' in-plane flips were tried on the validation cases; eval_results scores the chosen rule
    decision = json.loads((run / "model.json").read_text())["decision"]
    assert set(decision["scores"]) == {"argmax", "argmax_tta"} and decision["threshold"] is None
    assert results["decision"] == decision and results["tta"] is decision["tta"]
    assert results["mean_dice"] == pytest.approx(decision["scores"][decision["chosen"]])
    log = (run / "log.json").read_text()
    assert '"flag": "target_spacing", "value": "none"' in log and '"anisotropy": 3.125' in log
    # The volume rule set the slices' normalization and said why, once; the 2-D recipe records that reason too.
    normalization = [line for line in log.splitlines() if '"RECIPE"' in line and '"flag": "normalization"' in line]
    assert len(normalization) == 1 and "intensity window" in normalization[0]
    recorded = json.loads((run / "dataset_fingerprint.json").read_text())["choices"]
    assert [c["reason"] for c in recorded if c["flag"] == "normalization"] == ["volumes are already scaled by their "
                                                                              "intensity window"]
    for case in ("case_012", "case_013", "case_014", "case_015"):
        source, out = nib.load(data / "imagesTs" / f"{case}_0000.nii.gz"), nib.load(run / "predictions" / "001" / f"{case}.nii.gz")
        assert out.shape == source.shape and np.array_equal(out.affine, source.affine)
        assert out.header.get_sform(coded=True)[1] == source.header.get_sform(coded=True)[1]
    again = main_py("--exec_mode", "evaluate", "--model_dir", str(run))
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((run / "eval_results_last.json").read_text())["organ_dice"] == pytest.approx(results["organ_dice"], abs=1e-6)
    leak = main_py("--exec_mode", "evaluate", "--model_dir", str(run), "--fold", "1")
    assert leak.returncode != 0 and "were training cases of" in leak.stderr
    served = serve_volume(run, data / "imagesTs" / "case_013_0000.nii.gz", tmp_path / "served.nii.gz")
    predicted = np.asarray(nib.load(run / "predictions" / "001" / "case_013.nii.gz").dataobj)
    source = nib.load(data / "imagesTs" / "case_013_0000.nii.gz")
    assert served.shape == predicted.shape and np.array_equal(served.affine, source.affine)
    # the SavedModel computes in float32, predict in this CPU's bfloat16: a few boundary voxels may differ
    assert np.mean(np.asarray(served.dataobj) == predicted) > 0.99


def serve_volume(run: pathlib.Path, scan: pathlib.Path, out: pathlib.Path):
    """docs/volumes.md's five lines: a volume through the run's SavedModel, without the package's CLI."""
    import tensorflow as tf

    from unet_medical.data.volumes import read_volume, write_nifti

    record = json.loads((run / "model.json").read_text())["volume"]  # how the run cut and scaled volumes
    serve = tf.saved_model.load(str(run / "saved_model")).signatures["serving_default"]
    image = read_volume(scan)  # a .nii.gz, or a DICOM series folder
    labels = serve(images=tf.constant(np.stack(case_inputs(image, record))))["labels"].numpy()  # (K, I, J)
    write_nifti(np.moveaxis(labels, 0, -1), image, out)  # (I, J, K) with the input's geometry
    return nib.load(out)


def test_cv_summary_takes_the_volume_scores_and_not_their_bookkeeping():
    from unet_medical.evaluation.cv import metric_names, summarize

    label = np.zeros((8, 8, 4), np.uint8)
    label[2:6, 2:6, 1:3] = 1
    folds = {}
    for k, pred in enumerate((label, np.roll(label, 1, axis=0))):
        results = score_volumes({"a": pred}, {"a": label}, {"a": (1.0, 1.0, 2.0)}, ("background", "organ"), 1.0)
        folds[k] = json.loads(json.dumps({**results, "fold": k, "num_folds": 2, "step": 10, "num_images": 4}))
    names = metric_names(folds)
    assert {"organ_dice", "organ_hd95", "organ_nsd", "mean_dice", "mean_hd95", "mean_nsd"} <= set(names)
    assert not {"num_cases", "nsd_tolerance_mm", "per_case", "fold"} & set(names)
    summary = summarize(folds)
    assert summary["organ_hd95"]["mean"] == pytest.approx((folds[0]["organ_hd95"] + folds[1]["organ_hd95"]) / 2)


def test_a_folder_of_series_folders_is_predicted_case_by_case(tmp_path):
    # Exports come as one folder per series (CASE/, or PATIENT/STUDY/SERIES/); a report beside them and a
    # hidden folder are not cases.
    from unet_medical.cli.volume_modes import run_volume_prediction
    from unet_medical.data.volumes import read_dicom_series

    root = tmp_path / "export"
    write_oblique_series(root / "case01")
    write_oblique_series(root / "P2" / "study" / "CT")
    (root / "P2" / "report.txt").write_text("not DICOM")
    write_oblique_series(root / ".trash" / "old")
    record = {"dims": "2", "context_slices": 0, "channel_names": ["CT"],
              "normalization": normalization_record(((-200.0, 400.0),), ("CT",))}
    cfg, model, spec, info, logger = tiny_run(tmp_path, record)
    written = run_volume_prediction(cfg.replace(input=str(root)), logger, model, spec, info, record)
    assert [p.name for p in written] == ["P2_study_CT.nii.gz", "case01.nii.gz"]
    for path, series in zip(written, ("P2/study/CT", "case01")):
        source = read_dicom_series(root / series)
        assert nib.load(path).shape == source.shape and np.allclose(nib.load(path).affine, source.affine, atol=1e-4)


def test_a_stored_255_reads_back_as_at_most_one_through_the_float32_slope(tmp_path):
    # Found by a CI run: with scl_slope 1/255 (float32 in the header) a certain voxel read back as 1.00000006.
    from unet_medical.cli.volume_modes import PROBABILITY_SLOPE

    path = tmp_path / "p.nii.gz"
    image = nib.Nifti1Image(np.array([[[0, 128, 255]]], np.uint8), np.eye(4))
    image.header.set_slope_inter(PROBABILITY_SLOPE, 0.0)
    nib.save(image, path)
    values = nib.load(path).get_fdata()
    assert values.max() <= 1.0 and values.max() == pytest.approx(1.0, abs=1e-6) and values.min() == 0.0


@pytest.mark.parametrize("target", [None, (1.6, 1.6, 2.5)])
def test_saved_probabilities_sit_on_the_inputs_grid_and_agree_with_the_labels(tmp_path, target):
    # --save_probabilities: probabilities/CASE.nii.gz (I, J, K, classes), uint8 read back as 0..1 through
    # scl_slope; the label map is their argmax (up to the 1/255 rounding), with or without resampling.
    from unet_medical.cli.volume_modes import PROBABILITIES_DIR, run_volume_prediction
    from unet_medical.data.volume_layouts import volume_files

    write_oblique_series(tmp_path / "series")
    record = {"dims": "2", "context_slices": 0, "channel_names": ["CT"],
              "normalization": normalization_record(((-200.0, 400.0),), ("CT",))}
    if target is not None:
        record["target_spacing_mm"] = list(target)
    cfg, model, spec, info, logger = tiny_run(tmp_path, record)
    written = run_volume_prediction(cfg.replace(input=str(tmp_path / "series"), save_probabilities=True), logger,
                                    model, spec, info, record)
    labels_file = nib.load(written[0])
    probabilities_file = nib.load(tmp_path / "out" / PROBABILITIES_DIR / "series.nii.gz")
    assert probabilities_file.shape == labels_file.shape + (3,) and probabilities_file.get_data_dtype() == np.uint8
    np.testing.assert_allclose(probabilities_file.affine, labels_file.affine)
    probabilities, labels = probabilities_file.get_fdata(), np.asarray(labels_file.dataobj)
    assert probabilities.min() >= 0 and probabilities.max() <= 1
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=2 / 255)
    ordered = np.sort(probabilities, axis=-1)
    clear = ordered[..., -1] - ordered[..., -2] > 1.5 / 255  # no tie left by the rounding
    assert clear.mean() > 0.5
    np.testing.assert_array_equal(probabilities.argmax(-1)[clear], labels[clear])
    assert list(volume_files(tmp_path / "out")) == ["series"]  # a scorer of the folder sees the labels only
