"""Large objects: the recipe's depth and input-scale rules (data.recipe) against hand-worked values, the
synthetic lesions kind through the loader, resampling (data.resample), predict and the SavedModel at an
input scale, and the scale's record in model.json."""
import json
import math
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from unet_medical.base.artifacts import RunRecord, load_run_record, save_run_record
from unet_medical.base.errors import UNetError
from unet_medical.data import recipe
from unet_medical.data.fingerprint import measure_fingerprint
from unet_medical.data.layouts import load_training_data
from unet_medical.data.normalize import normalize_image
from unet_medical.data.resample import rescale_pairs, resize_image, resize_mask, scaled_shape
from unet_medical.data.synthetic_kinds import write_folder_kind
from unet_medical.export import serving
from unet_medical.inference.tiling import keras_predictor, predict_images
from unet_medical.model.unet import UNetSpec, build_unet, receptive_field

ISBI = pathlib.Path("/work/shared/data/isbi2012")


def fingerprint(width: float, smallest: int) -> dict:
    """The fields the depth, scale and crop rules read: p90 object widths (px) and the smallest image side."""
    return {"objects": {"background": {"width": {"p90": 10.0}}, "lesion": {"width": {"p90": width}}},
            "smallest_side": smallest}


# The other rules read more of the fingerprint; typed values keep them out of these tests.
OTHERS = {"normalization": "global", "foreground_sampling": 0.0, "class_weights": "none"}


def choose(fp: dict, requested: dict | None = None, depth: int | None = None, **kwargs) -> dict:
    """{flag: Choice} of the recipe for `fp`."""
    return {c.flag: c for c in recipe.choose_recipe(fp, {**OTHERS, **(requested or {})}, depth, **kwargs)}


def rules(fp: dict) -> tuple[float, int, int]:
    choices = choose(fp)
    return choices["input_scale"].value, choices["depth"].value, choices["crop_size"].value


def test_receptive_field_is_9_times_2_to_the_depth_minus_4():
    # By hand, depth 1: level 1 convs 1 + 2 + 2 = 5, pool +1 = 6 at stride 2, bottleneck convs +4 +4 = 14.
    assert [receptive_field(d) for d in range(8)] == [5, 14, 32, 68, 140, 284, 572, 1148]
    assert all(receptive_field(d) == 9 * 2 ** d - 4 for d in range(12))


@pytest.mark.parametrize("width,smallest,expected", [
    (30, 512, (1.0, 4, 256)),     # small objects: today's choice
    (140, 512, (1.0, 4, 288)),    # depth 4 sees exactly 140 px; crop 2 x 140 = 280 -> 288 (multiple of 16)
    (141, 512, (1.0, 5, 288)),    # one pixel more needs depth 5 (284 px); crop 282 -> 288 (multiple of 32)
    (250, 256, (1.0, 5, 256)),    # lesions in 256 px images: 284 >= 250, the crop is the image, map 8 px
    (300, 700, (1.0, 6, 512)),    # 284 < 300 <= 572: depth 6, crop 512, map 8 px
    (384, 2000, (1.0, 6, 512)),   # 384 px still fits 3/4 of a 512 crop at full resolution
    (600, 700, (0.5, 6, 320)),    # 600 > 384: at 0.5 objects are 300 px (depth 6) in 350 px images (crop 320)
    (900, 2000, (0.25, 5, 480)),  # 0.5 leaves 450 > 384; at 0.25: 225 px objects, crop 450 -> 480
    (10, 64, (1.0, 4, 64)),       # 64 px images: depth 4 leaves a 4 px map, still the least depth
    (10, 63, (1.0, 3, 56)),       # one px less: 3 poolings, crop 56 (7 px map), not 48 at depth 4 (3 px)
    (10, 36, (1.0, 3, 32)),       # slices of a 36 px MR crop: crop 32, map 4 px
    (10, 31, (1.0, 2, 28)),       # 31 px: depth 2 and crop 28 (map 7 px), not depth 4 and crop 16 (1 px)
    (10, 9, (1.0, 1, 8)),         # a single pooling is the least
])
def test_depth_scale_and_crop_against_hand_worked_values(width, smallest, expected):
    assert rules(fingerprint(width, smallest)) == expected


def test_objects_wider_than_the_crop_need_only_cover_the_crop():
    # 512 px objects in 520 px images would scale (512 > 384); with --input_scale 1 typed, the crop is 512
    # and depth 6 (572 >= 512) covers it; nothing ever asks for more than the crop.
    choices = choose(fingerprint(1000, 520), {"input_scale": 1.0})
    assert choices["input_scale"].reason == "given on the command line"
    assert (choices["depth"].value, choices["crop_size"].value) == (6, 512)
    assert "or the crop" in choices["depth"].reason


