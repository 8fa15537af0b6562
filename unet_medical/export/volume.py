"""Export of a 3-D (volume) model through the one exporter's format registry, checked against Keras.

A volume artefact computes what a 2-D artefact's `tile` computes, one dimension up: float32 patches
(B, D, H, W, C) -> {"probabilities": (B, D, H, W, K) softmax of the model's logits}. It is written by
the registered writer of its format (unet_medical.inference.artifact_formats: onnx converts
`VolumeModule.tile` with tf2onnx, openvino with OpenVINO's TensorFlow frontend, dynamic batch and patch size; tflite a fixed
cubic patch; savedmodel the run's export.volume_serving.VolumeServingModule, whose serving signatures
also normalize and slide windows over whole raw volumes) and run by the registered loader, exactly as
2-D artefacts are. TF-TRT is 2-D only.

Parity: the Keras model's softmax and the artefact's probabilities on the same whole patches must give
the same argmax class on >= 99.5 % of voxels (>= 99 % for int8; export.parity.PARITY_THRESHOLDS),
else the artefact is discarded (UNetError). A SavedModel's serving signature is also checked on whole
raw volumes against inference.sliding_window on the Keras model, mirrored when the module mirrors (the
run's decision; "serving"). With `fields`, the entry is recorded in export.json as a 2-D export's is
(export.formats.record_artifact, with schema_version).
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import tempfile
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf

from unet_medical.base.errors import UNetError
from unet_medical.base.fileio import size_on_disk
from unet_medical.data.volume_resample import probabilities_on_grid
from unet_medical.export.formats import check_export_request, record_artifact
from unet_medical.export.parity import PARITY_THRESHOLDS, ParityReport, compare_probabilities
from unet_medical.export.serving import TILE_INPUT, serving_signature_name
from unet_medical.inference.artifact_formats import WriteRequest
from unet_medical.inference.runtimes import OPENVINO_HINTS, PROBABILITIES
from unet_medical.inference.sliding_window import centre_padding, sliding_window_predict, window_starts
from unet_medical.inference.tiling import keras_predictor

VOLUME_FORMATS = ("savedmodel", "onnx", "openvino", "tflite")
VOLUME_ONNX = "model_volume.onnx"  # beside an fp32 ONNX artefact: the whole-volume graph (serving_module.write_onnx)
VOLUME_OPENVINO = "model_volume.xml"  # inside an OpenVINO artefact's folder, with its .bin (serving_module.write_openvino)


def whole_volume_file(export_format: str, precision: str, resamples: bool) -> str | None:
    """The file name of the whole serving computation (normalization, resampling, sliding window) an artefact
    also carries, or None. ONNX fp32 and OpenVINO fp32; OpenVINO bf16 (its float32 file run at bf16 inference
    precision) only for runs that do not resample: at bf16 the CPU plugin returned NaN for a resampling run's
    graph (docs/volumes.md). int8 networks are calibrated on patches only."""
    if (export_format, precision) == ("onnx", "fp32"):
        return VOLUME_ONNX
    if export_format == "openvino" and (precision == "fp32" or (precision == "bf16" and not resamples)):
        return VOLUME_OPENVINO
    return None


# (raw (I, J, K, C) volume, its normalized float32 (I', J', K', C) on the run's grid, the raw volume's spacing in mm)
ServingCase = tuple[np.ndarray, np.ndarray, Sequence[float]]


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
                        check_parity: bool = True, module: VolumeModule | None = None,
                        serving_cases: Sequence[ServingCase] = (), fields: dict[str, Any] | None = None,
                        serving_module: Any = None) -> dict[str, Any]:
    """Write one artefact of a volume model into `export_dir` and check its parity with Keras.

    Args:
        model: tf_keras model (B, D, H, W, C) float32 in [0, 1] -> (B, D, H, W, K) logits.
        export_format, precision: one of VOLUME_FORMATS and a precision it offers.
        parity_patches: (N, D, H, W, C) float32 patches the model accepts; for tflite they must be
            cubic (D = H = W), the artefact's fixed patch.
        calibration_patches: (M, D, H, W, C) float32 patches for int8 calibration (default: the parity
            patches).
        check_parity: compare the artefact with the Keras model (and discard it on failure).
        module: the VolumeModule to export (default: VolumeModule(model)); savedmodel needs the run's
            export.volume_serving.VolumeServingModule (its serving signatures).
        serving_cases: (raw, normalized, spacing) whole volumes on which a SavedModel's serving signature
            (and the whole-volume ONNX) must agree with sliding_window_predict of the Keras model.
        serving_module: the run's export.volume_serving.VolumeServingModule; given, an fp32 ONNX export also
            writes its whole computation (normalization, resampling, sliding window) as VOLUME_ONNX beside it, an
            OpenVINO export as VOLUME_OPENVINO inside its folder (whole_volume_file says which), each checked on
            serving_cases like the SavedModel's signature, at the artefact's precision.
        fields: extra export.json fields (spec, class names, checkpoint, ...); given, the entry is recorded
            in export_dir/export.json.

    Returns:
        {"format", "precision", "file", "patch_shape", "dims": 3, "parity": {"patches": {...}[, "serving":
        {...}]} or absent, "size_bytes", **fields}.

    Raises:
        UNetError: a 2-D-only format, a model or patches of the wrong rank, or a failed parity check.
    """
    if export_format not in VOLUME_FORMATS:  # before the format's own checks (TF-TRT's would name TensorRT)
        raise UNetError(f"--export_format={export_format} is not available for 3-D models "
                        f"(available: {', '.join(VOLUME_FORMATS)})")
    fmt = check_export_request(export_format, precision)
    if fmt.serving_signatures and not hasattr(module, "signatures"):
        raise UNetError(f"--export_format={export_format} of a 3-D model needs its run's normalization and "
                        "patch (export.volume_serving.VolumeServingModule): export it from a run folder")
    module = module if module is not None else VolumeModule(model)
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
                             "tile_size": patch_shape[0] if fmt.fixed_tile else None,
                             "input": f"{TILE_INPUT}: float32 (B, D, H, W, {module.channels}) normalized patches",
                             "output": f"{PROBABILITIES}: float32 (B, D, H, W, K) softmax",
                             "calibration_patches": 0 if tiles is None else len(tiles), **(fields or {})}
    volume_file = None
    if serving_module is not None:
        volume_file = whole_volume_file(export_format, precision, serving_module.target_spacing is not None)
    if volume_file:
        volume_file = f"{name}/{volume_file}" if export_format == "openvino" else volume_file  # openvino: a folder
        entry.update(volume_file=volume_file, volume_input=f"volumes: {serving_module.image_dtype.name} (B, I, J, K, "
                     f"{module.channels}) raw; spacing: float64 (3,) mm; outputs {PROBABILITIES}, labels")
        if export_format == "openvino":  # the plugin's own default may be bf16: the file was checked at this one
            entry["volume_inference_precision"] = OPENVINO_HINTS[precision]
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{name}.", dir=export_dir))
    try:
        staged = staging / name
        fmt.writer()(WriteRequest(model=model, module=module, spec=None, path=staged, precision=precision,
                                  tile_size=patch_shape[0], tiles=tiles))
        if volume_file:
            serving_module.write_volume(export_format, staging / volume_file)
        if check_parity:
            reports = {"patches": volume_parity(model, fmt.loader()(staged, entry), patches, precision)}
            if fmt.serving_signatures and serving_cases:
                reports["serving"] = serving_parity(model, module, savedmodel_server(staged), serving_cases)
            if volume_file and serving_cases:
                serve = serving_module.volume_server(export_format, staging / volume_file, precision)
                reports["serving"] = serving_parity(model, serving_module, serve, serving_cases)
            entry["parity"] = {key: dataclasses.asdict(r) for key, r in reports.items()}
            for key, report in reports.items():
                if not report.passed:
                    raise UNetError(f"{export_format} {precision} export of 3-D model {model.name!r} failed the "
                                    f"parity check ({key}): {report.label_agreement:.4%} of voxels agree (need >= "
                                    f"{report.threshold:.1%}), max probability difference {report.max_abs_prob_diff:.3g}")
        target = export_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(staged, target)
        if volume_file:
            if not target.is_dir():  # inside a folder artefact it moved with it
                os.replace(staging / volume_file, export_dir / volume_file)
            written = export_dir / volume_file
            entry["volume_size_bytes"] = sum(f.stat().st_size for f in (written, written.with_suffix(".bin"))
                                             if f.is_file())
        entry["size_bytes"] = size_on_disk(target)
        if volume_file and target.is_dir():  # the artefact's own size, as other formats state it
            entry["size_bytes"] -= entry["volume_size_bytes"]
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if fields is not None:
        record_artifact(export_dir, entry)
    return entry


def volume_parity(model: Any, predictor: Any, patches: np.ndarray, precision: str) -> ParityReport:
    """Keras softmax vs an artefact's predictor ((1, D, H, W, C) -> (1, D, H, W, K)) on each patch."""
    threshold = PARITY_THRESHOLDS.get(precision, PARITY_THRESHOLDS["fp32"])
    predicted = [np.asarray(predictor(p[None]), np.float32)[0] for p in patches]
    return compare_probabilities(keras_probabilities(model, patches), predicted, threshold)


