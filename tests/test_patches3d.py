"""Tests of data/patches3d.py: patch size parsing and recipe, padding, foreground oversampling, the
affine cut against a direct crop and scipy's affine_transform, the elastic displacement against
scipy's 3D zoom, augmentation keeping image and labels aligned, and batches as a pure function of
(seed, step). Volumes of 16-32 voxels."""
import numpy as np
import pytest
from scipy import ndimage

from unet_medical.base.errors import UNetError
from unet_medical.data import patches3d as p3


def test_patch_size_parsing_checks_and_recipe():
    assert p3.parse_patch_size("48") == (48, 48, 48)
    assert p3.parse_patch_size("48,48,32") == (48, 48, 32) and p3.parse_patch_size(None) is None
    for bad in ("0", "4,4", "a"):
        with pytest.raises(UNetError, match="--patch_size"):
            p3.parse_patch_size(bad)
    with pytest.raises(UNetError, match=r"--patch_size=48,48,36: .*multiple of 2\*\*depth = 8"):
        p3.check_patch_size((48, 48, 36), 3)
    depth = p3.choose_depth_3d((48, 48, 40), cap=64)
    patch, reason = p3.choose_patch_size((48, 48, 40), depth)
    assert depth == 3 and patch == (48, 48, 40) and "median case shape 48x48x40" in reason
    assert p3.choose_patch_size((300, 250, 90), 4, cap=64)[0] == (64, 64, 64)
    assert p3.choose_patch_size((12, 100, 100), 4, cap=64)[0] == (16, 64, 64)  # padded up, not to nothing


def test_pad_to_patch_centres_the_volume():
    image, mask = np.ones((3, 8, 8, 1), np.float32), np.ones((3, 8, 8), np.uint8)
    padded, labels = p3.pad_to_patch(image, mask, (8, 4, 8))
    assert padded.shape == (8, 8, 8, 1) and labels.shape == (8, 8, 8)
    assert labels[:, 0, 0].tolist() == [0, 0, 1, 1, 1, 0, 0, 0]


def test_a_third_of_the_patches_centre_on_foreground_and_every_class_is_drawn():
    mask = np.zeros((32, 32, 32), np.uint8)
    mask[2:4, 2:4, 2:4] = 1  # a tiny corner lesion: uniform patches of 8^3 rarely hit it
    mask[28:30, 28:30, 28:30] = 2
    image = mask[..., None].astype(np.float32)
    rng = np.random.default_rng(0)
    candidates = p3.foreground_candidates(mask, (1, 2), rng)
    hits = {1: 0, 2: 0}
    n = 600
    for _ in range(n):
        _, labels = p3.sample_patch(image, mask, (8, 8, 8), rng, candidates=candidates)
        for c in hits:
            hits[c] += bool((labels == c).any())
    share = (hits[1] + hits[2]) / n
    assert 0.27 < share < 0.40  # 1/3 centred (+ 0.4% uniform patches touching a corner), 3 sd either side
    assert abs(hits[1] - hits[2]) < 0.1 * n  # classes drawn first, then a voxel


def test_identity_affine_cut_equals_a_crop_and_the_labels_follow_the_image():
    rng = np.random.default_rng(1)
    image = rng.random((20, 18, 16, 2)).astype(np.float32)
    mask = rng.integers(0, 3, (20, 18, 16)).astype(np.uint8)
    origin = np.array([3, 5, 2])
    direct = p3.cut_patch(image, mask, origin, (8, 8, 8))
    via_affine = p3.cut_patch(image, mask, origin, (8, 8, 8), matrix=np.eye(3))
    np.testing.assert_allclose(via_affine[0], direct[0], atol=1e-6)
    np.testing.assert_array_equal(via_affine[1], direct[1])
    # An image that equals its labels stays equal to them through every augmentation (nearest labels
    # and linear image agree away from boundaries; flips and rot90 are exact).
    block = np.zeros((24, 24, 24), np.uint8)
    block[6:18, 6:18, 8:16] = 1
    augment = p3.VolumeAugment(flip_prob=1.0, rot90_prob=1.0, intensity_prob=0.0, affine_prob=1.0)
    for seed in range(5):
        img, lab = p3.sample_patch(block[..., None].astype(np.float32), block, (16, 16, 16),
                                   np.random.default_rng(seed), augment=augment)
        assert img.shape == (16, 16, 16, 1) and lab.shape == (16, 16, 16) and lab.dtype == np.int32
        assert np.mean((img[..., 0] > 0.5) == (lab == 1)) > 0.97
    elastic = p3.VolumeAugment(flip_prob=0.0, rot90_prob=0.0, intensity_prob=0.0, affine_prob=0.0,
                               elastic_prob=1.0, elastic_sigma=4.0)
    moved = 0
    for seed in range(5):
        img, lab = p3.sample_patch(block[..., None].astype(np.float32), block, (16, 16, 16),
                                   np.random.default_rng(seed), augment=elastic)
        assert np.mean((img[..., 0] > 0.5) == (lab == 1)) > 0.97
        moved += not np.array_equal(lab, p3.sample_patch(block[..., None].astype(np.float32), block, (16, 16, 16),
                                                         np.random.default_rng(seed))[1])
    assert moved >= 4  # the deformation changed the labels, not only kept them


