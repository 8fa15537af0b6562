"""The U-Net of Ronneberger, Fischer and Brox, MICCAI 2015 (arXiv:1505.04597), and its variants.

`paper_unet_spec()` is the paper's network: 3x3 valid convolutions + ReLU (two per level), filters
64-128-256-512-1024, 2x2 max-pooling, 2x2 up-convolutions halving the channels, copy-and-crop of the
encoder maps, dropout 0.5 at the end of the contracting path and a 1x1 convolution to class logits:
572x572 in, 388x388 out, 31,030,658 parameters for 2 classes (the "31.0M" usually quoted).
`UNetSpec` also describes a same-padding variant (output size = input size) with a chosen width,
depth, batch or instance normalization and dropout rate.

Example:
    spec = UNetSpec(padding="same", base_filters=16, depth=3, batch_norm=True)
    model = build_unet(spec)          # (N, H, W, 1) float32 -> (N, H, W, 2) float32 logits
    volume_net = build_unet(dataclasses.replace(spec, dims=3))   # (N, D, H, W, 1) -> (N, D, H, W, 2)

`dims=3` is the 3D U-Net (Cicek et al., MICCAI 2016, arXiv:1606.06650): the same blocks with
3x3x3 convolutions, 2x2x2 pooling and up-convolutions, same padding only. The size arithmetic
below is per spatial side, so it holds for every axis of a volume too.

Sizes: a valid-padding U-Net only accepts input sizes for which every map before a pooling is even
(`is_valid_input_size`); `output_size`, `smallest_valid_input` and `margin` do this arithmetic so
no other module needs the 572/388 constants.
"""
from __future__ import annotations

import dataclasses

import tf_keras as keras

from unet_medical.model.blocks import (
    CONVS_PER_BLOCK,
    INITIALIZER,
    KERNEL_SIZE,
    POOL_SIZE,
    SPATIAL_DIMS,
    down,
    spatial_layers,
    two_conv,
    up_cat,
)
from unet_medical.model.layers import SeededDropout
from unet_medical.base.errors import UNetError

PADDINGS = ("valid", "same")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class UNetSpec:
    """Architecture of a U-Net. Defaults are the paper's network.

    Args:
        n_classes: number of output channels (logits per class), >= 1. Default 2.
        in_channels: number of input image channels, >= 1. Default 1 (grey-scale EM).
        base_filters: filters of the first level; level i (1-based) has base_filters * 2**(i-1) and
            the bottleneck base_filters * 2**depth. Default 64.
        depth: number of 2x2 max-pooling steps, >= 1. Default 4 (five resolution levels).
        padding: "valid" (paper; output smaller than input) or "same" (output size = input size).
        batch_norm: put BatchNormalization between each 3x3 convolution and its ReLU. Default False.
        instance_norm: put InstanceNormalization there instead (per sample and channel, no moving
            statistics). Default False; at most one of the two.
        dropout: dropout rate after the bottleneck's two convolutions, in [0, 1); 0 removes the
            layer. Default 0.5.
        dims: spatial dimensions, 2 (images, NHWC; default) or 3 (volumes, NDHWC, Conv3D layers with
            the same names). dims 3 needs padding "same".

    Raises:
        UNetError: if a field is out of range (the message names the field and the value).
    """

    n_classes: int = 2
    in_channels: int = 1
    base_filters: int = 64
    depth: int = 4
    padding: str = "valid"
    batch_norm: bool = False
    dropout: float = 0.5
    dims: int = 2
    instance_norm: bool = False

    def __post_init__(self) -> None:
        for field in ("n_classes", "in_channels", "base_filters", "depth"):
            value = getattr(self, field)
            if not _is_int(value) or value < 1:
                raise UNetError(f"UNetSpec.{field} must be an integer >= 1, got {value!r}")
        if self.padding not in PADDINGS:
            raise UNetError(f"UNetSpec.padding must be one of {PADDINGS}, got {self.padding!r}")
        for field in ("batch_norm", "instance_norm"):
            if not isinstance(getattr(self, field), bool):
                raise UNetError(f"UNetSpec.{field} must be True or False, got {getattr(self, field)!r}")
        if self.batch_norm and self.instance_norm:
            raise UNetError("UNetSpec: batch_norm and instance_norm are both True; a block has one normalization")
        if (
            isinstance(self.dropout, bool)
            or not isinstance(self.dropout, (int, float))
            or not 0.0 <= self.dropout < 1.0
        ):
            raise UNetError(f"UNetSpec.dropout must be a number in [0, 1), got {self.dropout!r}")
        if not _is_int(self.dims) or self.dims not in SPATIAL_DIMS:
            raise UNetError(f"UNetSpec.dims must be one of {SPATIAL_DIMS}, got {self.dims!r}")
        if self.dims == 3 and self.padding != "same":
            # Copy-and-crop (CenterCropToMatch) is 2D; 3D volumes are tiled with same padding.
            raise UNetError("UNetSpec.padding must be 'same' for dims 3 (a 3D U-Net), got "
                            f"{self.padding!r}")

    @property
    def norm(self) -> str:
        """The blocks' normalization, one of model.blocks.NORMS."""
        return "batch" if self.batch_norm else "instance" if self.instance_norm else "none"

    def level_filters(self, level: int) -> int:
        """Filters of encoder/decoder level `level` (1-based); level depth + 1 is the bottleneck."""
        return self.base_filters * 2 ** (level - 1)


