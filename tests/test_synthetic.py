"""utils.data.synthetic: geometry helpers against independent references, and the generated stacks."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage import transform

from unet_medical.data import synthetic
from unet_medical.base.errors import UNetError
from unet_medical.data import layouts


@pytest.fixture(scope="module")
def full_stack():
    """The default 30 x 512 x 512 stack (the size the project trains on), generated once."""
    return synthetic.make_em_stack()


def test_upsample2_matches_skimage_bilinear():
    volume = np.random.default_rng(0).random((3, 7, 5)).astype(np.float32)
    reference = transform.rescale(volume, (1, 2, 2), order=1, mode="edge", anti_aliasing=False)
    out = synthetic.upsample2(volume)
    assert out.shape == (3, 14, 10) and out.dtype == np.float32
    np.testing.assert_allclose(out, reference, atol=1e-6)


def test_boundary_distance_matches_distance_transform_of_voronoi_labels():
    # A 2D Voronoi diagram (all seeds and queries in the slice z = 0), labelled by brute force; the
    # EDT of each cell gives the distance from a pixel centre to the nearest pixel centre of
    # another cell, i.e. the true boundary distance plus at most ~1 px of grid slack.
    rng = np.random.default_rng(1)
    seeds = np.concatenate([rng.uniform(-20, 148, (40, 2)), np.zeros((40, 1))], axis=1)
    yy, xx = np.mgrid[0:128, 0:128].astype(np.float64)
    pixels = np.stack([xx, yy, np.zeros_like(xx)], axis=-1)
    labels = np.argmin(((pixels[..., None, :] - seeds) ** 2).sum(-1), axis=-1)
    reference = np.zeros((128, 128))
    for cell in np.unique(labels):
        inside = labels == cell
        reference[inside] = ndimage.distance_transform_edt(inside)[inside]
    distances, nearest = cKDTree(seeds).query(pixels.reshape(-1, 3), k=16)
    ours = synthetic.boundary_distance(distances, seeds[nearest, :2]).reshape(128, 128)
    # Pixels whose nearest other-cell pixel lies outside the image have no reference.
    margin = reference < np.minimum.reduce([xx + 1, yy + 1, 128 - xx, 128 - yy])
    assert margin.mean() > 0.8
    assert np.all(ours[margin] <= reference[margin] + 1e-3)
    assert np.all(reference[margin] - ours[margin] <= 1.5)


def test_smooth_field_grid_and_points_agree_and_have_unit_variance():
    field = synthetic.SmoothField.random(np.random.default_rng(2), 20.0, 40.0, num_waves=64)
    x, y, z = np.arange(0.0, 300.0, 3.0), np.arange(0.0, 200.0, 5.0), np.array([0.0, 7.0])
    grid = field.on_grid(x, y, z)
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    np.testing.assert_allclose(grid, field.at_points(np.stack([xx, yy, zz], axis=-1)), atol=1e-4)
    assert abs(grid.mean()) < 0.15 and grid.std() == pytest.approx(1.0, abs=0.2)


def test_deterministic_by_seed_and_seeds_differ():
    first = synthetic.make_em_stack(num_slices=3, size=64, seed=5)
    again = synthetic.make_em_stack(num_slices=3, size=64, seed=5)
    other = synthetic.make_em_stack(num_slices=3, size=64, seed=6)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0]) and not np.array_equal(first[1], other[1])


@pytest.mark.slow
def test_full_size_stack_looks_like_isbi(full_stack):
    images, labels = full_stack
    assert images.shape == labels.shape == (30, 512, 512)
    assert images.dtype == labels.dtype == np.uint8
    assert set(np.unique(labels).tolist()) == {0, 255}
    membrane = labels == 0
    assert 0.15 <= membrane.mean() <= 0.25
    assert all(0.12 <= m.mean() <= 0.28 for m in membrane)
    # Membranes are darker than interiors on average, but no global threshold separates them.
    assert images[membrane].mean() < images[~membrane].mean() - 30
    # Accuracy of "interior iff intensity >= t" for every t, from the two intensity histograms.
    membrane_hist = np.bincount(images[membrane], minlength=256)
    interior_hist = np.bincount(images[~membrane], minlength=256)
    correct = np.cumsum(membrane_hist) - membrane_hist + interior_hist[::-1].cumsum()[::-1]
    assert correct.max() / images.size < 0.9
    # Organelles: interior pixels as dark as a typical membrane pixel exist.
    assert np.mean(images[~membrane] < np.median(images[membrane])) > 0.02


@pytest.mark.slow  # seconds of setup or a subprocess: the fast subset stays under 2 minutes
def test_adjacent_slices_are_correlated(full_stack):
    _, labels = full_stack
    membrane = labels == 0

    def iou(a, b):
        return np.logical_and(a, b).sum() / np.logical_or(a, b).sum()

    adjacent = np.mean([iou(membrane[i], membrane[i + 1]) for i in range(29)])
    distant = np.mean([iou(membrane[i], membrane[i + 15]) for i in range(15)])
    assert adjacent > 0.3 and adjacent > 2 * distant


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_membrane_fraction_in_range_for_small_stacks(seed):
    # A 4 x 256 x 256 stack holds ~100 cells, so its fraction scatters more than the full stack's
    # (seeds 0-19 gave 0.19-0.27); the 15-25 % target is checked on the full stack above.
    _, labels = synthetic.make_em_stack(num_slices=4, size=256, seed=seed)
    assert 0.12 <= np.mean(labels == 0) <= 0.30


def test_odd_sizes_and_bad_arguments():
    images, labels = synthetic.make_em_stack(num_slices=1, size=33, seed=3)
    assert images.shape == labels.shape == (1, 33, 33)
    for kwargs in ({"num_slices": 0}, {"size": 8}, {"seed": -1}, {"size": 20.5}):
        with pytest.raises(UNetError, match=next(iter(kwargs))):
            synthetic.make_em_stack(**kwargs)


def test_written_layout_goes_through_the_loader(tmp_path):
    written = synthetic.write_isbi_layout(tmp_path / "syn", num_slices=3, size=48, seed=4)
    assert sorted(written) == ["test-volume.tif", "train-labels.tif", "train-volume.tif"]
    images, labels = synthetic.make_em_stack(num_slices=3, size=48, seed=4)
    data = layouts.load_training_data(tmp_path / "syn")
    assert data.class_names == ("membrane", "interior") and len(data) == 3
    np.testing.assert_array_equal(np.stack(data.images)[..., 0], images)
    np.testing.assert_array_equal(np.stack(data.masks), (labels == 255).astype(np.uint8))
    test = layouts.load_test_data(tmp_path / "syn")
    assert len(test) == 3 and not np.array_equal(test.images[0], data.images[0])
    assert sorted(p.name for p in (tmp_path / "syn").iterdir()) == sorted(written)  # no temp files left
