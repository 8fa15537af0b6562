"""TF-MOT 8-bit quantization-aware training (QAT) and its int8 TFLite export.

TF-MOT's default 8-bit scheme handles a same-padding U-Net built from Conv2D (linear) ->
BatchNormalization -> ReLU blocks, MaxPooling2D, Conv2DTranspose, nearest UpSampling2D,
Concatenate and a sigmoid/softmax head (measured with TF-MOT 0.8.1: tests/test_qat.py). Layers it does not know (the project's
custom layers, Lambda) must be annotated with a QuantizeConfig: `NoOpQuantizeConfig` keeps them in
float. A QAT model with a quantized Conv2DTranspose cannot be saved as a SavedModel: use .h5
(`save_qat_model` / `load_qat_model`) or export through a tf.Module (`convert_qat_to_tflite`).

Usage:
    qat_model = quantize_model_qat(float_model)       # then train as usual
    convert_qat_to_tflite(qat_model, "unet_int8.tflite", (256, 256, 1))
    probabilities = run_tflite("unet_int8.tflite", images)
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

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
               **(custom_objects or {})}
    return tfmot.quantization.keras.quantize_scope(objects)


def quantize_model_qat(model: keras.Model) -> keras.Model:
    """A TF-MOT 8-bit QAT copy of a float Functional model (weights copied; layer names get 'quant_').

    Layers the default 8-bit registry supports are quantized as TF-MOT decides (Conv -> BN -> ReLU
    quantized as one fused op, as TFLite runs it); any other layer is annotated with
    NoOpQuantizeConfig and runs in float.
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


def _check_image_shape(input_shape: Sequence[int]) -> tuple:
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(n, (int, np.integer)) and n > 0 for n in shape):
        raise UNetError(f"input_shape={input_shape!r}: expected (height, width, channels) positive integers")
    return tuple(int(n) for n in shape)


def convert_qat_to_tflite(model: keras.Model, path: PathLike, input_shape: Sequence[int],
                          batch_size: int = 1) -> bytes:
    """Convert a (trained) QAT model to an int8 TFLite flatbuffer and write it to `path`.

    The model is called from a tf.function with a fixed input signature (batch_size, H, W, C)
    float32 held by a tf.Module, which converts where a SavedModel export would fail. QAT ranges
    make a representative data set unnecessary. Inputs and outputs stay float32; weights and
    activations inside are int8.
    Returns:
        The flatbuffer bytes.
    """
    height, width, channels = _check_image_shape(input_shape)
    module = tf.Module()
    module.model = model
    module.serve = tf.function(
        lambda images: model(images, training=False),
        input_signature=[tf.TensorSpec((batch_size, height, width, channels), tf.float32, name="images")])
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.serve.get_concrete_function()], module)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    flatbuffer = converter.convert()
    try:
        with open(path, "wb") as handle:
            handle.write(flatbuffer)
    except OSError as error:
        raise UNetError(f"TFLite file {path}: cannot write ({error})") from error
    return flatbuffer


def _interpreter(path_or_bytes: Union[PathLike, bytes], num_threads: int):
    if isinstance(path_or_bytes, (bytes, bytearray)):
        return tf.lite.Interpreter(model_content=bytes(path_or_bytes), num_threads=num_threads)
    if not os.path.isfile(path_or_bytes):
        raise UNetError(f"TFLite file {path_or_bytes}: not found")
    return tf.lite.Interpreter(model_path=os.fspath(path_or_bytes), num_threads=num_threads)


def run_tflite(path_or_bytes: Union[PathLike, bytes], images: np.ndarray,
               num_threads: int = 1) -> np.ndarray:
    """Run a TFLite model (file or flatbuffer) on images with tf.lite.Interpreter (XNNPACK for
    float ops by default), in chunks of the model's fixed batch size.

    Args:
        images: (N, H, W, C) float array matching the model's input (H, W, C).
    Returns:
        float32 outputs (N, ...) in the model's output layout (int8 outputs are dequantized).
    """
    interpreter = _interpreter(path_or_bytes, num_threads)
    interpreter.allocate_tensors()
    source, sink = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    images = np.asarray(images, dtype=np.float32)
    batch = int(source["shape"][0])
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(source["shape"][1:]) or len(images) % batch:
        raise UNetError(f"images of shape {images.shape}: the TFLite model expects batches of "
                        f"shape {tuple(source['shape'])}")
    outputs = []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        if source["dtype"] != np.float32:
            scale, zero_point = source["quantization"]
            limits = np.iinfo(source["dtype"])
            codes = np.clip(np.round(chunk / scale + zero_point), limits.min, limits.max)
            chunk = codes.astype(source["dtype"])
        interpreter.set_tensor(source["index"], chunk)
        interpreter.invoke()
        result = interpreter.get_tensor(sink["index"])
        if sink["dtype"] != np.float32:
            scale, zero_point = sink["quantization"]
            result = (result.astype(np.float32) - zero_point) * scale
        outputs.append(result.astype(np.float32))
    return np.concatenate(outputs)
