"""Resampling volumes to a target spacing and back (data.volume_resample, --target_spacing): the maths against
analytic functions sampled on both grids and physical extents in mm, the auto rule and its RECIPE line, the
loaded data set on the target grid, evaluate/predict mapping probabilities back onto each case's own grid, and
(slow) a tiny train -> evaluate -> predict on a set whose cases differ in spacing."""
from __future__ import annotations

import json
import pathlib
import shutil

import nibabel as nib
import numpy as np
import pytest
from skimage.transform import resize

from tests.test_volume_runs import TINY, main_py
from unet_medical.base.errors import UNetError
from unet_medical.data import synthetic_volumes as sv
from unet_medical.data.config import DataConfig
from unet_medical.data.volume_resample import (SPACING_TOLERANCE, choose_target_spacing, format_spacing,
                                               out_of_plane_axis, parse_target_spacing, probabilities_to_labels,
                                               resample_image, resample_labels, resample_to_shape,
                                               resampled_shape)
from unet_medical.data.volume_training import (case_inputs, load_volume_slices, recorded_target, split_items,
                                               volume_record)
from unet_medical.evaluation.volumes import score_volumes
from tests.recording import RecordingLogger

# ct-kind cases at four in-plane spacings (the kind's own is 0.8 mm); the median is the kind's 0.8 x 0.8 x 2.5
SPACINGS = [(0.8, 0.8, 2.5), (1.2, 1.2, 2.5), (0.8, 0.8, 2.5), (0.64, 0.64, 2.5), (0.96, 0.96, 3.125)]


def centres_mm(shape, spacing):
    """(I, J, K, 3) voxel centres in mm, the grid's outer face at 0 (the grids resampling aligns)."""
    return np.stack(np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)], indexing="ij"), -1)


def smooth(mm):
    """A smooth test function of position in mm (periods of 20-30 mm, as anatomy varies)."""
    return np.sin(2 * np.pi * mm[..., 0] / 20) * np.cos(2 * np.pi * mm[..., 1] / 25) + mm[..., 2] / 30


def box_extent_mm(labels, spacing, value=1):
    """Length in mm along each axis of the voxels equal to `value` (count of occupied indices x spacing)."""
    where = np.argwhere(labels == value)
    return (where.max(0) - where.min(0) + 1) * np.asarray(spacing)


