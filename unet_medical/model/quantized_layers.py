"""Keras layers that fake-quantize their kernel and input with a model.quantizers spec (QuantConv2D,
QuantConv2DTranspose, QuantConv3D, QuantConv3DTranspose); they serialize through get_config.

The 2-D and 3-D layers are one mixin on the matching Keras conv: the quantizers act elementwise
(or per output channel, the kernel's last axis for a conv and second-to-last for a transposed conv,
whatever the number of spatial axes), so nothing in the maths depends on the dimension.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import tensorflow as tf
import tf_keras as keras

from unet_medical.base.errors import UNetError
from unet_medical.model.quantizers import QuantSpec, Tensor, get_quantizer, int_code_limits, quantize_fixed, quantize_int


def _static_bool(value: Any) -> Optional[bool]:
    """A Python bool for None/bool/constant tensors, None when only known at run time."""
    if value is None:
        return False
    static = tf.get_static_value(value)
    return None if static is None else bool(static)


def _segments(value: Union[QuantSpec, Mapping, Sequence, None], layer: str) -> tuple:
    """activation_quantizer -> ((channels or None for all, QuantSpec), ...)."""
    if value is None or isinstance(value, (QuantSpec, Mapping)):
        return ((None, QuantSpec.from_dict(value) or QuantSpec("NONE")),)
    segments = []
    for item in value:
        if isinstance(item, Mapping):
            item = dict(item)
            channels, spec = item.pop("channels", None), QuantSpec.from_dict(item)
        else:
            channels, spec = item
            spec = QuantSpec.from_dict(spec)
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise UNetError(f"layer {layer}: activation_quantizer segment channels={channels!r}: expected an "
                            "integer >= 1")
        segments.append((channels, spec))
    if not segments:
        raise UNetError(f"layer {layer}: activation_quantizer is an empty list of segments")
    return tuple(segments)


class _QuantizedConvMixin:
    """Shared by the quantized 2-D and 3-D (transposed) convs: fake-quantizes the kernel and the input.

    The input of a conv is the previous block's output (ReLU, then possibly max-pooling or
    concatenation), so quantizing every quantized conv's input quantizes the activations between
    quantized convs once each. With INT activations the layer keeps a moving average of max|input|
    (non-trainable `activation_max`, updated in training, used at inference).

    `activation_quantizer` is one spec for the whole input, or a list of channel segments
    `[{"channels": n, **spec}, ...]` (or `(n, QuantSpec)` pairs) covering the input's channels in
    order, each quantized with its own spec (and, for INT, its own range `activation_max`,
    `activation_max_1`, ...). A decoder conv reads concat([skip, up-conv]): the non-negative skip
    part then gets the same unsigned quantizer as the encoder conv that pools it, so each skip
    tensor is quantized one way only, instead of a second time with the signed up-conv part's range.
    """

    # Output-channel axis of the kernel, along which per-channel scales are taken.
    kernel_channel_axis = -1

    def __init__(self, *args, weight_quantizer: Union[QuantSpec, Mapping, None] = None,
                 activation_quantizer: Union[QuantSpec, Mapping, Sequence, None] = None,
                 activation_momentum: float = 0.99, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_quantizer = QuantSpec.from_dict(weight_quantizer) or QuantSpec("NONE")
        self.activation_segments = _segments(activation_quantizer, self.name)
        for _, spec in self.activation_segments:
            if spec.mode in ("BNN", "TERNARY"):
                raise UNetError(f"layer {self.name}: activation_quantizer mode {spec.mode} is for weights only")
        if isinstance(activation_momentum, bool) or not isinstance(activation_momentum, (int, float)) \
                or not 0.0 <= activation_momentum < 1.0:
            raise UNetError(f"layer {self.name}: activation_momentum={activation_momentum}: expected [0, 1)")
        self.activation_momentum = float(activation_momentum)
        self._quantize_kernel = get_quantizer(self.weight_quantizer)

    @classmethod
    def from_float(cls, layer: keras.layers.Layer, weight_quantizer: QuantSpec,
                   activation_quantizer: QuantSpec, **kwargs):
        """An unbuilt quantized layer with the float layer's configuration (name included)."""
        return cls(**layer.get_config(), weight_quantizer=weight_quantizer,
                   activation_quantizer=activation_quantizer, **kwargs)

    @property
    def activation_quantizer(self) -> Union[QuantSpec, tuple]:
        """The input's QuantSpec, or ((channels, QuantSpec), ...) for a segmented input."""
        if len(self.activation_segments) == 1:
            return self.activation_segments[0][1]
        return self.activation_segments

    def build(self, input_shape):
        super().build(input_shape)
        channels = tf.TensorShape(input_shape)[-1]
        if len(self.activation_segments) > 1 and channels is not None and \
                sum(n for n, _ in self.activation_segments) != channels:
            raise UNetError(f"layer {self.name}: activation_quantizer segments cover "
                            f"{sum(n for n, _ in self.activation_segments)} channels, the input has {channels}")
        self._ranges = []
        for _, spec in self.activation_segments:
            if spec.mode != "INT":
                self._ranges.append(None)
                continue
            # ON_READ + MEAN, like BatchNormalization's moving statistics, so replicas agree.
            self._ranges.append(self.add_weight(
                name="activation_max" + (f"_{len(self._ranges)}" if self._ranges else ""), shape=(),
                initializer="zeros", trainable=False, synchronization=tf.VariableSynchronization.ON_READ,
                aggregation=tf.VariableAggregation.MEAN))
        if self._ranges[0] is not None:
            self.activation_max = self._ranges[0]

    def quantized_kernel(self) -> Tensor:
        """The kernel as used in the forward pass (fake-quantized, STE gradient)."""
        return self._quantize_kernel(self.kernel, channel_axis=self.kernel_channel_axis)

    def _input_range(self, inputs: Tensor, training: Any, variable: Any) -> Tensor:
        batch_max = tf.stop_gradient(tf.cast(tf.reduce_max(tf.abs(inputs)), tf.float32))
        stored = tf.convert_to_tensor(variable)

        def updated():
            momentum = self.activation_momentum
            # The first batch sets the range instead of being averaged with the initial 0.
            new = tf.where(stored > 0, momentum * stored + (1.0 - momentum) * batch_max, batch_max)
            variable.assign(new)
            return new

        def frozen():
            # Never trained: fall back to the batch's own range rather than a zero range.
            return tf.where(stored > 0, stored, batch_max)

        is_training = _static_bool(training)
        if is_training is None:
            return tf.cond(tf.cast(training, tf.bool), updated, frozen)
        return updated() if is_training else frozen()

    def _quantize_segment(self, inputs: Tensor, spec: QuantSpec, variable: Any, training: Any) -> Tensor:
        if spec.mode == "NONE":
            return inputs
        if spec.mode == "FIXED":
            return quantize_fixed(inputs, spec.integer_bits, spec.fractional_bits, spec.signed, spec.scheme)
        high = int_code_limits(spec.bits, spec.signed)[1]
        step = self._input_range(inputs, training, variable) / high
        return quantize_int(inputs, spec.bits, scale=tf.cast(step, inputs.dtype), signed=spec.signed)

    def _quantize_input(self, inputs: Tensor, training: Any) -> Tensor:
        if len(self.activation_segments) == 1:
            return self._quantize_segment(inputs, self.activation_segments[0][1], self._ranges[0], training)
        parts = tf.split(inputs, [n for n, _ in self.activation_segments], axis=-1)
        return tf.concat([self._quantize_segment(part, spec, variable, training) for part, (_, spec), variable
                          in zip(parts, self.activation_segments, self._ranges)], axis=-1)

    def call(self, inputs, training=None):
        inputs = self._quantize_input(inputs, training)
        if self.weight_quantizer.mode == "NONE":
            return super().call(inputs)
        float_kernel = self.kernel
        # The parent's call reads self.kernel; swap in the fake-quantized tensor for the duration.
        # object.__setattr__ bypasses Keras attribute tracking, so the variable stays the layer's
        # (only) kernel weight and checkpoints are unaffected.
        object.__setattr__(self, "kernel", self.quantized_kernel())
        try:
            return super().call(inputs)
        finally:
            object.__setattr__(self, "kernel", float_kernel)

    def get_config(self) -> dict:
        config = super().get_config()
        if len(self.activation_segments) == 1:
            activation = self.activation_segments[0][1].to_dict()
        else:
            activation = [{"channels": n, **spec.to_dict()} for n, spec in self.activation_segments]
        config.update(weight_quantizer=self.weight_quantizer.to_dict(),
                      activation_quantizer=activation,
                      activation_momentum=self.activation_momentum)
        return config