def paper_unet_spec(n_classes: int = 2, in_channels: int = 1) -> UNetSpec:
    """The paper's network (Ronneberger et al. 2015): valid, 64 filters, depth 4, dropout 0.5."""
    return UNetSpec(n_classes=n_classes, in_channels=in_channels)


def build_unet(spec: UNetSpec, name: str = "unet") -> keras.Model:
    """Build the Functional tf_keras U-Net described by `spec`.

    Input "image": (N, H, W, spec.in_channels) float32, any H, W accepted by `is_valid_input_size`
    ((N, D, H, W, in_channels) for spec.dims 3, every side a multiple of 2**depth).
    Output: (N, output_size(H), output_size(W), spec.n_classes) float32 LOGITS (no softmax: the loss
    applies it). The 1x1 head is float32 even under a mixed precision policy, so the output is too.

    Layer names: enc{i}_* for encoder level i = 1..depth (enc{i}_pool is the pooling in front of
    level i), bottleneck_* and bottleneck_dropout, dec{i}_* for the decoder level that concatenates
    enc{i}'s map (dec{depth} runs first), and head.
    """
    if not isinstance(spec, UNetSpec):
        raise UNetError(f"build_unet expects a UNetSpec, got {type(spec).__name__}")
    pad, norm, dims = spec.padding, spec.norm, spec.dims
    image = keras.Input(shape=(None,) * dims + (spec.in_channels,), dtype="float32", name="image")

    # Contracting path: keep each level's output for the skip connections.
    skips = [two_conv(image, spec.level_filters(1), pad, norm, name="enc1", dims=dims)]
    for level in range(2, spec.depth + 1):
        skips.append(down(skips[-1], spec.level_filters(level), pad, norm, name=f"enc{level}", dims=dims))
    x = down(skips[-1], spec.level_filters(spec.depth + 1), pad, norm, name="bottleneck", dims=dims)
    if spec.dropout > 0:
        # Paper Sec. 3: "Drop-out layers at the end of the contracting path".
        x = SeededDropout(spec.dropout, name="bottleneck_dropout")(x)

    # Expansive path.
    for level in range(spec.depth, 0, -1):
        x = up_cat(x, skips[level - 1], spec.level_filters(level), pad, norm, name=f"dec{level}", dims=dims)

    conv, _, _ = spatial_layers(dims)
    logits = conv(
        spec.n_classes, 1, kernel_initializer=INITIALIZER, dtype="float32", name="head"
    )(x)
    return keras.Model(inputs=image, outputs=logits, name=name)


# ---------------------------------------------------------------------------------------------
# Size arithmetic (pure integer functions; no TensorFlow).

def _block_shrink(spec: UNetSpec) -> int:
    """Pixels lost per side-length by one two-conv block: 4 for valid 3x3 convs, 0 for same."""
    return CONVS_PER_BLOCK * (KERNEL_SIZE - 1) if spec.padding == "valid" else 0


def _size_problem(spec: UNetSpec, input_size: int) -> tuple[int, str | None]:
    """Follow one spatial side through the network: (output size, None) or (0, reason)."""
    if not _is_int(input_size) or input_size < 1:
        return 0, f"must be a positive integer, got {input_size!r}"
    shrink = _block_shrink(spec)
    size = input_size
    for level in range(1, spec.depth + 1):
        size -= shrink
        if size < 1:
            return 0, f"the level-{level} feature map would be empty ({size} pixels)"
        if size % POOL_SIZE:
            return 0, f"the level-{level} feature map ({size} pixels) is odd before max-pooling"
        size //= POOL_SIZE
    size -= shrink
    if size < 1:
        return 0, f"the bottleneck feature map would be empty ({size} pixels)"
    for level in range(spec.depth, 0, -1):
        size = size * POOL_SIZE - shrink
        if size < 1:
            return 0, f"the decoder level-{level} feature map would be empty ({size} pixels)"
    return size, None


