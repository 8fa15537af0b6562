"""QuantConv3D / QuantConv3DTranspose: numerics against NumPy quantizers, config round trip, a 3-D
model through quantize_unet, save/load (h5, SavedModel, JSON in safe mode, bit-packed .npz)."""
import numpy as np
import pytest

import unet_medical  # noqa: F401
import tf_keras as keras

from unet_medical.model.packing import load_packed, save_packed
from unet_medical.model.quantization import quantize_unet
from unet_medical.model.quantized_layers import QuantConv3D, QuantConv3DTranspose
from unet_medical.model.quantizers import QuantizationConfig, QuantSpec
from unet_medical.model.serialization import model_from_json, safe_mode


# --------------------------------------------------------------------------- NumPy references

def numpy_fixed(x, integer_bits, fractional_bits, signed=True):
    """Two's complement Qi.f: round half to even to multiples of 2^-f, saturate to
    [-2^i, 2^i - 2^-f] (unsigned [0, 2^i - 2^-f])."""
    step = 2.0 ** -fractional_bits
    low = -(2.0 ** integer_bits) if signed else 0.0
    return (np.clip(np.round(np.asarray(x, np.float64) / step), low / step,
                    (2.0 ** integer_bits - step) / step) * step).astype(np.float32)


def numpy_int_per_channel(kernel, bits, channel_axis):
    """Symmetric n-bit codes in [-(2^(n-1) - 1), 2^(n-1) - 1], one scale max|w| / qmax per channel."""
    qmax = 2 ** (bits - 1) - 1
    axes = tuple(a for a in range(kernel.ndim) if a != channel_axis % kernel.ndim)
    max_abs = np.abs(kernel).max(axis=axes, keepdims=True).astype(np.float64)
    codes = np.clip(np.round(kernel.astype(np.float64) * (qmax / max_abs)), -qmax, qmax)
    return (codes * max_abs / qmax).astype(np.float32)


def numpy_int_unsigned(x, bits, max_value):
    """Unsigned n-bit activations with step max_value / (2^n - 1), saturating at max_value."""
    step = np.float32(max_value) / np.float32(2 ** bits - 1)
    return (np.clip(np.round(x / step), 0, 2 ** bits - 1) * step).astype(np.float32)


def float_twin(layer, kernel, x_shape):
    """The plain Keras conv of `layer`'s class and config, carrying `kernel` and layer's bias."""
    base = keras.layers.Conv3DTranspose if isinstance(layer, QuantConv3DTranspose) else keras.layers.Conv3D
    config = {k: v for k, v in layer.get_config().items()
              if k not in ("weight_quantizer", "activation_quantizer", "activation_momentum")}
    twin = base.from_config(config)
    twin.build(x_shape)
    twin.set_weights([kernel, layer.bias.numpy()])
    return twin


# --------------------------------------------------------------------------- layer numerics

