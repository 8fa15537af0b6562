"""Rewrite a float U-Net into its fake-quantized twin (quantize_unet) and account for its storage.

The quantizer maths is in model.quantizers, the layers in model.quantized_layers.
"""
from __future__ import annotations

from typing import Any, Union

import tensorflow as tf
import tf_keras as keras

from unet_medical.model.layers import CenterCropToMatch, SeededDropout
from unet_medical.base.errors import UNetError
from unet_medical.model.quantized_layers import _QUANTIZED_VERSION, QUANTIZED_LAYERS
from unet_medical.base.registry import resolve
from unet_medical.model.quantizers import FLOAT_BITS, QuantizationConfig, QuantSpec, quant_mode


# Activation functions whose output is >= 0 everywhere.
_NONNEGATIVE_ACTIVATIONS = {"relu", "relu6", "sigmoid", "hard_sigmoid", "softmax", "softplus",
                            "exponential"}


# Layers whose output is >= 0 when all their inputs are (selection, zero padding, sums, products).
_SIGN_PRESERVING_LAYERS = (
    keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.MaxPooling3D,
    keras.layers.AveragePooling1D, keras.layers.AveragePooling2D, keras.layers.AveragePooling3D,
    keras.layers.GlobalMaxPooling2D, keras.layers.GlobalAveragePooling2D,
    keras.layers.Dropout,  # includes SpatialDropout*, and subclasses
    keras.layers.Cropping1D, keras.layers.Cropping2D, keras.layers.Cropping3D,
    keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D, keras.layers.ZeroPadding3D,
    keras.layers.UpSampling1D, keras.layers.UpSampling2D, keras.layers.UpSampling3D,
    keras.layers.Concatenate, keras.layers.Add, keras.layers.Maximum, keras.layers.Multiply,
    keras.layers.Average, keras.layers.Reshape, keras.layers.Flatten, keras.layers.Permute,
    CenterCropToMatch, SeededDropout,
)


# Layers that keep their (first) input's channels in place, each channel's values from that channel:
# a channel that is >= 0 before stays >= 0 after.
_CHANNEL_PRESERVING_LAYERS = (
    keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.MaxPooling3D,
    keras.layers.AveragePooling1D, keras.layers.AveragePooling2D, keras.layers.AveragePooling3D,
    keras.layers.Dropout, keras.layers.Cropping1D, keras.layers.Cropping2D, keras.layers.Cropping3D,
    keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D, keras.layers.ZeroPadding3D,
    keras.layers.UpSampling1D, keras.layers.UpSampling2D, keras.layers.UpSampling3D,
    CenterCropToMatch, SeededDropout,
)


# Layers whose output values come from their first input only (the others give a shape).
_VALUES_FROM_FIRST_INPUT = (CenterCropToMatch,)


def _produces_nonnegative(layer: keras.layers.Layer, inputs_nonnegative: bool) -> bool:
    """Whether `layer`'s output is provably >= 0, given whether all its inputs are.

    A custom layer can declare `preserves_nonnegativity = True` (e.g. a crop or a dropout) to be
    treated like max-pooling; anything unknown is assumed signed, which costs one bit of range
    but never clips negative values.
    """
    if isinstance(layer, keras.layers.InputLayer):
        return False
    if isinstance(layer, keras.layers.ReLU):
        return float(layer.negative_slope) == 0.0 and float(layer.threshold) >= 0.0
    activation = getattr(layer, "activation", None)
    if callable(activation):
        name = keras.activations.serialize(activation)
        return isinstance(name, str) and name in _NONNEGATIVE_ACTIVATIONS
    if isinstance(layer, _SIGN_PRESERVING_LAYERS) or getattr(layer, "preserves_nonnegativity", False):
        return inputs_nonnegative
    return False


def _layer_graph(model: keras.Model) -> tuple:
    """(producers, inputs, outputs): layer name -> names of layers feeding it; input/output names."""
    config = model.get_config()

    def names(nested) -> list:
        # Inbound-node entries are [layer_name, node_index, tensor_index, kwargs] lists.
        if isinstance(nested, (list, tuple)):
            if nested and isinstance(nested[0], str):
                return [nested[0]]
            return [name for item in nested for name in names(item)]
        return []

    producers = {entry["name"]: names(entry["inbound_nodes"]) for entry in config["layers"]}
    return producers, names(config["input_layers"]), names(config["output_layers"])


def _value_producers(model: keras.Model, producers: dict, name: str) -> list:
    if isinstance(model.get_layer(name), _VALUES_FROM_FIRST_INPUT):
        return producers[name][:1]
    return producers[name]


