"""TF-MOT 8-bit QAT: annotation of custom layers, .h5 round trip, int8 TFLite parity with Keras.

The TFLite file comes from the one exporter's converter (unet_medical.export.formats) and runs in the one
TFLite runtime (unet_medical.inference.runtimes.tflite_predictor), as in export parity and the study."""
import importlib.util

import numpy as np
import pytest

import unet_medical  # noqa: F401
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from unet_medical.export.formats import keras_to_tflite
from unet_medical.inference.runtimes import tflite_predictor
from unet_medical.model.qat import NoOpQuantizeConfig, load_qat_model, quantize_model_qat, save_qat_model
from unet_medical.model.quantizers import QuantizationConfig
from unet_medical.model.quantization import quantize_unet
from unet_medical.base.errors import UNetError

SIZE = 64


@keras.saving.register_keras_serializable(package="test_qat")
class Halve(keras.layers.Layer):
    """A custom layer TF-MOT does not know."""

    def call(self, inputs):
        return inputs * 0.5


def conv_bn_relu(x, filters, name):
    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def tiny_bn_unet(custom_layer: bool = False) -> keras.Model:
    """Same-padding Conv-BN-ReLU U-Net of depth 1, base 4 filters, softmax head."""
    inputs = keras.Input((SIZE, SIZE, 1), name="image")
    skip = conv_bn_relu(conv_bn_relu(inputs, 4, "enc1"), 4, "enc2")
    x = keras.layers.MaxPooling2D(name="pool")(skip)
    x = conv_bn_relu(x, 8, "bottom")
    if custom_layer:
        x = Halve(name="halve")(x)
    x = keras.layers.Conv2DTranspose(4, 2, strides=2, name="upconv")(x)
    x = keras.layers.Concatenate(name="concat")([skip, x])
    x = conv_bn_relu(x, 4, "dec")
    outputs = keras.layers.Conv2D(2, 1, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs)


def random_data(count: int = 4):
    rng = np.random.default_rng(0)
    labels = (rng.uniform(size=(count, SIZE, SIZE)) > 0.5).astype(np.int32)
    # Two well-separated grey levels: a target a few QAT steps can learn, so that the class scores
    # separate and the comparison is not dominated by near-ties of an untrained network.
    images = 0.2 + 0.6 * labels + rng.normal(scale=0.05, size=labels.shape)
    return images[..., None].astype(np.float32), labels


def qat_train(model: keras.Model, images, labels, from_logits: bool = False) -> None:
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits))
    model.fit(images, labels, batch_size=1, epochs=3, verbose=0)


def run_tflite(flatbuffer: bytes, images, directory) -> np.ndarray:
    path = directory / "model.tflite"
    path.write_bytes(flatbuffer)
    return tflite_predictor(path)(images)


def assert_tflite_agrees(model: keras.Model, flatbuffer: bytes, images, directory) -> None:
    keras_out = model.predict(images, verbose=0)
    tflite_out = run_tflite(flatbuffer, images, directory)
    agreement = np.mean(keras_out.argmax(-1) == tflite_out.argmax(-1))
    print(f"TFLite int8 vs Keras QAT: argmax agreement {agreement:.5f}, "
          f"max output difference {np.abs(keras_out - tflite_out).max():.5f}")
    assert tflite_out.shape == keras_out.shape
    assert agreement >= 0.99


@pytest.fixture(scope="module")
def data():
    return random_data()


@pytest.fixture(scope="module")
def trained_qat(data):
    keras.utils.set_random_seed(0)
    model = quantize_unet(tiny_bn_unet(), QuantizationConfig("QAT_INT8"))
    qat_train(model, *data)
    return model


@pytest.fixture(scope="module")
def flatbuffer(trained_qat, tmp_path_factory):
    return keras_to_tflite(trained_qat, (SIZE, SIZE, 1))


def test_qat_model_structure(trained_qat):
    names = [layer.name for layer in trained_qat.layers]
    # TF-MOT's input quantizer gets a Keras-uniquified name (quantize_layer, quantize_layer_1, ...)
    # that depends on which QAT models this process built before: match its type, not its name.
    assert any(type(layer).__name__ == "QuantizeLayer" for layer in trained_qat.layers)
    assert "quant_upconv" in names and "quant_head" in names
    wrapped = trained_qat.get_layer("quant_enc1_conv")
    assert isinstance(wrapped, tfmot.quantization.keras.QuantizeWrapperV2)


def test_tflite_int8_matches_keras_qat(trained_qat, flatbuffer, data, tmp_path):
    assert_tflite_agrees(trained_qat, flatbuffer, data[0], tmp_path)
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    dtypes = {detail["dtype"] for detail in interpreter.get_tensor_details()}
    assert np.int8 in dtypes  # weights and activations are int8 inside the float I/O


def test_tflite_runtime_runs_any_batch_and_checks_shapes(flatbuffer, data, tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(flatbuffer)
    predictor = tflite_predictor(path)
    np.testing.assert_array_equal(predictor(data[0][:2])[:1], predictor(data[0][:1]))
    with pytest.raises(UNetError, match="takes tiles of shape"):
        predictor(np.zeros((1, 32, 32, 1), np.float32))
    with pytest.raises(UNetError, match="not found"):
        tflite_predictor(tmp_path / "missing.tflite")


def test_custom_layers_stay_float_and_round_trip_h5(data, tmp_path):
    keras.utils.set_random_seed(1)
    model = quantize_model_qat(tiny_bn_unet(custom_layer=True))
    halve = model.get_layer("quant_halve")
    assert isinstance(halve.quantize_config, NoOpQuantizeConfig) and isinstance(halve.layer, Halve)
    model(data[0][:1], training=True)  # give the quantizers ranges
    path = tmp_path / "qat.h5"
    save_qat_model(model, path)
    loaded = load_qat_model(path)
    np.testing.assert_array_equal(loaded.predict(data[0], verbose=0), model.predict(data[0], verbose=0))


def test_save_and_load_errors(trained_qat, tmp_path):
    with pytest.raises(UNetError, match=".h5"):
        save_qat_model(trained_qat, tmp_path / "saved_model")
    with pytest.raises(UNetError, match="not found"):
        load_qat_model(tmp_path / "missing.h5")
    with pytest.raises(UNetError, match="input_shape"):
        keras_to_tflite(trained_qat, (SIZE, SIZE))


def test_qat_rejects_fake_quantized_and_subclassed_models():
    fixed = quantize_unet(tiny_bn_unet(), QuantizationConfig("FIXED"))
    with pytest.raises(UNetError, match="already fake-quantized"):
        quantize_model_qat(fixed)

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(UNetError, match="Functional"):
        quantize_model_qat(Subclassed())


@pytest.mark.slow
def test_project_unet_qat_to_tflite(data, tmp_path):
    if importlib.util.find_spec("unet_medical.model.unet") is None:
        pytest.skip("unet_medical/model/unet.py not written yet")
    from unet_medical.model.layers import SeededDropout
    from unet_medical.model.unet import UNetSpec, build_unet

    keras.utils.set_random_seed(2)
    float_unet = build_unet(UNetSpec(padding="same", batch_norm=True, base_filters=4, depth=2, dropout=0.5))
    model = quantize_model_qat(float_unet)
    dropout = model.get_layer("quant_bottleneck_dropout")
    assert isinstance(dropout.layer, SeededDropout)
    assert isinstance(dropout.quantize_config, NoOpQuantizeConfig)
    qat_train(model, *data, from_logits=True)
    flatbuffer = keras_to_tflite(model, (SIZE, SIZE, 1))
    assert_tflite_agrees(model, flatbuffer, data[0], tmp_path)
