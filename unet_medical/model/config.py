"""The model's settings: the U-Net's architecture, its quantization and its Tucker compression.
Standard library only (no TensorFlow): the command line builds its flags from these classes, and
model.quantizers checks fixed-point widths with the same rule (`check_fixed_widths`)."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from unet_medical.base.errors import UNetError
from unet_medical.model.quant_modes import QUANTIZATION_MODES
from unet_medical.base.settings import Rule, Settings, at_least, between, setting

DEFAULT_DEPTH = 4  # the paper's; --depth when neither the flag nor the recipe chose one (valid padding, benchmark)

# Fixed-point Qi.f values are stored in at most this many bits (i + f, sign included for twos_complement):
# FIXED codes are exact integers in float32 only up to 2^24.
MAX_FIXED_BITS = 24


def check_fixed_widths(prefix: str, i: int, f: int) -> None:
    """The one rule for a Qi.f width pair: integers >= 0 with 1 <= i + f <= MAX_FIXED_BITS."""
    if not (isinstance(i, int) and isinstance(f, int)) or i < 0 or f < 0 or not 1 <= i + f <= MAX_FIXED_BITS:
        raise UNetError(f"{prefix}_i_width={i}, {prefix}_f_width={f}: expected widths >= 0 "
                        f"with 1 <= i + f <= {MAX_FIXED_BITS} bits")


@dataclasses.dataclass(frozen=True)
class ModelConfig(Settings):
    """The U-Net the flags build (model.unet.UNetSpec is made from these)."""

    section: ClassVar[str] = "model"
    title: ClassVar[str] = "model: the U-Net's architecture"

    padding: str = setting("valid", "valid: the paper's U-Net; same: output size = input size",
                          choices=("valid", "same"))
    base_filters: int = setting(64, "filters of the first level (64 = paper), doubled per level", rule=at_least(1))
    depth: int | None = setting(None, "number of 2x2 poolings (default: chosen from the data's object widths "
                                "for same padding, 4 to 7; 4 = paper, and for valid padding)", rule=between(1, 8))
    batch_norm: bool = setting(False, "Conv -> BatchNorm -> ReLU blocks")
    instance_norm: bool = setting(False, "Conv -> InstanceNorm -> ReLU blocks: per sample and channel, no moving "
                                  "statistics (nnU-Net's 3-D choice); replaces --batch_norm, which the CPU recipe passes")
    dropout: float = setting(0.5, "dropout rate at the bottleneck (0 disables)", rule=between(0, 1, "a rate", high_open=True))
    input_scale: float | None = setting(None, "resample images by this factor before the network and the "
                                        "prediction back to the input size, e.g. 0.5 (default: chosen from the "
                                        "data: below 1 only for objects wider than 384 px)",
                                        rule=between(0.05, 1, "a factor"))


def instance_over_batch_norm(values: dict) -> dict:
    """--instance_norm replaces --batch_norm: {"batch_norm": False} when the flags ask for instance
    normalization, else {}. A recipe types --batch_norm before the user's flags, so the more specific
    request wins instead of refusing the pair (UNetSpec allows one normalization)."""
    return {"batch_norm": False} if values.get("instance_norm") else {}


@dataclasses.dataclass(frozen=True)
class QuantizationSettings(Settings):
    """The quantization flags; model.quantizers.QuantizationConfig is built from them (`to_dict()`)."""

    section: ClassVar[str] = "quantization"
    title: ClassVar[str] = "quantization (MICCAI 2019 fixed-point grid; TF-MOT int8 QAT)"

    quantization: str = setting("NONE", "weight/activation quantization of every conv (first and last kept "
                               "float unless --no-keep_first_float/--no-keep_last_float)",
                               choices=QUANTIZATION_MODES.names)
    weight_i_width: int = setting(0, "FIXED weights: integer bits i of Qi.f (twos_complement: i + f bits in all, "
                                 "sign included; paper: the magnitude's, sign apart)")
    weight_f_width: int = setting(4, "FIXED weights: fractional bits f of Qi.f")
    activation_i_width: int = setting(6, "FIXED activations: integer bits")
    activation_f_width: int = setting(0, "FIXED activations: fractional bits")
    fixed_scheme: str = setting("twos_complement", "FIXED number format: twos_complement (rounded, saturating; "
                               "Q0.4 = 4 bits, [-0.5, 0.4375]) or paper (the MICCAI 2019 code's sign-magnitude "
                               "to_fixed_point: sign apart, integer part of |v| clamped to 2^i - 1, fraction "
                               "rounded to f bits; Q0.4 spans [-1, 1] in steps of 1/16)",
                               choices=("twos_complement", "paper"))
    weight_bits: int = setting(8, "INT weights: bits (symmetric, per output channel)", rule=between(2, 16))
    activation_bits: int = setting(8, "INT activations: bits (moving-average range)", rule=between(2, 16))
    keep_first_float: bool = setting(True, "keep the first conv in float (as the paper did)")
    keep_last_float: bool = setting(True, "keep the last (1x1 head) conv in float (as the paper did)")

    def check(self) -> None:
        check_fixed_widths("weight", self.weight_i_width, self.weight_f_width)
        check_fixed_widths("activation", self.activation_i_width, self.activation_f_width)

    def to_dict(self) -> dict:
        """The mapping model.quantizers.QuantizationConfig.from_mapping takes."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class CompressionConfig(Settings):
    """Tucker-2 ranks of --exec_mode compress (model.tucker)."""

    section: ClassVar[str] = "compression"
    title: ClassVar[str] = "Tucker compression (--exec_mode compress)"

    rank_factor: float | None = setting(None, "Tucker ranks = ceil(channels x factor), e.g. 0.3",
                                 rule=Rule(lambda v: 0 < v <= 1, "a factor in (0, 1]"))
    rank: int | None = setting(None, "fixed Tucker rank for both channel modes", rule=at_least(1))
    rank_min: int = setting(8, "smallest Tucker rank", rule=at_least(1))
