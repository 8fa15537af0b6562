"""Dense image warps and smooth random displacement fields on core TensorFlow ops.

Replaces tensorflow-addons' `dense_image_warp` (end of life, does not load on TF >= 2.16) with a
gather-based resampler that runs inside `tf.data.Dataset.map` with static or unknown (H, W).

Conventions (shared by every function here):
- Images are (H, W, C); coordinates are in pixels with (0, 0) the centre of the top-left pixel.
- A flow / displacement field is (H, W, 2) float32 with `[..., 0]` the row (y) and `[..., 1]` the
  column (x) offset. Output pixel (y, x) is sampled from the input at (y + flow_y, x + flow_x):
  a "pull" field, the sign opposite to tensorflow-addons' `dense_image_warp`.
- An affine map is a (2, 3) float32 matrix taking output (y, x, 1) to input (y', x').
- Border mode "reflect" mirrors about the edge pixel centres without repeating them
  (... 2 1 | 0 1 2 ... n-1 | n-2 ...): scipy.ndimage's mode="mirror", np.pad's mode="reflect", and
  the mirroring of the U-Net paper's overlap-tile strategy. Mode "constant" pads with zeros and
  interpolates across the edge (scipy.ndimage's mode="grid-constant", cval=0).

Usage:
    flow = coarse_displacement(tf.shape(image)[:2], grid=3, sigma=10.0, seed=[1, 2])
    warped = dense_image_warp(image, flow)                     # bilinear, mirrored borders
"""
from __future__ import annotations

import tensorflow as tf

from unet_medical.base.errors import UNetError

MODES = ("reflect", "constant")
INTERPOLATIONS = ("bilinear", "nearest")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UNetError(f"{name}={value!r} is not supported; expected one of {', '.join(choices)}")