def test_the_warped_cut_equals_scipy_affine_transform_and_a_shift_moves_it():
    rng = np.random.default_rng(4)
    image = rng.random((20, 18, 16, 1)).astype(np.float32)
    mask = rng.integers(0, 3, (20, 18, 16)).astype(np.uint8)
    origin, patch = np.array([4, 3, 2]), (10, 12, 8)
    matrix = p3.affine_of(rng, p3.VolumeAugment(max_angle_deg=30.0))
    half = (np.array(patch) - 1) / 2
    offset = origin + half - matrix @ half  # scipy's convention: input = matrix @ output + offset
    img, lab = p3.cut_patch(image, mask, origin, patch, matrix)
    np.testing.assert_allclose(img[..., 0], ndimage.affine_transform(image[..., 0], matrix, offset, output_shape=patch,
                                                                     order=1, mode="constant"), atol=1e-6)
    np.testing.assert_array_equal(lab, ndimage.affine_transform(mask, matrix, offset, output_shape=patch, order=0,
                                                                mode="constant"))
    # A constant displacement of whole voxels reads the crop that far along each axis.
    shift = np.broadcast_to(np.array([1.0, -2.0, 3.0]), patch + (3,))
    img, lab = p3.cut_patch(image, mask, origin, patch, displacement=shift)
    np.testing.assert_allclose(img, image[5:15, 1:13, 5:13], atol=1e-6)
    np.testing.assert_array_equal(lab, mask[5:15, 1:13, 5:13])


@pytest.mark.parametrize("patch,grid", [((64, 48, 32), 3), ((20, 17, 9), 4)])
def test_the_elastic_displacement_is_scipys_cubic_zoom_of_its_lattice(patch, grid):
    sigma = 3.0
    field = p3.elastic_displacement(np.random.default_rng(5), patch, grid, sigma)
    lattice = np.random.default_rng(5).normal(0.0, sigma, (grid, grid, grid, 3))
    assert field.shape == patch + (3,)
    for axis in range(3):
        direct = ndimage.zoom(lattice[..., axis], [p / grid for p in patch], order=3, mode="reflect")
        np.testing.assert_allclose(field[..., axis], direct, atol=1e-9)
    # Smooth: neighbouring voxels move almost together (white noise would correlate about 0).
    for axis in range(3):
        a, b = (np.take(field, range(start, patch[axis] - 1 + start), axis=axis).ravel() for start in (0, 1))
        assert np.corrcoef(a, b)[0, 1] > 0.8


