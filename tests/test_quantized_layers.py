"""QuantConv2D / QuantConv2DTranspose and quantize_unet: numerics, transform, training, serialization."""
import importlib.util

import numpy as np
import pytest

import unet_medical  # noqa: F401
import tensorflow as tf
import tf_keras as keras

from unet_medical.model.quantized_layers import QuantConv2D, QuantConv2DTranspose
from unet_medical.model.quantizers import QuantizationConfig, QuantSpec, quantize_fixed, quantize_int
from unet_medical.model.quantization import boundary_convs, model_storage_report, quantize_unet, weight_storage_bits
from unet_medical.base.errors import UNetError


@keras.saving.register_keras_serializable(package="test_quantized_layers")
class ChannelGain(keras.layers.Layer):
    """A custom layer 'from another module': multiplies by a constant gain kept in its config."""

    def __init__(self, gain: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.gain = gain

    def call(self, inputs):
        return inputs * self.gain

    def get_config(self):
        return {**super().get_config(), "gain": self.gain}


def small_unet(size: int = 16) -> keras.Model:
    """Conv-ReLU, Conv-BN-ReLU, pool, transposed conv (linear), concat, conv, custom layer, 1x1 head."""
    inputs = keras.Input((size, size, 1), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="first")(inputs)
    x = keras.layers.Conv2D(6, 3, padding="same", name="enc")(x)
    x = keras.layers.BatchNormalization(name="enc_bn")(x)
    skip = keras.layers.ReLU(name="enc_relu")(x)
    x = keras.layers.MaxPooling2D(name="pool")(skip)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="bottom")(x)
    x = keras.layers.Conv2DTranspose(4, 2, strides=2, name="up")(x)
    x = keras.layers.Concatenate(name="cat")([skip, x])
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="dec")(x)
    x = ChannelGain(0.5, name="gain")(x)
    outputs = keras.layers.Conv2D(2, 1, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name="small_unet")


@pytest.fixture(scope="module")
def float_model():
    keras.utils.set_random_seed(0)
    return small_unet()


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(size=(2, 16, 16, 1)).astype(np.float32)


FIXED = QuantizationConfig("FIXED", weight_i_width=1, weight_f_width=5, activation_i_width=4,
                           activation_f_width=4)


# --------------------------------------------------------------------------- layer numerics


def test_quant_conv2d_equals_conv_on_quantized_kernel_and_input():
    keras.utils.set_random_seed(1)
    weight, activation = QuantSpec("FIXED", -1, 4), QuantSpec("FIXED", 2, 2, signed=False)
    layer = QuantConv2D(3, 3, padding="same", weight_quantizer=weight, activation_quantizer=activation)
    x = np.random.default_rng(1).uniform(-1, 5, size=(1, 8, 8, 2)).astype(np.float32)
    y = layer(x).numpy()
    kernel = quantize_fixed(layer.kernel, -1, 4)
    reference = tf.nn.conv2d(quantize_fixed(x, 2, 2, signed=False), kernel, 1, "SAME") + layer.bias
    np.testing.assert_allclose(y, reference.numpy(), rtol=1e-6, atol=1e-6)
    # The variable itself stays float (training updates it); only the forward pass sees the grid.
    assert layer.kernel.dtype == tf.float32 and len(layer.trainable_weights) == 2
    assert not np.array_equal(layer.kernel.numpy(), kernel.numpy())


def test_quant_conv2d_transpose_quantizes_per_output_channel():
    keras.utils.set_random_seed(2)
    layer = QuantConv2DTranspose(5, 2, strides=2, weight_quantizer=QuantSpec("BNN"))
    x = np.random.default_rng(2).normal(size=(1, 4, 4, 3)).astype(np.float32)
    layer(x)
    kernel = layer.quantized_kernel().numpy()  # (kh, kw, out=5, in=3)
    scales = np.abs(layer.kernel.numpy()).mean(axis=(0, 1, 3))
    np.testing.assert_allclose(np.abs(kernel), np.broadcast_to(scales[None, None, :, None], kernel.shape),
                               rtol=1e-6)
    reference = keras.layers.Conv2DTranspose(5, 2, strides=2)
    reference.build(x.shape)
    reference.set_weights([kernel, layer.bias.numpy()])
    np.testing.assert_allclose(layer(x).numpy(), reference(x).numpy(), rtol=1e-6, atol=1e-6)