def _mirror_index(index: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """Fold integer indices of any magnitude into [0, size) by mirroring about the edge pixels.

    index: int32, any shape; size: int32 scalar >= 1. The extension has period 2 * (size - 1);
    a single-pixel axis (period 0) maps everything to 0.
    """
    period = tf.maximum(2 * size - 2, 1)
    folded = tf.math.floormod(index, period)
    return tf.minimum(folded, period - folded)


def _axis_neighbours(
    coords: tf.Tensor, size: tf.Tensor, mode: str
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """The two grid neighbours of continuous coordinates along one axis and their linear weights.

    coords: float32 (H, W) positions in pixels. Returns (i0, i1, w0, w1): int32 indices inside
    [0, size) and float32 weights (zero for a neighbour outside the image in "constant" mode).
    """
    floor = tf.floor(coords)
    frac = coords - floor
    i0 = tf.cast(floor, tf.int32)
    i1 = i0 + 1
    w0, w1 = 1.0 - frac, frac
    if mode == "reflect":
        return _mirror_index(i0, size), _mirror_index(i1, size), w0, w1
    inside0 = tf.cast((i0 >= 0) & (i0 < size), tf.float32)
    inside1 = tf.cast((i1 >= 0) & (i1 < size), tf.float32)
    last = size - 1
    return (tf.clip_by_value(i0, 0, last), tf.clip_by_value(i1, 0, last),
            w0 * inside0, w1 * inside1)


def _axis_nearest(coords: tf.Tensor, size: tf.Tensor, mode: str) -> tuple[tf.Tensor, tf.Tensor]:
    """Nearest grid index (ties round up) and, for "constant" mode, whether it lies inside.

    coords: float32 (H, W). Returns int32 indices inside [0, size) and a bool mask (all True for
    "reflect"): reflecting then rounding equals rounding then reflecting, as the mirror axes are
    pixel centres.
    """
    index = tf.cast(tf.floor(coords + 0.5), tf.int32)
    if mode == "reflect":
        return _mirror_index(index, size), tf.ones_like(index, tf.bool)
    inside = (index >= 0) & (index < size)
    return tf.clip_by_value(index, 0, size - 1), inside


def sample_at(
    image: tf.Tensor,
    rows: tf.Tensor,
    cols: tf.Tensor,
    mode: str = "reflect",
    interpolation: str = "bilinear",
) -> tf.Tensor:
    """Sample an image at continuous pixel coordinates.

    Args:
        image: (H, W, C) tensor; float for "bilinear", any dtype (e.g. int32 masks) for "nearest".
        rows, cols: float32 (H', W') row and column positions in input pixels.
        mode: "reflect" (mirror about edge pixel centres) or "constant" (zeros outside).
        interpolation: "bilinear" or "nearest" (use "nearest" for label maps: no invented labels).

    Returns:
        (H', W', C) tensor with the dtype of `image`.
    """
    _check_choice("mode", mode, MODES)
    _check_choice("interpolation", interpolation, INTERPOLATIONS)
    image = tf.convert_to_tensor(image)
    if interpolation == "bilinear" and not image.dtype.is_floating:
        raise UNetError(f"bilinear interpolation needs a float image, got dtype {image.dtype.name}; "
                        "use interpolation='nearest' for label maps")
    if image.shape.rank is not None and image.shape.rank != 3:
        raise UNetError(f"image must be (H, W, C), got shape {image.shape}")
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    # One flat gather per neighbour is cheaper than gather_nd on (row, col) pairs.
    flat = tf.reshape(image, [height * width, shape[2]])

    if interpolation == "nearest":
        r, r_inside = _axis_nearest(rows, height, mode)
        c, c_inside = _axis_nearest(cols, width, mode)
        out = tf.gather(flat, r * width + c)
        if mode == "constant":
            out = tf.where((r_inside & c_inside)[..., None], out, tf.zeros_like(out))
    else:
        r0, r1, wr0, wr1 = _axis_neighbours(rows, height, mode)
        c0, c1, wc0, wc1 = _axis_neighbours(cols, width, mode)
        dtype = image.dtype
        wr0, wr1, wc0, wc1 = (tf.cast(w, dtype)[..., None] for w in (wr0, wr1, wc0, wc1))
        row0, row1 = r0 * width, r1 * width
        top = wc0 * tf.gather(flat, row0 + c0) + wc1 * tf.gather(flat, row0 + c1)
        bottom = wc0 * tf.gather(flat, row1 + c0) + wc1 * tf.gather(flat, row1 + c1)
        out = wr0 * top + wr1 * bottom
    return out


def pixel_grid(shape_hw) -> tuple[tf.Tensor, tf.Tensor]:
    """Row and column coordinates of every pixel: float32 (H, 1) and (1, W), broadcastable."""
    shape_hw = tf.convert_to_tensor(shape_hw, tf.int32)
    rows = tf.cast(tf.range(shape_hw[0]), tf.float32)[:, None]
    cols = tf.cast(tf.range(shape_hw[1]), tf.float32)[None, :]
    return rows, cols


def dense_image_warp(
    image: tf.Tensor,
    flow: tf.Tensor,
    mode: str = "reflect",
    interpolation: str = "bilinear",
) -> tf.Tensor:
    """Warp an image by a dense displacement field: out[y, x] = image[y + flow_y, x + flow_x].

    Args:
        image: (H, W, C) float tensor (any dtype with interpolation="nearest").
        flow: (H, W, 2) float32 pull displacements in pixels, [..., 0] rows, [..., 1] columns.
        mode: "reflect" (scipy.ndimage mode="mirror") or "constant" (zeros, scipy "grid-constant").
        interpolation: "bilinear" (scipy order=1) or "nearest" (scipy order=0; ties round up).

    Returns:
        (H, W, C) tensor with the dtype of `image`. A zero flow returns the input exactly.
    """
    flow = tf.convert_to_tensor(flow, tf.float32)
    if flow.shape.rank is not None and (flow.shape.rank != 3 or flow.shape[-1] not in (None, 2)):
        raise UNetError(f"flow must be (H, W, 2), got shape {flow.shape}")
    rows, cols = pixel_grid(tf.shape(flow)[:2])
    out = sample_at(image, rows + flow[..., 0], cols + flow[..., 1], mode, interpolation)
    return tf.ensure_shape(out, tf.convert_to_tensor(image).shape)


def affine_coordinates(shape_hw, matrix: tf.Tensor,
                       flow: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """Input positions sampled by an affine map, optionally composed after a dense field.

    Args:
        shape_hw: output (H, W), ints or an int32 tensor of shape [2].
        matrix: (2, 3) float32 taking output (y, x, 1) to input (y', x') in pixels.
        flow: optional (H, W, 2) field applied *after* the affine map, i.e. output pixel p samples
            image[M @ (p + flow(p), 1)]: one resampling equal to warping by `matrix`, then by `flow`.

    Returns:
        float32 (H, W) row and column positions, ready for `sample_at`.
    """
    matrix = tf.convert_to_tensor(matrix, tf.float32)
    rows, cols = pixel_grid(shape_hw)
    if flow is not None:
        flow = tf.convert_to_tensor(flow, tf.float32)
        rows, cols = rows + flow[..., 0], cols + flow[..., 1]
    else:
        shape_hw = tf.convert_to_tensor(shape_hw, tf.int32)
        rows, cols = tf.broadcast_to(rows, shape_hw), tf.broadcast_to(cols, shape_hw)
    return (matrix[0, 0] * rows + matrix[0, 1] * cols + matrix[0, 2],
            matrix[1, 0] * rows + matrix[1, 1] * cols + matrix[1, 2])


def affine_flow(shape_hw, matrix: tf.Tensor, flow: tf.Tensor | None = None) -> tf.Tensor:
    """The (H, W, 2) float32 pull field of `affine_coordinates(shape_hw, matrix, flow)`.

    F(p) = M @ (p + flow(p), 1) - p, for dense_image_warp.
    """
    src_rows, src_cols = affine_coordinates(shape_hw, matrix, flow)
    rows, cols = pixel_grid(shape_hw)
    return tf.stack([src_rows - rows, src_cols - cols], axis=-1)


def coarse_displacement(shape_hw, grid: int, sigma: float, seed: tf.Tensor) -> tf.Tensor:
    """A smooth random displacement field, the elastic deformation of the U-Net paper.

    Ronneberger et al. 2015 (arXiv:1505.04597), Sec. 3.1: random displacement vectors on a coarse
    3 x 3 grid drawn from a Gaussian with 10 px standard deviation, per-pixel displacements by
    bicubic interpolation. Row (dy) and column (dx) displacements are independent draws (Keras 3's
    elastic transform reuses one draw for both, which only shears along the diagonal).

    Args:
        shape_hw: output (H, W), ints or an int32 tensor of shape [2] (may be dynamic).
        grid: lattice points per side (>= 1; the paper uses 3).
        sigma: standard deviation of the lattice displacements, pixels (>= 0).
        seed: int32/int64 tensor of shape [2] for tf.random.stateless_normal.

    Returns:
        (H, W, 2) float32 field, [..., 0] = dy, [..., 1] = dx, in pixels.
    """
    if grid < 1:
        raise UNetError(f"elastic grid must be >= 1 lattice points per side, got {grid}")
    if sigma < 0:
        raise UNetError(f"elastic sigma must be >= 0 pixels, got {sigma}")
    lattice = tf.random.stateless_normal([grid, grid, 2], seed=seed, stddev=sigma)
    size = tf.convert_to_tensor(shape_hw, tf.int32)
    return tf.image.resize(lattice, size, method="bicubic")
