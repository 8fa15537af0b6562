"""utils.data.augment: exactness of flips/rot90, geometry against NumPy/scikit-image, label safety,
seeding, graph mode inside tf.data with unknown shapes, config validation and the preview CLI."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from skimage.transform import resize as sk_resize

from unet_medical.data.augment import AugmentConfig, build_augment_fn
from unet_medical.base.errors import UNetError
from unet_medical.data.warp import affine_flow, dense_image_warp
from unet_medical.cli import augment_tool
from unet_medical.data import augment

SEEDS = [tf.constant([0, s], tf.int64) for s in range(24)]


def sample(shape_hw=(24, 24), channels=1, classes=2, seed=0):
    """A smooth image in [0, 1] and a class map made from it (so image and mask are aligned)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:shape_hw[0], :shape_hw[1]]
    base = 0.5 + 0.5 * np.sin(rows / 2.3 + rng.uniform(0, 6)) * np.cos(cols / 3.1 + rng.uniform(0, 6))
    image = np.repeat(base[..., None], channels, axis=-1).astype(np.float32)
    mask = np.minimum((base * classes).astype(np.int32), classes - 1)
    return image, mask


def run(fn, image, mask, seed):
    out_image, out_mask = fn(tf.constant(image), tf.constant(mask), seed)
    return out_image.numpy(), out_mask.numpy()


# ------------------------------------------------------------------ exact transforms

@pytest.mark.parametrize("h,v,expected", [(1.0, 0.0, lambda x: np.flip(x, 1)),
                                          (0.0, 1.0, lambda x: np.flip(x, 0)),
                                          (1.0, 1.0, lambda x: np.flip(np.flip(x, 0), 1)),
                                          (0.0, 0.0, lambda x: x)])
def test_flip_is_exact(h, v, expected):
    image, mask = sample((6, 9), channels=2, classes=3)
    out_image, out_mask = run(lambda i, m, s: augment.random_flip(i, m, s, h, v), image, mask, SEEDS[0])
    np.testing.assert_array_equal(out_image, expected(image))
    np.testing.assert_array_equal(out_mask, expected(mask))


def test_flip_at_half_probability_reaches_all_four_outcomes():
    image, mask = sample((5, 7))
    candidates = {"none": lambda x: x, "h": lambda x: np.flip(x, 1), "v": lambda x: np.flip(x, 0),
                  "hv": lambda x: np.flip(np.flip(x, 0), 1)}
    seen = set()
    for seed in SEEDS:
        out_image, out_mask = run(augment.random_flip, image, mask, seed)
        name = next(k for k, f in candidates.items() if np.array_equal(out_image, f(image)))
        np.testing.assert_array_equal(out_mask, candidates[name](mask))
        seen.add(name)
    assert seen == set(candidates)


def test_rot90_is_exact_and_reaches_every_quarter_turn():
    image, mask = sample((8, 8), channels=2, classes=3)
    seen = set()
    for seed in SEEDS:
        out_image, out_mask = run(lambda i, m, s: augment.random_rot90(i, m, s, prob=1.0), image, mask, seed)
        k = next(k for k in (1, 2, 3) if np.array_equal(out_image, np.rot90(image, k)))
        np.testing.assert_array_equal(out_mask, np.rot90(mask, k))
        seen.add(k)
    assert seen == {1, 2, 3}


def test_rot90_keeps_size_of_non_square_images():
    image, mask = sample((6, 10))
    for seed in SEEDS[:8]:
        out_image, out_mask = run(lambda i, m, s: augment.random_rot90(i, m, s, prob=1.0), image, mask, seed)
        np.testing.assert_array_equal(out_image, np.rot90(image, 2))
        np.testing.assert_array_equal(out_mask, np.rot90(mask, 2))


# ------------------------------------------------------------------ warps

@pytest.mark.parametrize("size", [9, 10])
def test_rotation_matrix_quarter_turn_equals_np_rot90(size):
    image, _ = sample((size, size))
    flow = affine_flow((size, size), augment.rotation_matrix((size, size), np.pi / 2))
    np.testing.assert_allclose(dense_image_warp(image, flow).numpy(), np.rot90(image), atol=1e-4)


