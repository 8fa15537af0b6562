"""Quantizer functions, QuantSpec and QuantizationConfig: hand-computed vectors, NumPy references,
STE gradient masks and exact idempotence."""
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import unet_medical  # noqa: F401
from unet_medical.model.quantization import weight_storage_bits
from unet_medical.model.quantizers import (
    QuantizationConfig,
    QuantSpec,
    dequantize_codes,
    get_quantizer,
    quantize_binary,
    quantize_fixed,
    quantize_int,
    quantize_none,
    quantize_ternary,
    quantized_codes,
)
from unet_medical.base.errors import UNetError


def values(tensor) -> np.ndarray:
    return np.asarray(tensor, dtype=np.float32)


def gradient(fn, x) -> np.ndarray:
    x = tf.Variable(np.asarray(x, np.float32))
    with tf.GradientTape() as tape:
        y = fn(x)
    return tape.gradient(y, x).numpy()


def numpy_fixed(x, i, f, signed=True):
    """Independent reference: round half to even on the 2^-f grid, saturate."""
    low = -(2.0 ** (i + f)) if signed else 0.0
    return np.clip(np.round(np.asarray(x, np.float64) * 2.0 ** f), low, 2.0 ** (i + f) - 1) / 2.0 ** f


def per_channel(w, axis):
    """Move the channel axis last and flatten the rest: (n, channels)."""
    w = np.moveaxis(np.asarray(w, np.float64), axis, -1)
    return w.reshape(-1, w.shape[-1])


# --------------------------------------------------------------------------- FIXED


def test_fixed_q0_4_hand_vector():
    # Q0.4 signed: step 1/16, range [-1, 15/16]; -8.5 and 1.5 codes are ties -> even.
    x = [-2.0, -1.0, -0.53125, -0.03125, 0.0, 0.03125, 0.09375, 0.5, 0.96875, 1.5]
    expected = [-1.0, -1.0, -0.5, 0.0, 0.0, 0.0, 0.125, 0.5, 0.9375, 0.9375]
    np.testing.assert_array_equal(values(quantize_fixed(x, 0, 4)), expected)


def test_fixed_rounds_ties_to_even():
    x = [0.5, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5]
    np.testing.assert_array_equal(values(quantize_fixed(x, 3, 0)), [0, 2, 2, 4, 0, -2, -2])
    # Ties at half a step of 1/4: 0.125 -> 0, 0.375 -> 0.5, 0.625 -> 0.5.
    np.testing.assert_array_equal(values(quantize_fixed([0.125, 0.375, 0.625], 1, 2)), [0, 0.5, 0.5])


def test_fixed_saturates_at_both_ends():
    # Q1.2 signed: [-2, 1.75].
    x = [-100.0, -2.1, -2.0, 1.75, 1.8, 100.0]
    np.testing.assert_array_equal(values(quantize_fixed(x, 1, 2)), [-2, -2, -2, 1.75, 1.75, 1.75])
    # Q2.0 unsigned: [0, 3]; negatives saturate to 0 instead of wrapping.
    np.testing.assert_array_equal(values(quantize_fixed([-1.0, 0.0, 2.4, 3.6, 9.0], 2, 0, signed=False)),
                                  [0, 0, 2, 3, 3])


def test_fixed_negative_integer_bits_is_the_paper_q0_4():
    # Sign + (-1) integer bits + 4 fractional bits = 4 bits: [-0.5, 0.4375].
    x = [-0.9, -0.5, -0.47, 0.0, 0.2, 0.4375, 0.6]
    np.testing.assert_array_equal(values(quantize_fixed(x, -1, 4)),
                                  [-0.5, -0.5, -0.5, 0, 0.1875, 0.4375, 0.4375])


def test_fixed_matches_numpy_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(scale=3.0, size=1000).astype(np.float32)
    for i, f, signed in [(0, 4, True), (-1, 4, True), (6, 0, False), (2, 3, True), (8, 8, False)]:
        np.testing.assert_array_equal(values(quantize_fixed(x, i, f, signed)),
                                      numpy_fixed(x, i, f, signed).astype(np.float32))


def test_fixed_gradient_is_one_inside_zero_outside():
    x = [-3.0, -2.0, 0.3, 1.75, 1.8, 3.0]  # Q1.2 range [-2, 1.75]
    np.testing.assert_array_equal(gradient(lambda v: quantize_fixed(v, 1, 2), x), [0, 1, 1, 1, 0, 0])
    unsigned = gradient(lambda v: quantize_fixed(v, 2, 0, signed=False), [-0.5, 0.0, 2.0, 3.5])
    np.testing.assert_array_equal(unsigned, [0, 1, 1, 0])


