"""Fake quantization of U-Net weights and activations: FIXED Qi.f, INT n-bit, binary and ternary.

Reference: M. AskariHemmat et al., "U-Net Fixed-Point Quantization for Medical Image Segmentation",
MICCAI 2019 HAL workshop (weights Q0.4 with activations Q6.0 cost ~2.2 % Dice on ISBI EM at 8x less
weight memory; first conv and head conv kept in float). Every scheme has one definition: integer
codes (`quantized_codes`) and their value (`dequantize_codes`), with a straight-through estimator
(STE) for training.

FIXED Qi.f has two schemes (QuantSpec.scheme, QuantizationConfig.fixed_scheme, --fixed_scheme):

* "twos_complement" (the default): two's complement codes on the 2^-f grid, rounded half to even
  and saturated (never wrapped); gradient 1 inside the range, 0 outside.
* "paper": the sign-magnitude `to_fixed_point(v, i, f)` of the paper's PyTorch code (GM data set,
  UNET_Quant_Base/quantize.py). The sign is kept apart; the integer part floor(|v|) is clamped to
  [0, 2^i - 1]; the fraction |v| - floor(|v|) is rounded (half to even) to f bits, or dropped when
  f = 0 (so Q6.0 truncates: 2.7 -> 2). The fraction is kept when the integer part saturates, so
  values past the range wrap to their fraction (Q0.4: 1.7 -> 0.6875, -5 -> 0), and it can round up
  to a whole 1 (Q0.4: 0.97 -> 1.0): magnitudes are k 2^-f with 0 <= k <= 2^(i+f) (f > 0) or
  0 <= k <= 2^i - 1 (f = 0). One deliberate difference: |v| = 2^i exactly (f > 0) stays 2^i where
  their code gives 2^i - 1 (Q0.4: 1.0 -> 0), so that quantizing a quantized tensor changes nothing
  (packed weights reload bit-exactly). Gradient 1 everywhere, as in their backward.
  (Their ISBI EM folders use an older FixedNN: round to the nearest power of two, then clip to
  +-(2^(i-1) + 1 - 2^-f), or +-(1 - 2^-f) for i = 0; not implemented here.)

Bit counting (one rule, used by every report and by the packed file): `QuantSpec.storage_bits`.

* `QuantSpec` widths are explicit: `integer_bits` never counts the sign bit. Two's complement:
  signed range [-2^i, 2^i - 2^-f] in i + f + 1 bits, unsigned [0, 2^i - 2^-f] in i + f bits;
  `integer_bits` may be negative (i = -1: range [-0.5, 0.5)); QKeras: `quantized_bits(i + f + 1, i)`.
  Paper: signed codes [-K, K] (K the largest k above) in ceil(log2(2K + 1)) bits, i.e. 1 + i + f
  for f = 0 and 2 + i + f for f > 0 (the rounded-up fraction needs the extra magnitude bit: their
  Q0.4 has 33 levels, 6 bits); unsigned [0, K] in one bit less.
* `QuantizationConfig` widths are the paper's YAML keys. With twos_complement, "Qi.f" costs i + f
  bits and a signed value's sign bit is one of the i integer bits: Q0.4 weights are 4-bit codes on
  a 1/16 grid, range [-0.5, 0.4375] (`QuantSpec(integer_bits=-1, fractional_bits=4)`), which is
  what makes "8x less memory" true; Q6.0 activations are 6-bit codes, [0, 63] after a ReLU and
  [-32, 31] where the input can be negative. With paper, i and f are the magnitude's widths and the
  sign comes on top: Q0.4 weights span [-1, 1] in steps of 1/16; Q6.0 activations [0, 63] after a
  ReLU, [-63, 63] otherwise.
* INT n-bit: n bits including the sign (symmetric codes [-(2^(n-1)-1), 2^(n-1)-1]); unsigned
  codes [0, 2^n - 1]. BNN: 1 bit. TERNARY: 2 bits (three levels; no base-3 packing). Float: 32.

Per-channel scales (INT, BNN, TERNARY) are float32 and counted separately (32 bits per channel).

Usage:
    config = QuantizationConfig.from_mapping({"quantization": "FIXED", "weight_i_width": 0,
                                              "weight_f_width": 4, "activation_i_width": 6,
                                              "activation_f_width": 0, "fixed_scheme": "paper"})
    qmodel = quantize_unet(float_model, config)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Union

import tensorflow as tf

from unet_medical.base.errors import UNetError
from unet_medical.model.config import MAX_FIXED_BITS, check_fixed_widths
from unet_medical.model.quant_modes import QUANTIZATION_MODES


FLOAT_BITS = 32


def quant_mode(name: str) -> Any:
    """The model.quant_mode_table.QuantMode registered as `name` (model.quant_modes)."""
    return QUANTIZATION_MODES.get(name)


def spec_modes() -> tuple:
    """Modes a single tensor can be quantized in (QuantSpec.mode): those with a quantizer."""
    return tuple(name for name in QUANTIZATION_MODES.names() if quant_mode(name).quantize is not None)


# The paper's YAML writes full precision as "Normal".
_MODE_ALIASES = {"NORMAL": "NONE", "FLOAT": "NONE", "FP32": "NONE"}



# FIXED schemes (module docstring): two's complement with saturation, or the paper's sign-magnitude.
TWOS_COMPLEMENT = "twos_complement"
PAPER = "paper"
FIXED_SCHEMES = (TWOS_COMPLEMENT, PAPER)


# TWN (Li & Liu 2016, eq. 10): threshold = 0.7 * mean|w| approximates the optimal ternary threshold.
TWN_THRESHOLD_FACTOR = 0.7


Tensor = tf.Tensor


def _require_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UNetError(f"{name}={value!r}: expected an integer")
    return value


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """How one tensor (a kernel or a layer input) is quantized. Widths are explicit, see module doc.

    Args:
        mode: "NONE", "FIXED", "INT", "BNN" or "TERNARY".
        integer_bits: FIXED only: integer bits, not counting the sign bit (may be negative for
            twos_complement; >= 0 for paper).
        fractional_bits: FIXED only: fractional bits (>= 0); the grid step is 2^-fractional_bits.
        bits: INT only (required there): total bits including the sign bit when signed (2..16).
        per_channel: INT/BNN/TERNARY: one scale per output channel (True) or per tensor (False).
        signed: FIXED/INT: whether negative values are representable (False for post-ReLU inputs).
        scheme: FIXED only: "twos_complement" or "paper" (module docstring). Dicts written before
            this field existed load as twos_complement.
    """

    mode: str = "NONE"
    integer_bits: int = 0
    fractional_bits: int = 0
    bits: Optional[int] = None
    per_channel: bool = True
    signed: bool = True
    scheme: str = TWOS_COMPLEMENT

    def __post_init__(self) -> None:
        if self.mode not in spec_modes():
            raise UNetError(f"QuantSpec mode={self.mode!r}: expected one of {', '.join(spec_modes())}")
        for name in ("integer_bits", "fractional_bits"):
            _require_int(f"QuantSpec {name}", getattr(self, name))
        if self.mode == "INT":
            _require_int("QuantSpec bits", self.bits)
        elif self.bits is not None:
            raise UNetError(f"QuantSpec bits={self.bits} with mode {self.mode}: bits is for INT only "
                            "(FIXED stores integer_bits + fractional_bits + sign bits)")
        for name in ("per_channel", "signed"):
            if not isinstance(getattr(self, name), bool):
                raise UNetError(f"QuantSpec {name}={getattr(self, name)!r}: expected true or false")
        if self.scheme not in FIXED_SCHEMES:
            raise UNetError(f"QuantSpec scheme={self.scheme!r}: expected one of {', '.join(FIXED_SCHEMES)}")
        if self.mode != "FIXED" and self.scheme != TWOS_COMPLEMENT:
            raise UNetError(f"QuantSpec scheme={self.scheme!r} with mode {self.mode}: the scheme is for FIXED only")
        if self.mode == "FIXED":
            if self.fractional_bits < 0:
                raise UNetError(f"QuantSpec fractional_bits={self.fractional_bits}: expected >= 0")
            if self.scheme == PAPER and self.integer_bits < 0:
                raise UNetError(f"QuantSpec integer_bits={self.integer_bits} with scheme paper: expected >= 0")
            if not 1 <= self.storage_bits <= MAX_FIXED_BITS:
                raise UNetError(
                    f"QuantSpec FIXED Q{self.integer_bits}.{self.fractional_bits} "
                    f"(signed={self.signed}) needs {self.storage_bits} bits: expected 1..{MAX_FIXED_BITS}")
        if self.mode == "INT" and not (2 if self.signed else 1) <= self.bits <= 16:
            raise UNetError(f"QuantSpec INT bits={self.bits}: expected 2..16 (1..16 unsigned)")

    @property
    def storage_bits(self) -> int:
        """Bits stored per value (the sign bit included); 32 for NONE."""
        return quant_mode(self.mode).storage_bits(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, value: Union["QuantSpec", Mapping[str, Any], None]) -> Optional["QuantSpec"]:
        """Accepts a QuantSpec, its dict form (as in a layer's get_config) or None."""
        if value is None or isinstance(value, QuantSpec):
            return value
        unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise UNetError(f"QuantSpec keys {sorted(unknown)}: not QuantSpec fields")
        return cls(**value)


def _straight_through(x: Tensor, forward: Callable[[Tensor], Tensor],
                      passes: Callable[[Tensor], Tensor]) -> Tensor:
    """forward(x) in the forward pass; gradient upstream * passes(x) (a boolean mask) backward.

    The forward value is returned exactly (not as x + stop_gradient(q - x), which is off by an
    ulp and would break exact re-quantization and packed-weight reloading).
    """

    @tf.custom_gradient
    def op(value):
        def grad(upstream):
            return upstream * tf.cast(passes(value), upstream.dtype)

        return forward(value), grad

    return op(tf.convert_to_tensor(x))


def _reduce_axes(rank: int, axis: Optional[int]) -> list:
    """Axes to reduce over for one scale per slice along `axis` (all axes when axis is None)."""
    if axis is None:
        return list(range(rank))
    if not -rank <= axis < rank:
        raise ValueError(f"channel axis {axis} is out of range for a rank-{rank} tensor")
    return [a for a in range(rank) if a != axis % rank]


def paper_code_limit(integer_bits: int, fractional_bits: int) -> int:
    """Largest magnitude code K of the paper's sign-magnitude Qi.f (values k 2^-f, |k| <= K):
    2^(i+f) when f > 0 (the clamped integer part 2^i - 1 plus a fraction rounded up to 1),
    2^i - 1 when f = 0 (no fraction)."""
    if fractional_bits > 0:
        return 2 ** (integer_bits + fractional_bits)
    return 2 ** integer_bits - 1


def fixed_point_range(integer_bits: int, fractional_bits: int, signed: bool = True,
                      scheme: str = TWOS_COMPLEMENT) -> tuple:
    """(lowest, highest) representable values of Qi.f (sign bit not counted in i)."""
    if scheme == PAPER:
        high = paper_code_limit(integer_bits, fractional_bits) * 2.0 ** -fractional_bits
        return (-high if signed else 0.0), high
    step = 2.0 ** -fractional_bits
    high = 2.0 ** integer_bits - step
    return (-(2.0 ** integer_bits) if signed else 0.0), high


def _fixed_codes(x: Tensor, integer_bits: int, fractional_bits: int, signed: bool) -> Tensor:
    # Scaling by a power of two is exact, so the codes and their values are exact in float32.
    low, high = fixed_point_range(integer_bits, fractional_bits, signed)
    scale = 2.0 ** fractional_bits
    return tf.clip_by_value(tf.round(x * scale), low * scale, high * scale)


def _paper_codes(x: Tensor, integer_bits: int, fractional_bits: int, signed: bool) -> Tensor:
    # Every step is exact in float32 (widths <= 24 bits): |x| - floor|x| loses nothing, scaling by
    # 2^f is exact, round() is half to even as torch.round in the paper's code.
    magnitude = tf.abs(x)
    whole = tf.floor(magnitude)
    scale = 2.0 ** fractional_bits
    codes = tf.minimum(whole, 2.0 ** integer_bits - 1) * scale
    if fractional_bits > 0:
        codes += tf.round((magnitude - whole) * scale)
        # Their code maps |x| = 2^i (its own largest output) to 2^i - 1; keep it, so q(q(x)) = q(x).
        top = 2.0 ** integer_bits
        codes = tf.where(magnitude == top, tf.cast(top * scale, x.dtype), codes)
    if signed:
        return tf.sign(x) * codes
    return tf.where(x > 0, codes, tf.zeros_like(codes))


def quantize_fixed_paper(x: Tensor, integer_bits: int, fractional_bits: int, signed: bool = True) -> Tensor:
    """The paper's sign-magnitude Qi.f (module docstring): sign(x) (min(floor|x|, 2^i - 1) +
    round(frac|x| 2^f) 2^-f), the fraction dropped when f = 0. Unsigned: negative x -> 0.

    Examples: Q0.4: 0.30 -> 0.3125, -0.30 -> -0.3125, 0.97 -> 1.0, 1.7 -> 0.6875, -5 -> 0;
    Q6.0: 63.4 -> 63, -70 -> -63, 2.7 -> 2.

    Args:
        x: float tensor, any shape.
    Returns:
        Tensor of x's shape and dtype. Gradient: 1 everywhere (straight through, as in the paper).
    """
    step = 2.0 ** -fractional_bits

    def forward(v):
        return _paper_codes(v, integer_bits, fractional_bits, signed) * step

    return _straight_through(x, forward, lambda v: tf.ones_like(v, tf.bool))


def quantize_fixed(x: Tensor, integer_bits: int, fractional_bits: int, signed: bool = True,
                   scheme: str = TWOS_COMPLEMENT) -> Tensor:
    """FIXED Qi.f fake quantization: sign bit + i integer bits + f fractional bits.

    This docstring describes scheme="twos_complement"; scheme="paper" is `quantize_fixed_paper`.

    Rounds to the nearest multiple of 2^-f (ties to even, as `tf.round`), then saturates to
    [-2^i, 2^i - 2^-f] (unsigned: [0, 2^i - 2^-f]); never wraps. Stored bits: i + f + 1 signed,
    i + f unsigned.

    Gradient (STE): 1 where low <= x <= high (the saturation range), 0 outside, so weights
    pushed past the range stop receiving updates that cannot change their value.

    Args:
        x: float tensor, any shape.
    Returns:
        Tensor of x's shape and dtype with values on the Qi.f grid.
    """
    if scheme == PAPER:
        return quantize_fixed_paper(x, integer_bits, fractional_bits, signed)
    low, high = fixed_point_range(integer_bits, fractional_bits, signed)
    step = 2.0 ** -fractional_bits

    def forward(v):
        return _fixed_codes(v, integer_bits, fractional_bits, signed) * step

    return _straight_through(x, forward, lambda v: (v >= low) & (v <= high))


def int_code_limits(bits: int, signed: bool = True) -> tuple:
    """(lowest, highest) integer code: symmetric [-(2^(n-1)-1), 2^(n-1)-1] signed, [0, 2^n-1] unsigned."""
    if signed:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def _max_abs(x: Tensor, axis: Optional[int]) -> Tensor:
    """max|x| per slice along `axis` (keepdims); exact in x's dtype."""
    return tf.reduce_max(tf.abs(x), axis=_reduce_axes(x.shape.rank, axis), keepdims=True)


def _int_codes_from_range(x: Tensor, max_abs: Tensor, bits: int, signed: bool) -> Tensor:
    # Codes are computed in float64 from the float32 range max|x|, and values as code * range / qmax
    # (see _int_values): then the largest value re-derives exactly the same range, so quantizing a
    # quantized kernel is exactly a no-op (needed to reload packed weights bit-identically).
    low, high = int_code_limits(bits, signed)
    max_abs = tf.cast(max_abs, tf.float64)
    safe = tf.where(max_abs > 0, max_abs, tf.ones_like(max_abs))
    return tf.clip_by_value(tf.round(tf.cast(x, tf.float64) * (high / safe)), low, high)


def _int_values(codes: Tensor, max_abs: Tensor, bits: int, signed: bool, dtype) -> Tensor:
    high = int_code_limits(bits, signed)[1]
    return tf.cast(tf.cast(codes, tf.float64) * tf.cast(max_abs, tf.float64) / high, dtype)


def quantize_int(x: Tensor, bits: int, axis: Optional[int] = None, scale: Optional[Tensor] = None,
                 signed: bool = True) -> Tensor:
    """INT n-bit symmetric fake quantization, dequantized back to float.

    Values are code * step with integer codes in [-(2^(n-1)-1), 2^(n-1)-1] (n bits including the
    sign; -2^(n-1) is unused so the grid is symmetric), or [0, 2^n - 1] when signed=False.

    Args:
        x: float tensor, any shape.
        bits: n, total bits per code.
        axis: None for one scale per tensor, or the channel axis (-1 for a Conv2D kernel
            (kh, kw, in, out)) for one scale per channel. Ignored when `scale` is given.
        scale: the step (value of code 1), e.g. an activation's moving-average range / 2^(n-1)-1.
            When None the step is max|x| / qmax per tensor or channel (the weights' case).
    Returns:
        Tensor of x's shape and dtype. Gradient (STE): 1 inside [low * step, high * step], 0 outside.
    """
    low, high = int_code_limits(bits, signed)
    if scale is None:
        max_abs = tf.stop_gradient(_max_abs(tf.convert_to_tensor(x), axis))

        def forward(v):
            return _int_values(_int_codes_from_range(v, max_abs, bits, signed), max_abs, bits,
                               signed, v.dtype)

        # The range is the data's own max, so every weight is inside it.
        return _straight_through(x, forward, lambda v: tf.abs(v) <= tf.cast(max_abs, v.dtype))

    x = tf.convert_to_tensor(x)
    step = tf.stop_gradient(tf.cast(scale, x.dtype))
    safe = tf.where(step > 0, step, tf.ones_like(step))

    def forward_with_step(v):
        return tf.clip_by_value(tf.round(v / safe), low, high) * step

    return _straight_through(x, forward_with_step, lambda v: (v >= low * step) & (v <= high * step))


def _binary_scale(x: Tensor, axis: Optional[int]) -> Tensor:
    # float64 mean: the mean of n copies of a float32 value is then exactly that value (idempotence).
    return tf.reduce_mean(tf.abs(tf.cast(x, tf.float64)), axis=_reduce_axes(x.shape.rank, axis),
                          keepdims=True)


def quantize_binary(w: Tensor, axis: Optional[int] = -1) -> Tensor:
    """BNN weights: sign(w) * a, a = mean|w| per output channel (XNOR-Net scaling).

    sign(0) is taken as +1 so every value is exactly -a or +a.
    Args:
        w: kernel, e.g. (kh, kw, in, out) with axis=-1, or (kh, kw, out, in) with axis=-2 for
            Conv2DTranspose; axis=None uses one scale for the whole tensor.
    Returns:
        Tensor of w's shape and dtype. Gradient: hard-tanh STE, 1 where |w| <= 1, else 0
        (the scale is treated as a constant).
    """

    def forward(v):
        signs = tf.where(v >= 0, 1.0, -1.0)
        return tf.cast(tf.cast(signs, tf.float64) * _binary_scale(v, axis), v.dtype)

    return _straight_through(w, forward, lambda v: tf.abs(v) <= 1.0)


def _ternary_codes_and_scale(w: Tensor, axis: Optional[int]) -> tuple:
    magnitude = tf.abs(tf.cast(w, tf.float64))
    reduce_axes = _reduce_axes(w.shape.rank, axis)
    threshold = TWN_THRESHOLD_FACTOR * tf.reduce_mean(magnitude, axis=reduce_axes, keepdims=True)
    kept = tf.cast(magnitude > threshold, tf.float64)
    count = tf.reduce_sum(kept, axis=reduce_axes, keepdims=True)
    # An all-zero channel keeps nothing; its scale is 0 instead of 0/0.
    scale = tf.reduce_sum(magnitude * kept, axis=reduce_axes, keepdims=True) / tf.maximum(count, 1.0)
    codes = tf.sign(tf.cast(w, tf.float64)) * kept
    return codes, scale


def quantize_ternary(w: Tensor, axis: Optional[int] = -1) -> Tensor:
    """Ternary weight networks (Li & Liu 2016): values in {-a, 0, +a} per output channel.

    threshold = 0.7 * mean|w| over the channel; weights with |w| > threshold keep their sign,
    the rest become 0; a = mean of |w| over the kept weights.
    Args:
        w: kernel; axis as in `quantize_binary`.
    Returns:
        Tensor of w's shape and dtype. Gradient: identity STE (as in TWN).
    """

    def forward(v):
        codes, scale = _ternary_codes_and_scale(v, axis)
        return tf.cast(codes * scale, v.dtype)

    return _straight_through(w, forward, lambda v: tf.ones_like(v, tf.bool))


def quantize_none(x: Tensor) -> Tensor:
    """Float passthrough (the NONE mode)."""
    return tf.convert_to_tensor(x)


def get_quantizer(spec: QuantSpec) -> Callable[..., Tensor]:
    """The quantizer for `spec` as `fn(x, channel_axis=-1) -> Tensor` of x's shape and dtype.

    `channel_axis` is the kernel's output-channel axis (-1 for Conv2D, -2 for Conv2DTranspose) and
    only matters for per-channel INT, BNN and TERNARY. Activations with a running range call
    `quantize_int(..., scale=...)` directly.
    """

    mode = quant_mode(spec.mode)

    def quantizer(x: Tensor, channel_axis: int = -1) -> Tensor:
        return mode.quantize(x, spec, channel_axis if spec.per_channel else None)

    return quantizer


def quantized_codes(x: Tensor, spec: QuantSpec, channel_axis: int = -1) -> tuple:
    """Integer codes and scale such that dequantize_codes(codes, scale, spec) == get_quantizer(spec)(x).

    Returns:
        (codes, scale): codes int32 of x's shape (FIXED: value / 2^-f, the paper scheme's sign times
        magnitude code included; INT:
        symmetric code; BNN: -1/+1; TERNARY: -1/0/+1); scale float32 with keepdims shape (one value
        per channel or per tensor; INT: the range max|x|, BNN/TERNARY: the magnitude a), or None
        for FIXED, whose step 2^-f is in the spec.
    """
    mode = quant_mode(spec.mode)
    if mode.codes is None:
        raise UNetError(f"QuantSpec mode={spec.mode!r} has no integer codes")
    return mode.codes(tf.convert_to_tensor(x), spec, channel_axis if spec.per_channel else None)


def dequantize_codes(codes: Tensor, scale: Optional[Tensor], spec: QuantSpec,
                     dtype=tf.float32) -> Tensor:
    """Values of `quantized_codes` output; bit-identical to the fake-quantized tensor."""
    mode = quant_mode(spec.mode)
    if mode.values is None:
        raise UNetError(f"QuantSpec mode={spec.mode!r} has no integer codes")
    return mode.values(codes, scale, spec, dtype)


@dataclasses.dataclass(frozen=True)
class QuantizationConfig:
    """The quantization of a whole U-Net, as in the paper's YAML (widths in the paper's notation).

    Args:
        quantization: "NONE", "FIXED", "INT", "BNN", "TERNARY" or "QAT_INT8" (TF-MOT 8-bit QAT,
            see unet_medical/model/qat.py; keep_first_float/keep_last_float do not apply to it).
        weight_i_width, weight_f_width: FIXED weights Qi.f. twos_complement: i + f bits, the sign
            bit being one of the i bits; default Q0.4 = 4 bits, range [-0.5, 0.4375]. paper: sign
            apart, magnitude as in the module docstring; Q0.4 spans [-1, 1] in steps of 1/16.
        activation_i_width, activation_f_width: FIXED conv inputs Qi.f: unsigned [0, 2^i - 2^-f]
            (paper: [0, K 2^-f]) for inputs that are non-negative (after ReLU); otherwise signed,
            twos_complement [-2^(i-1), 2^(i-1) - 2^-f], paper [-K 2^-f, K 2^-f]. Default Q6.0.
        weight_bits: INT weight bits (per-channel symmetric). Default 8.
        activation_bits: INT conv-input bits (moving-average range). Default 8.
        keep_first_float, keep_last_float: leave the conv(s) next to the model input / output
            in float, as the paper did. Default True.
        fixed_scheme: FIXED only: "twos_complement" (default; also what configs written before
            this field existed mean) or "paper" (module docstring).
    BNN and TERNARY quantize weights only; conv inputs stay float.
    """

    quantization: str = "NONE"
    weight_i_width: int = 0
    weight_f_width: int = 4
    activation_i_width: int = 6
    activation_f_width: int = 0
    weight_bits: int = 8
    activation_bits: int = 8
    keep_first_float: bool = True
    keep_last_float: bool = True
    fixed_scheme: str = TWOS_COMPLEMENT

    def __post_init__(self) -> None:
        mode = str(self.quantization).upper()
        object.__setattr__(self, "quantization", _MODE_ALIASES.get(mode, mode))
        if self.quantization not in QUANTIZATION_MODES:
            raise UNetError(f"quantization={self.quantization!r}: expected one of "
                            f"{', '.join(QUANTIZATION_MODES.names())}")
        for prefix in ("weight", "activation"):
            check_fixed_widths(prefix, _require_int(f"{prefix}_i_width", getattr(self, f"{prefix}_i_width")),
                               _require_int(f"{prefix}_f_width", getattr(self, f"{prefix}_f_width")))
        for name in ("weight_bits", "activation_bits"):
            if not 2 <= _require_int(name, getattr(self, name)) <= 16:
                raise UNetError(f"{name}={getattr(self, name)}: expected 2..16")
        for name in ("keep_first_float", "keep_last_float"):
            if not isinstance(getattr(self, name), bool):
                raise UNetError(f"{name}={getattr(self, name)!r}: expected true or false")
        if self.fixed_scheme not in FIXED_SCHEMES:
            raise UNetError(f"fixed_scheme={self.fixed_scheme!r}: expected one of {', '.join(FIXED_SCHEMES)}")
        # Build both specs now so that an impossible combination fails here, not mid-transform.
        self.weight_spec()
        self.activation_spec(nonnegative=True)
        self.activation_spec(nonnegative=False)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "QuantizationConfig":
        """From a dict such as the paper's YAML block; unknown keys are an error.

        The paper's keys (quantization, weight_i_width, weight_f_width, activation_i_width,
        activation_f_width) keep their meaning for FIXED; "Normal" means NONE. For INT the paper
        reused the i widths as bit counts; here INT uses weight_bits / activation_bits.
        """
        if not isinstance(values, Mapping):
            raise UNetError(f"quantization config {values!r}: expected a mapping of option -> value")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UNetError(f"quantization config keys {unknown}: unknown; expected some of {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def weight_spec(self) -> QuantSpec:
        """QuantSpec of quantized kernels (QAT_INT8 is handled by TF-MOT: NONE here)."""
        return quant_mode(self.quantization).weight_spec(self)

    def activation_spec(self, nonnegative: bool) -> QuantSpec:
        """QuantSpec of a quantized conv's input; `nonnegative` when it is provably >= 0."""
        return quant_mode(self.quantization).activation_spec(self, nonnegative)