def test_the_deepest_map_of_the_chosen_crop_is_at_least_4_px():
    """The property choose_depth's docstring derives (no cap needed): every width and image side."""
    for width in range(1, 2000, 7):
        for smallest in (8, 20, 31, 47, 63, 64, 100, 200, 256, 333, 512, 700, 4000):
            scale, depth, crop = rules(fingerprint(width, smallest))
            assert 1 <= depth <= recipe.MAX_DEPTH and (depth >= recipe.MIN_DEPTH or smallest * scale < 64)
            assert crop % 2 ** depth == 0 and crop <= max(recipe.scaled_side(smallest, scale), 8)
            if depth != recipe.MIN_DEPTH and smallest * scale >= 2 * recipe.DEEPEST_MAP:  # 1 pooling is the least
                assert crop // 2 ** depth >= recipe.DEEPEST_MAP, (width, smallest, depth, crop)


def test_poolings_for_small_sides_against_a_search():
    """poolings_for_side: the largest d <= 4 whose aligned crop keeps a 4 px map, by brute force."""
    for side in range(8, 300):
        best = max(d for d in range(1, recipe.MIN_DEPTH + 1) if (side // 2 ** d * 2 ** d) // 2 ** d >= 4)
        assert recipe.poolings_for_side(side) == best, side
    reason = choose(fingerprint(10, 31))["depth"].reason
    assert "smallest image side is 31 px" in reason and "28 px crop a 7 px deepest map" in reason


def test_typed_flags_win_and_valid_padding_keeps_depth_4():
    fp = fingerprint(600, 700)
    assert choose(fp, {"input_scale": 0.75}, 5)["depth"].value == 5
    valid = choose(fp, crop_is_free=False)
    assert valid["depth"].value == 4 and "crop_size" not in valid and valid["input_scale"].value == 0.5


def test_scaled_sizes_round_half_up():
    assert scaled_shape((256, 320), 0.5) == (128, 160)
    assert scaled_shape((255, 101), 0.5) == (128, 51)  # 127.5 -> 128, 50.5 -> 51
    assert scaled_shape((3, 1), 0.25) == (1, 1)        # never empty
    assert recipe.scaled_side(700, 0.5) == 350


def test_resampling_keeps_constants_probabilities_and_the_mask_boundary():
    constant = np.full((40, 60, 3), 0.3, np.float32)
    np.testing.assert_allclose(resize_image(constant, (20, 30)), 0.3, atol=1e-6)
    probs = np.random.default_rng(0).dirichlet(np.ones(3), size=(10, 14)).astype(np.float32)
    np.testing.assert_allclose(resize_image(probs, (33, 47)).sum(-1), 1.0, atol=1e-5)
    mask = np.zeros((40, 60), np.uint8)
    mask[:, 30:] = 1  # left half 0, right half 1: halved, the boundary falls at column 15
    small = resize_mask(mask, (20, 30), 2)
    assert small.dtype == np.uint8 and (small[:, :15] == 0).all() and (small[:, 15:] == 1).all()
    images, masks = rescale_pairs([constant], [mask], 0.5, 2)
    assert images[0].shape == (20, 30, 3) and masks[0].shape == (20, 30)


def test_lesions_kind_through_the_loader_chooses_a_deeper_network(tmp_path):
    write_folder_kind(tmp_path, "lesions", num_images=8, seed=0)
    data = load_training_data(tmp_path)
    assert data.class_names == ("background", "foreground") and len(data.images) == 8
    assert all(im.shape[-1] == 3 and im.dtype == np.uint8 and min(im.shape[:2]) >= 256 for im in data.images)
    cover = [float((m > 0).mean()) for m in data.masks]
    assert 0.15 <= min(cover) and max(cover) <= 0.95 and max(cover) - min(cover) > 0.2
    assert sum(bool(m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any()) for m in data.masks) >= 4
    fp = measure_fingerprint(data.images, data.masks, data.class_names)
    scale, depth, crop = rules(fp)
    assert fp["objects"]["foreground"]["width"]["p90"] > receptive_field(4)  # what depth 4 cannot see
    assert (scale, depth, crop) == (1.0, 5, 256)


def _small_object_choices(images, masks, class_names):
    fp = measure_fingerprint(images, masks, class_names)
    auto = {c.flag: c.value for c in recipe.choose_recipe(fp, {}, None)}
    typed = {c.flag: c.value for c in recipe.choose_recipe(fp, {}, 4)}  # the CPU recipe before: --depth 4
    return auto, typed


@pytest.mark.parametrize("kind,count", [("nuclei", 6), ("vessels", 3)])
def test_small_object_kinds_keep_depth_4_and_full_resolution(tmp_path, kind, count):
    write_folder_kind(tmp_path, kind, num_images=count, seed=0)
    data = load_training_data(tmp_path)
    auto, typed = _small_object_choices(data.images, data.masks, data.class_names)
    assert auto == typed and auto["depth"] == 4 and auto["input_scale"] == 1.0


@pytest.mark.slow  # the fingerprint of 30 EM slices of 512 x 512
@pytest.mark.skipif(not (ISBI / "train-volume.tif").is_file(), reason="ISBI 2012 not on this machine")
def test_isbi_keeps_depth_4_and_full_resolution():
    data = load_training_data(ISBI)
    auto, typed = _small_object_choices(data.images, data.masks, data.class_names)
    assert auto == typed and auto["depth"] == 4 and auto["input_scale"] == 1.0 and auto["crop_size"] == 256


class _Recorder:
    """A predictor whose class-1 probability is the tile's first channel; it records the tile sizes."""

    def __init__(self):
        self.sizes = []

    def __call__(self, tiles):
        self.sizes.append(tiles.shape[1:3])
        p = np.clip(tiles[..., :1], 0.0, 1.0)
        return np.concatenate([1.0 - p, p], axis=-1).astype(np.float32)


def test_predict_at_a_scale_sees_the_smaller_image_and_returns_the_input_size():
    spec = UNetSpec(padding="same", base_filters=4, depth=2, dropout=0.0)
    image = np.zeros((101, 77, 1), np.float32)
    image[:, 40:] = 1.0
    recorder = _Recorder()
    probs = predict_images(recorder, spec, [image], context=0, input_scale=0.5)[0]
    assert probs.shape == (101, 77, 2)
    # 101 x 77 at 0.5 is 51 x 39 (rounded half up): one tile of 52, the smallest multiple of 4 covering 51.
    assert recorder.sizes == [(52, 52)]
    labels = probs.argmax(-1)
    assert (labels[:, :38] == 0).all() and (labels[:, 42:] == 1).all()  # the edge moves by at most 2 px
    full = predict_images(_Recorder(), spec, [image], context=0)[0]
    assert full.shape == probs.shape


def test_serving_module_at_a_scale_gives_predicts_masks():
    spec = UNetSpec(padding="same", base_filters=4, depth=2, dropout=0.0, n_classes=2, in_channels=3)
    model = build_unet(spec)
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (2, 70, 91, 3), dtype=np.uint8)
    module = serving.UNetServingModule(model, spec, None, np.uint8, max_tile_size=64, input_scale=0.5)
    out = module.serve(tf.constant(images))
    expected = np.stack(predict_images(keras_predictor(model), spec, [normalize_image(im) for im in images],
                                       max_tile_size=64, input_scale=0.5))
    assert out["probabilities"].shape == (2, 70, 91, 2)
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(out["labels"].numpy(), expected.argmax(-1))
    with pytest.raises(UNetError, match="input_scale"):
        serving.UNetServingModule(model, spec, input_scale=1.5)


def test_model_json_records_the_scale_and_older_records_read_as_1(tmp_path):
    record = RunRecord(spec={"depth": 5}, class_names=("background", "lesion"), input_scale=0.5)
    save_run_record(tmp_path, record)
    assert json.loads((tmp_path / "model.json").read_text())["input_scale"] == 0.5
    assert load_run_record(tmp_path).input_scale == 0.5
    (tmp_path / "model.json").write_text(json.dumps({"spec": {}, "class_names": ["a", "b"]}))
    assert load_run_record(tmp_path).input_scale == 1.0


def test_a_different_input_scale_at_predict_is_refused():
    from unet_medical.cli.config import Config
    from unet_medical.cli.recipe import recorded_input_scale

    assert recorded_input_scale(Config(), 0.5) == 0.5
    assert recorded_input_scale(Config(input_scale=0.5), 0.5) == 0.5
    with pytest.raises(UNetError, match=r"^--input_scale=1: .* trained at input scale 0\.5; drop the flag$"):
        recorded_input_scale(Config(input_scale=1.0), 0.5)


@pytest.mark.slow  # a short training run, predict, and the SavedModel
def test_a_run_at_half_scale_records_it_and_predicts_at_the_input_size(tmp_path):
    import main
    from PIL import Image

    data = tmp_path / "lesions"
    write_folder_kind(data, "lesions", num_images=4, seed=1)
    run = tmp_path / "run"
    flags = ["--data_dir", str(data), "--model_dir", str(run), "--padding", "same", "--base_filters", "4",
             "--batch_size", "1", "--max_steps", "2", "--no-augment", "--num_folds", "2", "--input_scale", "0.5"]
    assert main.main(["--exec_mode", "train_and_evaluate", *flags]) == 0
    record = json.loads((run / "model.json").read_text())
    assert record["input_scale"] == 0.5 and record["spec"]["depth"] == 4  # 128 px images: 140 px covers them
    assert main.main(["--exec_mode", "predict", "--model_dir", str(run), "--data_dir", str(data),
                      "--input", str(data / "images" / "00.png")]) == 0
    source = Image.open(data / "images" / "00.png")
    masks = sorted((run / "predictions").rglob("*.png"))
    assert masks and all(Image.open(p).size == source.size for p in masks)
    loaded = tf.saved_model.load(str(run / "saved_model"))
    served = loaded.signatures["serving_default"](images=tf.constant(np.asarray(source)[None]))
    assert served["labels"].shape[1:] == (source.size[1], source.size[0])
    assert math.isclose(record["input_scale"], 0.5)