@pytest.fixture(scope="module")
def spacing_dir(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("spacings")
    sv.write_ct_spacings(root, SPACINGS, num_test=1, seed=0)
    return root


# ---- the maths -------------------------------------------------------------------------------------------

def test_resampling_to_the_same_spacing_is_the_identity():
    rng = np.random.default_rng(0)
    image = rng.integers(-1000, 1000, size=(9, 11, 7)).astype(np.int16)
    labels = rng.integers(0, 3, size=(9, 11, 7)).astype(np.uint8)
    assert np.array_equal(resample_image(image, (0.8, 0.8, 2.5), (0.8, 0.8, 2.5)), image.astype(np.float32))
    assert np.array_equal(resample_labels(labels, (0.8, 0.8, 2.5), (0.8, 0.8, 2.5), 3), labels)
    assert resampled_shape((512, 512, 100), (0.8, 0.8, 2.5), (1, 1, 2.5)) == (410, 410, 100)


def test_cubic_resampling_matches_the_function_sampled_on_the_target_grid():
    spacing, target, shape = (1.2, 0.9, 1.5), (1.0, 1.0, 1.0), (40, 50, 30)
    image = smooth(centres_mm(shape, spacing)).astype(np.float32)
    out = resample_image(image, spacing, target)
    assert out.shape == (48, 45, 45) and out.dtype == np.float32
    truth = smooth(centres_mm(out.shape, target))
    inner = (slice(3, -3),) * 3  # the mirrored border is not the function's continuation
    cubic_error = np.abs(out - truth)[inner].max()
    linear_error = np.abs(resample_to_shape(image, out.shape, 1) - truth)[inner].max()
    # the function spans about 2: cubic is within 0.25 % of it, ten times closer than linear
    assert cubic_error < 5e-3 and cubic_error < linear_error / 5, (cubic_error, linear_error)


@pytest.mark.parametrize("order", [0, 1, 3])
def test_resampling_axis_by_axis_equals_one_3d_zoom_of_scipy(order):
    """The separable sparse-matrix route gives scipy.ndimage.zoom's own values on a volume with no smoothness
    to hide behind (white noise), shrinking one axis and growing the others."""
    from scipy import ndimage

    volume = np.random.default_rng(2).normal(size=(23, 17, 11)).astype(np.float32)
    shape = (19, 25, 14)
    reference = ndimage.zoom(volume.astype(np.float64), [n / m for n, m in zip(shape, volume.shape)], order=order,
                             mode="reflect", grid_mode=True)
    assert reference.shape == shape
    np.testing.assert_allclose(resample_to_shape(volume, shape, order), reference, atol=2e-5)


def test_a_smooth_image_survives_the_round_trip_to_the_target_spacing_and_back():
    spacing, target, shape = (0.8, 0.8, 2.5), (1.0, 1.0, 2.5), (60, 60, 12)
    image = smooth(centres_mm(shape, spacing)).astype(np.float32)
    there = resample_image(image, spacing, target)
    back = resample_to_shape(there, shape, 3, out_of_plane_axis(spacing, target))
    assert there.shape == (48, 48, 12) and back.shape == shape
    assert np.abs(back - image)[4:-4, 4:-4].max() < 0.01  # the function spans about 2


def test_the_anisotropic_rule_takes_the_nearest_slice_along_the_thick_axis():
    assert out_of_plane_axis((0.8, 0.8, 2.5), (1.0, 1.0, 2.5)) == 2  # 3.125 > 3: nnU-Net separates it
    assert out_of_plane_axis((1.0, 1.0, 3.0), (1.0, 1.0, 3.0)) is None  # exactly 3 is not beyond it
    assert out_of_plane_axis((1.0, 1.0, 1.0), (1.0, 4.0, 1.0)) == 1  # the target's thick axis when the data is isotropic
    assert out_of_plane_axis((3.0, 3.0, 0.5), (3.0, 3.0, 0.5)) is None  # two coarse axes: no single slice axis
    rng = np.random.default_rng(1)
    image = rng.normal(size=(16, 12, 5)).astype(np.float32)
    thinner = resample_image(image, (1.0, 1.0, 4.0), (1.0, 1.0, 2.0))  # slices duplicated, never blended
    assert thinner.shape == (16, 12, 10)
    for k in range(5):
        assert np.array_equal(thinner[:, :, 2 * k], image[:, :, k]) and np.array_equal(thinner[:, :, 2 * k + 1], image[:, :, k])
    finer = resample_image(image, (0.5, 0.5, 4.0), (1.0, 1.0, 4.0))  # in plane: cubic, slice by slice
    for k in range(5):  # skimage's resize, an independent implementation of the face-aligned grid
        reference = resize(image[:, :, k].astype(np.float64), (8, 6), order=3, mode="symmetric", anti_aliasing=False)
        np.testing.assert_allclose(finer[:, :, k], reference, atol=1e-5)


def test_a_label_box_keeps_its_physical_extent_within_one_voxel():
    spacing, target, shape = (0.8, 0.8, 2.4), (1.1, 0.7, 1.5), (50, 40, 20)
    box, core = np.array([[10, 30], [5, 20], [12, 36]]), np.array([[16, 24], [9.5, 15.5], [19, 29]])  # mm

    def inside(p, bounds, margin=0.0):
        return ((p > bounds[:, 0] + margin) & (p < bounds[:, 1] - margin)).all(-1)

    mm = centres_mm(shape, spacing)
    labels = inside(mm, box).astype(np.uint8)
    labels[inside(mm, core)] = 2
    out = resample_labels(labels, spacing, target, 3)
    actual = np.asarray(shape) * spacing / np.asarray(out.shape)  # the new grid's exact spacing
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 1, 2}
    np.testing.assert_array_less(np.abs(box_extent_mm(out > 0, actual, True) - box_extent_mm(labels > 0, spacing, True)),
                                 actual + 1e-9)
    np.testing.assert_array_less(np.abs(box_extent_mm(out, actual, 2) - box_extent_mm(labels, spacing, 2)), actual + 1e-9)
    # where the boxes are, sampled on the new grid: a voxel centre a voxel or more from every face is right
    new = centres_mm(out.shape, actual)
    margin = max(spacing + actual)
    assert (out[inside(new, core, margin)] == 2).all()
    assert (out[inside(new, box, margin) & ~inside(new, core, -margin)] == 1).all()
    assert (out[~inside(new, box, -margin)] == 0).all()


