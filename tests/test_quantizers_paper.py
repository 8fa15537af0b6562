"""The paper's sign-magnitude FIXED scheme (--fixed_scheme paper): hand-computed vectors, a NumPy
transcription of the paper's to_fixed_point, straight-through gradient, bit counting, configs that
name the scheme (and old ones that do not), and exact packing."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import unet_medical  # noqa: F401
import tensorflow as tf
import tf_keras as keras

from unet_medical.model.packing import code_offset_and_stride, load_packed, save_packed
from unet_medical.model.quantized_layers import QuantConv2D
from unet_medical.model.quantizers import (PAPER, QuantizationConfig, QuantSpec, dequantize_codes, fixed_point_range, get_quantizer,
                              paper_code_limit, quantize_fixed, quantize_fixed_paper, quantized_codes)
from unet_medical.model.quantization import quantize_unet, weight_storage_bits
from unet_medical.base.errors import UNetError


def values(tensor) -> np.ndarray:
    return np.asarray(tensor, dtype=np.float32)


def numpy_paper(x, i, f):
    """Independent reference, element by element: the paper's to_fixed_point(v, i, f) =
    sign(v) round_clamp(|v| - floor|v|, f) + sign(v) round_clamp(floor|v|, i), with
    round_clamp(w, n) = round(clamp(w, 0, 2^n - 1) 2^n) / 2^n; plus our one change, |v| = 2^i -> 2^i."""
    out = []
    for v in np.asarray(x, np.float64).ravel():
        m = abs(v)
        fraction = m - np.floor(m)
        kept_fraction = np.round(min(fraction, 2.0 ** f - 1) * 2.0 ** f) / 2.0 ** f
        integer = min(np.floor(m), 2.0 ** i - 1)
        magnitude = 2.0 ** i if (f > 0 and m == 2.0 ** i) else integer + kept_fraction
        out.append(np.sign(v) * magnitude)
    return np.array(out).reshape(np.shape(x))


def test_q0_4_hand_vector():
    # Step 1/16, magnitudes up to 1: the fraction of |v| rounds (half to even), the integer part
    # is clamped to 0, so values past 1 keep only their fraction.
    x = [0.30, -0.30, 0.0, 0.03125, 0.09375, -0.5, 0.9375, 0.97, 1.0, 1.7, -1.7, -5.0, 2.99]
    expected = [0.3125, -0.3125, 0.0, 0.0, 0.125, -0.5, 0.9375, 1.0, 1.0, 0.6875, -0.6875, 0.0, 1.0]
    np.testing.assert_array_equal(values(quantize_fixed_paper(x, 0, 4)), expected)
    np.testing.assert_array_equal(values(quantize_fixed(x, 0, 4, scheme=PAPER)), expected)


def test_q6_0_truncates_and_saturates():
    # No fraction bits: the fraction is dropped (truncation toward 0), the integer part saturates at 63.
    x = [63.4, -70.0, 2.7, -2.7, 64.0, 0.9, 100.5]
    np.testing.assert_array_equal(values(quantize_fixed_paper(x, 6, 0)), [63, -63, 2, -2, 63, 0, 63])
    # Unsigned (a ReLU output): negatives -> 0.
    np.testing.assert_array_equal(values(quantize_fixed_paper([-3.0, 5.5, 80.0], 6, 0, signed=False)), [0, 5, 63])


def test_q2_2_carries_into_the_integer_part():
    # 3.9 = 3 + 0.9 -> 3 + 1.0 (the fraction rounds up to a whole one): 4 = 2^i, one past 2^i - 1.
    x = [3.9, 1.875, 5.3, -4.0, 4.1]
    np.testing.assert_array_equal(values(quantize_fixed_paper(x, 2, 2)), [4.0, 2.0, 3.25, -4.0, 3.0])


def test_matches_numpy_transcription_of_the_paper_code():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(scale=3.0, size=2000), rng.normal(scale=0.3, size=2000),
                        [0.0, 1.0, -1.0, 2.0, 64.0, -64.0, 0.96875, -0.96875]]).astype(np.float32)
    for i, f in [(0, 4), (0, 8), (6, 0), (2, 3), (8, 8), (1, 1)]:
        np.testing.assert_array_equal(values(quantize_fixed_paper(x, i, f)),
                                      numpy_paper(x, i, f).astype(np.float32), err_msg=f"Q{i}.{f}")


def test_gradient_passes_straight_through_everywhere():
    x = tf.Variable([-5.0, -0.3, 0.0, 0.97, 1.7, 70.0])
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(quantize_fixed_paper(x, 0, 4) * tf.constant([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), [1, 2, 3, 4, 5, 6])


@settings(max_examples=40, deadline=None)
@given(x=hnp.arrays(np.float32, st.integers(1, 32), elements=st.floats(-300, 300, allow_nan=False, width=32)),
       i=st.integers(0, 6), f=st.integers(0, 8), signed=st.booleans())
def test_requantizing_is_a_no_op(x, i, f, signed):
    once = quantize_fixed_paper(x, i, f, signed)
    np.testing.assert_array_equal(values(quantize_fixed_paper(once, i, f, signed)), values(once))


def test_storage_bits_count_sign_and_carry():
    # Q0.4: codes -16..16 (33 levels): sign + 5 magnitude bits. Q6.0: -63..63: sign + 6.
    assert QuantSpec("FIXED", 0, 4, scheme=PAPER).storage_bits == 6
    assert QuantSpec("FIXED", 6, 0, scheme=PAPER).storage_bits == 7
    assert QuantSpec("FIXED", 6, 0, signed=False, scheme=PAPER).storage_bits == 6
    assert QuantSpec("FIXED", 0, 4, signed=False, scheme=PAPER).storage_bits == 5
    assert fixed_point_range(0, 4, scheme=PAPER) == (-1.0, 1.0)
    assert fixed_point_range(6, 0, signed=False, scheme=PAPER) == (0.0, 63.0)
    config = QuantizationConfig("FIXED", 0, 4, 6, 0, fixed_scheme="paper")
    assert weight_storage_bits(config) == 6
    assert config.weight_spec() == QuantSpec("FIXED", 0, 4, signed=True, scheme=PAPER)
    # The sign comes on top of i: a signed Q6.0 input keeps [-63, 63] (two's complement: [-32, 31]).
    assert config.activation_spec(nonnegative=False) == QuantSpec("FIXED", 6, 0, signed=True, scheme=PAPER)
    assert config.activation_spec(nonnegative=True) == QuantSpec("FIXED", 6, 0, signed=False, scheme=PAPER)


@pytest.mark.parametrize("spec", [QuantSpec("FIXED", 0, 4, scheme=PAPER), QuantSpec("FIXED", 6, 0, scheme=PAPER),
                                  QuantSpec("FIXED", 2, 3, signed=False, scheme=PAPER)])
def test_codes_are_exact_and_fit_the_storage_bits(spec):
    w = np.concatenate([np.random.default_rng(1).normal(scale=s, size=500) for s in (0.3, 3.0, 80.0)])
    w = np.concatenate([w, [1.0, -1.0, 0.97, -0.97, 4.0]]).astype(np.float32)
    codes, scale = quantized_codes(w, spec)
    assert scale is None
    np.testing.assert_array_equal(values(dequantize_codes(codes, None, spec)), values(get_quantizer(spec)(w)))
    offset, stride = code_offset_and_stride(spec)
    top = paper_code_limit(spec.integer_bits, spec.fractional_bits)  # Q0.4: 16, Q6.0: 63
    assert (offset, stride) == ((-top if spec.signed else 0), 1)
    stored = (codes.numpy() - offset) // stride
    assert stored.min() >= 0 and stored.max() < 2 ** spec.storage_bits
    np.testing.assert_array_equal(stored * stride + offset, codes.numpy())


def test_spec_and_config_validation_and_round_trip():
    spec = QuantSpec("FIXED", 0, 4, scheme=PAPER)
    assert QuantSpec.from_dict(spec.to_dict()) == spec
    old = {k: v for k, v in QuantSpec("FIXED", -1, 4).to_dict().items() if k != "scheme"}
    assert QuantSpec.from_dict(old).scheme == "twos_complement"  # written before the field existed
    with pytest.raises(UNetError, match="scheme"):
        QuantSpec("FIXED", 0, 4, scheme="sign_magnitude")
    with pytest.raises(UNetError, match="FIXED only"):
        QuantSpec("INT", bits=4, scheme=PAPER)
    with pytest.raises(UNetError, match="integer_bits=-1 with scheme paper"):
        QuantSpec("FIXED", -1, 4, scheme=PAPER)

    config = QuantizationConfig.from_mapping({"quantization": "FIXED", "fixed_scheme": "paper"})
    assert QuantizationConfig.from_mapping(json.loads(json.dumps(config.to_dict()))) == config
    old_config = {k: v for k, v in QuantizationConfig("FIXED").to_dict().items() if k != "fixed_scheme"}
    assert QuantizationConfig.from_mapping(old_config).fixed_scheme == "twos_complement"
    with pytest.raises(UNetError, match="fixed_scheme"):
        QuantizationConfig.from_mapping({"quantization": "FIXED", "fixed_scheme": "Paper"})


def test_layer_config_round_trip_keeps_the_scheme():
    layer = QuantConv2D(3, 3, padding="same", weight_quantizer=QuantSpec("FIXED", 0, 4, scheme=PAPER),
                        activation_quantizer=QuantSpec("FIXED", 6, 0, signed=False, scheme=PAPER))
    config = layer.get_config()
    assert config["weight_quantizer"]["scheme"] == "paper"
    clone = QuantConv2D.from_config(json.loads(json.dumps(config)))
    assert clone.weight_quantizer == layer.weight_quantizer
    assert clone.activation_quantizer == layer.activation_quantizer
    # A layer config written before the scheme field existed is two's complement.
    old = json.loads(json.dumps(config))
    for key in ("weight_quantizer", "activation_quantizer"):
        old[key].pop("scheme")
        old[key]["integer_bits"] = -1 if key == "weight_quantizer" else 6
    assert QuantConv2D.from_config(old).weight_quantizer.scheme == "twos_complement"


def small_net() -> keras.Model:
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="first")(inputs)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="mid")(x)
    x = keras.layers.Conv2DTranspose(4, 2, strides=2, name="up")(x)
    return keras.Model(inputs, keras.layers.Conv2D(2, 1, name="head")(x))


def test_packed_round_trip_is_exact(tmp_path):
    keras.utils.set_random_seed(3)
    config = QuantizationConfig("FIXED", weight_i_width=0, weight_f_width=4, activation_i_width=6,
                                activation_f_width=0, fixed_scheme="paper")
    model = quantize_unet(small_net(), config)
    mid = model.get_layer("mid")
    # Weights on the carry (0.97 -> 1.0), exactly 1, and past the range (1.7 -> 0.6875).
    kernel = mid.kernel.numpy()
    kernel.flat[:4] = [0.97, 1.0, -1.7, 0.3]
    mid.kernel.assign(kernel)
    np.testing.assert_array_equal(mid.quantized_kernel().numpy().flat[:4], [1.0, 1.0, -0.6875, 0.3125])
    images = np.random.default_rng(0).uniform(0, 4, size=(2, 8, 8, 1)).astype(np.float32)
    path = tmp_path / "paper.npz"
    save_packed(model, config, path)
    restored = load_packed(path)
    assert restored.get_layer("mid").weight_quantizer.scheme == "paper"
    np.testing.assert_array_equal(restored.get_layer("mid").kernel.numpy(), mid.quantized_kernel().numpy())
    np.testing.assert_array_equal(restored(images).numpy(), model(images).numpy())


def test_fixed_scheme_flag_reaches_the_quantization_config():
    from unet_medical.cli.assemble import quantization_config
    from unet_medical.cli.config import parse_config
    from unet_medical.cli.study import _weight_bits

    cfg = parse_config(["--quantization", "FIXED", "--fixed_scheme", "paper"])
    assert quantization_config(cfg).fixed_scheme == "paper"
    assert quantization_config(parse_config(["--quantization", "FIXED"])).fixed_scheme == "twos_complement"
    with pytest.raises(UNetError, match="fixed_scheme"):
        parse_config(["--fixed_scheme", "sign_magnitude"])
    q04 = {"quantization": "FIXED", "weight_i_width": 0, "weight_f_width": 4}
    assert _weight_bits(q04) == 4 and _weight_bits({**q04, "fixed_scheme": "paper"}) == 6


@pytest.mark.slow
def test_training_run_records_and_reloads_the_scheme(isbi_data_dir, tmp_path):
    import main
    from unet_medical.cli.assemble import load_trained

    flags = ["--exec_mode", "train", "--data_dir", str(isbi_data_dir), "--model_dir", str(tmp_path),
             "--padding", "same", "--base_filters", "4", "--depth", "2", "--crop_size", "32", "--max_steps", "2",
             "--no-augment", "--quantization", "FIXED", "--fixed_scheme", "paper"]
    assert main.main(flags) == 0
    info = json.loads((tmp_path / "model.json").read_text())
    assert info["quantization_config"]["fixed_scheme"] == "paper"
    model = load_trained(tmp_path, "last")[0]
    conv = model.get_layer("enc1_conv2")
    assert conv.weight_quantizer == QuantSpec("FIXED", 0, 4, scheme=PAPER)
    assert conv.activation_quantizer == QuantSpec("FIXED", 6, 0, signed=False, scheme=PAPER)
    # A fresh process (nothing imported the quantized layers yet) evaluates the run.
    repo = pathlib.Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(repo / "main.py"), "--exec_mode", "evaluate", "--model_dir",
                           str(tmp_path), "--data_dir", str(isbi_data_dir)], cwd=repo, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(repo)}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # a standalone evaluate writes its own file, named for the weights it scored (cli/provenance.py)
    assert "membrane_dice" in json.loads((tmp_path / "eval_results_last.json").read_text())