def test_int_activation_range_is_a_moving_average():
    layer = QuantConv2D(2, 1, weight_quantizer=QuantSpec("INT", bits=8),
                        activation_quantizer=QuantSpec("INT", bits=4, per_channel=False, signed=False),
                        activation_momentum=0.5)
    first, second = np.full((1, 2, 2, 1), 2.0, np.float32), np.full((1, 2, 2, 1), 4.0, np.float32)
    layer(first, training=True)
    assert layer.activation_max.numpy() == pytest.approx(2.0)  # the first batch sets the range
    layer(second, training=True)
    assert layer.activation_max.numpy() == pytest.approx(3.0)
    layer(np.full((1, 2, 2, 1), 100.0, np.float32), training=False)  # inference does not update
    assert layer.activation_max.numpy() == pytest.approx(3.0)
    assert [w.name for w in layer.trainable_weights] == [layer.kernel.name, layer.bias.name]
    # At inference the input saturates at the stored range 3.0 (4 unsigned bits, step 3/15).
    x = np.array([[[[1.0]], [[5.0]]]], np.float32)
    expected_input = quantize_int(x, 4, scale=3.0 / 15, signed=False)
    kernel = quantize_int(layer.kernel, 8, axis=-1)
    expected = tf.nn.conv2d(expected_input, kernel, 1, "VALID") + layer.bias
    np.testing.assert_allclose(layer(x, training=False).numpy(), expected.numpy(), rtol=1e-6)


def test_layer_config_round_trip():
    layer = QuantConv2DTranspose(4, 3, strides=2, padding="same", name="upq",
                                 weight_quantizer=QuantSpec("INT", bits=6),
                                 activation_quantizer=QuantSpec("FIXED", 3, 2, signed=False),
                                 activation_momentum=0.9)
    config = layer.get_config()
    assert config["weight_quantizer"] == {"mode": "INT", "integer_bits": 0, "fractional_bits": 0,
                                          "bits": 6, "per_channel": True, "signed": True,
                                          "scheme": "twos_complement"}
    clone = QuantConv2DTranspose.from_config(config)
    assert clone.get_config() == config
    assert clone.weight_quantizer == QuantSpec("INT", bits=6)
    serialized = keras.layers.serialize(layer)
    assert type(keras.layers.deserialize(serialized)) is QuantConv2DTranspose


def test_weight_only_modes_reject_activation_quantizers():
    with pytest.raises(UNetError, match="weights only"):
        QuantConv2D(2, 1, activation_quantizer=QuantSpec("BNN"))


# --------------------------------------------------------------------------- model transform


def test_quantize_unet_replaces_inner_convs_and_keeps_names(float_model):
    quantized = quantize_unet(float_model, FIXED)
    assert [layer.name for layer in quantized.layers] == [layer.name for layer in float_model.layers]
    kinds = {layer.name: type(layer) for layer in quantized.layers}
    assert kinds["first"] is keras.layers.Conv2D and kinds["head"] is keras.layers.Conv2D
    assert kinds["enc"] is QuantConv2D and kinds["bottom"] is QuantConv2D and kinds["dec"] is QuantConv2D
    assert kinds["up"] is QuantConv2DTranspose
    assert quantized.get_layer("enc").weight_quantizer == QuantSpec("FIXED", 0, 5)
    for layer in float_model.layers:
        for old, new in zip(layer.weights, quantized.get_layer(layer.name).weights):
            np.testing.assert_array_equal(old.numpy(), new.numpy())