def test_probabilities_go_back_onto_the_case_grid():
    spacing, target, shape = (0.8, 0.8, 2.5), (1.0, 1.0, 2.0), (50, 45, 16)
    mm = centres_mm(shape, spacing)
    labels = np.zeros(shape, np.uint8)
    labels[(((mm - [20, 18, 20]) / [12, 10, 14]) ** 2).sum(-1) <= 1] = 1
    labels[(((mm - [20, 18, 20]) / [5, 4, 7]) ** 2).sum(-1) <= 1] = 2
    there = resample_labels(labels, spacing, target, 3)
    back = probabilities_to_labels(((there == c).astype(np.float32) for c in range(3)), shape, spacing, target)
    assert back.shape == shape and back.dtype == np.uint8
    scores = score_volumes({"a": back}, {"a": labels}, {"a": spacing}, ("background", "organ", "lesion"), 2.0)
    assert scores["organ_dice"] > 0.97 and scores["lesion_dice"] > 0.9 and scores["mean_hd95"] <= 2.5


# ---- the rule and its flag -------------------------------------------------------------------------------

def test_auto_resamples_to_the_median_only_when_a_case_is_more_than_ten_percent_off():
    close = np.array([(1.0, 1.0, 2.5), (1.05, 1.0, 2.5), (0.95, 1.0, 2.4)])
    target, reason = choose_target_spacing(close, "auto")
    assert target is None and "within 10% of the median 1x1x2.5 mm" in reason and "largest 5.0%" in reason
    far = np.array([(0.8, 0.8, 2.5), (0.8, 0.8, 2.5), (1.0, 1.0, 2.5)])
    target, reason = choose_target_spacing(far, "auto", ["a", "b", "c"])
    assert target == pytest.approx((0.8, 0.8, 2.5))
    assert reason.startswith("--target_spacing auto: c's spacing 1x1x2.5 mm is 25% off the median 0.8x0.8x2.5 mm "
                             "along axis I")
    assert SPACING_TOLERANCE == 0.10
    assert choose_target_spacing(far, "none")[0] is None and choose_target_spacing(far, None)[0] is None
    assert choose_target_spacing(close, "1,1,2")[0] == (1.0, 1.0, 2.0)
    assert choose_target_spacing(close, (0.5, 0.5, 1.0))[0] == (0.5, 0.5, 1.0)
    assert format_spacing((0.8, 0.8, 2.5)) == "0.8,0.8,2.5" and format_spacing(None) == "none"
    assert parse_target_spacing(format_spacing((0.8, 0.8, 2.5))) == (0.8, 0.8, 2.5)


@pytest.mark.parametrize("value", ["1,1", "0,1,1", "a,b,c", "median", "1,1,-2"])
def test_a_bad_target_spacing_is_refused_in_one_line_naming_the_flag(value):
    with pytest.raises(UNetError, match=r"^--target_spacing=.*: expected auto, none, or three positive spacings"):
        DataConfig(target_spacing=value).check()


# ---- the data set on the target grid ---------------------------------------------------------------------

