"""Bit-packed storage of a quantized U-Net: architecture, integer weight codes and scales in one .npz.

A kernel of a quantized layer (model.quantized_layers: QuantConv2D/3D and their transposes) is stored as
its integer codes, offset to be non-negative and bit-packed at the layer's weight width
(`QuantSpec.storage_bits`: two's complement Q0.4 -> 4 bits, INT8 -> 8, BNN -> 1, TERNARY -> 2; the
paper's sign-magnitude Q0.4 codes -16..16 -> 6 bits, offset by 16: as many bits as sign + magnitude),
plus its float32 per-channel scales (INT, BNN, TERNARY). Everything else (float first/last convs, biases,
BatchNormalization, activation ranges) is stored as float32 (biases are not narrowed to float16: they
are a small share of the parameters and float32 keeps reloading exact). The architecture is
`model.to_json()`. Because the quantizers re-quantize their own output exactly, `load_packed` gives a
model whose outputs equal the fake-quantized model's bit for bit.

File layout (uncompressed np.savez, so the size on disk reflects the bit widths):
    "header":       UTF-8 JSON {"format", "config", "layers": [{"name", "weights": [...]}]}
    "architecture": UTF-8 model JSON
    "w<k>":         a float32 weight, or the packed uint8 codes of a kernel
    "w<k>.scale":   the kernel's float32 scales (keepdims shape), when the scheme has them

Usage:
    save_packed(quantize_unet(model, config), config, "unet_q04.npz")
    restored = load_packed("unet_q04.npz")
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import zipfile
from typing import Union

import numpy as np

import tensorflow as tf
import tf_keras as keras

from unet_medical.model.quantized_layers import QUANTIZED_LAYERS
from unet_medical.model.quantizers import (QuantizationConfig, QuantSpec, dequantize_codes, fixed_point_range, int_code_limits,
                              quantized_codes)
from unet_medical.base.errors import UNetError
from unet_medical.base.fileio import atomic_savez
from unet_medical.model.serialization import model_from_json

FORMAT = "unet-packed-v1"
PathLike = Union[str, os.PathLike]


def code_offset_and_stride(spec: QuantSpec) -> tuple:
    """(offset, stride) with (code - offset) / stride in [0, 2^storage_bits - 1] for every code."""
    if spec.mode == "FIXED":
        low = fixed_point_range(spec.integer_bits, spec.fractional_bits, spec.signed, spec.scheme)[0]
        return int(low * 2 ** spec.fractional_bits), 1
    if spec.mode == "INT":
        return int_code_limits(spec.bits, spec.signed)[0], 1
    if spec.mode == "BNN":
        return -1, 2  # codes -1/+1 -> bits 0/1
    if spec.mode == "TERNARY":
        return -1, 1  # codes -1/0/+1 -> 0/1/2
    raise UNetError(f"QuantSpec mode={spec.mode!r} has no integer codes to pack")


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack non-negative integers < 2^bits, `bits` bits each, most significant bit first.

    Args:
        values: integer array, any shape (flattened in C order).
    Returns:
        uint8 array of ceil(values.size * bits / 8) bytes.
    """
    flat = np.asarray(values, dtype=np.int64).ravel()
    if flat.size and (flat.min() < 0 or flat.max() >= 2 ** bits):
        raise ValueError(f"values outside [0, 2^{bits} - 1] cannot be packed in {bits} bits")
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)
    bit_matrix = ((flat[:, None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(bit_matrix.ravel())


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of `pack_bits`: `count` int64 values."""
    bit_matrix = np.unpackbits(np.asarray(packed, dtype=np.uint8), count=count * bits)
    weights = np.left_shift(1, np.arange(bits - 1, -1, -1, dtype=np.int64))
    return bit_matrix.reshape(count, bits).astype(np.int64) @ weights


def _check_consistent(model: keras.Model, config: QuantizationConfig) -> None:
    if not isinstance(config, QuantizationConfig):
        raise UNetError(f"config {config!r}: expected a QuantizationConfig")
    if config.quantization == "QAT_INT8":
        raise UNetError("quantization=QAT_INT8: TF-MOT models are stored as int8 TFLite "
                        "(--export_format tflite --export_precision int8), not as a packed file")
    expected = config.weight_spec().mode
    modes = {layer.weight_quantizer.mode for layer in model.layers if isinstance(layer, QUANTIZED_LAYERS)}
    if modes - {expected, "NONE"}:
        raise UNetError(f"model {model.name!r} has {sorted(modes)}-quantized layers but "
                        f"config.quantization={config.quantization}")
    if expected != "NONE" and expected not in modes:
        raise UNetError(f"model {model.name!r} has no {expected}-quantized layer: save "
                        f"quantize_unet(model, config) rather than the float model")


def _kernel_entry(layer, key: str, arrays: dict) -> dict:
    spec = layer.weight_quantizer
    codes, scale = quantized_codes(layer.kernel, spec, channel_axis=layer.kernel_channel_axis)
    offset, stride = code_offset_and_stride(spec)
    stored = (codes.numpy().astype(np.int64) - offset) // stride
    arrays[key] = pack_bits(stored, spec.storage_bits)
    if scale is not None:
        arrays[f"{key}.scale"] = scale.numpy().astype(np.float32)
    return {"key": key, "kind": "packed", "shape": list(layer.kernel.shape),
            "spec": spec.to_dict(), "offset": offset, "stride": stride,
            "has_scale": scale is not None}


def save_packed(model: keras.Model, config: QuantizationConfig, path: PathLike) -> int:
    """Write `model` (the output of quantize_unet(model, config)) as a bit-packed .npz file.

    Args:
        model: Functional model, possibly with QuantConv2D/3D (and transposed) layers.
        config: the QuantizationConfig it was quantized with (stored in the header, checked).
        path: output file; written as given (no suffix added).
    Returns:
        The file size in bytes.
    """
    _check_consistent(model, config)
    arrays: dict = {}
    layers = []
    for layer in model.layers:
        if not layer.weights:
            continue
        packed_kernel = (isinstance(layer, QUANTIZED_LAYERS)
                         and layer.weight_quantizer.mode != "NONE")
        entries = []
        for weight, value in zip(layer.weights, layer.get_weights()):
            key = f"w{len(arrays)}"
            if packed_kernel and weight is layer.kernel:
                entries.append(_kernel_entry(layer, key, arrays))
            else:
                arrays[key] = np.asarray(value, dtype=np.float32)
                entries.append({"key": key, "kind": "float32"})
        layers.append({"name": layer.name, "weights": entries})
    header = {"format": FORMAT, "config": config.to_dict(), "layers": layers}
    arrays["header"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    arrays["architecture"] = np.frombuffer(model.to_json().encode("utf-8"), dtype=np.uint8)
    return _write(path, arrays)


def save_float32(model: keras.Model, path: PathLike) -> int:
    """Write `model` in the same container with every weight as float32: the reference a packed
    file's size is compared with. Returns the bytes written."""
    arrays = {f"w{i:04d}": np.asarray(w, np.float32) for i, w in enumerate(model.get_weights())}
    arrays["architecture"] = np.frombuffer(model.to_json().encode("utf-8"), dtype=np.uint8)
    return _write(path, arrays)


def _write(path: PathLike, arrays: dict[str, np.ndarray]) -> int:
    try:
        atomic_savez(path, arrays)
    except OSError as error:
        raise UNetError(f"model file {path}: cannot write ({error})") from error
    return os.path.getsize(path)


def import_project_layers() -> None:
    """Import unet_medical/model/layers.py, if present, so its custom layers can be deserialized."""
    # The U-Net's custom layers register themselves with Keras when their module is imported;
    # a packed U-Net's architecture refers to them by name.
    if importlib.util.find_spec("unet_medical.model.layers") is not None:
        importlib.import_module("unet_medical.model.layers")


def _read_text(archive, key: str, path: PathLike) -> str:
    if key not in archive.files:
        raise UNetError(f"packed model file {path}: no '{key}' entry (not written by save_packed?)")
    return archive[key].tobytes().decode("utf-8")


def _restore_weight(entry: dict, archive, path: PathLike) -> np.ndarray:
    if entry["kind"] == "float32":
        return archive[entry["key"]]
    spec = QuantSpec.from_dict(entry["spec"])
    shape = tuple(entry["shape"])
    stored = unpack_bits(archive[entry["key"]], spec.storage_bits, int(np.prod(shape)))
    codes = (stored * entry["stride"] + entry["offset"]).reshape(shape)
    scale = archive[f"{entry['key']}.scale"] if entry["has_scale"] else None
    return dequantize_codes(tf.constant(codes, tf.int32), scale, spec).numpy()


def load_packed(path: PathLike) -> keras.Model:
    """Rebuild the model saved by `save_packed`, with kernels set to their dequantized values.

    Its outputs equal those of the fake-quantized model that was saved, exactly.
    """
    if not os.path.isfile(path):
        raise UNetError(f"packed model file {path}: not found")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise UNetError(f"packed model file {path}: not a .npz archive ({error})") from error
    with archive:
        header = json.loads(_read_text(archive, "header", path))
        if header.get("format") != FORMAT:
            raise UNetError(f"packed model file {path}: format {header.get('format')!r}, expected {FORMAT}")
        import_project_layers()
        try:
            model = model_from_json(_read_text(archive, "architecture", path), path)
        except (ValueError, TypeError) as error:
            raise UNetError(f"packed model file {path}: cannot rebuild the architecture ({error}); "
                            "import the module defining its custom layers first") from error
        for layer_entry in header["layers"]:
            layer = model.get_layer(layer_entry["name"])
            layer.set_weights([_restore_weight(entry, archive, path) for entry in layer_entry["weights"]])
    return model
