"""Bit-packed weight files: bit packing, exact round trip of every scheme, sizes."""
import json
import math

import numpy as np
import pytest

import unet_medical  # noqa: F401
import tf_keras as keras

from unet_medical.model.packing import code_offset_and_stride, load_packed, pack_bits, save_packed, unpack_bits
from unet_medical.model.quantized_layers import QUANTIZED_LAYERS
from unet_medical.model.quantizers import QuantizationConfig, QuantSpec, quantized_codes
from unet_medical.model.quantization import model_storage_report, quantize_unet
from unet_medical.base.errors import UNetError


@keras.saving.register_keras_serializable(package="test_packing")
class Offset(keras.layers.Layer):
    """A registered custom layer with a config value, to check the architecture JSON keeps it."""

    def __init__(self, offset: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.offset = offset

    def call(self, inputs):
        return inputs + self.offset

    def get_config(self):
        return {**super().get_config(), "offset": self.offset}


def small_unet() -> keras.Model:
    inputs = keras.Input((16, 16, 1), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="first")(inputs)
    x = keras.layers.Conv2D(6, 3, padding="same", use_bias=False, name="enc")(x)
    x = keras.layers.BatchNormalization(name="enc_bn")(x)
    skip = keras.layers.ReLU(name="enc_relu")(x)
    x = keras.layers.MaxPooling2D(name="pool")(skip)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="bottom")(x)
    x = keras.layers.Conv2DTranspose(4, 2, strides=2, name="up")(x)
    x = keras.layers.Concatenate(name="cat")([skip, x])
    x = keras.layers.Conv2D(5, 3, padding="same", activation="relu", name="dec")(x)
    x = Offset(0.25, name="offset")(x)
    outputs = keras.layers.Conv2D(2, 1, name="head")(x)
    return keras.Model(inputs, outputs)


