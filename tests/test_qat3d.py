"""TF-MOT 8-bit QAT of a 3-D network: Conv3D / Conv3DTranspose get ConvQuantizeConfig (TF-MOT's default
registry leaves them out), the QAT model trains, round-trips through .h5, converts to int8 TFLite with the
one exporter's converter and agrees with the Keras QAT model (same tolerance as tests/test_qat.py)."""
import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

import unet_medical  # noqa: F401
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from unet_medical.base.errors import UNetError
from unet_medical.export.formats import keras_to_tflite
from unet_medical.inference.runtimes import tflite_predictor
from unet_medical.model.qat import (ConvQuantizeConfig, PerChannelKernelQuantizer, load_qat_model,
                                   quantize_model_qat, save_qat_model)

SIZE = 8
L = keras.layers


def conv_bn_relu(x, filters, name, strides=1):
    x = L.Conv3D(filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = L.BatchNormalization(name=f"{name}_bn")(x)
    return L.ReLU(name=f"{name}_relu")(x)


def tiny_bn_unet3d(max_pool: bool = False) -> keras.Model:
    """Same-padding Conv3D-BN-ReLU U-Net of depth 1, softmax head. Down-sampling by a strided conv:
    TFLite has no builtin MaxPool3D (see test_max_pool_3d_is_refused_by_name)."""
    inputs = keras.Input((SIZE, SIZE, SIZE, 1), name="volume")
    skip = conv_bn_relu(inputs, 4, "enc")
    x = L.MaxPooling3D(name="pool")(skip) if max_pool else conv_bn_relu(skip, 8, "down", strides=2)
    x = conv_bn_relu(x, 8, "bottom")
    x = L.Conv3DTranspose(4, 2, strides=2, name="upconv")(x)
    x = L.Concatenate(name="concat")([skip, x])
    x = conv_bn_relu(x, 4, "dec")
    outputs = L.Conv3D(2, 1, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    labels = (rng.uniform(size=(4, SIZE, SIZE, SIZE)) > 0.5).astype(np.int32)
    # Two well-separated grey levels, so the class scores separate after a few steps (as in 2-D).
    volumes = 0.2 + 0.6 * labels + rng.normal(scale=0.05, size=labels.shape)
    return volumes[..., None].astype(np.float32), labels


@pytest.fixture(scope="module")
def trained_qat(data):
    keras.utils.set_random_seed(0)
    model = quantize_model_qat(tiny_bn_unet3d())
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy())
    model.fit(*data, batch_size=1, epochs=3, verbose=0)
    return model


@pytest.mark.slow  # seconds of TensorFlow work: the fast subset stays under 2 minutes
def test_conv3d_layers_get_the_conv_quantize_config(trained_qat):
    for name in ("quant_enc_conv", "quant_bottom_conv", "quant_upconv", "quant_head"):
        wrapped = trained_qat.get_layer(name)
        assert isinstance(wrapped, tfmot.quantization.keras.QuantizeWrapperV2)
        assert isinstance(wrapped.quantize_config, ConvQuantizeConfig)

    def kernel_range_shape(name):
        (weight,) = [w for w in trained_qat.get_layer(name).weights if "kernel_max" in w.name]
        return tuple(weight.shape)

    # Per output channel for Conv3D, per tensor for Conv3DTranspose (as TF-MOT does in 2-D).
    assert kernel_range_shape("quant_bottom_conv") == (8,) and kernel_range_shape("quant_upconv") == ()


def test_per_channel_kernel_quantizer_matches_numpy_on_a_5d_kernel():
    kernel = np.random.default_rng(3).normal(size=(3, 3, 3, 4, 6)).astype(np.float32)
    quantizer = PerChannelKernelQuantizer()
    variables = quantizer.build(kernel.shape, "kernel", keras.layers.Layer())
    quantized = quantizer(tf.constant(kernel), True, variables).numpy()
    # Symmetric narrow-range 8 bits per output channel: step max|w_c| / 127, codes in [-127, 127].
    step = np.abs(kernel).max(axis=(0, 1, 2, 3)) / 127
    np.testing.assert_allclose(quantized, np.round(kernel / step) * step, rtol=0, atol=1e-6)
    assert len(np.unique(np.round(quantized / step))) <= 255


@pytest.mark.slow  # seconds of TensorFlow work: the fast subset stays under 2 minutes
def test_tflite_int8_matches_keras_qat_3d(trained_qat, data, tmp_path):
    flatbuffer = keras_to_tflite(trained_qat, (SIZE, SIZE, SIZE, 1))
    path = tmp_path / "model.tflite"
    path.write_bytes(flatbuffer)
    keras_out = trained_qat.predict(data[0], verbose=0)
    tflite_out = tflite_predictor(path)(data[0])
    agreement = np.mean(keras_out.argmax(-1) == tflite_out.argmax(-1))
    print(f"3-D TFLite int8 vs Keras QAT: argmax agreement {agreement:.5f}, "
          f"max output difference {np.abs(keras_out - tflite_out).max():.5f}")
    assert tflite_out.shape == keras_out.shape and agreement >= 0.99
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    # TFLite's 3-D convs are float kernels between int8 activations (quantize/dequantize around them).
    assert {"CONV_3D", "CONV_3D_TRANSPOSE", "QUANTIZE", "DEQUANTIZE"} <= ops
    assert np.int8 in {detail["dtype"] for detail in interpreter.get_tensor_details()}


@pytest.mark.slow  # seconds of TensorFlow work: the fast subset stays under 2 minutes
def test_qat3d_round_trips_h5(trained_qat, data, tmp_path):
    path = tmp_path / "qat3d.h5"
    save_qat_model(trained_qat, path)
    loaded = load_qat_model(path)
    assert isinstance(loaded.get_layer("quant_upconv").quantize_config, ConvQuantizeConfig)
    np.testing.assert_array_equal(loaded.predict(data[0], verbose=0), trained_qat.predict(data[0], verbose=0))


def test_max_pool_3d_is_refused_by_name():
    float_model = tiny_bn_unet3d(max_pool=True)
    with pytest.raises(UNetError, match=r"^layer 'pool' \(MaxPooling3D\): TFLite has no builtin.*ONNX or OpenVINO$"):
        keras_to_tflite(float_model, (SIZE, SIZE, SIZE, 1), precision="fp32")
    # Looked for through TF-MOT's wrapper: the converter's own error would be about quantization scales.
    with pytest.raises(UNetError, match=r"^layer 'quant_pool' \(MaxPooling3D\)"):
        keras_to_tflite(quantize_model_qat(float_model), (SIZE, SIZE, SIZE, 1))


@pytest.mark.slow  # seconds of TensorFlow and OpenVINO work
def test_the_study_ships_a_3d_qat_network_with_max_pooling_as_openvino_int8(data, tmp_path):
    """TFLite cannot pool in 3-D, so the compression study's deployable QAT file for a volume network is the
    OpenVINO IR of the QAT graph: its fake-quant nodes become FakeQuantize (int8), and it agrees with Keras."""
    import openvino as ov

    from unet_medical.cli.study import deployable
    from unet_medical.model.unet import UNetSpec

    keras.utils.set_random_seed(0)
    model = quantize_model_qat(tiny_bn_unet3d(max_pool=True))
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy())
    model.fit(*data, batch_size=1, epochs=3, verbose=0)
    spec = UNetSpec(n_classes=2, base_filters=4, depth=1, padding="same", dims=3)
    info = SimpleNamespace(variant="qat", spec=dataclasses.asdict(spec), quantization_config=None)
    path, label, predictor = deployable(model, info, tmp_path, SIZE)
    assert label == "openvino int8 (QAT)" and (path / "model.xml").is_file() and (path / "model.bin").is_file()
    assert "FakeQuantize" in {op.get_type_name() for op in ov.Core().read_model(str(path / "model.xml")).get_ops()}
    agreement = np.mean(predictor(data[0]).argmax(-1) == model.predict(data[0], verbose=0).argmax(-1))
    assert agreement >= 0.99
