"""The adaptive recipe: per-image normalization against a sorted-array reference and its in-graph twin,
the fingerprint's measurements on shapes whose answer is known, and each rule of utils.data.recipe."""
import numpy as np
import pytest
import tensorflow as tf

from scipy import ndimage

from unet_medical.data.fingerprint import intensity_statistics, max_per_label, measure_fingerprint, object_statistics
from unet_medical.data.normalize import CLIP_PERCENTILES, normalize_image, normalize_images_tf
from unet_medical.data.recipe import (THIN_CLASS_WEIGHT, choose_class_weights, choose_crop_size, choose_foreground_sampling,
                               choose_normalization, choose_recipe, parse_class_weights)
from unet_medical.base.artifacts import read_run_config


def reference_percentile(values: np.ndarray, q: float) -> float:
    """Linear interpolation between order statistics, written out (NumPy's default method)."""
    ordered = sorted(float(v) for v in values.ravel())
    position = q / 100 * (len(ordered) - 1)
    below = int(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (position - below) * (ordered[above] - ordered[below])


@pytest.mark.parametrize("dtype, scale", [(np.uint8, 255), (np.uint16, 4000), (np.float32, 1.0)])
def test_per_image_normalization_matches_a_written_out_reference(dtype, scale):
    rng = np.random.default_rng(1)
    image = (rng.gamma(2.0, 0.2, (23, 31, 2)) * scale).clip(0, scale).astype(dtype)
    out = normalize_image(image, "per_image")
    for c in range(2):
        x = image[..., c].astype(np.float64)
        lo, hi = (reference_percentile(x, q) for q in CLIP_PERCENTILES)
        expected = (np.clip(x, lo, hi) - lo) / (hi - lo)
        np.testing.assert_allclose(out[..., c], expected, atol=2e-6)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == pytest.approx(1.0)


def test_per_image_normalization_removes_exposure_and_keeps_a_constant_channel_finite():
    rng = np.random.default_rng(2)
    base = rng.random((40, 40, 1)).astype(np.float32)
    dim, bright = (base * 60).astype(np.uint8), (base * 240).astype(np.uint8)
    np.testing.assert_allclose(normalize_image(dim, "per_image"), normalize_image(bright, "per_image"), atol=0.03)
    flat = np.full((8, 8, 1), 7, np.uint8)
    assert np.array_equal(normalize_image(flat, "per_image"), np.zeros((8, 8, 1), np.float32))


@pytest.mark.parametrize("mode", ["global", "per_image"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_in_graph_twin_equals_numpy(mode, dtype):
    rng = np.random.default_rng(3)
    images = (rng.random((2, 17, 29, 3)) * (255 if dtype == np.uint8 else 900 if dtype == np.uint16 else 1)).astype(dtype)
    graph = normalize_images_tf(tf.constant(images), mode).numpy()
    for k in range(2):
        np.testing.assert_allclose(graph[k], normalize_image(images[k], mode), atol=1e-6)


def test_object_statistics_of_disks_and_lines():
    mask = np.zeros((120, 120), np.uint8)
    yy, xx = np.mgrid[:120, :120]
    mask[(yy - 30) ** 2 + (xx - 30) ** 2 <= 10 ** 2] = 1  # a disk of radius 10: centre 10.05 px from outside
    mask[80:83, 10:110] = 1  # a line 3 px thick, 100 long
    stats = object_statistics([mask], 1)
    assert stats["per_image"]["median"] == 2
    assert sorted([stats["width"]["min"], stats["width"]["max"]]) == pytest.approx([4.0, 2 * 101 ** 0.5], abs=1e-6)
    # Along the line's skeleton (most skeleton pixels) the structure is 3-4 px thick.
    assert 2.0 <= stats["thickness"]["median"] <= 4.0


@pytest.mark.parametrize("seed", range(4))
def test_max_per_label_matches_scipy_ndimage_maximum(seed):
    rng = np.random.default_rng(seed)
    region = ndimage.binary_opening(rng.random((97, 131)) < 0.55)
    labels, n = ndimage.label(region, structure=np.ones((3, 3)))
    values = rng.normal(size=labels.shape) * 5 - 3  # negative maxima too
    assert n > 3
    np.testing.assert_array_equal(max_per_label(values, labels, n), ndimage.maximum(values, labels, np.arange(1, n + 1)))
    # A label past the image's largest gets 0, as ndimage does for an empty label.
    assert max_per_label(values, labels, n + 2)[-2:].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("w", [4, 10, 25])
def test_object_width_at_the_image_border_is_the_visible_width(w):
    # Reference: the analytic width of a w px wide bar, whichever border it touches. Before the border
    # counted as background, the bar at the left edge measured about 2w (the distance to its far side).
    for sides in ("left", "right", "top", "bottom"):
        mask = np.zeros((64, 80), np.uint8)
        bar = {"left": (slice(None), slice(0, w)), "right": (slice(None), slice(80 - w, 80)),
               "top": (slice(0, w), slice(None)), "bottom": (slice(64 - w, 64), slice(None))}[sides]
        mask[bar] = 1
        width = object_statistics([mask], 1)["width"]["max"]
        assert abs(width - w) <= 1.0, (sides, width)


def test_object_covering_the_image_is_no_wider_than_the_image():
    for shape in ((40, 60), (64, 64), (31, 90)):
        stats = object_statistics([np.ones(shape, np.uint8)], 1)
        # The 2 x distance rule adds at most 1 px for an odd side (a 1-px line measures 2).
        assert min(shape) <= stats["width"]["max"] <= min(shape) + 1, shape
        assert stats["thickness"]["max"] <= min(shape) + 1
    # A disk cut in half by the left border: its visible half is a disk radius wide.
    yy, xx = np.mgrid[:100, :100]
    half = ((yy - 50) ** 2 + xx ** 2 <= 30 ** 2).astype(np.uint8)
    assert object_statistics([half], 1)["width"]["max"] == pytest.approx(30.0, abs=1.5)


def test_fingerprint_fractions_sizes_and_polarity():
    masks = [np.zeros((50, 60), np.uint8), np.ones((30, 40), np.uint8)]
    masks[0][:10] = 1
    images = [np.full(m.shape + (1,), 10, np.uint8) for m in masks]
    fp = measure_fingerprint(images, masks, ("background", "foreground"))
    total = 50 * 60 + 30 * 40
    assert fp["class_fraction"]["foreground"] == pytest.approx((10 * 60 + 30 * 40) / total)
    assert fp["smallest_side"] == 30 and fp["height"]["max"] == 50 and fp["channels"] == 1
    rng = np.random.default_rng(0)
    bright_spots = (rng.random((50, 50, 1)) ** 8 * 255).astype(np.uint8)  # mostly dark, few bright
    dark_spots = 255 - bright_spots
    stats = intensity_statistics([bright_spots, dark_spots])[0]
    assert stats["bright_on_dark"] == 1 and stats["dark_on_bright"] == 1


def fingerprint(fractions, thickness=3.0, width=20.0, cv=0.05, polarity=(0, 10), smallest=512, images=10):
    objects = {n: {"width": {"p90": width, "median": width}, "thickness": {"median": thickness}} for n in fractions}
    return {"images": images, "smallest_side": smallest, "class_fraction": dict(fractions),
            "intensity": [{"median_cv": cv, "spread_cv": cv, "bright_on_dark": polarity[0],
                           "dark_on_bright": polarity[1]}],
            "objects": objects}


def test_normalization_rule():
    assert choose_normalization(fingerprint({"a": 0.5, "b": 0.5})).value == "global"
    assert choose_normalization(fingerprint({"a": 0.5, "b": 0.5}, cv=0.3)).value == "per_image"
    mixed = choose_normalization(fingerprint({"a": 0.5, "b": 0.5}, polarity=(3, 7)))
    assert mixed.value == "per_image" and "polarity" in mixed.reason


def test_crop_rule_bounds():
    assert choose_crop_size(fingerprint({"a": 1.0}, width=30), depth=4).value == 256
    assert choose_crop_size(fingerprint({"a": 1.0}, width=190), depth=4).value == 384
    assert choose_crop_size(fingerprint({"a": 1.0}, width=900), depth=4).value == 512
    small = choose_crop_size(fingerprint({"a": 1.0}, width=30, smallest=200), depth=4)
    assert small.value == 192 and "smallest image" in small.reason
    assert choose_crop_size(fingerprint({"a": 1.0}, smallest=100), depth=3).value == 96


def test_sampling_and_weight_rules():
    vessels = fingerprint({"background": 0.9, "vessel": 0.1}, thickness=3.0)
    assert choose_foreground_sampling(vessels).value == pytest.approx(1 / 3, abs=1e-3)
    assert choose_class_weights(vessels).value == f"1,{THIN_CLASS_WEIGHT:g}"
    blobs = fingerprint({"background": 0.9, "nucleus": 0.1}, thickness=20.0)
    assert choose_class_weights(blobs).value == "none"
    common = fingerprint({"membrane": 0.22, "interior": 0.78}, thickness=4.0)  # ISBI-like: thin but not rare
    assert choose_foreground_sampling(common).value == 0.0 and choose_class_weights(common).value == "none"


def test_flags_win_and_valid_padding_keeps_its_crop():
    fp = fingerprint({"background": 0.9, "vessel": 0.1}, cv=0.5)
    given = {"normalization": "global", "crop_size": 128, "foreground_sampling": 0.0, "class_weights": "none",
             "input_scale": 0.5}
    choices = {c.flag: c for c in choose_recipe(fp, given, depth=4)}
    assert {f: c.value for f, c in choices.items()} == {**given, "depth": 4}
    assert all(c.reason.startswith("given on the command line") for c in choices.values())
    assert "crop_size" not in {c.flag for c in choose_recipe(fp, {}, depth=4, crop_is_free=False)}


def test_parse_class_weights():
    assert parse_class_weights("none", 2) is None
    assert parse_class_weights("1,2.5", 2) == [1.0, 2.5]
    for bad in ("1", "1,0", "a,b"):
        with pytest.raises(ValueError):
            parse_class_weights(bad, 2)


@pytest.mark.slow
def test_budgeted_run_records_its_recipe_and_a_resume_keeps_it(tmp_path):
    """Vessel-like data: per-image normalization, foreground sampling and weights are chosen and written to
    dataset_fingerprint.json and config.yaml; --time_budget sets max_steps, which a resume reuses."""
    import json


    import main
    from unet_medical.data.synthetic_kinds import write_folder_kind

    data = tmp_path / "vessels"
    write_folder_kind(data, "vessels", num_images=5)
    run = tmp_path / "run"
    flags = ["--exec_mode", "train_and_evaluate", "--data_dir", str(data), "--model_dir", str(run), "--padding", "same",
             "--base_filters", "4", "--depth", "2", "--batch_size", "1", "--time_budget", "0.02", "--no-augment",
             "--no-saved_model", "--log_every", "5"]
    assert main.main(flags) == 0
    recorded = json.loads((run / "dataset_fingerprint.json").read_text())
    choices = {c["flag"]: c["value"] for c in recorded["choices"]}
    config = read_run_config(run)
    assert choices["normalization"] == config["normalization"] == "per_image"
    assert choices["class_weights"] == config["class_weights"] == "1,1.5"
    assert choices["foreground_sampling"] == pytest.approx(1 / 3, abs=1e-3)
    assert config["max_steps"] == recorded["max_steps"] >= 1
    assert config["evaluate_every"] == max(1, recorded["max_steps"] // 4)
    assert json.loads((run / "eval_results.json").read_text())["step"] == recorded["max_steps"]
    assert json.loads((run / "model.json").read_text())["normalization"] == "per_image"
    # The budget covers the decision too: the fix reserved its flipped pass (8 x the plain one), which the
    # decision then ran, and the run says what training and the decision spent together.
    records = [json.loads(line[5:])["data"] for line in (run / "log.json").read_text().splitlines()
               if line.startswith("DLLL ") and json.loads(line[5:])["step"] == "RECIPE"]
    fixed = next(r for r in records if r.get("flag") == "max_steps")
    assert fixed["after_training_s"] > 0 and "for the decision on validation" in fixed["reason"]
    assert "argmax_tta" in json.loads((run / "model.json").read_text())["decision"]["scores"]
    spent = next(r for r in records if "budget_spent_s" in r)
    assert spent["time_budget_s"] == pytest.approx(0.02 * 60)
    assert spent["budget_spent_s"] >= next(r for r in records if "training_s" in r)["training_s"]
    # A resume measures nothing: the recorded steps stand, so the run is already complete.
    assert main.main(flags + ["--resume_training"]) == 0
    assert json.loads((run / "dataset_fingerprint.json").read_text())["max_steps"] == recorded["max_steps"]
