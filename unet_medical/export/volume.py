"""Export of a 3-D (volume) model through the one exporter's format registry, checked against Keras.

A volume artefact computes what a 2-D artefact's `tile` computes, one dimension up: float32 patches
(B, D, H, W, C) -> {"probabilities": (B, D, H, W, K) softmax of the model's logits}. It is written by
the registered writer of its format (unet_medical.inference.artifact_formats: onnx and openvino
convert the ONNX of `VolumeModule.tile` with tf2onnx, dynamic batch and patch size; tflite a fixed
cubic patch) and run by the registered loader, exactly as 2-D artefacts are. SavedModel and TF-TRT
are 2-D only here (their serving signatures tile whole images in the graph).

Parity: the Keras model's softmax and the artefact's probabilities on the same whole patches must give
the same argmax class on >= 99.5 % of voxels (>= 99 % for int8; export.parity.PARITY_THRESHOLDS),
else the artefact is discarded (UNetError). Tiling whole volumes (sliding windows) and export.json
entries for volume runs belong to the 3-D inference path, not to this module.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import tempfile
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from unet_medical.base.errors import UNetError
from unet_medical.export.formats import check_export_request
from unet_medical.export.parity import PARITY_THRESHOLDS, ParityReport, compare_probabilities
from unet_medical.export.serving import TILE_INPUT
from unet_medical.inference.artifact_formats import WriteRequest
from unet_medical.inference.runtimes import PROBABILITIES

VOLUME_FORMATS = ("onnx", "openvino", "tflite")


class VolumeModule(tf.Module):
    """The exported computation of a volume model: (B, D, H, W, C) float32 -> softmax probabilities.

    Args:
        model: tf_keras model (B, D, H, W, C) -> (B, D, H, W, K) logits.

    Like UNetServingModule, only the model's variables are tracked, not the Keras object.
    """

    def __init__(self, model: Any):
        super().__init__(name="volume_serving")
        shape = model.inputs[0].shape
        if shape.rank != 5:
            raise UNetError(f"model {model.name!r} takes inputs of shape {shape}: a volume export needs "
                            "(batch, depth, height, width, channels)")
        self.channels = int(shape[-1])
        self.model_variables = list(model.variables)
        self._forward = lambda x: model(x, training=False)  # a plain callable: not tracked
        self.tile = tf.function(self._tile, input_signature=[
            tf.TensorSpec((None, None, None, None, self.channels), tf.float32, name=TILE_INPUT)])

    def _tile(self, patches: tf.Tensor) -> dict[str, tf.Tensor]:
        return {PROBABILITIES: tf.nn.softmax(tf.cast(self._forward(patches), tf.float32), axis=-1)}

    def fixed_tile_function(self, tile_size: int) -> Any:
        """Concrete `tile` for (None, T, T, T, C) patches (TFLite needs a static patch)."""
        spec = tf.TensorSpec((None, tile_size, tile_size, tile_size, self.channels), tf.float32, name=TILE_INPUT)
        return tf.function(self._tile).get_concrete_function(spec)


def _check_patches(patches: Any, what: str, channels: int) -> np.ndarray:
    array = np.asarray(patches, np.float32)
    if array.ndim != 5 or array.shape[0] < 1 or array.shape[-1] != channels:
        raise UNetError(f"{what}: expected float32 patches (N, D, H, W, {channels}) with N >= 1, got shape "
                        f"{array.shape}")
    return array


def keras_probabilities(model: Any, patches: np.ndarray) -> list[np.ndarray]:
    """Softmax of the Keras model's logits per patch: [(D, H, W, K) float32], the parity reference."""
    return [tf.nn.softmax(tf.cast(model(p[None], training=False), tf.float32), axis=-1).numpy()[0]
            for p in patches]


def export_volume_model(model: Any, export_dir: str | os.PathLike, export_format: str, precision: str,
                        parity_patches: Sequence[np.ndarray] | np.ndarray,
                        calibration_patches: Sequence[np.ndarray] | np.ndarray | None = None, *,
                        check_parity: bool = True) -> dict[str, Any]:
    """Write one artefact of a volume model into `export_dir` and check its parity with Keras.

    Args:
        model: tf_keras model (B, D, H, W, C) float32 in [0, 1] -> (B, D, H, W, K) logits.
        export_format, precision: one of VOLUME_FORMATS and a precision it offers.
        parity_patches: (N, D, H, W, C) float32 patches the model accepts; for tflite they must be
            cubic (D = H = W), the artefact's fixed patch.
        calibration_patches: (M, D, H, W, C) float32 patches for int8 calibration (default: the parity
            patches).
        check_parity: compare the artefact with the Keras model (and discard it on failure).

    Returns:
        {"format", "precision", "file", "patch_shape", "dims": 3, "parity": {...} or absent, "size_bytes"}.

    Raises:
        UNetError: a 2-D-only format, a model or patches of the wrong rank, or a failed parity check.
    """
    fmt = check_export_request(export_format, precision)
    if export_format not in VOLUME_FORMATS:
        raise UNetError(f"--export_format={export_format} is not available for 3-D models "
                        f"(available: {', '.join(VOLUME_FORMATS)})")
    module = VolumeModule(model)
    patches = _check_patches(parity_patches, "parity_patches", module.channels)
    patch_shape = tuple(int(n) for n in patches.shape[1:4])
    if fmt.fixed_tile and len(set(patch_shape)) != 1:
        raise UNetError(f"--export_format={export_format} needs cubic patches (its patch is fixed), got "
                        f"{patch_shape}")
    tiles = None
    if fmt.calibrates(precision):
        tiles = _check_patches(patches if calibration_patches is None else calibration_patches,
                               "calibration_patches", module.channels)
    export_dir = pathlib.Path(export_dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    name = fmt.file_name(precision)
    entry: dict[str, Any] = {"format": export_format, "precision": precision, "file": name, "dims": 3,
                             "patch_shape": list(patch_shape),
                             "tile_size": patch_shape[0] if fmt.fixed_tile else None}
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{name}.", dir=export_dir))
    try:
        staged = staging / name
        fmt.writer()(WriteRequest(model=model, module=module, spec=None, path=staged, precision=precision,
                                  tile_size=patch_shape[0], tiles=tiles))
        if check_parity:
            report = volume_parity(model, fmt.loader()(staged, entry), patches, precision)
            entry["parity"] = dataclasses.asdict(report)
            if not report.passed:
                raise UNetError(f"{export_format} {precision} export of 3-D model {model.name!r} failed the parity "
                                f"check: {report.label_agreement:.4%} of voxels agree (need >= {report.threshold:.1%}), "
                                f"max probability difference {report.max_abs_prob_diff:.3g}")
        target = export_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(staged, target)
        entry["size_bytes"] = (target.stat().st_size if target.is_file()
                               else sum(p.stat().st_size for p in target.rglob("*") if p.is_file()))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return entry


def volume_parity(model: Any, predictor: Any, patches: np.ndarray, precision: str) -> ParityReport:
    """Keras softmax vs an artefact's predictor ((1, D, H, W, C) -> (1, D, H, W, K)) on each patch."""
    threshold = PARITY_THRESHOLDS.get(precision, PARITY_THRESHOLDS["fp32"])
    predicted = [np.asarray(predictor(p[None]), np.float32)[0] for p in patches]
    return compare_probabilities(keras_probabilities(model, patches), predicted, threshold)