def test_rotation_by_zero_degrees_is_identity():
    image, mask = sample((12, 17), classes=3)
    out_image, out_mask = run(lambda i, m, s: augment.random_rotate(i, m, s, prob=1.0, max_deg=0.0),
                              image, mask, SEEDS[3])
    np.testing.assert_allclose(out_image, image, atol=1e-5)
    np.testing.assert_array_equal(out_mask, mask)


def test_crop_resize_matrix_matches_skimage_resize_of_the_window():
    # Zoom x2 on the top-left quadrant: window rows/cols 0..7 of a 16 x 16 image.
    image = np.random.default_rng(2).random((16, 16, 1)).astype(np.float32)
    matrix = augment.crop_resize_matrix((16, 16), 2.0, tf.constant([-4.0, -4.0]))
    out = dense_image_warp(image, affine_flow((16, 16), matrix)).numpy()
    ref = sk_resize(image[:8, :8], (16, 16, 1), order=1, mode="symmetric", anti_aliasing=False)
    # The outermost output pixels sample just outside the window, where the full image (used here)
    # and the cut-out window (skimage) legitimately differ.
    np.testing.assert_allclose(out[1:-1, 1:-1], ref[1:-1, 1:-1], atol=1e-5)


def test_crop_resize_at_scale_one_is_identity():
    image, mask = sample((10, 14))
    out_image, out_mask = run(
        lambda i, m, s: augment.random_crop_resize(i, m, s, prob=1.0, scale_range=(1.0, 1.0)),
        image, mask, SEEDS[1])
    np.testing.assert_allclose(out_image, image, atol=1e-5)
    np.testing.assert_array_equal(out_mask, mask)


GEOMETRIC = {
    "rotate": lambda i, m, s: augment.random_rotate(i, m, s, prob=1.0, max_deg=180.0),
    "crop_resize": lambda i, m, s: augment.random_crop_resize(i, m, s, prob=1.0, scale_range=(0.7, 1.4)),
    "elastic": lambda i, m, s: augment.elastic_deform(i, m, s, prob=1.0, grid=3, sigma=4.0),
    "all_on": build_augment_fn(AugmentConfig.all_on()),
}


@pytest.mark.parametrize("name", sorted(GEOMETRIC))
@pytest.mark.parametrize("classes", [2, 4])
def test_masks_keep_valid_class_ids(name, classes):
    image, mask = sample((20, 26), classes=classes, seed=classes)
    for seed in SEEDS[:6]:
        out_image, out_mask = run(GEOMETRIC[name], image, mask, seed)
        assert out_mask.dtype == np.int32 and out_mask.shape == mask.shape
        assert set(np.unique(out_mask)) <= set(range(classes))
        assert out_image.shape == image.shape and out_image.dtype == np.float32
        assert 0.0 <= out_image.min() and out_image.max() <= 1.0


@pytest.mark.parametrize("name", ["rotate", "crop_resize", "elastic"])
def test_image_and_mask_move_with_the_same_field(name):
    # The image is the mask itself: bilinear image and nearest mask of one field must agree
    # wherever the interpolated image is clearly on one side of 0.5.
    _, mask = sample((32, 32))
    image = mask[..., None].astype(np.float32)
    for seed in SEEDS[:4]:
        out_image, out_mask = run(GEOMETRIC[name], image, mask, seed)
        assert not np.array_equal(out_mask, mask)
        clear = np.abs(out_image[..., 0] - 0.5) > 0.25
        np.testing.assert_array_equal((out_image[..., 0] > 0.5)[clear], out_mask[clear] == 1)


def test_geometric_transforms_keep_uint8_masks():
    image, mask = sample((12, 12))
    out_image, out_mask = run(GEOMETRIC["all_on"], image, mask.astype(np.uint8), SEEDS[0])
    assert out_mask.dtype == np.uint8 and set(np.unique(out_mask)) <= {0, 1}


# ------------------------------------------------------------------ intensity and noise

