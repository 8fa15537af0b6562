"""The quantization modes as one table of mode objects (registered by name in model.quant_modes).

The mathematics is in model.quantizers; a `QuantMode` only says which of its functions a mode uses, so
`get_quantizer`, `quantized_codes`, `dequantize_codes`, `QuantSpec.storage_bits` and
`QuantizationConfig.weight_spec` / `activation_spec` look the mode up instead of testing strings.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import tensorflow as tf

from unet_medical.model.quantizers import (FLOAT_BITS, PAPER, QuantizationConfig, QuantSpec, Tensor, _binary_scale,
                                           _fixed_codes, _int_codes_from_range, _int_values, _max_abs, _paper_codes,
                                           _ternary_codes_and_scale, paper_code_limit, quantize_binary, quantize_fixed,
                                           quantize_int, quantize_none, quantize_ternary)


@dataclasses.dataclass(frozen=True)
class QuantMode:
    """One quantization mode.

    Args:
        name: the --quantization value.
        weight_spec: config -> QuantSpec of quantized kernels.
        activation_spec: (config, input provably >= 0) -> QuantSpec of a quantized conv's input.
        storage_bits: spec -> bits stored per value (sign included); None for a whole-model mode.
        quantize: (x, spec, axis) -> fake-quantized x (axis: per-channel axis or None); None likewise.
        codes: (x, spec, axis) -> (int32 codes, float32 scale or None); None: the mode has no codes.
        values: (codes, scale, spec, dtype) -> the values of `codes`, bit-identical to `quantize`.
        has_scale: whether stored codes come with float32 scales (per channel or per tensor).
        transform: "module:function" rewriting a whole float model instead (TF-MOT QAT), else None.
        model_weight_bits: bits per weight a config of a whole-model mode stores (QAT_INT8: 8).
    """

    name: str
    weight_spec: Callable[[QuantizationConfig], QuantSpec]
    activation_spec: Callable[[QuantizationConfig, bool], QuantSpec]
    storage_bits: Optional[Callable[[QuantSpec], int]] = None
    quantize: Optional[Callable[[Tensor, QuantSpec, Optional[int]], Tensor]] = None
    codes: Optional[Callable[[Tensor, QuantSpec, Optional[int]], tuple]] = None
    values: Optional[Callable[[Tensor, Any, QuantSpec, Any], Tensor]] = None
    has_scale: bool = False
    transform: Optional[str] = None
    model_weight_bits: Optional[int] = None


def _float_spec(config: QuantizationConfig, nonnegative: bool = False) -> QuantSpec:
    return QuantSpec("NONE")


# ----------------------------------------------------------------------------- FIXED Qi.f
def _fixed_storage_bits(spec: QuantSpec) -> int:
    if spec.scheme == PAPER:
        top = paper_code_limit(spec.integer_bits, spec.fractional_bits)
        return (2 * top if spec.signed else top).bit_length()  # codes [-top, top] or [0, top]
    return spec.integer_bits + spec.fractional_bits + int(spec.signed)


def _fixed_codes_and_scale(x: Tensor, spec: QuantSpec, axis: Optional[int]) -> tuple:
    coder = _paper_codes if spec.scheme == PAPER else _fixed_codes
    return tf.cast(coder(x, spec.integer_bits, spec.fractional_bits, spec.signed), tf.int32), None


def _fixed_weight_spec(config: QuantizationConfig) -> QuantSpec:
    if config.fixed_scheme == PAPER:  # sign apart: i is the magnitude's
        return QuantSpec("FIXED", integer_bits=config.weight_i_width, fractional_bits=config.weight_f_width,
                         signed=True, scheme=PAPER)
    return QuantSpec("FIXED", integer_bits=config.weight_i_width - 1, fractional_bits=config.weight_f_width,
                     signed=True)


def _fixed_activation_spec(config: QuantizationConfig, nonnegative: bool) -> QuantSpec:
    if config.fixed_scheme == PAPER:
        return QuantSpec("FIXED", integer_bits=config.activation_i_width,
                         fractional_bits=config.activation_f_width, signed=not nonnegative, scheme=PAPER)
    # Two's complement notation: the sign, when needed, takes one of the i bits.
    return QuantSpec("FIXED", integer_bits=config.activation_i_width - (0 if nonnegative else 1),
                     fractional_bits=config.activation_f_width, signed=not nonnegative)


# ----------------------------------------------------------------------------- INT, BNN, TERNARY
def _int_codes_and_scale(x: Tensor, spec: QuantSpec, axis: Optional[int]) -> tuple:
    max_abs = _max_abs(x, axis)
    codes = _int_codes_from_range(x, max_abs, spec.bits, spec.signed)
    return tf.cast(codes, tf.int32), tf.cast(max_abs, tf.float32)


def _binary_codes_and_scale(x: Tensor, spec: QuantSpec, axis: Optional[int]) -> tuple:
    # Rounding a float64 magnitude to float32 commutes with the sign, so a float32 scale
    # reproduces the quantizer's values exactly.
    return tf.where(x >= 0, 1, -1), tf.cast(_binary_scale(x, axis), tf.float32)


def _ternary_codes(x: Tensor, spec: QuantSpec, axis: Optional[int]) -> tuple:
    codes, scale = _ternary_codes_and_scale(x, axis)
    return tf.cast(codes, tf.int32), tf.cast(scale, tf.float32)


def _magnitude_values(codes: Tensor, scale: Any, spec: QuantSpec, dtype: Any) -> Tensor:
    return tf.cast(tf.cast(codes, tf.float64) * tf.cast(scale, tf.float64), dtype)


NONE_MODE = QuantMode("NONE", _float_spec, _float_spec, storage_bits=lambda spec: FLOAT_BITS,
                      quantize=lambda x, spec, axis: quantize_none(x))
FIXED_MODE = QuantMode(
    "FIXED", _fixed_weight_spec, _fixed_activation_spec, storage_bits=_fixed_storage_bits,
    quantize=lambda x, s, axis: quantize_fixed(x, s.integer_bits, s.fractional_bits, s.signed, s.scheme),
    codes=_fixed_codes_and_scale,
    values=lambda codes, scale, s, dtype: tf.cast(codes, dtype) * (2.0 ** -s.fractional_bits))
INT_MODE = QuantMode(
    "INT", lambda c: QuantSpec("INT", bits=c.weight_bits, per_channel=True, signed=True),
    lambda c, nonnegative: QuantSpec("INT", bits=c.activation_bits, per_channel=False, signed=not nonnegative),
    storage_bits=lambda s: s.bits, quantize=lambda x, s, axis: quantize_int(x, s.bits, axis=axis, signed=s.signed),
    codes=_int_codes_and_scale, values=lambda codes, scale, s, dtype: _int_values(codes, scale, s.bits, s.signed, dtype),
    has_scale=True)
BNN_MODE = QuantMode("BNN", lambda c: QuantSpec("BNN", per_channel=True), _float_spec, storage_bits=lambda s: 1,
                     quantize=lambda x, s, axis: quantize_binary(x, axis=axis), codes=_binary_codes_and_scale,
                     values=_magnitude_values, has_scale=True)
TERNARY_MODE = QuantMode("TERNARY", lambda c: QuantSpec("TERNARY", per_channel=True), _float_spec,
                         storage_bits=lambda s: 2, quantize=lambda x, s, axis: quantize_ternary(x, axis=axis),
                         codes=_ternary_codes, values=_magnitude_values, has_scale=True)
# TF-MOT 8-bit QAT rewrites the whole model (model.qat); its kernels are no QuantSpec (NONE here).
QAT_INT8_MODE = QuantMode("QAT_INT8", _float_spec, _float_spec, transform="unet_medical.model.qat:quantize_model_qat",
                          model_weight_bits=8)
