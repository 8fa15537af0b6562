"""data.volume_resample_graph: the resampling weights, shapes and slice-axis rule built as TensorFlow ops, against
scipy.ndimage.zoom (an independent reference: the weights are read off by zooming the identity) and against
data.volume_resample's NumPy functions, in a traced graph with unknown shapes as the SavedModel runs them."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st
from scipy import ndimage

from unet_medical.data.volume_resample import (IMAGE_ORDER, PROBABILITY_ORDER, out_of_plane_axis, resample_to_shape,
                                               resampled_shape)
from unet_medical.data.volume_resample_graph import (axis_weights_graph, inverse_prefilter,
                                                     out_of_plane_axis_graph, resample_volumes_graph,
                                                     resampled_shape_graph)


def scipy_weights(size: int, new_size: int, order: int) -> np.ndarray:
    return ndimage.zoom(np.eye(size), (new_size / size, 1.0), order=order, mode="reflect", grid_mode=True)


@settings(max_examples=60, deadline=None)
@given(size=st.integers(5, 90), new_size=st.integers(1, 120), order=st.sampled_from([0, 1, 3]))
def test_axis_weights_are_scipys_zoom_weights(size, new_size, order):
    expected = scipy_weights(size, new_size, order)
    if expected.shape[0] != new_size:  # zoom rounds size * factor; such a pair never occurs in resampled_shape
        return
    np.testing.assert_allclose(axis_weights_graph(size, new_size, order).numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("size", [1, 2, 3, 4])
@pytest.mark.parametrize("new_size", [1, 3, 7, 40])
def test_short_axes_differ_from_scipy_only_by_its_approximate_prefilter_start(size, new_size):
    for order, tolerance in ((0, 0.0), (1, 1e-7), (3, 1e-3)):
        np.testing.assert_allclose(axis_weights_graph(size, new_size, order).numpy(),
                                   scipy_weights(size, new_size, order), atol=tolerance)


@pytest.mark.parametrize("size", [1, 2, 3, 6, 17, 300])
def test_the_closed_form_prefilter_inverse_inverts_the_mirrored_spline_matrix(size):
    mirrored = np.pad(np.eye(size), ((1, 1), (0, 0)), mode="symmetric")  # rows -1 .. size: samples -1 -> 0, size -> size-1
    spline = (mirrored[:-2] + 4 * mirrored[1:-1] + mirrored[2:]) / 6.0  # T: (1, 4, 1) / 6 on the mirrored signal
    np.testing.assert_allclose(inverse_prefilter(size).numpy() @ spline, np.eye(size), atol=1e-12)
    np.testing.assert_allclose(inverse_prefilter(size).numpy(), np.linalg.inv(spline), atol=1e-12)


def test_every_row_of_weights_sums_to_one():
    for order in (0, 1, 3):
        np.testing.assert_allclose(axis_weights_graph(37, 101, order).numpy().sum(1), 1.0, atol=1e-5)


SPACINGS = [(0.8, 0.8, 2.5), (1.0, 1.0, 1.0), (0.7, 3.0, 0.7), (5.0, 1.0, 1.0), (3.0, 3.0, 0.5), (1.0, 1.0, 3.0),
            (1.0, 1.0, 3.0000001), (0.5, 2.0, 2.0), (2.0, 0.6, 0.6)]
TARGETS = [(0.8, 0.8, 2.5), (1.0, 1.0, 1.0), (1.0, 4.0, 4.0), (2.0, 2.0, 0.5), (0.6, 0.6, 6.0)]


@pytest.mark.parametrize("target", TARGETS)
def test_the_slice_axis_rule_is_numpys(target):
    for spacing in SPACINGS:
        expected = out_of_plane_axis(spacing, target)
        got = int(out_of_plane_axis_graph(tf.constant(spacing, tf.float64), target))
        assert got == (-1 if expected is None else expected), (spacing, target)


def test_the_resampled_shape_is_numpys_round_half_to_even():
    target = (0.8, 0.8, 2.5)
    for shape, spacing in [((10, 12, 5), (0.8, 0.8, 2.5)), ((5, 7, 3), (1.2, 0.4, 2.5)),  # 7.5, 3.5: half to even
                           ((1, 2, 1), (0.1, 0.1, 0.1)), ((512, 512, 100), (0.7, 0.7, 3.0)), ((3, 3, 3), (1.0, 1.0, 1.0))]:
        got = resampled_shape_graph(tf.constant(shape), tf.constant(spacing, tf.float64), target).numpy()
        assert tuple(got) == resampled_shape(shape, spacing, target), (shape, spacing)


@pytest.fixture(scope="module")
def traced():
    """resample_volumes_graph traced once with unknown shapes, as the serving graph holds it."""
    @tf.function(input_signature=[tf.TensorSpec((None, None, None, None, None), tf.float32),
                                  tf.TensorSpec((3,), tf.int32), tf.TensorSpec((), tf.int32), tf.TensorSpec((), tf.int32)])
    def run(volumes, shape, order, slice_axis):
        return tf.switch_case(order, [lambda: resample_volumes_graph(volumes, shape, 0, slice_axis),
                                      lambda: resample_volumes_graph(volumes, shape, 1, slice_axis),
                                      lambda: resample_volumes_graph(volumes, shape, 1, slice_axis),
                                      lambda: resample_volumes_graph(volumes, shape, 3, slice_axis)])
    return run


@pytest.mark.parametrize("order", [IMAGE_ORDER, PROBABILITY_ORDER])
@pytest.mark.parametrize("shape,new_shape,slice_axis", [((20, 17, 6), (25, 11, 6), 2), ((9, 30, 8), (9, 24, 13), None),
                                                        ((16, 6, 16), (12, 9, 20), 1), ((12, 12, 12), (12, 12, 12), None)])
def test_resampling_a_batch_in_a_graph_is_resample_to_shape_on_each_volume(traced, order, shape, new_shape, slice_axis):
    rng = np.random.default_rng(sum(shape))
    volumes = rng.normal(100.0, 40.0, (2, *shape, 2)).astype(np.float32)
    got = traced(volumes, np.array(new_shape, np.int32), order, -1 if slice_axis is None else slice_axis).numpy()
    assert got.shape == (2, *new_shape, 2)
    for b in range(2):
        expected = resample_to_shape(volumes[b], new_shape, order, slice_axis)
        np.testing.assert_allclose(got[b], expected, atol=2e-4, rtol=1e-5)  # float32 sums of ~100, other order
