"""The packed export format: a FIXED/INT/BNN/TERNARY model's weights bit-packed at their bit width.

Registered as "packed" in unet_medical.inference.artifact_formats and written through the one export entry
point (unet_medical.export.formats.export_model), so it is parity-checked like every other format. The
container is unet_medical/model/packing.py's; export.json records the file's size next to the float32
weights of the same network written the same way, and the largest logit difference of the reloaded model
(which must reproduce the fake-quantized model exactly).
"""
from __future__ import annotations

import pathlib
import tempfile
from typing import Any

import numpy as np

from unet_medical.base.errors import UNetError
from unet_medical.model.packing import load_packed, save_float32, save_packed
from unet_medical.model.quantizers import QuantizationConfig
from unet_medical.inference.artifact_formats import WriteRequest
from unet_medical.model.unet import smallest_valid_input

# The reloaded packed model holds the same dequantized weights: only float rounding may differ.
MAX_LOGIT_DIFF = 1e-5


def packed_precision(info: Any) -> str:
    """The precision of a packed export is the run's quantization mode; UNetError for a run that is not
    a fixed-point/INT/BNN/ternary model (`info`: the run record of unet_medical.cli.assemble.restore_model)."""
    qconfig = info.quantization_config
    if info.variant != "packed" or not qconfig:
        raise UNetError(f"--export_format=packed: the run holds a {(qconfig or {}).get('quantization', 'float')} "
                        "model; packing needs a FIXED, INT, BNN or TERNARY model (train with --quantization ...); "
                        "for QAT_INT8 export tflite int8")
    return str(qconfig["quantization"])


def packed_writer(request: WriteRequest) -> dict[str, Any]:
    """Write the packed file; return its size figures and the reloaded model's largest logit difference."""
    if not request.quantization:
        raise UNetError("--export_format=packed: the run records no quantization config to pack the weights with")
    save_packed(request.model, QuantizationConfig.from_mapping(request.quantization), request.path)
    with tempfile.TemporaryDirectory(dir=request.path.parent) as tmp:
        float_bytes = save_float32(request.model, pathlib.Path(tmp) / "fp32_reference.npz")
    size = smallest_valid_input(request.spec, 32)
    tile = np.random.default_rng(0).random((1, *(size,) * request.spec.dims, request.spec.in_channels),
                                           dtype=np.float32)  # an image, or a volume for a 3-D network
    max_diff = float(np.max(np.abs(load_packed(request.path)(tile).numpy() - request.model(tile).numpy())))
    if max_diff > MAX_LOGIT_DIFF:
        raise UNetError(f"{request.path.name}: the reloaded packed model differs from the trained one by {max_diff}")
    packed_bytes = request.path.stat().st_size
    return {"float32_weights_bytes": float_bytes, "size_ratio_vs_float32": float_bytes / packed_bytes,
            "max_abs_logit_diff": max_diff, "quantization_config": dict(request.quantization)}