VolumeServer = Callable[[np.ndarray, Sequence[float]], np.ndarray]  # (raw (I, J, K, C), spacing mm) -> (I, J, K, n)


def savedmodel_server(path: pathlib.Path) -> VolumeServer:
    """The serving signature of a 3-D run's SavedModel at `path` for each raw volume's own dtype (float64 for a
    voxel type without a signature of its own: it holds their values)."""
    loaded = tf.saved_model.load(str(path))

    def serve(raw: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        name = serving_signature_name(raw.dtype)
        if name not in loaded.signatures:
            raw, name = raw.astype(np.float64), serving_signature_name(np.float64)
        out = loaded.signatures[name](volumes=tf.constant(raw[None]), spacing=tf.constant(spacing, tf.float64))
        return out[PROBABILITIES].numpy()[0]
    return serve


def serving_parity(model: Any, module: Any, serve: VolumeServer, cases: Sequence[ServingCase]) -> ParityReport:
    """A whole-volume artefact (`serve`: a SavedModel's serving signature, or the whole-volume ONNX) on raw
    volumes vs sliding_window_predict of the Keras model on the same volumes normalized by the project
    (module.patch, module.overlap, module.mirror and module.mirror_axes: with the run's mirroring, the reference
    is predict_mirrored's mean over the flips of each window; with its module.target_spacing, on the resampled
    volumes and put back onto each raw volume's grid, as predict does)."""
    reference, served = [], []
    for raw, normalized, spacing in cases:
        probabilities = sliding_window_predict(keras_predictor(model), normalized, module.patch,
                                               overlap=module.overlap, mirror=module.mirror,
                                               mirror_axes=module.mirror_axes)
        if module.target_spacing is not None and probabilities.shape[:3] != raw.shape[:3]:
            probabilities = probabilities_on_grid(probabilities, raw.shape[:3], spacing, module.target_spacing)
        reference.append(probabilities)
        served.append(serve(raw, spacing))
    return compare_probabilities(reference, served, PARITY_THRESHOLDS["fp32"])


def volume_patches(volumes: Sequence[np.ndarray], patch: Sequence[int], count: int, overlap: float = 0.5
                   ) -> np.ndarray:
    """(N <= count, P0, P1, P2, C) float32: whole patches as sliding-window inference cuts them (centred zero
    padding, the windows of window_starts), spread evenly over every window of every volume (I, J, K, C)."""
    windows = []
    for volume in volumes:
        pad = [tuple(int(n) for n in centre_padding(s, p)) for s, p in zip(volume.shape[:3], patch)]
        padded = np.pad(np.asarray(volume, np.float32), pad + [(0, 0)])
        starts = [window_starts(n, p, overlap) for n, p in zip(padded.shape[:3], patch)]
        windows += [(padded, (a, b, c)) for a in starts[0] for b in starts[1] for c in starts[2]]
    if not windows:
        raise UNetError("no volume to cut export patches from")
    chosen = np.unique(np.linspace(0, len(windows) - 1, min(count, len(windows))).round().astype(int))
    return np.stack([padded[a:a + patch[0], b:b + patch[1], c:c + patch[2]]
                     for padded, (a, b, c) in (windows[i] for i in chosen)])