def test_quant_conv3d_fixed_equals_conv_on_numpy_quantized_kernel_and_input():
    keras.utils.set_random_seed(1)
    layer = QuantConv3D(3, 3, padding="same", weight_quantizer=QuantSpec("FIXED", -1, 4),
                        activation_quantizer=QuantSpec("FIXED", 2, 2, signed=False))
    x = np.random.default_rng(1).uniform(-1, 5, size=(1, 4, 6, 6, 2)).astype(np.float32)
    y = layer(x).numpy()
    kernel = numpy_fixed(layer.kernel.numpy(), -1, 4)   # steps of 1/16 in [-0.5, 0.4375]
    assert set(np.unique(np.abs(kernel) * 16)) <= set(range(9))
    reference = float_twin(layer, kernel, x.shape)(numpy_fixed(x, 2, 2, signed=False)).numpy()
    np.testing.assert_allclose(y, reference, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(layer.quantized_kernel().numpy(), kernel)
    assert not np.array_equal(layer.kernel.numpy(), kernel)   # the variable stays float


def test_quant_conv3d_transpose_int_per_output_channel_and_activation_range():
    keras.utils.set_random_seed(2)
    layer = QuantConv3DTranspose(5, 2, strides=2, weight_quantizer=QuantSpec("INT", bits=8),
                                 activation_quantizer=QuantSpec("INT", bits=4, per_channel=False,
                                                                signed=False))
    x = np.random.default_rng(2).uniform(0, 3, size=(1, 2, 3, 3, 3)).astype(np.float32)
    layer(x, training=True)   # the first batch sets the activation range to max|x|
    assert layer.activation_max.numpy() == pytest.approx(x.max())
    kernel = layer.kernel.numpy()   # (kd, kh, kw, out=5, in=3): one scale per output channel, axis -2
    expected_kernel = numpy_int_per_channel(kernel, 8, channel_axis=-2)
    np.testing.assert_array_equal(layer.quantized_kernel().numpy(), expected_kernel)
    probe = x * 1.5   # inference saturates at the stored range
    expected = float_twin(layer, expected_kernel, x.shape)(numpy_int_unsigned(probe, 4, x.max())).numpy()
    np.testing.assert_allclose(layer(probe, training=False).numpy(), expected, rtol=1e-6, atol=1e-6)
    assert layer(probe).shape == (1, 4, 6, 6, 5)


def test_quant_conv3d_config_round_trip():
    layer = QuantConv3DTranspose(4, 3, strides=2, padding="same", name="upq",
                                 weight_quantizer=QuantSpec("INT", bits=6),
                                 activation_quantizer=QuantSpec("FIXED", 3, 2, signed=False),
                                 activation_momentum=0.9)
    config = layer.get_config()
    clone = QuantConv3DTranspose.from_config(config)
    assert clone.get_config() == config and clone.weight_quantizer == QuantSpec("INT", bits=6)
    assert type(keras.layers.deserialize(keras.layers.serialize(layer))) is QuantConv3DTranspose
    conv = QuantConv3D(2, (1, 3, 3), weight_quantizer=QuantSpec("TERNARY"), name="c")
    assert QuantConv3D.from_config(conv.get_config()).kernel_size == (1, 3, 3)


# --------------------------------------------------------------------------- a 3-D model

def small_unet3d(size: int = 8) -> keras.Model:
    """Conv-ReLU, pool, Conv-ReLU, Conv3DTranspose (linear), concat, conv, 1x1x1 head."""
    inputs = keras.Input((size, size, size, 1), name="volume")
    skip = keras.layers.Conv3D(4, 3, padding="same", activation="relu", name="enc")(inputs)
    x = keras.layers.MaxPooling3D(name="pool")(skip)
    x = keras.layers.Conv3D(8, 3, padding="same", activation="relu", name="bottom")(x)
    x = keras.layers.Conv3DTranspose(4, 2, strides=2, name="up")(x)
    x = keras.layers.Concatenate(name="cat")([skip, x])
    x = keras.layers.Conv3D(4, 3, padding="same", activation="relu", name="dec")(x)
    outputs = keras.layers.Conv3D(2, 1, name="head")(x)
    return keras.Model(inputs, outputs, name="small_unet3d")


CONFIG = QuantizationConfig("INT", weight_bits=4, activation_bits=6, keep_first_float=False,
                            keep_last_float=False)


@pytest.fixture(scope="module")
def volumes():
    return np.random.default_rng(0).uniform(size=(1, 8, 8, 8, 1)).astype(np.float32)


@pytest.fixture(scope="module")
def int_model(volumes):
    keras.utils.set_random_seed(0)
    model = quantize_unet(small_unet3d(), CONFIG)
    model(volumes, training=True)   # sets the activation ranges
    return model


def test_quantize_unet_swaps_3d_convs_and_splits_the_skip_concat(int_model):
    kinds = {layer.name: type(layer) for layer in int_model.layers}
    assert kinds["enc"] is kinds["bottom"] is kinds["dec"] is kinds["head"] is QuantConv3D
    assert kinds["up"] is QuantConv3DTranspose
    # dec reads concat([ReLU skip, linear up-conv]): unsigned then signed segments, as in 2-D.
    segments = int_model.get_layer("dec").activation_quantizer
    assert [(n, spec.signed) for n, spec in segments] == [(4, False), (4, True)]


@pytest.mark.parametrize("filename", ["model.h5", pytest.param("saved_model", marks=pytest.mark.slow)])  # (seconds)
def test_3d_model_round_trips_in_safe_mode(int_model, volumes, tmp_path, filename):
    path = str(tmp_path / filename)
    int_model.save(path)
    with safe_mode():
        loaded = keras.models.load_model(path)
    assert type(loaded.get_layer("up")) is QuantConv3DTranspose
    np.testing.assert_array_equal(loaded(volumes).numpy(), int_model(volumes).numpy())


def test_3d_model_json_and_packed_round_trip(int_model, volumes, tmp_path):
    rebuilt = model_from_json(int_model.to_json(), "model.json")
    rebuilt.set_weights(int_model.get_weights())
    np.testing.assert_array_equal(rebuilt(volumes).numpy(), int_model(volumes).numpy())
    path = tmp_path / "packed.npz"
    save_packed(int_model, CONFIG, path)
    np.testing.assert_array_equal(load_packed(path)(volumes).numpy(), int_model(volumes).numpy())


def test_the_packed_writer_checks_a_3d_network_on_a_volume(tmp_path):
    """The study ships fixed-point/INT 3-D variants as packed files: the writer's reload check takes a volume."""
    from unet_medical.export.packed import packed_writer
    from unet_medical.inference.artifact_formats import WriteRequest
    from unet_medical.model.unet import UNetSpec, build_unet

    spec = UNetSpec(n_classes=2, base_filters=4, depth=2, padding="same", dropout=0.0, dims=3)
    keras.utils.set_random_seed(0)
    model = quantize_unet(build_unet(spec), CONFIG)
    model(np.random.default_rng(1).uniform(size=(1, 16, 16, 16, 1)).astype(np.float32), training=True)
    fields = packed_writer(WriteRequest(model=model, module=None, spec=spec, path=tmp_path / "model_packed.npz",
                                        precision="INT", tile_size=16, quantization=CONFIG.to_dict()))
    assert fields["max_abs_logit_diff"] <= 1e-4 and fields["size_ratio_vs_float32"] > 2