def test_quantize_unet_can_quantize_first_and_last(float_model):
    config = QuantizationConfig("INT", keep_first_float=False, keep_last_float=False)
    quantized = quantize_unet(float_model, config)
    assert type(quantized.get_layer("first")) is QuantConv2D
    assert type(quantized.get_layer("head")) is QuantConv2D
    assert boundary_convs(float_model) == ({"first"}, {"head"})


def test_custom_layers_survive_the_transform(float_model, images):
    quantized = quantize_unet(float_model, FIXED)
    gain = quantized.get_layer("gain")
    assert type(gain) is ChannelGain and gain.gain == 0.5 and gain is not float_model.get_layer("gain")


def test_conv_inputs_are_unsigned_only_when_provably_nonnegative(float_model):
    quantized = quantize_unet(float_model, FIXED)
    signed = {layer.name: layer.activation_quantizer.signed
              for layer in quantized.layers if isinstance(layer, (QuantConv2D, QuantConv2DTranspose))
              and layer.name != "dec"}
    # enc: after a ReLU conv; bottom: pooled ReLU; up: ReLU conv output.
    assert signed == {"enc": False, "bottom": False, "up": False}
    assert quantized.get_layer("enc").activation_quantizer == QuantSpec("FIXED", 4, 4, signed=False)
    # dec: concat of the ReLU skip (6 channels, unsigned as where "bottom" reads it pooled) and the
    # linear transposed conv (4 channels, can be negative).
    assert quantized.get_layer("dec").activation_quantizer == (
        (6, QuantSpec("FIXED", 4, 4, signed=False)), (4, QuantSpec("FIXED", 3, 4, signed=True)))


def test_none_config_is_a_float_copy(float_model, images):
    copy = quantize_unet(float_model, QuantizationConfig("NONE"))
    assert copy is not float_model
    np.testing.assert_array_equal(copy(images).numpy(), float_model(images).numpy())


def test_quantized_output_differs_but_stays_close(float_model, images):
    quantized = quantize_unet(float_model, QuantizationConfig("INT"))
    float_out, quant_out = float_model(images).numpy(), quantized(images).numpy()
    assert not np.array_equal(float_out, quant_out)
    assert np.abs(float_out - quant_out).max() < 0.1


def test_quantize_unet_rejects_bad_models(float_model):
    with pytest.raises(UNetError, match="already quantized"):
        quantize_unet(quantize_unet(float_model, FIXED), FIXED)

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(UNetError, match="Functional"):
        quantize_unet(Subclassed(), FIXED)
    with pytest.raises(UNetError, match="QuantizationConfig"):
        quantize_unet(float_model, {"quantization": "FIXED"})


# --------------------------------------------------------------------------- training and saving


@pytest.mark.parametrize("mode", ["FIXED", "INT", "BNN", "TERNARY"])
def test_quantized_model_trains(mode, images):
    keras.utils.set_random_seed(3)
    model = quantize_unet(small_unet(), QuantizationConfig(mode, weight_i_width=1, weight_f_width=5,
                                                           activation_i_width=4, activation_f_width=4))
    labels = tf.one_hot((images[..., 0] > 0.5).astype(np.int32), 2)
    optimizer = keras.optimizers.Adam(0.01)

    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.categorical_crossentropy(labels, model(images, training=True)))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    losses = [float(step()) for _ in range(8)]
    assert losses[-1] < losses[0], losses
    if mode == "INT":
        assert model.get_layer("enc").activation_max.numpy() > 0


@pytest.fixture(scope="module")
def trained_int_model(images):
    model = quantize_unet(small_unet(), QuantizationConfig("INT", weight_bits=4, activation_bits=6))
    model(images, training=True)  # sets the activation ranges
    return model


def test_weights_round_trip_h5(trained_int_model, images, tmp_path):
    path = str(tmp_path / "weights.h5")
    trained_int_model.save_weights(path)
    fresh = quantize_unet(small_unet(), QuantizationConfig("INT", weight_bits=4, activation_bits=6))
    fresh.load_weights(path)
    np.testing.assert_array_equal(fresh(images).numpy(), trained_int_model(images).numpy())


