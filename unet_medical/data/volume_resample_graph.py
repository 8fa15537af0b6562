"""data.volume_resample as TensorFlow ops, for graphs that resample volumes of any size at run time.

A SavedModel serving a resampled 3-D run (export.volume_serving) receives volumes of unknown shape and
spacing, so it cannot hold scipy's weight matrices: it builds them in the graph. These functions compute the
same matrices as data.volume_resample.axis_weights (scipy.ndimage.zoom's, mode "reflect", grid_mode=True)
and apply them axis after axis, as resample_to_shape does.

The weights of one axis, `size` samples to `new_size`: output sample j sits at x = (j + 0.5) size / new_size - 0.5
on the input's grid (faces aligned); sample indices outside 0..size-1 are mirrored about the outer faces
(-1 -> 0, size -> size - 1: scipy's "reflect").
- order 0: the sample at floor(x + 0.5) (ties up, as scipy);
- order 1: (1 - t) and t on floor(x) and floor(x) + 1, t = x - floor(x);
- order 3: the cubic B-spline beta3 at x - m for the four m around x, times the prefilter: the spline's
  coefficients c solve T c = f, T[k, k + d] = beta3(d) for d = -1, 0, 1 with the same mirroring, so the
  weights are B T^-1 (B: beta3 at the output positions). T^-1 is exact here, in closed form
  (inverse_prefilter); scipy starts its recursive prefilter from a truncated sum, which agrees within 1e-6
  from 5 samples on and differs by up to 6e-4 of a weight on axes of 2-4 samples
  (tests/test_volume_resample_graph.py).
Weights below WEIGHT_FLOOR are dropped, as axis_weights drops them.
"""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from unet_medical.data.volume_resample import ANISOTROPY_THRESHOLD, WEIGHT_FLOOR, out_of_plane_axis

SPLINE_TAPS = {0: (0,), 1: (0, 1), 3: (-1, 0, 1, 2)}  # input samples around floor(x) (order 0: floor(x + 0.5))