def test_cases_of_different_spacings_load_on_the_median_grid_and_keep_the_originals(spacing_dir):
    data = load_volume_slices(spacing_dir, dims="2", target_spacing="auto", num_folds=2, fold=0)
    assert data.target_spacing == pytest.approx((0.8, 0.8, 2.5)) and "case_001's spacing" in data.spacing_reason
    assert {im.shape for im in data.images} == {(48, 48, 1)}  # the field of view at 0.8 mm, every case
    assert [c.image.shape for c in data.volumes.cases] == [(48, 48, 40), (32, 32, 40), (48, 48, 40), (60, 60, 40)]
    assert data.volumes.cases[1].image.spacing == pytest.approx((1.2, 1.2, 2.5))  # scored as read
    # the 1.2 mm case's organ keeps its volume in mm^3 on the 0.8 mm grid (within its boundary voxels)
    case1 = [data.masks[i] for i in data.slices_of(1)]
    organ_mm3 = lambda labels, spacing: np.count_nonzero(labels > 0) * np.prod(spacing)
    assert organ_mm3(np.stack(case1, -1), (0.8, 0.8, 2.5)) == pytest.approx(
        organ_mm3(data.volumes.cases[1].labels.array, (1.2, 1.2, 2.5)), rel=0.05)
    record = json.loads(json.dumps(volume_record(data, *split_items(data, 2, 0))))
    assert record["target_spacing_mm"] == pytest.approx([0.8, 0.8, 2.5]) and recorded_target(record) == (0.8, 0.8, 2.5)
    assert record["spacing_median_mm"] == pytest.approx([0.8, 0.8, 2.5])  # the fingerprint is of the cases as read
    test_image = nib.load(spacing_dir / "imagesTs" / "case_004_0000.nii.gz")
    from unet_medical.data.volume_training import prediction_cases

    (name, image), = prediction_cases(spacing_dir, 1)
    assert name == "case_004" and image.shape == test_image.shape == (40, 40, 32)
    inputs = case_inputs(image, record)  # predict cuts new volumes on the recorded grid
    assert len(inputs) == 40 and inputs[0].shape == (48, 48, 1)
    same = load_volume_slices(spacing_dir, dims="2", target_spacing="none")
    assert same.target_spacing is None and "own voxel grid" in same.spacing_reason
    assert {im.shape for im in same.images} == {(48, 48, 1), (32, 32, 1), (60, 60, 1)}
    del record["target_spacing_mm"]  # a run recorded before resampling existed: its cases as they come
    assert len(case_inputs(image, record)) == 32


def test_the_synthetic_kinds_keep_one_spacing_so_auto_leaves_them_alone(tmp_path):
    sv.write_volume_kind(tmp_path, "ct", 3, seed=0)
    data = load_volume_slices(tmp_path, dims="2", target_spacing="auto")
    assert data.target_spacing is None and "largest 0.0%" in data.spacing_reason


def test_training_logs_the_target_spacing_as_a_recipe_line_and_records_it_in_the_config(spacing_dir):
    from unet_medical.cli.config import Config
    from unet_medical.cli.volume_modes import prepare_training

    data = load_volume_slices(spacing_dir, dims="2", target_spacing="auto")
    logger = RecordingLogger()
    cfg = prepare_training(Config(data_dir=str(spacing_dir)), data, logger)
    recipe = [d for k, d in logger.records if k == "RECIPE" and d["flag"] == "target_spacing"]
    assert recipe == [{"flag": "target_spacing", "value": "0.8,0.8,2.5", "reason": data.spacing_reason}]
    assert cfg.target_spacing == "0.8,0.8,2.5"  # config.yaml: a resume resamples to the same grid
    logger = RecordingLogger()
    cfg = prepare_training(Config(), load_volume_slices(spacing_dir, dims="2", target_spacing="none"), logger)
    assert cfg.target_spacing == "none"
    assert [d["value"] for k, d in logger.records if k == "RECIPE" and d["flag"] == "target_spacing"] == ["none"]