@settings(max_examples=40, deadline=None)
@given(x=hnp.arrays(np.float32, st.integers(1, 32),
                    elements=st.floats(-300, 300, allow_nan=False, width=32)),
       i=st.integers(-2, 6), f=st.integers(0, 8), signed=st.booleans())
def test_fixed_requantizing_is_a_no_op(x, i, f, signed):
    once = quantize_fixed(x, i, f, signed)
    np.testing.assert_array_equal(values(quantize_fixed(once, i, f, signed)), values(once))


# --------------------------------------------------------------------------- INT


def test_int_hand_vector_per_tensor():
    # 3 bits: codes [-3, 3]; max|x| = 1.5 -> step 0.5; -1.5 and 0.5 codes tie -> even.
    x = [-1.5, -0.75, -0.25, 0.0, 0.25, 0.7, 1.5]
    np.testing.assert_array_equal(values(quantize_int(x, 3)), [-1.5, -1.0, 0, 0, 0, 0.5, 1.5])


def test_int_symmetric_range_per_channel():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(3, 3, 4, 5)).astype(np.float32)
    bits, qmax = 4, 7
    q = values(quantize_int(w, bits, axis=-1))
    max_abs = np.abs(per_channel(w, -1)).max(axis=0)
    codes = per_channel(q, -1) / (max_abs / qmax)
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-4)
    assert np.abs(np.round(codes)).max() <= qmax
    # Each channel keeps its own scale: the extreme weight maps to +-max|w_c| itself.
    np.testing.assert_allclose(np.abs(per_channel(q, -1)).max(axis=0), max_abs, rtol=1e-6)
    reference = np.clip(np.round(per_channel(w, -1) / (max_abs / qmax)), -qmax, qmax) * (max_abs / qmax)
    np.testing.assert_allclose(per_channel(q, -1), reference, rtol=1e-6)


def test_int_given_scale_saturates_and_masks_gradient():
    # 4 bits signed: codes [-7, 7]; step 0.25 -> range [-1.75, 1.75].
    x = [-5.0, -0.3, 0.3, 0.9, 5.0]
    np.testing.assert_array_equal(values(quantize_int(x, 4, scale=0.25)), [-1.75, -0.25, 0.25, 1.0, 1.75])
    np.testing.assert_array_equal(gradient(lambda v: quantize_int(v, 4, scale=0.25), x), [0, 1, 1, 1, 0])
    # 2 bits unsigned: codes [0, 3].
    np.testing.assert_array_equal(values(quantize_int([-1.0, 0.3, 0.5, 2.0], 2, scale=0.5, signed=False)),
                                  [0, 0.5, 0.5, 1.5])


def test_int_all_zero_channel_stays_zero():
    w = np.zeros((2, 2, 1, 3), np.float32)
    w[..., 1] = 0.5
    q = values(quantize_int(w, 8, axis=-1))
    np.testing.assert_array_equal(q, w)


# --------------------------------------------------------------------------- BNN and TERNARY


@pytest.mark.parametrize("axis", [-1, -2])
def test_binary_values_are_plus_minus_channel_mean(axis):
    rng = np.random.default_rng(2)
    w = rng.normal(scale=0.2, size=(3, 3, 4, 6)).astype(np.float32)
    w[0, 0, 0, 0] = 0.0  # sign(0) is taken as +1
    q = per_channel(values(quantize_binary(w, axis=axis)), axis)
    scale = np.abs(per_channel(w, axis)).mean(axis=0)
    np.testing.assert_allclose(np.abs(q), np.broadcast_to(scale, q.shape), rtol=1e-6)
    np.testing.assert_array_equal(np.sign(q), np.where(per_channel(w, axis) >= 0, 1, -1))


def test_binary_hard_tanh_gradient():
    x = [-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0]
    np.testing.assert_array_equal(gradient(lambda v: quantize_binary(v, axis=None), x), [0, 1, 1, 1, 1, 1, 0])


