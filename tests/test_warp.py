"""utils.data.warp against scipy.ndimage: bilinear/nearest warps, mirrored and zero borders, affine maps,
and the statistics of the paper's coarse-grid displacement field."""
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from unet_medical.base.errors import UNetError
from unet_medical.data.warp import affine_flow, coarse_displacement, dense_image_warp

SCIPY_MODE = {"reflect": "mirror", "constant": "grid-constant"}
SHAPES = [(16, 16), (13, 21), (1, 9)]  # square, non-square, single-row (mirror period 0)


def scipy_warp(image: np.ndarray, flow: np.ndarray, order: int, mode: str) -> np.ndarray:
    """Reference: sample every channel of image (H, W, C) at (y + flow_y, x + flow_x)."""
    rows, cols = np.mgrid[:flow.shape[0], :flow.shape[1]].astype(np.float64)
    coords = [rows + flow[..., 0], cols + flow[..., 1]]
    return np.stack([ndimage.map_coordinates(image[..., c].astype(np.float64), coords, order=order,
                                             mode=SCIPY_MODE[mode], cval=0.0)
                     for c in range(image.shape[-1])], axis=-1)


def smooth_flow(shape_hw, sigma: float, seed: int) -> np.ndarray:
    """Large smooth displacements (reaching well over the borders), built with NumPy/SciPy only."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(0.0, sigma, (3, 3, 2))
    zoom = (shape_hw[0] / 3, shape_hw[1] / 3, 1)
    return ndimage.zoom(coarse, zoom, order=3, mode="nearest", grid_mode=True).astype(np.float32)


def rough_flow(shape_hw, seed: int) -> np.ndarray:
    """Independent per-pixel displacements up to three image sizes away, plus exact integers."""
    rng = np.random.default_rng(seed)
    scale = np.array([3 * shape_hw[0], 3 * shape_hw[1]], np.float32)
    flow = rng.uniform(-1, 1, (*shape_hw, 2)).astype(np.float32) * scale
    flow[::3] = np.round(flow[::3])  # integer positions: exact hits on the edge pixels and beyond
    return flow


@pytest.mark.parametrize("mode", ["reflect", "constant"])
@pytest.mark.parametrize("shape_hw", SHAPES)
@pytest.mark.parametrize("kind", ["smooth", "rough"])
def test_bilinear_matches_scipy(mode, shape_hw, kind):
    rng = np.random.default_rng(1)
    image = rng.random((*shape_hw, 3)).astype(np.float32)
    flow = smooth_flow(shape_hw, 8.0, 2) if kind == "smooth" else rough_flow(shape_hw, 3)
    out = dense_image_warp(image, flow, mode=mode, interpolation="bilinear").numpy()
    assert out.shape == image.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, scipy_warp(image, flow, 1, mode), atol=1e-4)


@pytest.mark.parametrize("mode", ["reflect", "constant"])
@pytest.mark.parametrize("shape_hw", SHAPES)
def test_nearest_matches_scipy_on_labels(mode, shape_hw):
    rng = np.random.default_rng(4)
    labels = rng.integers(1, 5, (*shape_hw, 1)).astype(np.int32)
    flow = smooth_flow(shape_hw, 6.0, 5) + rng.normal(0, 2, (*shape_hw, 2)).astype(np.float32)
    out = dense_image_warp(labels, flow, mode=mode, interpolation="nearest").numpy()
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, scipy_warp(labels, flow, 0, mode).astype(np.int32))


@pytest.mark.parametrize("interpolation,dtype", [("bilinear", np.float32), ("nearest", np.int32),
                                                 ("nearest", np.uint8)])
def test_zero_flow_is_exact_identity(interpolation, dtype):
    image = (np.random.default_rng(6).random((11, 7, 2)) * 200).astype(dtype)
    out = dense_image_warp(image, np.zeros((11, 7, 2), np.float32), interpolation=interpolation)
    np.testing.assert_array_equal(out.numpy(), image)


def test_integer_shift_with_mirror_matches_np_pad():
    image = np.random.default_rng(7).random((9, 12, 1)).astype(np.float32)
    flow = np.zeros((9, 12, 2), np.float32)
    flow[..., 0], flow[..., 1] = -3.0, 4.0  # out[y, x] = in[y - 3, x + 4]
    padded = np.pad(image, ((3, 0), (0, 4), (0, 0)), mode="reflect")
    np.testing.assert_array_equal(dense_image_warp(image, flow).numpy(), padded[:9, 4:])


def test_affine_flow_matches_scipy_affine_transform():
    rng = np.random.default_rng(8)
    image = rng.random((15, 19, 1)).astype(np.float32)
    matrix = np.array([[0.9, 0.3, -2.0], [-0.25, 1.1, 3.5]], np.float32)
    out = dense_image_warp(image, affine_flow((15, 19), matrix)).numpy()[..., 0]
    ref = ndimage.affine_transform(image[..., 0].astype(np.float64), matrix[:, :2], matrix[:, 2],
                                   order=1, mode="mirror")
    np.testing.assert_allclose(out, ref, atol=1e-4)


def test_affine_flow_composed_with_field_samples_matrix_of_displaced_points():
    rng = np.random.default_rng(9)
    image = rng.random((12, 10, 1)).astype(np.float32)
    matrix = np.array([[0.8, -0.2, 1.0], [0.4, 1.2, -2.0]], np.float32)
    field = smooth_flow((12, 10), 3.0, 10)
    rows, cols = np.mgrid[:12, :10].astype(np.float64)
    src = matrix[:, :2].astype(np.float64) @ np.stack([(rows + field[..., 0]).ravel(),
                                                       (cols + field[..., 1]).ravel()])
    src = src + matrix[:, 2:].astype(np.float64)
    ref = ndimage.map_coordinates(image[..., 0].astype(np.float64), src, order=1, mode="mirror")
    out = dense_image_warp(image, affine_flow((12, 10), matrix, field)).numpy()[..., 0]
    np.testing.assert_allclose(out.ravel(), ref, atol=1e-4)


def test_warp_with_unknown_shapes_in_graph_mode():
    @tf.function(input_signature=[tf.TensorSpec([None, None, None], tf.float32),
                                  tf.TensorSpec([None, None, 2], tf.float32)])
    def warp(image, flow):
        return dense_image_warp(image, flow)

    rng = np.random.default_rng(11)
    for shape_hw in [(8, 8), (6, 11)]:
        image = rng.random((*shape_hw, 2)).astype(np.float32)
        flow = rough_flow(shape_hw, 12)
        np.testing.assert_allclose(warp(image, flow).numpy(), scipy_warp(image, flow, 1, "reflect"),
                                   atol=1e-4)


def test_bad_arguments_raise_unet_error():
    image = np.zeros((4, 4, 1), np.float32)
    flow = np.zeros((4, 4, 2), np.float32)
    with pytest.raises(UNetError, match="mode='wrap'"):
        dense_image_warp(image, flow, mode="wrap")
    with pytest.raises(UNetError, match="interpolation='bicubic'"):
        dense_image_warp(image, flow, interpolation="bicubic")
    with pytest.raises(UNetError, match="float image"):
        dense_image_warp(image.astype(np.int32), flow, interpolation="bilinear")
    with pytest.raises(UNetError, match="flow must be"):
        dense_image_warp(image, np.zeros((4, 4, 3), np.float32))
    with pytest.raises(UNetError, match="grid"):
        coarse_displacement((8, 8), 0, 10.0, [1, 2])
    with pytest.raises(UNetError, match="sigma"):
        coarse_displacement((8, 8), 3, -1.0, [1, 2])


def test_coarse_displacement_shape_and_determinism():
    a = coarse_displacement((40, 30), 3, 10.0, tf.constant([1, 2], tf.int64))
    b = coarse_displacement((40, 30), 3, 10.0, tf.constant([1, 2], tf.int64))
    c = coarse_displacement((40, 30), 3, 10.0, tf.constant([1, 3], tf.int64))
    assert a.shape == (40, 30, 2) and a.dtype == tf.float32
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.allclose(a.numpy(), c.numpy())
    # dx and dy are separate draws, not one field used twice.
    assert not np.allclose(a.numpy()[..., 0], a.numpy()[..., 1])
    assert not np.allclose(np.abs(a.numpy()[..., 0]), np.abs(a.numpy()[..., 1]))


def test_coarse_displacement_lattice_statistics_and_smoothness():
    # On a 63-pixel axis the 3 lattice points sit exactly on pixels 10, 31 and 52
    # (half-pixel centres), where the interpolating bicubic kernel returns the lattice value.
    sigma, nodes = 10.0, [10, 31, 52]
    fields = np.stack([coarse_displacement((63, 63), 3, sigma, [7, s]).numpy() for s in range(150)])
    lattice = fields[:, nodes][:, :, nodes]  # (150, 3, 3, 2)
    dy, dx = lattice[..., 0].ravel(), lattice[..., 1].ravel()
    for values in (dy, dx):
        assert abs(values.mean()) < 0.1 * sigma
        assert 0.9 * sigma < values.std() < 1.1 * sigma
    assert abs(np.corrcoef(dy, dx)[0, 1]) < 0.1
    # Smooth: neighbouring pixels move together. Lattice points 21 px apart give typical steps of
    # about sigma * sqrt(2) / 21 ~ 0.07 sigma per pixel; independent pixels would give ~1.1 sigma.
    for axis in (1, 2):
        assert np.abs(np.diff(fields, axis=axis)).mean() < 0.15 * sigma


def test_coarse_displacement_with_dynamic_shape():
    @tf.function(input_signature=[tf.TensorSpec([2], tf.int32)])
    def field(shape_hw):
        return coarse_displacement(shape_hw, 3, 5.0, tf.constant([3, 4]))

    assert field(tf.constant([17, 23])).shape == (17, 23, 2)