@keras.saving.register_keras_serializable(package="unet")
class QuantConv2D(_QuantizedConvMixin, keras.layers.Conv2D):
    """Conv2D with fake-quantized kernel (kh, kw, in, out; per-channel axis -1) and input.

    Args: those of Conv2D, plus
        weight_quantizer: QuantSpec (or its dict) for the kernel; default NONE.
        activation_quantizer: QuantSpec (or dict) for the layer input (FIXED, INT or NONE).
        activation_momentum: moving-average momentum of the INT input range. Default 0.99.
    Example:
        QuantConv2D(64, 3, padding="same", weight_quantizer=QuantSpec("FIXED", -1, 4))
    """

    kernel_channel_axis = -1


@keras.saving.register_keras_serializable(package="unet")
class QuantConv2DTranspose(_QuantizedConvMixin, keras.layers.Conv2DTranspose):
    """Conv2DTranspose with fake-quantized kernel (kh, kw, out, in: per-channel axis -2) and input.

    Args: those of Conv2DTranspose plus the quantizer arguments of `QuantConv2D`.
    """

    kernel_channel_axis = -2


@keras.saving.register_keras_serializable(package="unet")
class QuantConv3D(_QuantizedConvMixin, keras.layers.Conv3D):
    """Conv3D with fake-quantized kernel (kd, kh, kw, in, out; per-channel axis -1) and input
    (batch, depth, height, width, channels).

    Args: those of Conv3D plus the quantizer arguments of `QuantConv2D`.
    Example:
        QuantConv3D(32, 3, padding="same", weight_quantizer=QuantSpec("INT", bits=8))
    """

    kernel_channel_axis = -1


@keras.saving.register_keras_serializable(package="unet")
class QuantConv3DTranspose(_QuantizedConvMixin, keras.layers.Conv3DTranspose):
    """Conv3DTranspose with fake-quantized kernel (kd, kh, kw, out, in: per-channel axis -2) and input.

    Args: those of Conv3DTranspose plus the quantizer arguments of `QuantConv2D`.
    """

    kernel_channel_axis = -2


QUANTIZED_LAYERS = (QuantConv2D, QuantConv2DTranspose, QuantConv3D, QuantConv3DTranspose)


# Float Keras conv class -> its quantized twin (quantize_unet swaps them; exact types, so a
# subclass with a different call is never swapped).
_QUANTIZED_VERSION = {keras.layers.Conv2D: QuantConv2D,
                      keras.layers.Conv2DTranspose: QuantConv2DTranspose,
                      keras.layers.Conv3D: QuantConv3D,
                      keras.layers.Conv3DTranspose: QuantConv3DTranspose}