def test_ternary_hand_vector():
    # mean|w| = 0.41 -> threshold 0.287; kept -0.9, 0.4, 0.6 -> a = 1.9 / 3.
    w = np.array([0.1, -0.9, 0.4, -0.05, 0.6], np.float32).reshape(1, 1, 5, 1)
    a = np.float32(1.9 / 3)
    np.testing.assert_allclose(values(quantize_ternary(w)).ravel(), [0, -a, a, 0, a], rtol=1e-6)


@pytest.mark.parametrize("axis", [-1, -2])
def test_ternary_matches_twn_reference(axis):
    rng = np.random.default_rng(3)
    w = rng.normal(scale=0.1, size=(3, 3, 5, 4)).astype(np.float32)
    q = per_channel(values(quantize_ternary(w, axis=axis)), axis)
    flat = per_channel(w, axis)
    threshold = 0.7 * np.abs(flat).mean(axis=0)
    kept = np.abs(flat) > threshold
    alpha = (np.abs(flat) * kept).sum(axis=0) / kept.sum(axis=0)
    np.testing.assert_allclose(q, np.sign(flat) * kept * alpha, rtol=1e-6)
    for channel in range(q.shape[1]):
        assert set(np.unique(q[:, channel])) <= {-np.float32(alpha[channel]), 0.0, np.float32(alpha[channel])}


def test_ternary_gradient_is_identity():
    grad = gradient(lambda v: quantize_ternary(v, axis=None), [-3.0, 0.01, 2.0])
    np.testing.assert_array_equal(grad, [1, 1, 1])


# --------------------------------------------------------------------------- registry, codes, idempotence

SPECS = [QuantSpec("FIXED", -1, 4), QuantSpec("FIXED", 2, 3, signed=False), QuantSpec("INT", bits=4),
         QuantSpec("INT", bits=8, per_channel=False), QuantSpec("BNN"), QuantSpec("TERNARY"),
         QuantSpec("BNN", per_channel=False)]


def test_get_quantizer_dispatches_to_the_quantizer_functions():
    w = np.random.default_rng(4).normal(scale=0.3, size=(3, 3, 2, 4)).astype(np.float32)
    expected = {
        0: quantize_fixed(w, -1, 4), 1: quantize_fixed(w, 2, 3, signed=False),
        2: quantize_int(w, 4, axis=-2), 3: quantize_int(w, 8), 4: quantize_binary(w, axis=-2),
        5: quantize_ternary(w, axis=-2), 6: quantize_binary(w, axis=None),
    }
    for index, spec in enumerate(SPECS):
        np.testing.assert_array_equal(values(get_quantizer(spec)(w, channel_axis=-2)),
                                      values(expected[index]))
    np.testing.assert_array_equal(values(get_quantizer(QuantSpec("NONE"))(w)), w)
    np.testing.assert_array_equal(values(quantize_none(w)), w)


@settings(max_examples=25, deadline=None)
@given(w=hnp.arrays(np.float32, (2, 2, 3, 4), elements=st.floats(-2, 2, allow_nan=False, width=32)),
       spec_index=st.integers(0, len(SPECS) - 1))
def test_requantizing_a_kernel_is_exactly_a_no_op(w, spec_index):
    quantizer = get_quantizer(SPECS[spec_index])
    once = quantizer(w)
    np.testing.assert_array_equal(values(quantizer(once)), values(once))


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("channel_axis", [-1, -2])
def test_codes_dequantize_to_the_fake_quantized_values_exactly(spec, channel_axis):
    w = np.random.default_rng(5).normal(scale=0.4, size=(3, 3, 4, 5)).astype(np.float32)
    codes, scale = quantized_codes(w, spec, channel_axis)
    assert codes.dtype == tf.int32
    np.testing.assert_array_equal(values(dequantize_codes(codes, scale, spec)),
                                  values(get_quantizer(spec)(w, channel_axis=channel_axis)))
    if spec.per_channel and spec.mode != "FIXED":
        assert scale.shape[channel_axis] == w.shape[channel_axis]
        assert np.prod(scale.shape) == w.shape[channel_axis]


def test_codes_fit_the_stored_bits():
    w = np.random.default_rng(6).normal(scale=2.0, size=(3, 3, 4, 5)).astype(np.float32)
    for spec in SPECS:
        codes = quantized_codes(w, spec)[0].numpy()
        distinct = codes.max() - codes.min() + 1 if spec.mode != "BNN" else len(np.unique(codes))
        assert distinct <= 2 ** spec.storage_bits, spec


# --------------------------------------------------------------------------- bit counting and specs