@pytest.mark.parametrize("kwargs,needle", [
    (dict(elastic_prob=1.5), "elastic_prob=1.5: expected a probability"),
    (dict(flip_prob=True), "flip_prob=True: expected a probability"),
    (dict(flip_prob=(0.5, 1.5, 0.5)), "flip_prob=(0.5, 1.5, 0.5): expected a probability"),
    (dict(flip_prob=(0.5, 0.5)), "flip_prob=(0.5, 0.5): expected a probability"),
    (dict(zoom_range=(1.2, 0.9)), "zoom_range=(1.2, 0.9): expected low:high"),
    (dict(zoom_range=(0.0, 1.0)), "expected zooms > 0"),
    (dict(elastic_grid=1), "elastic_grid=1: expected an int >= 2"),
    (dict(elastic_sigma=-1.0), "elastic_sigma=-1.0: expected >= 0 voxels"),
    (dict(max_angle_deg=270.0), "max_angle_deg=270.0"),
])
def test_bad_volume_augment_settings_are_refused_in_one_line(kwargs, needle):
    with pytest.raises(UNetError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        p3.VolumeAugment(**kwargs)


def test_batches_are_a_pure_function_of_seed_and_step_and_split_across_workers():
    rng = np.random.default_rng(2)
    images = [rng.random((16, 16, 12, 1)).astype(np.float32) for _ in range(3)]
    masks = [(im[..., 0] > 0.7).astype(np.uint8) for im in images]
    source = p3.prepare_patch_source(images, masks, ["a", "b", "c"], (8, 8, 8), (1,), seed=0)
    kwargs = dict(seed=5, augment=p3.VolumeAugment())
    x, y = p3.patch_batch(source, 7, batch_size=4, **kwargs)
    assert x.shape == (4, 8, 8, 8, 1) and y.shape == (4, 8, 8, 8) and x.dtype == np.float32
    again = p3.patch_batch(source, 7, batch_size=4, **kwargs)
    np.testing.assert_array_equal(x, again[0])
    # Two workers with batch 2 draw exactly the samples of one worker with batch 4.
    halves = [p3.patch_batch(source, 7, batch_size=2, rank=r, world_size=2, **kwargs)[0] for r in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(halves), x)
    assert not np.array_equal(p3.patch_batch(source, 8, batch_size=4, **kwargs)[0], x)
    with pytest.raises(UNetError, match="b: expected an image"):
        p3.prepare_patch_source(images[:1] + [images[1][..., 0]], masks[:2], ["a", "b"], (8, 8, 8), (1,), 0)


def test_the_tf_dataset_resumes_at_a_step_with_the_same_batches():
    rng = np.random.default_rng(3)
    images = [rng.random((12, 12, 8, 1)).astype(np.float32) for _ in range(2)]
    masks = [(im[..., 0] > 0.5).astype(np.uint8) for im in images]
    args = (images, masks, ["a", "b"], (8, 8, 8))
    full = list(p3.make_patch_dataset(*args, batch_size=2, seed=1, start_step=0, max_steps=4, classes=(1,)))
    resumed = list(p3.make_patch_dataset(*args, batch_size=2, seed=1, start_step=2, max_steps=4, classes=(1,)))
    assert len(full) == 4 and len(resumed) == 2
    np.testing.assert_array_equal(full[2][0].numpy(), resumed[0][0].numpy())
    assert full[0][1].shape == (2, 8, 8, 8)


def test_per_axis_flip_probabilities_flip_only_their_axes():
    # A ramp along each axis tells which axes were reversed: flip_prob (0, 1, 0) reverses J in every draw,
    # never I or K; the scalar form is the same probability on every axis.
    ramp = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float32) for n in (6, 7, 8)), indexing="ij"), axis=-1)
    mask = np.zeros((6, 7, 8), np.uint8)
    augment = p3.VolumeAugment(flip_prob=(0.0, 1.0, 0.0), rot90_prob=0.0, intensity_prob=0.0)
    assert augment.axis_flip_probs() == (0.0, 1.0, 0.0)
    assert p3.VolumeAugment(flip_prob=0.25).axis_flip_probs() == (0.25, 0.25, 0.25)
    for seed in range(4):
        image, _ = p3.augment_patch(ramp, mask, np.random.default_rng(seed), augment)
        np.testing.assert_array_equal(image, ramp[:, ::-1, :])


def test_flipping_only_some_axes_zeroes_the_others_and_the_in_plane_turns():
    augment = p3.VolumeAugment(flip_prob=(0.5, 0.25, 1.0), rot90_prob=0.5)
    assert augment.flipping_only((0, 2)).axis_flip_probs() == (0.5, 0.0, 1.0)
    assert augment.flipping_only((0, 2)).rot90_prob == 0.0  # a turn would carry J's order onto I
    assert augment.flipping_only((0, 1)).rot90_prob == 0.5 and augment.flipping_only((0, 1)).axis_flip_probs()[2] == 0
    assert augment.flipping_only(()).axis_flip_probs() == (0.0, 0.0, 0.0)
    assert augment.flipping_only((0, 1, 2)) is augment