def _nonnegative_outputs(model: keras.Model) -> dict:
    """Layer name -> whether the layer's output is provably >= 0."""
    producers, _, _ = _layer_graph(model)
    output_nonnegative: dict = {}

    def output_is_nonnegative(name: str) -> bool:
        if name not in output_nonnegative:
            output_nonnegative[name] = False  # guards against cycles through shared layers
            output_nonnegative[name] = _produces_nonnegative(
                model.get_layer(name), inputs_are_nonnegative(name))
        return output_nonnegative[name]

    def inputs_are_nonnegative(name: str) -> bool:
        feeding = _value_producers(model, producers, name)
        return bool(feeding) and all(output_is_nonnegative(p) for p in feeding)

    return {name: output_is_nonnegative(name) for name in producers}


def input_channel_signs(model: keras.Model) -> dict:
    """Layer name -> its input's channels as segments [(channels, provably >= 0), ...] in order.

    Adjacent segments of the same sign are merged, so a plain input is one segment. A decoder conv
    reading concat([ReLU skip, linear up-conv]) gets [(skip channels, True), (up channels, False)].
    A layer with several inputs (other than a channel concatenation), or whose channel count is not
    known, gets one segment, >= 0 only when all its inputs are.
    """
    producers, _, _ = _layer_graph(model)
    nonnegative = _nonnegative_outputs(model)

    def output_signs(name: str) -> list:
        layer = model.get_layer(name)
        feeding = _value_producers(model, producers, name)
        channels = layer.output.shape[-1] if not isinstance(layer.output, (list, tuple)) else None
        if isinstance(layer, keras.layers.Concatenate) and layer.axis in (-1, len(layer.output.shape) - 1):
            parts = [segment for p in feeding for segment in output_signs(p)]
            if all(n is not None for n, _ in parts) and sum(n for n, _ in parts) == channels:
                return parts
        elif isinstance(layer, _CHANNEL_PRESERVING_LAYERS) and len(feeding) == 1:
            return output_signs(feeding[0])
        return [(channels, nonnegative[name])]

    def merged(segments: list) -> list:
        out: list = []
        for n, sign in segments:
            if out and out[-1][1] == sign:
                out[-1] = (None if n is None or out[-1][0] is None else out[-1][0] + n, sign)
            else:
                out.append((n, sign))
        return out

    result = {}
    for name, feeding in producers.items():
        segments = output_signs(feeding[0]) if len(feeding) == 1 else []
        if not segments or any(n is None for n, _ in merged(segments)):
            whole = bool(feeding) and all(nonnegative[p] for p in feeding)
            result[name] = [(None, whole)]
        else:
            result[name] = merged(segments)
    return result


def _is_conv(layer: keras.layers.Layer) -> bool:
    return type(layer) in _QUANTIZED_VERSION or isinstance(layer, QUANTIZED_LAYERS)


def boundary_convs(model: keras.Model) -> tuple:
    """(first, last): names of convs that see a model input / feed a model output with no conv between.

    In a U-Net these are the first conv of the first block and the 1x1 head conv.
    """
    producers, inputs, outputs = _layer_graph(model)
    consumers: dict = {name: [] for name in producers}
    for name, feeding in producers.items():
        for producer in feeding:
            consumers[producer].append(name)

    def reach(starts: list, step: dict) -> set:
        found, seen, stack = set(), set(), list(starts)
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            if _is_conv(model.get_layer(name)):
                found.add(name)
            else:
                stack.extend(step[name])
        return found

    return reach(inputs, consumers), reach(outputs, producers)


def _require_functional(model: Any) -> None:
    if not isinstance(model, keras.Model) or not getattr(model, "_is_graph_network", False):
        raise UNetError(f"model {getattr(model, 'name', model)!r}: expected a built tf_keras "
                        "Functional (or Sequential) model")


def _copy_weights(source: keras.Model, target: keras.Model) -> None:
    for new in target.layers:
        old = source.get_layer(new.name)
        if isinstance(new, QUANTIZED_LAYERS) and not isinstance(old, QUANTIZED_LAYERS):
            new.kernel.assign(old.kernel)
            if new.use_bias:
                new.bias.assign(old.bias)
        else:
            new.set_weights(old.get_weights())