def test_storage_bits_explicit_and_paper_notation():
    assert QuantSpec("FIXED", 0, 4).storage_bits == 5  # sign + 0 + 4
    assert QuantSpec("FIXED", -1, 4).storage_bits == 4
    assert QuantSpec("FIXED", 6, 0, signed=False).storage_bits == 6
    assert QuantSpec("INT", bits=8).storage_bits == 8
    assert QuantSpec("BNN").storage_bits == 1 and QuantSpec("TERNARY").storage_bits == 2
    assert QuantSpec("NONE").storage_bits == 32
    # The paper's grid: every Qi.f costs i + f bits.
    for (wi, wf, ai, af), (weight_bits, activation_bits) in {
            (8, 8, 8, 8): (16, 16), (0, 8, 8, 0): (8, 8), (0, 4, 6, 0): (4, 6), (0, 2, 4, 0): (2, 4)}.items():
        config = QuantizationConfig("FIXED", weight_i_width=wi, weight_f_width=wf,
                                    activation_i_width=ai, activation_f_width=af)
        assert weight_storage_bits(config) == weight_bits
        assert config.activation_spec(nonnegative=True).storage_bits == activation_bits
        assert config.activation_spec(nonnegative=False).storage_bits == activation_bits


def test_paper_q0_4_q6_0_specs():
    config = QuantizationConfig("FIXED")
    assert config.weight_spec() == QuantSpec("FIXED", integer_bits=-1, fractional_bits=4, signed=True)
    assert config.activation_spec(nonnegative=True) == QuantSpec("FIXED", 6, 0, signed=False)
    assert config.activation_spec(nonnegative=False) == QuantSpec("FIXED", 5, 0, signed=True)
    assert weight_storage_bits(QuantizationConfig("QAT_INT8")) == 8
    assert weight_storage_bits(QuantizationConfig("INT", weight_bits=6)) == 6
    assert weight_storage_bits(QuantizationConfig("NONE")) == 32


def test_from_mapping_accepts_the_paper_yaml_keys():
    config = QuantizationConfig.from_mapping({
        "quantization": "fixed", "activation_f_width": 0, "activation_i_width": 6,
        "weight_f_width": 4, "weight_i_width": 0})
    assert config == QuantizationConfig("FIXED", 0, 4, 6, 0)
    assert QuantizationConfig.from_mapping({"quantization": "Normal"}).quantization == "NONE"
    assert QuantizationConfig.from_mapping(config.to_dict()) == config


@pytest.mark.parametrize("mapping, named", [
    ({"quantization": "INT4"}, "quantization"),
    ({"quantization": "FIXED", "learning_rate": 0.1}, "learning_rate"),
    ({"weight_i_width": -1}, "weight_i_width"),
    ({"weight_i_width": 0, "weight_f_width": 0}, "weight_i_width"),
    ({"activation_i_width": 20, "activation_f_width": 8}, "activation_i_width"),
    ({"weight_bits": 1}, "weight_bits"),
    ({"activation_bits": "8"}, "activation_bits"),
    ({"keep_first_float": "yes"}, "keep_first_float"),
    ({"weight_f_width": 4.0}, "weight_f_width"),
])
def test_from_mapping_rejects_bad_input_naming_it(mapping, named):
    with pytest.raises(UNetError, match=named):
        QuantizationConfig.from_mapping(mapping)


def test_from_mapping_rejects_non_mapping():
    with pytest.raises(UNetError, match="mapping"):
        QuantizationConfig.from_mapping(["FIXED"])


@pytest.mark.parametrize("kwargs, named", [
    ({"mode": "FOO"}, "mode"),
    ({"mode": "FIXED", "fractional_bits": -1}, "fractional_bits"),
    ({"mode": "FIXED", "integer_bits": 30}, "FIXED"),
    ({"mode": "INT"}, "bits"),
    ({"mode": "INT", "bits": 1}, "bits"),
    ({"mode": "FIXED", "integer_bits": 0, "fractional_bits": 4, "bits": 4}, "bits"),
    ({"mode": "BNN", "per_channel": 1}, "per_channel"),
])
def test_quant_spec_validation(kwargs, named):
    with pytest.raises(UNetError, match=named):
        QuantSpec(**kwargs)


def test_quant_spec_dict_round_trip():
    for spec in SPECS:
        assert QuantSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(UNetError, match="width"):
        QuantSpec.from_dict({"mode": "FIXED", "width": 3})