@pytest.mark.parametrize("dims", ["2", "3"])
def test_evaluate_and_predict_put_the_probabilities_back_onto_the_case_grid(spacing_dir, dims):
    """A predictor that returns its input (one-hot labels on the target grid) stands for a perfect network: the
    label map predict_label_map returns is then the labels' round trip, on the case's own grid."""
    from unet_medical.cli.config import Config
    from unet_medical.cli.volume_modes import predict_label_map
    from unet_medical.model.unet import UNetSpec

    data = load_volume_slices(spacing_dir, dims="2", target_spacing="auto")
    case = data.volumes.cases[3]  # 0.64 mm, resampled to 0.8 mm
    labels = np.stack([data.masks[i] for i in data.slices_of(3)], axis=-1)
    one_hot = np.eye(3, dtype=np.float32)[labels]  # (I', J', K', 3) on the target grid
    spec = UNetSpec(n_classes=3, in_channels=3, padding="same", depth=2, dims=int(dims))
    inputs = [one_hot] if dims == "3" else [one_hot[:, :, k] for k in range(one_hot.shape[2])]
    cfg = Config(patch_size="16,16,16" if dims == "3" else None)
    predicted = predict_label_map(cfg, lambda batch: np.asarray(batch, np.float32), None, spec, inputs, None,
                                  "test", case.image, data.target_spacing)
    assert predicted.shape == case.image.shape == (60, 60, 40)
    scores = score_volumes({"c": predicted}, {"c": case.labels.array}, {"c": case.image.spacing},
                           data.class_names, 2.0)
    assert scores["organ_dice"] > 0.97 and scores["lesion_dice"] > 0.93 and scores["mean_nsd"] > 0.99


# ---- end to end --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_run_on_cases_of_different_spacings_scores_and_predicts_on_each_case_grid(spacing_dir, tmp_path):
    run = tmp_path / "run"
    done = main_py("--exec_mode", "train_and_predict", "--data_dir", str(spacing_dir), "--model_dir", str(run),
                   "--max_steps", "30", "--num_folds", "2", "--dims", "2", *TINY)
    assert done.returncode == 0, done.stderr[-2000:]
    log = [json.loads(line[5:]) for line in (run / "log.json").read_text().splitlines() if line.startswith("DLLL ")]
    recipe = [r["data"] for r in log if r["step"] == "RECIPE" and r["data"]["flag"] == "target_spacing"]
    assert recipe and recipe[0]["value"] == "0.8,0.8,2.5" and "case_001's spacing" in recipe[0]["reason"]
    assert json.loads((run / "model.json").read_text())["volume"]["target_spacing_mm"] == [0.8, 0.8, 2.5]
    # predict writes the test case (0.96 x 0.96 x 3.125 mm) on its own grid, with its geometry
    source = nib.load(spacing_dir / "imagesTs" / "case_004_0000.nii.gz")
    out = nib.load(run / "predictions" / "001" / "case_004.nii.gz")
    assert out.shape == source.shape == (40, 40, 32) and np.array_equal(out.affine, source.affine)
    assert out.header.get_sform(coded=True)[1] == source.header.get_sform(coded=True)[1]
    assert out.header.get_qform(coded=True)[1] == source.header.get_qform(coded=True)[1]
    # evaluation scored the validation cases on their own grids against the labels as read: predicting those
    # images and scoring them independently gives the same numbers
    results = json.loads((run / "eval_results.json").read_text())
    validation = json.loads((run / "model.json").read_text())["volume"]["validation_cases"]
    inputs = tmp_path / "validation"
    inputs.mkdir()
    for name in validation:
        shutil.copy(spacing_dir / "imagesTr" / f"{name}_0000.nii.gz", inputs)
    again = main_py("--exec_mode", "predict", "--model_dir", str(run), "--input", str(inputs),
                    "--output_dir", str(tmp_path / "pred"))
    assert again.returncode == 0, again.stderr[-2000:]
    predictions, labels, spacings = {}, {}, {}
    for name in validation:
        truth = nib.load(spacing_dir / "labelsTr" / f"{name}.nii.gz")
        predicted = nib.load(tmp_path / "pred" / f"{name}.nii.gz")
        assert predicted.shape == truth.shape
        predictions[name], labels[name] = np.asarray(predicted.dataobj), np.asarray(truth.dataobj).astype(np.uint8)
        spacings[name] = tuple(float(z) for z in truth.header.get_zooms()[:3])
    scores = score_volumes(predictions, labels, spacings, ("background", "organ", "lesion"), 2.0)
    for key in ("organ_dice", "lesion_dice", "mean_hd95"):
        assert results[key] == pytest.approx(scores[key], abs=1e-6), key
    evaluated = main_py("--exec_mode", "evaluate", "--model_dir", str(run))
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert json.loads((run / "eval_results_last.json").read_text())["organ_dice"] == pytest.approx(results["organ_dice"], abs=1e-6)