def test_model_config_round_trip(trained_int_model, images):
    rebuilt = keras.Model.from_config(trained_int_model.get_config())
    rebuilt.set_weights(trained_int_model.get_weights())
    assert type(rebuilt.get_layer("up")) is QuantConv2DTranspose
    np.testing.assert_array_equal(rebuilt(images).numpy(), trained_int_model(images).numpy())


@pytest.mark.parametrize("filename", ["model.h5", pytest.param("saved_model", marks=pytest.mark.slow)])  # (seconds)
def test_full_model_round_trip(trained_int_model, images, tmp_path, filename):
    path = str(tmp_path / filename)
    trained_int_model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.get_layer("enc")) is QuantConv2D
    assert loaded.get_layer("enc").weight_quantizer == QuantSpec("INT", bits=4)
    np.testing.assert_array_equal(loaded(images).numpy(), trained_int_model(images).numpy())


# --------------------------------------------------------------------------- storage accounting


def test_storage_bits_and_report(float_model):
    quantized = quantize_unet(float_model, QuantizationConfig("FIXED"))  # paper Q0.4 weights
    assert weight_storage_bits(quantized.get_layer("enc")) == 4
    assert weight_storage_bits(quantized.get_layer("first")) == 32
    assert weight_storage_bits(quantized.get_layer("enc_bn")) == 32
    report = model_storage_report(quantized)
    rows = {row["name"]: row for row in report["layers"]}
    assert set(rows) == {"first", "enc", "enc_bn", "bottom", "up", "dec", "head"}
    enc = quantized.get_layer("enc")
    assert rows["enc"]["kernel_params"] == 3 * 3 * 4 * 6 and rows["enc"]["kernel_bits_per_weight"] == 4
    assert rows["enc"]["stored_bits"] == 3 * 3 * 4 * 6 * 4 + int(tf.size(enc.bias)) * 32
    assert rows["head"]["kernel_bits_per_weight"] == 32 and rows["head"]["kernel_params"] == 0
    assert report["total_params"] == float_model.count_params()
    assert report["float32_bits"] == 32 * float_model.count_params()
    assert report["compression"] == pytest.approx(report["float32_bits"] / report["stored_bits"])
    # Per-channel scales are counted: BNN stores 1 bit per weight plus a float32 per channel.
    bnn_report = model_storage_report(quantize_unet(float_model, QuantizationConfig("BNN")))
    bnn = {row["name"]: row for row in bnn_report["layers"]}
    assert bnn["up"]["scale_params"] == 4 and bnn["up"]["kernel_bits_per_weight"] == 1


