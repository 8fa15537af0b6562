"""TF-MOT 8-bit quantization-aware training (QAT); its int8 TFLite file comes from the one exporter.

TF-MOT's default 8-bit scheme handles a same-padding U-Net built from Conv2D (linear) ->
BatchNormalization -> ReLU blocks, MaxPooling2D, Conv2DTranspose, nearest UpSampling2D,
Concatenate and a sigmoid/softmax head (measured with TF-MOT 0.8.1: tests/test_qat.py). Layers it
does not know (the project's custom layers, Lambda) must be annotated with a QuantizeConfig:
`NoOpQuantizeConfig` keeps them in float. Conv3D and Conv3DTranspose are not in TF-MOT's default
8-bit registry (commented out in default_8bit_quantize_registry.py, 0.8.1): `ConvQuantizeConfig`
quantizes them as the registry quantizes Conv2D / Conv2DTranspose (tests/test_qat3d.py says what
TFLite then runs in int8). A QAT model with a quantized Conv2DTranspose cannot be saved as a
SavedModel: use .h5 (`save_qat_model` / `load_qat_model`). The int8 TFLite file is written by the
export stage (`--export_format tflite --export_precision int8`, unet_medical.export.formats, which
converts QAT models from their own ranges) and run by unet_medical.inference.runtimes.tflite_predictor.

Usage:
    qat_model = quantize_model_qat(float_model)       # then train as usual
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Union


import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from unet_medical.model.packing import import_project_layers
from unet_medical.model.serialization import safe_mode
from unet_medical.model.quantized_layers import QUANTIZED_LAYERS
from unet_medical.base.errors import UNetError

PathLike = Union[str, os.PathLike]


@keras.saving.register_keras_serializable(package="unet")
class NoOpQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
    """QuantizeConfig that leaves a layer entirely in float (no weight, activation or output
    quantizers), for custom layers TF-MOT does not know, e.g. a seeded dropout or a crop."""

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return []

    def get_config(self):
        return {}


class PerChannelKernelQuantizer(tfmot.quantization.keras.quantizers.LastValueQuantizer):
    """TF-MOT's symmetric 8-bit per-output-channel kernel quantizer, for kernels of any rank.

    TF-MOT's per-channel LastValueQuantize only handles 2-D and 4-D tensors (quant_ops.py, 0.8.1), so a
    5-D Conv3D kernel (kd, kh, kw, in, out) gets the same computation here: in training the range of
    output channel c is [-m_c, m_c], m_c = max|w[..., c]| (stored in the quantizer's min/max
    variables), at inference the stored range; TF's per-channel fake quantization (any rank, channels
    last) then rounds w to multiples of m_c / 127. Folding the kernel to 4-D around TF-MOT's op instead
    breaks TFLite conversion (its per-channel axis changes under the reshape).
    """

    def __init__(self):
        super().__init__(num_bits=8, per_axis=True, symmetric=True, narrow_range=True)

    def __call__(self, inputs, training, weights, **kwargs):
        if inputs.shape.rank <= 4:
            return super().__call__(inputs, training, weights, **kwargs)
        min_var, max_var = weights["min_var"], weights["max_var"]
        # QuantizeWrapper calls a quantizer once per branch of its smart_cond: `training` is a bool.
        if not training:
            return self._fake_quantize(inputs, min_var, max_var)
        axes = list(range(inputs.shape.rank - 1))
        low, high = tf.reduce_min(inputs, axis=axes), tf.reduce_max(inputs, axis=axes)
        # Symmetric and containing 0, as TF-MOT's symmetric narrow-range LastValueQuantize.
        min_var.assign(tf.minimum(low, -high))
        max_var.assign(tf.maximum(high, -low))
        # TF has no gradient of the per-channel op above rank 4: pass it straight through, which is
        # what its gradient is here (every weight lies inside its own channel's range).
        return inputs + tf.stop_gradient(self._fake_quantize(inputs, min_var, max_var) - inputs)

    def _fake_quantize(self, inputs, min_var, max_var):
        return tf.quantization.fake_quant_with_min_max_vars_per_channel(
            inputs, min_var, max_var, num_bits=self.num_bits, narrow_range=self.narrow_range)


@keras.saving.register_keras_serializable(package="unet")
class ConvQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
    """8-bit QAT of a convolution the default registry does not cover (Conv3D, Conv3DTranspose).

    The quantizers TF-MOT gives Conv2D / Conv2DTranspose, for any number of spatial axes: the kernel
    symmetric 8-bit in [-127, 127] steps (narrow range), its range the kernel's own min/max at every
    step, per output channel (the kernel's last axis) when `per_channel`, else one range per tensor
    (a transposed conv: its last kernel axis is the input channels, and TFLite takes per-channel
    scales on output channels only); the layer's output after its activation asymmetric 8-bit with a
    moving-average range.

    Args:
        per_channel: one kernel range per output channel (plain convs) or one per tensor.
    """

    def __init__(self, per_channel: bool = True):
        self.per_channel = bool(per_channel)
        quantizers = tfmot.quantization.keras.quantizers
        self.weight_quantizer = PerChannelKernelQuantizer() if self.per_channel else quantizers.LastValueQuantizer(
            num_bits=8, per_axis=False, symmetric=True, narrow_range=True)
        self.activation_quantizer = quantizers.MovingAverageQuantizer(
            num_bits=8, per_axis=False, symmetric=False, narrow_range=False)

    @classmethod
    def for_layer(cls, layer: keras.layers.Layer) -> "ConvQuantizeConfig":
        """Per channel for a plain conv, per tensor for a transposed conv."""
        return cls(per_channel=not isinstance(layer, _TRANSPOSED_CONVS))

    def get_weights_and_quantizers(self, layer):
        return [(layer.kernel, self.weight_quantizer)]

    def get_activations_and_quantizers(self, layer):
        return [(layer.activation, self.activation_quantizer)]

    def set_quantize_weights(self, layer, quantize_weights):
        # The wrapper calls the layer with its kernel attribute set to the fake-quantized tensor.
        layer.kernel = quantize_weights[0]

    def set_quantize_activations(self, layer, quantize_activations):
        layer.activation = quantize_activations[0]

    def get_output_quantizers(self, layer):
        return []

    def get_config(self):
        return {"per_channel": self.per_channel}


# Convs quantized with ConvQuantizeConfig: those the default 8-bit registry does not know.
_CONVS_OUTSIDE_REGISTRY = (keras.layers.Conv3D, keras.layers.Conv3DTranspose)
_TRANSPOSED_CONVS = (keras.layers.Conv3DTranspose,)


def _registered_by_class_name() -> dict:
    """Registered custom objects under their bare class names (unique ones only).

    TF-MOT's QuantizeWrapper stores the wrapped layer's bare class name ("SeededDropout"), while
    `register_keras_serializable` files it as "unet>SeededDropout"; without this map loading fails
    with "Unknown layer".
    """
    by_name: dict = {}
    for registered in keras.saving.get_custom_objects().values():
        name = getattr(registered, "__name__", None)
        if name:
            by_name.setdefault(name, []).append(registered)
    return {name: objects[0] for name, objects in by_name.items() if len(set(objects)) == 1}


def quantize_scope(custom_objects: Optional[Mapping[str, Any]] = None):
    """Scope in which QAT models deserialize: NoOpQuantizeConfig, every registered custom layer
    and `custom_objects`."""
    objects = {**_registered_by_class_name(), "NoOpQuantizeConfig": NoOpQuantizeConfig,
               "ConvQuantizeConfig": ConvQuantizeConfig, **(custom_objects or {})}
    return tfmot.quantization.keras.quantize_scope(objects)


def quantize_model_qat(model: keras.Model) -> keras.Model:
    """A TF-MOT 8-bit QAT copy of a float Functional model (weights copied; layer names get 'quant_').

    Layers the default 8-bit registry supports are quantized as TF-MOT decides (Conv -> BN -> ReLU
    quantized as one fused op, as TFLite runs it); Conv3D / Conv3DTranspose with ConvQuantizeConfig
    (TF-MOT has no Conv3D -> BN fold: the BN runs in float between the conv's and the ReLU's
    quantized outputs); any other layer is annotated with NoOpQuantizeConfig and runs in float.
    """
    if not isinstance(model, keras.Model) or not getattr(model, "_is_graph_network", False):
        raise UNetError(f"model {getattr(model, 'name', model)!r}: TF-MOT QAT needs a tf_keras "
                        "Functional or Sequential model")
    registry = tfmot.quantization.keras.default_8bit.Default8BitQuantizeRegistry()

    def annotate(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, QUANTIZED_LAYERS):
            raise UNetError(f"layer {layer.name!r} is already fake-quantized (FIXED/INT/BNN/TERNARY): "
                            "apply QAT to the float model")
        if isinstance(layer, keras.Model):
            raise UNetError(f"layer {layer.name!r} is a nested model, which TF-MOT cannot quantize")
        # The annotation wraps the original layer object, so its weights carry over.
        if type(layer) in _CONVS_OUTSIDE_REGISTRY:
            quantize_config = ConvQuantizeConfig.for_layer(layer)
        else:
            quantize_config = None if registry.supports(layer) else NoOpQuantizeConfig()
        return tfmot.quantization.keras.quantize_annotate_layer(layer, quantize_config)

    annotated = keras.models.clone_model(model, clone_function=annotate)
    with quantize_scope():
        return tfmot.quantization.keras.quantize_apply(annotated)


def save_qat_model(model: keras.Model, path: PathLike) -> None:
    """Save a QAT model as .h5 (SavedModel and .keras do not round-trip quantized Conv2DTranspose)."""
    if not os.fspath(path).lower().endswith((".h5", ".hdf5")):
        raise UNetError(f"QAT model path {path}: expected a .h5 file (SavedModel and .keras cannot "
                        "store a quantized Conv2DTranspose)")
    model.save(path, save_format="h5")


def load_qat_model(path: PathLike, custom_objects: Optional[Mapping[str, Any]] = None) -> keras.Model:
    """Load a QAT model saved as .h5, inside `quantize_scope(custom_objects)`.

    Custom layers registered with `register_keras_serializable` are found without
    `custom_objects` once their module is imported (the project's unet_medical/model/layers.py is imported here).
    """
    if not os.path.isfile(path):
        raise UNetError(f"QAT model file {path}: not found (QAT models are saved as .h5 files)")
    import_project_layers()
    # Safe mode: an .h5 from elsewhere must not run a marshalled Lambda while it loads.
    with quantize_scope(custom_objects), safe_mode():
        try:
            return keras.models.load_model(path)
        except ValueError as error:
            if "Unknown" not in str(error):
                raise
            raise UNetError(f"QAT model file {path}: {error} (import the module that defines it, "
                            "or pass custom_objects)") from error