@pytest.mark.slow
def test_a_3d_run_resamples_resumes_on_the_same_grid_predicts_and_serves_on_the_input_grid(spacing_dir, tmp_path):
    run = tmp_path / "run"
    common = ["--data_dir", str(spacing_dir), "--model_dir", str(run), "--dims", "3", "--base_filters", "4",
              "--depth", "2", "--batch_size", "2", "--patch_size", "32,32,16", "--num_folds", "2",
              "--checkpoint_every", "2", "--no-saved_model"]
    first = main_py("--exec_mode", "train", "--max_steps", "2", *common)
    assert first.returncode == 0, first.stderr[-2000:]
    resumed = main_py("--exec_mode", "train_and_predict", "--max_steps", "4", "--resume_training", *common)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    config = (run / "config.yaml").read_text()
    assert "target_spacing: 0.8,0.8,2.5" in config
    log = [json.loads(line[5:]) for line in (run / "log.json").read_text().splitlines() if line.startswith("DLLL ")]
    values = [r["data"]["value"] for r in log if r["step"] == "RECIPE" and r["data"]["flag"] == "target_spacing"]
    assert values == ["0.8,0.8,2.5", "0.8,0.8,2.5"]  # the resume resampled to the grid the run started on
    results = json.loads((run / "eval_results.json").read_text())
    assert results["dims"] == "3" and sorted(results["per_case"]) == ["case_000", "case_001"]
    source = nib.load(spacing_dir / "imagesTs" / "case_004_0000.nii.gz")
    out = nib.load(run / "predictions" / "001" / "case_004.nii.gz")
    assert out.shape == source.shape and np.array_equal(out.affine, source.affine)
    # The exported SavedModel resamples in its graph: on the raw test volume and its spacing it gives predict's
    # labels on the input's grid (export also checked it on a held-out case against Keras, put back the same way).
    export = main_py("--exec_mode", "export", "--model_dir", str(run), "--export_format", "savedmodel")
    assert export.returncode == 0, export.stderr[-2000:]
    entry = json.loads((run / "export" / "export.json").read_text())["artifacts"]["savedmodel"]
    assert entry["parity"]["serving"]["label_agreement"] >= 0.995
    import tensorflow as tf

    loaded = tf.saved_model.load(str(run / "export" / "savedmodel"))
    assert loaded.target_spacing_mm.numpy().tolist() == [0.8, 0.8, 2.5]
    raw = np.asanyarray(source.dataobj)
    spacing = np.linalg.norm(source.affine[:3, :3], axis=0)  # docs/volumes.md's way; the case is off the target
    assert tuple(np.round(spacing, 4)) != (0.8, 0.8, 2.5)
    served = loaded.signatures[f"serving_{raw.dtype}"](volumes=tf.constant(raw[None, ..., None]),
                                                       spacing=tf.constant(spacing))["labels"].numpy()[0]
    assert served.shape == source.shape
    # predict ran in bfloat16 where the CPU has it (the SavedModel is float32), after 4 steps: near-ties flip
    assert np.mean(served == np.asarray(out.dataobj)) > 0.99
