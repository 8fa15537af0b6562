"""U-Net building blocks as small functions on the Keras functional graph (MONAI basic_unet style).

Each block adds standard Keras layers (Conv2D, BatchNormalization, ReLU, MaxPooling2D, Conv2DTranspose,
Concatenate) plus the project's CenterCropToMatch for valid padding and InstanceNormalization, named
`{name}_{part}{index}`, so TF-MOT quantization and Tucker layer surgery can find every conv.
All tensors are channels-last: NHWC for `dims=2`, NDHWC for `dims=3` (Conv3D, MaxPooling3D,
Conv3DTranspose with the same names; the 3D U-Net of Cicek et al. 2016, arXiv:1606.06650, is this
network with 3x3x3 kernels). Convolutions use He-normal initialization (Ronneberger et al. 2015, Sec. 3).
"""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from unet_medical.model.layers import CenterCropToMatch, InstanceNormalization

KERNEL_SIZE = 3
"""Spatial size of the convolutions in every block (paper: 3x3)."""
CONVS_PER_BLOCK = 2
"""Convolutions per encoder/decoder level (paper: two)."""
POOL_SIZE = 2
"""Down-sampling factor of max-pooling and up-sampling factor of the up-convolution (paper: 2)."""

INITIALIZER = "he_normal"

NORMS = ("none", "batch", "instance")
"""What sits between a 3x3 convolution and its ReLU: nothing, BatchNormalization ({name}_bn{index}) or
InstanceNormalization ({name}_in{index})."""

SPATIAL_DIMS = (2, 3)
"""Spatial dimensions a block can be built in: 2 (images, NHWC) or 3 (volumes, NDHWC)."""

_LAYERS = {
    2: (keras.layers.Conv2D, keras.layers.MaxPooling2D, keras.layers.Conv2DTranspose),
    3: (keras.layers.Conv3D, keras.layers.MaxPooling3D, keras.layers.Conv3DTranspose),
}


def spatial_layers(dims: int) -> tuple[type, type, type]:
    """(convolution, max-pooling, transposed convolution) Keras classes for `dims` spatial axes."""
    if dims not in _LAYERS:
        raise ValueError(f"dims must be one of {SPATIAL_DIMS}, got {dims!r}")
    return _LAYERS[dims]


def conv_bn_relu(
    x: tf.Tensor, filters: int, padding: str, norm: str, name: str, index: int, dims: int = 2
) -> tf.Tensor:
    """One 3x3 (3x3x3 for dims 3) convolution -> [normalization] -> ReLU.

    x: (N, H, W, C) or (N, D, H, W, C). Returns (N, H', W', filters) with H' = H - 2 for padding
    "valid", H for "same" (likewise every spatial axis in 3D).
    `norm` is one of NORMS. With a normalization the convolution has no bias: its beta replaces it. The
    ReLU is a separate layer so that the normalization can sit between convolution and activation.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    conv, _, _ = spatial_layers(dims)
    x = conv(
        filters,
        KERNEL_SIZE,
        padding=padding,
        use_bias=norm == "none",
        kernel_initializer=INITIALIZER,
        name=f"{name}_conv{index}",
    )(x)
    if norm == "batch":
        x = keras.layers.BatchNormalization(name=f"{name}_bn{index}")(x)
    elif norm == "instance":
        x = InstanceNormalization(name=f"{name}_in{index}")(x)
    return keras.layers.ReLU(name=f"{name}_relu{index}")(x)


def two_conv(
    x: tf.Tensor, filters: int, padding: str, norm: str, name: str, dims: int = 2
) -> tf.Tensor:
    """Two (3x3 conv -> [normalization] -> ReLU) layers: one U-Net level.

    x: (N, H, W, C) (or NDHWC). Returns (N, H - 4, W - 4, filters) for "valid", (N, H, W, filters)
    for "same". Layers: {name}_conv1, [{name}_bn1 or {name}_in1], {name}_relu1, {name}_conv2,
    [{name}_bn2 or {name}_in2], {name}_relu2.
    """
    for index in range(1, CONVS_PER_BLOCK + 1):
        x = conv_bn_relu(x, filters, padding, norm, name, index, dims)
    return x


def down(
    x: tf.Tensor, filters: int, padding: str, norm: str, name: str, dims: int = 2
) -> tf.Tensor:
    """2x2 (2x2x2) max-pool with stride 2, then `two_conv`: one step down the contracting path.

    x: (N, H, W, C) with H and W even (or NDHWC, every spatial side even). Returns
    (N, H/2 - 4, W/2 - 4, filters) for "valid", (N, H/2, W/2, filters) for "same".
    Layers: {name}_pool, then those of `two_conv`.
    """
    _, pool, _ = spatial_layers(dims)
    x = pool(POOL_SIZE, strides=POOL_SIZE, name=f"{name}_pool")(x)
    return two_conv(x, filters, padding, norm, name, dims)


def up_cat(
    x: tf.Tensor, skip: tf.Tensor, filters: int, padding: str, norm: str, name: str,
    dims: int = 2,
) -> tf.Tensor:
    """2x2 up-convolution (stride 2) to `filters` channels, concatenate the skip map, `two_conv`.

    x: (N, h, w, 2 * filters) decoder map; skip: (N, H, W, filters) encoder map with H >= 2h,
    W >= 2w (equal for "same"). Returns (N, 2h - 4, 2w - 4, filters) for "valid",
    (N, 2h, 2w, filters) for "same". For "valid" the skip map is centre-cropped to (2h, 2w) (the
    paper's "copy and crop"). Layers: {name}_upconv, [{name}_crop], {name}_concat, then `two_conv`.
    The up-convolution is linear (no ReLU), as in the paper's description. In 3D every spatial
    axis doubles the same way; "valid" is 2D only (CenterCropToMatch crops H and W).
    """
    if padding == "valid" and dims != 2:
        raise ValueError("valid padding (copy and crop) is implemented for dims 2 only")
    _, _, transpose = spatial_layers(dims)
    up = transpose(
        filters,
        POOL_SIZE,
        strides=POOL_SIZE,
        padding="valid",
        kernel_initializer=INITIALIZER,
        name=f"{name}_upconv",
    )(x)
    if padding == "valid":
        skip = CenterCropToMatch(name=f"{name}_crop")([skip, up])
    x = keras.layers.Concatenate(axis=-1, name=f"{name}_concat")([skip, up])
    return two_conv(x, filters, padding, norm, name, dims)