def test_intensity_gamma_alone_matches_numpy_power():
    image, mask = sample((8, 8))
    out_image, out_mask = run(
        lambda i, m, s: augment.random_intensity(i, m, s, 1.0, (0.0, 0.0), (1.0, 1.0), (2.0, 2.0)),
        image, mask, SEEDS[0])
    np.testing.assert_allclose(out_image, image ** 2, atol=1e-6)
    np.testing.assert_array_equal(out_mask, mask)


def test_intensity_and_noise_stay_in_unit_range():
    image, mask = sample((16, 16))
    strong = lambda i, m, s: augment.random_intensity(i, m, s, 1.0, (-0.5, 0.5), (0.0, 3.0), (0.3, 3.0))
    noisy = lambda i, m, s: augment.random_noise(i, m, s, 1.0, 0.5)
    for fn in (strong, noisy):
        outputs = [run(fn, image, mask, seed)[0] for seed in SEEDS[:8]]
        assert all(0.0 <= o.min() and o.max() <= 1.0 for o in outputs)
        assert any(not np.allclose(o, image) for o in outputs)


def test_noise_has_the_requested_standard_deviation():
    image = np.full((64, 64, 1), 0.5, np.float32)
    out, _ = run(lambda i, m, s: augment.random_noise(i, m, s, 1.0, 0.05), image,
                 np.zeros((64, 64), np.int32), SEEDS[0])
    assert 0.045 < (out - image).std() < 0.055 and abs((out - image).mean()) < 0.005


# ------------------------------------------------------------------ the pipeline function

@pytest.mark.slow
def test_same_seed_same_output_different_seed_different_output():
    augment = build_augment_fn(AugmentConfig.all_on())
    image, mask = sample((24, 24), classes=3)
    first = run(augment, image, mask, tf.constant([5, 6], tf.int32))
    again = run(augment, image, mask, tf.constant([5, 6], tf.int32))
    other = run(augment, image, mask, tf.constant([5, 7], tf.int32))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.allclose(first[0], other[0])
    # A traced graph draws the same numbers; Grappler may reorder float arithmetic by an ulp.
    graph = tf.function(augment)
    traced = run(graph, image, mask, tf.constant([5, 6], tf.int32))
    np.testing.assert_allclose(traced[0], first[0], atol=1e-6)
    np.testing.assert_array_equal(traced[1], first[1])
    np.testing.assert_array_equal(traced[0], run(graph, image, mask, tf.constant([5, 6], tf.int32))[0])


def test_off_config_returns_inputs_unchanged():
    image, mask = sample((10, 13), classes=3)
    out_image, out_mask = run(build_augment_fn(AugmentConfig.off()), image, mask, SEEDS[2])
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_mask, mask)


def test_disabling_a_transform_leaves_the_others_draws_unchanged():
    image, mask = sample((16, 16), classes=3)
    full = build_augment_fn(dataclasses.replace(AugmentConfig.all_on(), intensity_prob=0.0))
    quiet = build_augment_fn(dataclasses.replace(AugmentConfig.all_on(), intensity_prob=0.0,
                                                 noise_prob=0.0))
    for seed in SEEDS[:3]:
        np.testing.assert_array_equal(run(full, image, mask, seed)[1], run(quiet, image, mask, seed)[1])


@pytest.mark.parametrize("shape_hw", [(20, 20), (18, 26)])
@pytest.mark.slow
def test_runs_in_tf_data_map_with_unknown_shapes(shape_hw):
    image, mask = sample(shape_hw, classes=3)
    augment = build_augment_fn(AugmentConfig.all_on())
    dataset = tf.data.Dataset.from_generator(
        lambda: ((image, mask, np.array([1, i], np.int64)) for i in range(4)),
        output_signature=(tf.TensorSpec([None, None, 1], tf.float32),
                          tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([2], tf.int64)))
    out = dataset.map(augment, num_parallel_calls=2)
    assert out.element_spec[0].shape.as_list() == [None, None, 1]
    results = list(out.as_numpy_iterator())
    for i, (out_image, out_mask) in enumerate(results):
        expected = run(augment, image, mask, tf.constant([1, i], tf.int64))
        np.testing.assert_allclose(out_image, expected[0], atol=1e-6)
        np.testing.assert_array_equal(out_mask, expected[1])
        assert out_image.shape == image.shape and set(np.unique(out_mask)) <= {0, 1, 2}