def _mirror(index: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """int32 indices >= -2 size mirrored into 0..size-1 about the outer faces (scipy's "reflect": -1 -> 0).
    Shifted by two periods first: tf2onnx's FloorMod gives ONNX's remainder wrong for negative operands."""
    period = tf.math.floormod(index + 4 * size, 2 * size)
    return tf.where(period >= size, 2 * size - 1 - period, period)


def _beta3(x: tf.Tensor) -> tf.Tensor:
    """The cubic B-spline at float64 x (support |x| < 2)."""
    a = tf.abs(x)
    return tf.where(a < 1.0, 2.0 / 3.0 - a ** 2 + a ** 3 / 2.0, tf.where(a < 2.0, (2.0 - a) ** 3 / 6.0, 0.0))


POLE = 3.0 ** 0.5 - 2.0  # the cubic B-spline prefilter's pole z (Unser 1999): 6 / (x + 4 + 1 / x) = 0 at x = z


def inverse_prefilter(size: tf.Tensor) -> tf.Tensor:
    """(size, size) float64 T^-1, T the cubic prefilter matrix of the module docstring, in closed form.

    On the mirrored signal (period 2 size), T is the convolution with (1, 4, 1) / 6, whose inverse is the
    convolution with h(d) = -6 z / (1 - z^2) z^|d|; summed over the period and both mirror images of sample l,
    T^-1[k, l] = -6 z / (1 - z^2) (g((k - l) mod 2 size) + g((k + l + 1) mod 2 size)), with
    g(d) = (z^d + z^(2 size - d)) / (1 - z^(2 size)) for d in [0, 2 size). Elementwise ops only (no linear
    solve, which ONNX lacks); z^d is |z|^d with the sign of (-1)^d, as z < 0.
    """
    period = 2 * tf.cast(size, tf.int64)
    k = tf.range(tf.cast(size, tf.int64))

    def power(d: tf.Tensor) -> tf.Tensor:
        sign = 1.0 - 2.0 * tf.cast(tf.math.floormod(d, 2), tf.float64)
        return sign * tf.pow(tf.constant(abs(POLE), tf.float64), tf.cast(d, tf.float64))

    def g(d: tf.Tensor) -> tf.Tensor:
        return (power(d) + power(period - d)) / (1.0 - power(period))

    direct = tf.math.floormod(k[:, None] - k[None, :] + period, period)  # non-negative operands: see _mirror
    mirrored = tf.math.floormod(k[:, None] + k[None, :] + 1, period)
    return -6.0 * POLE / (1.0 - POLE * POLE) * (g(direct) + g(mirrored))


def axis_weights_graph(size: tf.Tensor, new_size: tf.Tensor, order: int) -> tf.Tensor:
    """(new_size, size) float32 weights resampling `size` samples to `new_size` by a spline of `order`
    (0, 1 or 3): data.volume_resample.axis_weights, built from int32 scalar tensors (module docstring)."""
    if order not in SPLINE_TAPS:
        raise ValueError(f"spline order {order}: the graph builds orders {sorted(SPLINE_TAPS)}")
    size, new_size = tf.cast(size, tf.int32), tf.cast(new_size, tf.int32)
    x = (tf.cast(tf.range(new_size), tf.float64) + 0.5) * (tf.cast(size, tf.float64) / tf.cast(new_size, tf.float64)) - 0.5
    base = tf.floor(x + 0.5) if order == 0 else tf.floor(x)
    weights = tf.zeros(tf.stack([new_size, size]), tf.float64)
    for tap in SPLINE_TAPS[order]:
        sample = base + tap
        if order == 0:
            value = tf.ones_like(x)
        elif order == 1:
            value = 1.0 - tf.abs(x - sample)
        else:
            value = _beta3(x - sample)
        # one-hot rows by comparison, summed: two taps mirrored onto one sample add their weights, as in scipy.
        # (tf.scatter_nd would add them in TensorFlow, but tf2onnx writes ScatterND, which keeps one of the
        # duplicates, and its float64 OneHot is an invalid ONNX node.)
        hit = tf.equal(_mirror(tf.cast(sample, tf.int32), size)[:, None], tf.range(size)[None, :])
        weights += tf.cast(hit, tf.float64) * value[:, None]
    if order == 3:
        weights = tf.matmul(weights, inverse_prefilter(size))  # W = B T^-1
    weights = tf.where(tf.abs(weights) < WEIGHT_FLOOR, tf.zeros_like(weights), weights)
    return tf.cast(weights, tf.float32)


def resample_axis_graph(volumes: tf.Tensor, axis: int, new_size: tf.Tensor, order: int, nearest: tf.Tensor
                        ) -> tf.Tensor:
    """float32 (B, I, J, K, C) with spatial `axis` (0, 1 or 2) resampled to new_size samples by a spline of
    `order`, or by nearest sample where the bool tensor `nearest` holds (the anisotropic rule's slice axis is
    known only at run time); an axis whose size does not change is returned as it is (resample_axis)."""
    size = tf.shape(volumes)[axis + 1]

    def resampled() -> tf.Tensor:
        weights = tf.cond(nearest, lambda: axis_weights_graph(size, new_size, 0),
                          lambda: axis_weights_graph(size, new_size, order))
        spec = {0: "ni,bijkc->bnjkc", 1: "nj,bijkc->binkc", 2: "nk,bijkc->bijnc"}[axis]
        return tf.einsum(spec, weights, volumes)

    return tf.cond(tf.equal(size, new_size), lambda: volumes, resampled)


def resampled_shape_graph(shape: tf.Tensor, spacing: tf.Tensor, target: Sequence[float]) -> tf.Tensor:
    """int32 (3,) round(shape * spacing / target) (half to even, as np.round), at least 1: resampled_shape."""
    new = tf.round(tf.cast(shape, tf.float64) * tf.cast(spacing, tf.float64) / tf.constant(target, tf.float64))
    return tf.cast(tf.maximum(new, 1.0), tf.int32)


def out_of_plane_axis_graph(spacing: tf.Tensor, target: Sequence[float]) -> tf.Tensor:
    """int32 scalar: data.volume_resample.out_of_plane_axis(spacing, target) with None as -1. The spacing's
    rule is decided in the graph (it arrives with the volume); the target's is a constant."""
    spacing = tf.cast(spacing, tf.float64)
    coarsest = tf.reduce_max(spacing)
    # np.isclose(grid, grid.max()): |a - b| <= 1e-8 + 1e-5 |b|
    coarse = tf.cast(tf.abs(spacing - coarsest) <= 1e-8 + 1e-5 * tf.abs(coarsest), tf.int32)
    single = tf.where(tf.equal(tf.reduce_sum(coarse), 1), tf.cast(tf.argmax(coarse), tf.int32), -1)
    from_target = out_of_plane_axis(target, target)
    return tf.where(coarsest / tf.reduce_min(spacing) > ANISOTROPY_THRESHOLD, single,
                    tf.constant(-1 if from_target is None else from_target, tf.int32))


def resample_volumes_graph(volumes: tf.Tensor, shape: tf.Tensor, order: int, slice_axis: tf.Tensor) -> tf.Tensor:
    """float32 (B, I, J, K, C) -> (B, I', J', K', C) with `shape` (3,) = (I', J', K'): each spatial axis in
    turn by a spline of `order`, the `slice_axis` (int32 scalar, -1: none) by nearest slice (resample_to_shape)."""
    out = volumes
    for axis in range(3):
        out = resample_axis_graph(out, axis, shape[axis], order, tf.equal(slice_axis, axis))
    return out