def test_project_unet_quantizes_if_present(images):
    if importlib.util.find_spec("unet_medical.model.unet") is None:
        pytest.skip("unet_medical/model/unet.py not written yet")
    from unet_medical.model.unet import UNetSpec, build_unet

    float_unet = build_unet(UNetSpec(padding="same", batch_norm=True, base_filters=4, depth=2, dropout=0.5))
    quantized = quantize_unet(float_unet, QuantizationConfig("FIXED"))
    inner = [layer for layer in quantized.layers if isinstance(layer, (QuantConv2D, QuantConv2DTranspose))]
    assert inner and len(inner) < sum(type(other) in (keras.layers.Conv2D, keras.layers.Conv2DTranspose)
                                       for other in float_unet.layers)
    from unet_medical.model.layers import SeededDropout

    assert boundary_convs(float_unet) == ({"enc1_conv1"}, {"head"})
    assert type(quantized.get_layer("bottleneck_dropout")) is SeededDropout
    assert quantized.get_layer("dec2_upconv").activation_quantizer.signed is False  # after dropout
    # [skip (ReLU, unsigned), linear up-conv (signed)]
    assert [(n, spec.signed) for n, spec in quantized.get_layer("dec2_conv1").activation_quantizer] == \
        [(8, False), (8, True)]
    assert quantized(images).shape == (2, 16, 16, 2)


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_skip_tensors_are_quantized_one_way(padding):
    """Each decoder conv quantizes its skip channels with the unsigned spec of the encoder conv that
    reads the same tensor pooled, so the skip's values equal those of quantizing it once (Q6.0:
    [0, 63]); the up-conv channels get the signed spec. Valid padding crops the skip first."""
    from unet_medical.model.unet import UNetSpec, build_unet

    keras.utils.set_random_seed(1)
    spec = UNetSpec(padding=padding, batch_norm=False, base_filters=4, depth=2, dropout=0.0)
    float_unet = build_unet(spec)
    for name in ("enc1_conv2", "enc2_conv2"):  # larger skip values, past the old Q5.0 clip at 31
        kernel = float_unet.get_layer(name).kernel
        kernel.assign(3.0 * kernel)
    config = QuantizationConfig("FIXED", weight_i_width=2, weight_f_width=6, activation_i_width=6,
                                activation_f_width=0)
    quantized = quantize_unet(float_unet, config)
    unsigned, signed = config.activation_spec(nonnegative=True), config.activation_spec(nonnegative=False)
    size = 16 if padding == "same" else 44
    images = np.random.default_rng(0).uniform(0, 1000, (1, size, size, 1)).astype(np.float32)
    largest = 0.0
    for level in (1, 2):
        conv = quantized.get_layer(f"dec{level}_conv1")
        filters = spec.level_filters(level)
        assert conv.activation_quantizer == ((filters, unsigned), (filters, signed))
        if level < 2:
            assert quantized.get_layer(f"enc{level + 1}_conv1").activation_quantizer == unsigned
        concat = quantized.get_layer(f"dec{level}_concat").output
        probe = keras.Model(quantized.input, [concat, quantized.get_layer(f"enc{level}_relu2").output])
        inputs, skip = probe(images)
        quantized_inputs = conv._quantize_input(inputs, training=False).numpy()
        crop = (skip.shape[1] - inputs.shape[1]) // 2
        skip = skip[:, crop:crop + inputs.shape[1], crop:crop + inputs.shape[2]]
        once = quantize_fixed(skip, 6, 0, signed=False).numpy()
        np.testing.assert_array_equal(quantized_inputs[..., :filters], once)
        largest = max(largest, float(once.max()))
        np.testing.assert_array_equal(quantized_inputs[..., filters:],
                                      quantize_fixed(inputs[..., filters:], 5, 0, signed=True).numpy())
    assert largest > 31  # the range that the signed Q5.0 of the old double quantization cut off


def test_segmented_input_serializes_and_keeps_one_range_per_int_segment():
    layer = QuantConv2D(2, 1, weight_quantizer=QuantSpec("INT", bits=8), name="seg",
                        activation_quantizer=[{"channels": 3, **QuantSpec("INT", bits=4, per_channel=False,
                                                                          signed=False).to_dict()},
                                              (2, QuantSpec("INT", bits=4, per_channel=False))])
    x = np.concatenate([np.full((1, 2, 2, 3), 10.0), np.full((1, 2, 2, 2), -1.0)], -1).astype(np.float32)
    layer(x, training=True)
    assert [w.name.split("/")[-1] for w in layer.non_trainable_weights] == ["activation_max:0", "activation_max_1:0"]
    assert [float(w.numpy()) for w in layer.non_trainable_weights] == [10.0, 1.0]
    config = layer.get_config()
    assert [segment["channels"] for segment in config["activation_quantizer"]] == [3, 2]
    clone = QuantConv2D.from_config(config)
    assert clone.get_config() == config
    assert clone.activation_quantizer == layer.activation_quantizer
    with pytest.raises(UNetError, match="segments cover 5 channels, the input has 4"):
        QuantConv2D.from_config(config)(np.zeros((1, 2, 2, 4), np.float32))
    with pytest.raises(UNetError, match="channels=0"):
        QuantConv2D(2, 1, activation_quantizer=[(0, QuantSpec("FIXED", 2, 0))])