@pytest.mark.slow
def test_tf_data_map_keeps_static_shapes():
    image, mask = sample((16, 16))
    dataset = tf.data.Dataset.from_tensors((image, mask, tf.constant([0, 1], tf.int64)))
    out = dataset.map(build_augment_fn(AugmentConfig.all_on()))
    assert out.element_spec[0].shape == (16, 16, 1) and out.element_spec[1].shape == (16, 16)


# ------------------------------------------------------------------ configuration

@pytest.mark.parametrize("changes,match", [({"flip_h_prob": 1.5}, "flip_h_prob"),
                                           ({"noise_prob": -0.1}, "noise_prob"),
                                           ({"scale_range": (1.2, 0.8)}, "scale_range"),
                                           ({"scale_range": (0.0, 1.0)}, "scale_range"),
                                           ({"gamma_range": (0.5,)}, "gamma_range"),
                                           ({"rotate_max_deg": 270.0}, "rotate_max_deg"),
                                           ({"elastic_grid": 1}, "elastic_grid"),
                                           ({"elastic_sigma": -2.0}, "elastic_sigma"),
                                           ({"noise_std": "big"}, "noise_std")])
def test_config_rejects_out_of_range_fields(changes, match):
    with pytest.raises(UNetError, match=match):
        AugmentConfig(**changes)


def test_config_presets_and_yaml_lists():
    assert AugmentConfig(scale_range=[0.9, 1.1]).scale_range == (0.9, 1.1)
    probs = [f.name for f in dataclasses.fields(AugmentConfig) if f.name.endswith("_prob")]
    assert all(getattr(AugmentConfig.off(), p) == 0.0 for p in probs)
    assert all(getattr(AugmentConfig.all_on(), p) == 1.0 for p in probs)
    flips = AugmentConfig.flips_only()
    assert flips.flip_h_prob == flips.flip_v_prob == 0.5
    assert all(getattr(flips, p) == 0.0 for p in probs if not p.startswith("flip"))
    with pytest.raises(UNetError, match="AugmentConfig"):
        build_augment_fn({"flip_h_prob": 0.5})


# ------------------------------------------------------------------ CLI

@pytest.mark.slow
def test_preview_writes_a_grid_of_the_isbi_slice(isbi_data_dir, tmp_path):
    from PIL import Image

    out = augment_tool.write_preview(tmp_path / "preview.png", isbi_data_dir, n=2, seed=1, preset="all_on", tile=64)
    with Image.open(out) as sheet:
        assert sheet.size == (3 * 64, 64) and sheet.mode == "RGB"


def test_cli_reports_missing_data_as_user_error(tmp_path, capsys):
    assert augment_tool.main(["--preview", str(tmp_path / "p.png"), "--data_dir", str(tmp_path)]) == 2
    assert "no training data found" in capsys.readouterr().err


@pytest.mark.slow
def test_benchmark_dataset_yields_augmented_crops():
    from unet_medical.data.layouts import SegmentationData

    volume = (np.random.default_rng(0).random((3, 30, 30, 1)) * 255).astype(np.uint8)
    masks = (volume[..., 0] > 100).astype(np.uint8)
    data = SegmentationData(list(volume), list(masks), ["a", "b", "c"], ("background", "foreground"), "memory")
    batches = augment_tool.augment_dataset(data, 24, build_augment_fn(AugmentConfig.all_on())).take(2)
    for image, mask in batches:
        assert image.shape == (1, 24, 24, 1) and mask.shape == (1, 24, 24)
        assert set(np.unique(mask.numpy())) <= {0, 1}
    stats = augment_tool.benchmark_augment(data, 16, AugmentConfig.all_on(), warmup=1, batches=3)
    assert stats["img_per_s"] > 0 and stats["p50_ms"] <= stats["p99_ms"]