def wide_model() -> keras.Model:
    """Most parameters in three 3x3x96x96 convs between a thin float first and head conv."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(96, 3, padding="same", activation="relu", name="first")(inputs)
    for index in range(3):
        x = keras.layers.Conv2D(96, 3, padding="same", activation="relu", name=f"wide{index}")(x)
    outputs = keras.layers.Conv2D(2, 1, name="head")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(size=(2, 16, 16, 1)).astype(np.float32)


# --------------------------------------------------------------------------- bit packing


def test_pack_bits_hand_vector():
    # 1, 2, 3 in 2 bits, MSB first: 01 10 11 00 -> 0b01101100.
    np.testing.assert_array_equal(pack_bits(np.array([1, 2, 3]), 2), [0b01101100])
    np.testing.assert_array_equal(pack_bits(np.array([5, 10]), 4), [0x5A])


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 7, 8, 12, 16])
def test_pack_unpack_round_trip(bits):
    values = np.random.default_rng(bits).integers(0, 2 ** bits, size=1001)
    packed = pack_bits(values, bits)
    assert packed.dtype == np.uint8 and packed.size == math.ceil(values.size * bits / 8)
    np.testing.assert_array_equal(unpack_bits(packed, bits, values.size), values)


def test_pack_bits_rejects_values_that_do_not_fit():
    with pytest.raises(ValueError):
        pack_bits(np.array([0, 4]), 2)


@pytest.mark.parametrize("spec", [QuantSpec("FIXED", -1, 4), QuantSpec("FIXED", 3, 2, signed=False),
                                  QuantSpec("INT", bits=4), QuantSpec("INT", bits=3, signed=False),
                                  QuantSpec("BNN"), QuantSpec("TERNARY")])
def test_offset_codes_fit_the_storage_bits(spec):
    w = np.random.default_rng(1).normal(scale=3.0, size=(3, 3, 4, 5)).astype(np.float32)
    codes = quantized_codes(w, spec)[0].numpy()
    offset, stride = code_offset_and_stride(spec)
    stored = (codes - offset) // stride
    assert stored.min() >= 0 and stored.max() < 2 ** spec.storage_bits
    np.testing.assert_array_equal(stored * stride + offset, codes)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("mode", ["FIXED", "INT", "BNN", "TERNARY", "NONE"])
def test_round_trip_is_exact(mode, images, tmp_path):
    keras.utils.set_random_seed(0)
    config = QuantizationConfig(mode, weight_i_width=1, weight_f_width=3, weight_bits=5, activation_bits=6)
    model = quantize_unet(small_unet(), config)
    model(images, training=True)  # gives INT layers an activation range and BN moving statistics
    path = tmp_path / f"{mode}.npz"
    save_packed(model, config, path)
    restored = load_packed(path)
    assert [type(layer) for layer in restored.layers] == [type(layer) for layer in model.layers]
    assert restored.get_layer("offset").offset == 0.25
    np.testing.assert_array_equal(restored(images).numpy(), model(images).numpy())
    for layer in model.layers:
        if isinstance(layer, QUANTIZED_LAYERS):
            np.testing.assert_array_equal(restored.get_layer(layer.name).kernel.numpy(),
                                          layer.quantized_kernel().numpy())


def test_q0_4_file_is_at_most_a_seventh_of_fp32_weights(tmp_path):
    keras.utils.set_random_seed(1)
    config = QuantizationConfig("FIXED")  # paper Q0.4 weights: 4 bits
    model = quantize_unet(wide_model(), config)
    report = model_storage_report(model)
    quantized_share = sum(row["kernel_params"] for row in report["layers"]) / report["total_params"]
    assert quantized_share > 0.9
    fp32_path, packed_path = str(tmp_path / "weights.h5"), tmp_path / "model.npz"
    model.save_weights(fp32_path)
    fp32_bytes = (tmp_path / "weights.h5").stat().st_size
    packed_bytes = save_packed(model, config, packed_path)
    print(f"FP32 weights (h5): {fp32_bytes} bytes, packed Q0.4: {packed_bytes} bytes, "
          f"ratio 1/{fp32_bytes / packed_bytes:.2f}")
    assert packed_bytes == packed_path.stat().st_size
    assert packed_bytes <= fp32_bytes / 7


def test_payload_matches_the_storage_report(images, tmp_path):
    config = QuantizationConfig("INT", weight_bits=5)
    model = quantize_unet(small_unet(), config)
    path = tmp_path / "int5.npz"
    save_packed(model, config, path)
    with np.load(path) as archive:
        payload = sum(archive[key].nbytes for key in archive.files if key not in ("header", "architecture"))
    expected = sum(math.ceil(row["kernel_params"] * row["kernel_bits_per_weight"] / 8)
                   + 4 * (row["float_params"] + row["scale_params"])
                   for row in model_storage_report(model)["layers"])
    assert payload == expected


def test_bnn_stores_one_bit_per_weight(tmp_path):
    config = QuantizationConfig("BNN")
    model = quantize_unet(wide_model(), config)
    path = tmp_path / "bnn.npz"
    size = save_packed(model, config, path)
    with np.load(path) as archive:
        header = json.loads(archive["header"].tobytes())
        kernels = [entry for layer in header["layers"] for entry in layer["weights"]
                   if entry["kind"] == "packed"]
        code_bytes = sum(archive[entry["key"]].nbytes for entry in kernels)
    weights = sum(int(np.prod(entry["shape"])) for entry in kernels)
    assert len(kernels) == 3
    assert code_bytes == sum(math.ceil(np.prod(entry["shape"]) / 8) for entry in kernels)
    print(f"BNN: {8 * code_bytes / weights:.3f} bits per quantized weight; file {size} bytes for "
          f"{model.count_params()} parameters")
    assert 8 * code_bytes / weights < 1.01
    assert np.array_equal(load_packed(path)(np.ones((1, 8, 8, 1), np.float32)).numpy(),
                          model(np.ones((1, 8, 8, 1), np.float32)).numpy())


# --------------------------------------------------------------------------- errors


def test_save_rejects_mismatched_model_and_config(tmp_path):
    float_model = small_unet()
    with pytest.raises(UNetError, match="no FIXED-quantized layer"):
        save_packed(float_model, QuantizationConfig("FIXED"), tmp_path / "a.npz")
    with pytest.raises(UNetError, match="config.quantization=INT"):
        save_packed(quantize_unet(float_model, QuantizationConfig("BNN")), QuantizationConfig("INT"),
                    tmp_path / "b.npz")
    with pytest.raises(UNetError, match="TFLite"):
        save_packed(float_model, QuantizationConfig("QAT_INT8"), tmp_path / "c.npz")


def test_load_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(UNetError, match="not found"):
        load_packed(tmp_path / "missing.npz")
    not_npz = tmp_path / "weights.npz"
    not_npz.write_bytes(b"not a zip archive")
    with pytest.raises(UNetError, match="not a .npz"):
        load_packed(not_npz)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(UNetError, match="header"):
        load_packed(other)