def quantize_unet(model: keras.Model, config: QuantizationConfig) -> keras.Model:
    """A new Functional model with every Conv2D/Conv3D (and transposed) conv replaced by its Quant version.

    Weights are copied; layer names are kept; other layers (custom ones included) are recreated
    from their config. With keep_first_float / keep_last_float the convs returned by
    `boundary_convs` stay float. A FIXED/INT conv input is quantized unsigned when it is provably
    non-negative (a ReLU output, possibly pooled/concatenated), signed otherwise; a concatenation
    of both kinds is quantized per channel segment (`input_channel_signs`), so a skip tensor gets
    the same unsigned quantizer in the decoder as on the encoder path (it is quantized one way
    only; with max-pooling and a monotone quantizer the values are those of quantizing it once).
    QAT_INT8 delegates to `unet_medical.model.qat.quantize_model_qat`; NONE returns a float copy.
    Nested models are cloned as single layers (their convs are not quantized).
    """
    _require_functional(model)
    if not isinstance(config, QuantizationConfig):
        raise UNetError(f"config {config!r}: expected a QuantizationConfig")
    already = [layer.name for layer in model.layers if isinstance(layer, QUANTIZED_LAYERS)]
    if already:
        raise UNetError(f"model {model.name!r} is already quantized (layers {already[:3]}): "
                        "quantize the float model instead")
    mode = quant_mode(config.quantization)
    if mode.transform is not None:  # a whole-model mode (TF-MOT QAT), imported only when asked for
        return resolve(mode.transform)(model)

    first, last = boundary_convs(model)
    keep_float = (first if config.keep_first_float else set()) | (last if config.keep_last_float else set())
    signs = input_channel_signs(model)
    weight_spec = config.weight_spec()

    def input_quantizer(name: str) -> Any:
        segments = [(n, config.activation_spec(nonnegative)) for n, nonnegative in signs[name]]
        if len({spec for _, spec in segments}) == 1:
            return segments[0][1]
        return segments

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        quantized_class = _QUANTIZED_VERSION.get(type(layer))
        if weight_spec.mode == "NONE" or quantized_class is None or layer.name in keep_float:
            return layer.__class__.from_config(layer.get_config())
        return quantized_class.from_float(layer, weight_spec, input_quantizer(layer.name))

    quantized = keras.models.clone_model(model, clone_function=clone)
    _copy_weights(model, quantized)
    return quantized


def weight_storage_bits(layer_or_config: Union[keras.layers.Layer, QuantizationConfig, QuantSpec]) -> int:
    """Stored bits per kernel weight: a layer's (32 unless quantized), a spec's, or a config's
    quantized layers' (QAT_INT8: 8)."""
    if isinstance(layer_or_config, QuantSpec):
        return layer_or_config.storage_bits
    if isinstance(layer_or_config, QuantizationConfig):
        whole_model_bits = quant_mode(layer_or_config.quantization).model_weight_bits
        return whole_model_bits if whole_model_bits is not None else layer_or_config.weight_spec().storage_bits
    if isinstance(layer_or_config, QUANTIZED_LAYERS):
        return layer_or_config.weight_quantizer.storage_bits
    if isinstance(layer_or_config, keras.layers.Layer):
        return FLOAT_BITS
    raise UNetError(f"{layer_or_config!r}: expected a Keras layer, QuantizationConfig or QuantSpec")


def _scale_count(layer: keras.layers.Layer) -> int:
    """float32 scales stored with a quantized kernel (per channel or per tensor)."""
    spec = layer.weight_quantizer
    if not quant_mode(spec.mode).has_scale:
        return 0
    return int(layer.kernel.shape[layer.kernel_channel_axis]) if spec.per_channel else 1


def model_storage_report(model: keras.Model) -> dict:
    """Stored size of every layer with weights, as `unet_medical.model.packing.save_packed` stores them.

    Returns:
        {"layers": [{"name", "class", "kernel_params", "kernel_bits_per_weight", "float_params",
        "scale_params", "stored_bits"}...], "total_params", "stored_bits", "float32_bits",
        "compression"} where float_params are all other weights (bias, BN, ranges) at 32 bits and
        compression = float32_bits / stored_bits. TF-MOT QAT layers count as float here: their
        int8 size is that of the TFLite file.
    """
    rows = []
    for layer in model.layers:
        params = sum(int(tf.size(w)) for w in layer.weights)
        if not params:
            continue
        quantized = isinstance(layer, QUANTIZED_LAYERS) and layer.weight_quantizer.mode != "NONE"
        kernel_params = int(tf.size(layer.kernel)) if quantized else 0
        bits = weight_storage_bits(layer) if quantized else FLOAT_BITS
        scale_params = _scale_count(layer) if quantized else 0
        float_params = params - kernel_params
        rows.append({
            "name": layer.name, "class": layer.__class__.__name__, "kernel_params": kernel_params,
            "kernel_bits_per_weight": bits, "float_params": float_params, "scale_params": scale_params,
            "stored_bits": kernel_params * bits + (float_params + scale_params) * FLOAT_BITS,
        })
    total = sum(row["kernel_params"] + row["float_params"] for row in rows)
    stored = sum(row["stored_bits"] for row in rows)
    return {"layers": rows, "total_params": total, "stored_bits": stored,
            "float32_bits": total * FLOAT_BITS,
            "compression": (total * FLOAT_BITS / stored) if stored else 1.0}

