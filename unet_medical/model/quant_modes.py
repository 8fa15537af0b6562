"""--quantization: the quantization modes by name, as one table of mode objects. TF-free (names for --help).

Each entry is a `unet_medical.model.quant_mode_table.QuantMode`: how a tensor of the mode is fake-quantized,
coded, decoded and counted, and which QuantSpecs a QuantizationConfig of the mode gives kernels and conv
inputs (or, for TF-MOT QAT, the whole-model transform). The built-in entries are lazy references into
unet_medical.model.quant_mode_table, so listing the names imports no TensorFlow; a plugin registers a
QuantMode object directly.
"""
from __future__ import annotations

from typing import Any

from unet_medical.base.registry import Registry

QUANTIZATION_MODES: Registry[Any] = Registry("quantization mode", flag="--quantization")

for _name in ("NONE", "FIXED", "INT", "BNN", "TERNARY", "QAT_INT8"):
    QUANTIZATION_MODES.register_lazy(_name, f"unet_medical.model.quant_mode_table:{_name}_MODE")