def is_valid_input_size(spec: UNetSpec, input_size: int) -> bool:
    """True if `input_size` (pixels, one side) keeps every map before a pooling even and every map
    non-empty, i.e. the network maps it to a well-aligned output."""
    return _size_problem(spec, input_size)[1] is None


def _input_for_bottleneck(spec: UNetSpec, bottleneck: int) -> tuple[int, int]:
    """(input size, output size) of the network whose bottleneck output is `bottleneck` pixels."""
    shrink = _block_shrink(spec)
    size_in = bottleneck + shrink
    size_out = bottleneck
    for _ in range(spec.depth):
        size_in = size_in * POOL_SIZE + shrink
        size_out = size_out * POOL_SIZE - shrink
    return size_in, size_out


def smallest_valid_input(spec: UNetSpec, min_output: int) -> int:
    """Smallest valid input size (pixels, one side) whose output is at least `min_output` pixels.

    Paper net: smallest_valid_input(spec, 388) == 572. Raises UNetError if min_output < 1.
    """
    if not _is_int(min_output) or min_output < 1:
        raise UNetError(f"minimum output size must be a positive integer, got {min_output!r}")
    # Valid inputs correspond one-to-one to bottleneck sizes b >= 1, and input and output both grow
    # with b, so the first b whose output is large enough and non-empty gives the answer.
    bottleneck = 1
    while True:
        size_in, size_out = _input_for_bottleneck(spec, bottleneck)
        if size_out >= min_output and is_valid_input_size(spec, size_in):
            return size_in
        bottleneck += 1


def _nearest_valid_inputs(spec: UNetSpec, input_size: int) -> tuple[int | None, int]:
    """The largest valid input below and the smallest valid input above `input_size` (if any)."""
    below, bottleneck = None, 1
    while True:
        size_in, _ = _input_for_bottleneck(spec, bottleneck)
        if is_valid_input_size(spec, size_in):
            if size_in >= input_size:
                return below, size_in
            below = size_in
        bottleneck += 1


def output_size(spec: UNetSpec, input_size: int) -> int:
    """Output side length (pixels) for an input of `input_size` pixels.

    Paper net: 572 -> 388; same padding: n -> n. Raises UNetError naming the input size, the reason
    and the nearest valid sizes if the size is not valid (see `is_valid_input_size`).
    """
    size, problem = _size_problem(spec, input_size)
    if problem is None:
        return size
    hint = ""
    if _is_int(input_size):
        below, above = _nearest_valid_inputs(spec, max(input_size, 1))
        nearest = [str(s) for s in (below, above) if s is not None]
        hint = f"; nearest valid input sizes: {' or '.join(nearest)}"
    raise UNetError(
        f"input size {input_size!r} is not valid for a {spec.padding}-padding U-Net of depth "
        f"{spec.depth}: {problem}{hint}"
    )


def margin(spec: UNetSpec) -> int:
    """Context pixels lost on each side, (input - output) // 2: 92 for the paper net, 0 for same.

    The same for every valid input size; overlap-tile inference mirrors this many pixels.
    """
    size_in = smallest_valid_input(spec, 1)
    return (size_in - output_size(spec, size_in)) // 2


def receptive_field(depth: int) -> int:
    """Receptive field (pixels, one side) of the bottleneck of a U-Net with `depth` poolings: how wide a
    region the coarsest features summarize, the same for both paddings.

    Each level l = 1..depth + 1 (the bottleneck is level depth + 1) runs CONVS_PER_BLOCK 3x3 convolutions at
    a stride of 2**(l - 1) input pixels, and each pooling in front of level l + 1 adds 2**(l - 1) more:
    9 * 2**depth - 4 for two 3x3 convolutions and 2x2 pooling (depth 4: 140 px, 5: 284, 6: 572, 7: 1148).
    """
    if not _is_int(depth) or depth < 0:
        raise UNetError(f"depth must be an integer >= 0, got {depth!r}")
    field, stride = 1, 1
    for level in range(1, depth + 2):
        field += CONVS_PER_BLOCK * (KERNEL_SIZE - 1) * stride
        if level <= depth:
            field += (POOL_SIZE - 1) * stride
            stride *= POOL_SIZE
    return field
