"""The one export entry point: SavedModel, TF-TRT, ONNX, TFLite and OpenVINO, each checked against Keras.

Every format is built from one `UNetServingModule`, so every format computes the same thing:

- `tile` (float32 tiles (B, T, T, C) in [0, 1] -> {"probabilities": (B, O, O, K) float32}): the
  network plus softmax, i.e. a `utils.inference.tiling.Predictor`. ONNX, TFLite and TF-TRT are converted
  from it, and `utils.inference.runtimes` runs every artefact through `utils.inference.predict_images`, the
  same overlap-tile path as the Keras model.
- `serving_default` (SavedModel only; raw images (B, H, W, C) uint8 (uint16 if the training data
  was) of any H, W -> {"probabilities": (B, H, W, K) float32, "labels": (B, H, W) class ids}):
  normalization inside (the rule of `utils.data.normalize.normalize_image`), then ONE tile covering the
  image, exactly as `utils.inference.tiled_predict` builds it when an image fits one tile: mirror
  padding of margin + context pixels per side (margin = the pixels a valid-padding network loses,
  0 for same padding; context = the zero-padded border a same-padding tile throws away), extra
  mirror padding at the bottom/right up to the next valid input size, one forward pass, crop back.
  So a valid-padding network accepts any image size here; memory grows with the image, so for
  images larger than --max_tile_size use the `tile` signature with `utils.inference`.

Artefacts, under MODEL_DIR/export/ (names from `artifact_name`):
    savedmodel/          fp32, both signatures
    model.onnx           fp32 (tf2onnx, dynamic batch and tile size), model_int8.onnx (ONNX Runtime
                         static quantization, QDQ, calibrated on training tiles)
    model_{fp32,fp16,int8}.tflite   fixed tile T, dynamic batch; fp16 = float16 weights; int8 = full
                         integer kernels (float32 input/output), calibrated on training tiles
    tftrt_{fp32,fp16,int8}/         TF-TRT SavedModel of `tile` (needs TensorFlow built with TensorRT)
    openvino_{fp32,bf16,int8}/      OpenVINO IR (model.xml + model.bin, float32 weights) converted from the
                         ONNX of `tile`; bf16 = the float32 file run at bfloat16 inference precision
                         (AMX / AVX512_BF16); int8 = NNCF post-training quantization on training tiles
    export.json          per artefact: UNetSpec, class names, tile size, precision, checkpoint step,
                         parity results; what `utils.inference.runtimes` needs to plan tiles.

Parity: after writing an artefact, the held-out fold's training slices are predicted through the
tiled path by the Keras model and by the artefact; the predicted labels must agree on >= 99.5 % of
pixels (>= 99 % for int8), otherwise the artefact is discarded and the export fails (UNetError).
"""
from __future__ import annotations

import dataclasses
import datetime
import importlib.util
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any, Sequence

import numpy as np

import tensorflow as tf

from model.blocks import POOL_SIZE
from model.unet import UNetSpec, margin as model_margin, smallest_valid_input
from utils.artifacts import write_json
from utils.errors import UNetError
from utils.inference.runtimes import EXPORT_JSON, PROBABILITIES, TILE_SIGNATURE
from utils.export.parity import PARITY_THRESHOLDS, ParityReport, compare_probabilities
from utils.data.normalize import normalize_image
from utils.inference.tiling import keras_predictor, plan_tiles, predict_images
from utils.inference.runtimes import load_exported


EXPORT_DIR = "export"

SERVING_SIGNATURE = "serving_default"

TILE_INPUT = "tiles"

SERVING_INPUT = "images"

LABELS = "labels"

FORMAT_PRECISIONS = {
    "savedmodel": ("fp32",),
    "onnx": ("fp32", "int8"),
    "tflite": ("fp32", "fp16", "int8"),
    "tftrt": ("fp32", "fp16", "int8"),
    "openvino": ("fp32", "bf16", "int8"),
}

CALIBRATION_TILES = 16

ONNX_OPSET = 17

_UNBOUNDED_TILE = 1 << 30  # max_tile_size that makes plan_tiles choose one tile per image

# The largest value of each integer image dtype: normalize_image's one rule per dtype.
_IMAGE_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}



# ----------------------------------------------------------------------------- what can be exported
def artifact_name(export_format: str, precision: str) -> str:
    """File or folder name of an artefact inside MODEL_DIR/export/."""
    if export_format == "savedmodel":
        return "savedmodel"
    if export_format == "onnx":
        return "model.onnx" if precision == "fp32" else f"model_{precision}.onnx"
    if export_format == "tflite":
        return f"model_{precision}.tflite"
    if export_format == "tftrt":
        return f"tftrt_{precision}"
    if export_format == "openvino":
        return f"openvino_{precision}"
    raise UNetError(f"--export_format={export_format!r}: expected one of {', '.join(FORMAT_PRECISIONS)}")



def tensorrt_problems() -> list[str]:
    """What is missing for TF-TRT on this machine (empty list: TF-TRT can run)."""
    problems = []
    if not tf.sysconfig.get_build_info().get("is_tensorrt_build", False):
        problems.append(f"this TensorFlow {tf.__version__} is not built with TensorRT (the pip wheels never "
                        "are): run the export inside NVIDIA's NGC TensorFlow container (nvcr.io/nvidia/"
                        "tensorflow), whose TensorFlow is")
    if not tf.config.list_physical_devices("GPU"):
        problems.append("no NVIDIA GPU is visible to TensorFlow")
    return problems



def check_export_request(export_format: str, precision: str) -> None:
    """Raise UNetError for a format/precision this export cannot produce here, before any heavy work."""
    allowed = FORMAT_PRECISIONS.get(export_format)
    if allowed is None:
        raise UNetError(f"--export_format={export_format!r}: expected one of {', '.join(FORMAT_PRECISIONS)}")
    if precision not in allowed:
        raise UNetError(f"--export_precision={precision} is not available for --export_format={export_format} "
                        f"(available: {', '.join(allowed)}; fp16 and int8 CPU models: --export_format tflite)")
    if export_format == "tftrt":
        problems = tensorrt_problems()
        if problems:
            raise UNetError("--export_format=tftrt needs TensorRT: " + "; ".join(problems) +
                            ". Alternative for GPU users: --export_format onnx, then build a TensorRT "
                            "engine from model.onnx (trtexec --onnx=model.onnx)")
    needs = {"onnx": ("tf2onnx", "onnxruntime"),
             "openvino": ("tf2onnx", "openvino") + (("nncf",) if precision == "int8" else ())}
    missing = [name for name in needs.get(export_format, ()) if not _importable(name)]
    if missing:
        raise UNetError(f"--export_format={export_format} --export_precision={precision} needs "
                        f"{' and '.join(missing)}: pip install -r requirements.txt")



def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None



# ----------------------------------------------------------------------------- in-graph tile geometry
def valid_size_progression(spec: UNetSpec) -> tuple[int, int]:
    """(first, step): the valid input sizes of `spec` are exactly first + k * step, k >= 0.

    Every pooling halves the map, so a valid input is fixed by its bottleneck size and grows by
    POOL_SIZE ** depth per bottleneck pixel; `first` is the smallest input with a non-empty output.
    """
    return smallest_valid_input(spec, 1), POOL_SIZE ** spec.depth



def normalize_integer_images(images: tf.Tensor) -> tf.Tensor:
    """uint8 / 255 or uint16 / 65535 as float32: the in-graph twin of utils.data.normalize.normalize_image."""
    scale = _IMAGE_SCALE.get(np.dtype(images.dtype.as_numpy_dtype))
    if scale is None:
        raise UNetError(f"serving images must be uint8 or uint16, got {images.dtype.name}")
    return tf.cast(images, tf.float32) / tf.constant(scale, tf.float32)



def reflect_indices(length: tf.Tensor, before: tf.Tensor, after: tf.Tensor) -> tf.Tensor:
    """Source index of every position of a mirror-padded axis, as np.pad(mode="reflect") builds it.

    Reflection without repeating the edge is periodic with period 2 * (length - 1); unlike
    tf.pad(mode="REFLECT") this allows pads larger than the axis (small images, big margins).
    Returns int32 (length + before + after,).
    """
    positions = tf.range(-before, length + after)
    period = tf.maximum(2 * (length - 1), 1)
    folded = tf.math.floormod(positions, period)
    return tf.where(folded >= length, period - folded, folded)



def mirror_pad(images: tf.Tensor, top: tf.Tensor, bottom: tf.Tensor, left: tf.Tensor,
               right: tf.Tensor) -> tf.Tensor:
    """Mirror-pad (B, H, W, C) images by the given pixel counts (np.pad "reflect" semantics)."""
    shape = tf.shape(images)
    rows = reflect_indices(shape[1], top, bottom)
    cols = reflect_indices(shape[2], left, right)
    return tf.gather(tf.gather(images, rows, axis=1), cols, axis=2)



class UNetServingModule(tf.Module):
    """The exported computation: a Keras U-Net returning logits, wrapped to return probabilities.

    Args:
        model: tf_keras model (N, H, W, C) float32 -> (N, O, O, K) logits.
        spec: its UNetSpec (for the size arithmetic of the serving signature).
        context: pixels per side a same-padding tile throws away (utils.inference.TilePlan.context).
        image_dtype: dtype of the raw images the serving signature takes (uint8 or uint16).

    Only the model's variables are tracked (not the Keras object), so saving does not trace every
    Keras layer and works for variants Keras cannot save itself (facts.md: QAT transposed convs).
    """

    def __init__(self, model: Any, spec: UNetSpec, context: int, image_dtype: Any = np.uint8):
        super().__init__(name="unet_serving")
        self.model_variables = list(model.variables)
        self._forward = lambda x: model(x, training=False)  # a plain callable: not tracked
        self._margin = model_margin(spec)
        self._context = int(context)
        self._first, self._step = valid_size_progression(spec)
        self._label_dtype = tf.uint8 if spec.n_classes <= 256 else tf.int32
        channels = spec.in_channels
        self.tile = tf.function(self._tile, input_signature=[
            tf.TensorSpec((None, None, None, channels), tf.float32, name=TILE_INPUT)])
        self.serve = tf.function(self._serve, input_signature=[
            tf.TensorSpec((None, None, None, channels), tf.as_dtype(np.dtype(image_dtype)), name=SERVING_INPUT)])

    def _probabilities(self, tiles: tf.Tensor) -> tf.Tensor:
        return tf.nn.softmax(tf.cast(self._forward(tiles), tf.float32), axis=-1)

    def _tile(self, tiles: tf.Tensor) -> dict[str, tf.Tensor]:
        return {PROBABILITIES: self._probabilities(tiles)}

    def fixed_tile_function(self, tile_size: int) -> Any:
        """Concrete `tile` function for (None, tile_size, tile_size, C) inputs (TFLite needs static H, W)."""
        spec = tf.TensorSpec((None, tile_size, tile_size, self.tile.input_signature[0].shape[-1]),
                             tf.float32, name=TILE_INPUT)
        return tf.function(self._tile).get_concrete_function(spec)

    def _serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        x = normalize_integer_images(images)
        h, w = tf.shape(x)[1], tf.shape(x)[2]
        pad = self._margin + self._context
        # The smallest valid square tile covering the image plus its borders, as plan_tiles picks it.
        needed = tf.maximum(h, w) + 2 * pad
        steps = tf.maximum(0, -((self._first - needed) // self._step))  # ceil((needed - first) / step)
        core = self._first + steps * self._step - 2 * pad
        probs = self._probabilities(mirror_pad(x, pad, pad + core - h, pad, pad + core - w))
        c = self._context
        probs = probs[:, c:c + h, c:c + w]
        return {PROBABILITIES: probs, LABELS: tf.cast(tf.argmax(probs, axis=-1), self._label_dtype)}



# ----------------------------------------------------------------------------- writers, one per format
def calibration_tiles(images: Sequence[np.ndarray], tile_size: int, border: int, count: int = CALIBRATION_TILES,
                      seed: int = 0) -> np.ndarray:
    """Real training tiles for int8 calibration: (count, T, T, C) float32, what inference feeds.

    Each normalized image (H, W, C) is mirror-padded by `border` (margin + context) as the tiled
    inference path does (and up to T if it is smaller), then a T x T window is cut at a random
    position; images are taken round-robin so every slice contributes.
    """
    if not images:
        raise UNetError("no training images to calibrate int8 quantization with")
    rng = np.random.default_rng(seed)
    tiles = []
    for i in range(count):
        image = images[i % len(images)]
        h, w = image.shape[:2]
        extra_h, extra_w = max(0, tile_size - h - 2 * border), max(0, tile_size - w - 2 * border)
        padded = np.pad(image, ((border, border + extra_h), (border, border + extra_w), (0, 0)), mode="reflect")
        y = rng.integers(0, padded.shape[0] - tile_size + 1)
        x = rng.integers(0, padded.shape[1] - tile_size + 1)
        tiles.append(padded[y:y + tile_size, x:x + tile_size])
    return np.stack(tiles).astype(np.float32)



def write_savedmodel(module: UNetServingModule, path: pathlib.Path) -> None:
    """SavedModel with the `serving_default` (raw images) and `tile` (float tiles) signatures."""
    tf.saved_model.save(module, str(path), signatures={
        SERVING_SIGNATURE: module.serve.get_concrete_function(),
        TILE_SIGNATURE: module.tile.get_concrete_function()})



def write_onnx(module: UNetServingModule, path: pathlib.Path) -> None:
    """ONNX of the `tile` function (dynamic batch and tile size) via tf2onnx."""
    import tf2onnx

    try:
        tf2onnx.convert.from_function(module.tile, input_signature=module.tile.input_signature,
                                      opset=ONNX_OPSET, output_path=str(path))
    except Exception as exc:  # tf2onnx raises bare exceptions for unsupported graphs
        raise UNetError(f"tf2onnx could not convert the model to ONNX ({type(exc).__name__}: {exc})") from exc



class _TileReader:
    """onnxruntime CalibrationDataReader over calibration tiles, one tile per batch."""

    def __init__(self, input_name: str, tiles: np.ndarray):
        self._feeds = iter([{input_name: t[None]} for t in tiles])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)



def write_onnx_int8(module: UNetServingModule, path: pathlib.Path, tiles: np.ndarray) -> None:
    """Static int8 ONNX (QDQ, per-channel weights, min-max activation ranges from `tiles`)."""
    import onnxruntime
    from onnxruntime import quantization

    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        fp32, prepared = pathlib.Path(tmp) / "fp32.onnx", pathlib.Path(tmp) / "prepared.onnx"
        write_onnx(module, fp32)
        # Shape inference and graph optimization first (BatchNorm folded into the convolutions), so
        # the quantizer sees the graph ONNX Runtime will run rather than one range per BN op.
        quantization.quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)  # no sympy needed
        session = onnxruntime.InferenceSession(str(prepared), providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        quantization.quantize_static(str(prepared), str(path), _TileReader(input_name, tiles),
                                     quant_format=quantization.QuantFormat.QDQ, per_channel=True,
                                     activation_type=quantization.QuantType.QInt8,
                                     weight_type=quantization.QuantType.QInt8)



def write_tflite(module: UNetServingModule, path: pathlib.Path, precision: str, tile_size: int,
                 tiles: np.ndarray | None) -> None:
    """TFLite of `tile` at a fixed tile size: fp32, fp16 (float16 weights) or full-integer int8."""
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.fixed_tile_function(tile_size)], module)
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        if tiles is None:
            raise UNetError("int8 TFLite needs calibration tiles")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([t[None]] for t in tiles)
        # Every kernel integer; the float32 input/output are quantized/dequantized at the ends.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    path.write_bytes(converter.convert())



def write_openvino(module: UNetServingModule, path: pathlib.Path, precision: str, tiles: np.ndarray | None) -> None:
    """OpenVINO IR folder (model.xml + model.bin) of `tile`, dynamic batch and tile size, float32 weights.

    Converted from the tf2onnx ONNX graph (OpenVINO's ONNX frontend), so it computes what every other
    format computes. fp32 and bf16 write the same float32 file (bf16 is an inference-precision setting,
    utils.inference.runtimes.OPENVINO_HINTS); int8 is NNCF post-training quantization with activation
    ranges from `tiles`.
    """
    import openvino as ov

    from utils.inference.runtimes import OPENVINO_XML

    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        onnx_path = pathlib.Path(tmp) / "model.onnx"
        write_onnx(module, onnx_path)
        graph = ov.convert_model(str(onnx_path))
        if precision == "int8":
            import nncf

            if tiles is None:
                raise UNetError("int8 OpenVINO needs calibration tiles")
            graph = nncf.quantize(graph, nncf.Dataset([t[None] for t in tiles]), subset_size=len(tiles))
        path.mkdir(parents=True, exist_ok=True)
        # compress_to_fp16 defaults to True: exported files keep float32 weights.
        ov.save_model(graph, str(path / OPENVINO_XML), compress_to_fp16=False)



def write_tftrt(module: UNetServingModule, path: pathlib.Path, precision: str, tile_size: int,
                tiles: np.ndarray | None) -> None:
    """TF-TRT SavedModel of `tile` (dynamic shapes), engines built for tile_size; int8 calibrated."""
    problems = tensorrt_problems()
    if problems:
        raise UNetError("TF-TRT needs TensorRT: " + "; ".join(problems))
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        source = pathlib.Path(tmp) / "savedmodel"
        write_savedmodel(module, source)
        converter = tf.experimental.tensorrt.Converter(
            input_saved_model_dir=str(source), input_saved_model_signature_key=TILE_SIGNATURE,
            use_dynamic_shape=True, precision_mode=precision.upper(), use_calibration=precision == "int8")
        if tiles is None:
            raise UNetError("TF-TRT needs sample tiles to build its engines")

        def inputs():
            for t in tiles:
                yield (tf.constant(t[None]),)

        converter.convert(calibration_input_fn=inputs if precision == "int8" else None)
        converter.build(input_fn=inputs)
        converter.save(str(path))



def write_artifact(module: UNetServingModule, export_format: str, precision: str, path: pathlib.Path, *,
                   tile_size: int, tiles: np.ndarray | None) -> None:
    """Write one artefact to `path` (a file or a folder, see artifact_name)."""
    if export_format == "savedmodel":
        write_savedmodel(module, path)
    elif export_format == "onnx":
        write_onnx(module, path) if precision == "fp32" else write_onnx_int8(module, path, tiles)
    elif export_format == "tflite":
        write_tflite(module, path, precision, tile_size, tiles)
    elif export_format == "tftrt":
        write_tftrt(module, path, precision, tile_size, tiles)
    elif export_format == "openvino":
        write_openvino(module, path, precision, tiles)
    else:
        raise UNetError(f"--export_format={export_format!r}: expected one of {', '.join(FORMAT_PRECISIONS)}")



# ----------------------------------------------------------------------------- the entry point
@dataclasses.dataclass(frozen=True)
class ExportInputs:
    """The data an export needs besides the model.

    parity_images: raw held-out training slices (H, W, C) uint8/uint16 (normalized here).
    calibration_images: normalized training slices (H, W, C) float32, for int8 calibration.
    """

    parity_images: list[np.ndarray]
    calibration_images: list[np.ndarray]
    tile_size: int
    context: int
    max_tile_size: int = 1024



def export_model(model: Any, spec: UNetSpec, class_names: Sequence[str], export_dir: str | os.PathLike,
                 export_format: str, precision: str, inputs: ExportInputs, *,
                 extra: dict[str, Any] | None = None, check_parity: bool = True,
                 calibration_count: int = CALIBRATION_TILES) -> dict[str, Any]:
    """Write one artefact into `export_dir`, check its parity, record it in export.json.

    The artefact is written under a temporary name and moved into place only after it passed the
    parity check, so a failed export never leaves a model that disagrees with the checkpoint.
    `check_parity=False` (benchmarks on untrained weights) skips the check and records no parity.
    Returns the artefact's export.json entry.
    """
    check_export_request(export_format, precision)
    export_dir = pathlib.Path(export_dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    name = artifact_name(export_format, precision)
    image_dtype = inputs.parity_images[0].dtype if inputs.parity_images else np.dtype(np.uint8)
    module = UNetServingModule(model, spec, inputs.context, image_dtype)
    tiles = None
    if precision == "int8" or export_format == "tftrt":  # calibration, and TF-TRT's engine shapes
        tiles = calibration_tiles(inputs.calibration_images, inputs.tile_size,
                                  model_margin(spec) + inputs.context, calibration_count)
    entry = {
        "format": export_format, "precision": precision, "file": name,
        "spec": dataclasses.asdict(spec), "class_names": list(class_names),
        # None: any valid tile size; otherwise the runtime only accepts this tile.
        "tile_size": inputs.tile_size if export_format == "tflite" else None,
        "parity_tile_size": inputs.tile_size, "context": inputs.context,
        "input": f"{TILE_INPUT}: float32 (B, T, T, {spec.in_channels}) = images / max of their dtype",
        "output": f"{PROBABILITIES}: float32 (B, O, O, {spec.n_classes}) softmax",
        "calibration_tiles": len(tiles) if tiles is not None else 0,
        "tensorflow": tf.__version__, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        **(extra or {}),
    }
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{name}.", dir=export_dir))
    try:
        staged = staging / name
        write_artifact(module, export_format, precision, staged, tile_size=inputs.tile_size, tiles=tiles)
        if check_parity:
            reports = parity_reports(model, spec, staged, entry, inputs)
            entry["parity"] = {key: dataclasses.asdict(r) for key, r in reports.items()}
            failed = {key: r for key, r in reports.items() if not r.passed}
            if failed:
                detail = "; ".join(f"{key}: {r.label_agreement:.4%} of pixels agree (need >= {r.threshold:.1%}), "
                                   f"max probability difference {r.max_abs_prob_diff:.3g}" for key, r in failed.items())
                raise UNetError(f"{export_format} {precision} export failed the parity check against the Keras "
                                f"model on {len(inputs.parity_images)} held-out training slices: {detail}")
        target = export_dir / name
        _remove(target)
        os.replace(staged, target)
        entry["size_bytes"] = _size_bytes(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    record_artifact(export_dir, entry)
    return entry



def parity_reports(model: Any, spec: UNetSpec, path: pathlib.Path, entry: dict[str, Any],
                   inputs: ExportInputs) -> dict[str, ParityReport]:
    """Keras vs artefact through the tiled path ("tiled"), and the serving signature ("serving")."""
    threshold = PARITY_THRESHOLDS[entry["precision"]]
    images = [normalize_image(im) for im in inputs.parity_images]
    plan = dict(tile_size=inputs.tile_size, context=inputs.context, max_tile_size=inputs.max_tile_size)
    reference = predict_images(keras_predictor(model), spec, images, **plan)
    exported = load_exported(path, metadata=entry)
    reports = {"tiled": compare_probabilities(reference, predict_images(exported, spec, images, **plan), threshold)}
    if entry["format"] == "savedmodel":
        # The serving signature runs one tile covering the whole image: compare it with that plan.
        whole = dict(tile_size=None, context=inputs.context, max_tile_size=_UNBOUNDED_TILE)
        if {plan_tiles(spec, im.shape[:2], **whole).tile_size for im in images} != {inputs.tile_size}:
            reference = predict_images(keras_predictor(model), spec, images, **whole)
        serve = tf.saved_model.load(str(path)).signatures[SERVING_SIGNATURE]
        served = [serve(**{SERVING_INPUT: tf.constant(im[None])})[PROBABILITIES].numpy()[0]
                  for im in inputs.parity_images]
        reports["serving"] = compare_probabilities(reference, served, threshold)
    return reports


def _read_export_document(path: pathlib.Path) -> dict[str, Any]:
    if not path.is_file():
        return {"artifacts": {}}
    try:
        document = json.loads(path.read_text())
        document["artifacts"] = dict(document["artifacts"])
        return document
    except (ValueError, KeyError, TypeError) as exc:
        raise UNetError(f"{path} is corrupt ({exc}); delete it and export again") from None



def record_artifact(export_dir: pathlib.Path, entry: dict[str, Any]) -> pathlib.Path:
    """Add or replace the artefact's entry in export_dir/export.json (atomically; other keys kept)."""
    path = export_dir / EXPORT_JSON
    document = _read_export_document(path)
    document["artifacts"][entry["file"]] = entry
    return write_json(path, document)



def forget_artifact(export_dir: pathlib.Path, name: str) -> None:
    """Delete the artefact `name` and its export.json entry."""
    _remove(export_dir / name)
    path = export_dir / EXPORT_JSON
    document = _read_export_document(path)
    if document["artifacts"].pop(name, None) is not None:
        write_json(path, document)



def record_selection(export_dir: pathlib.Path, selection: dict[str, Any] | None) -> pathlib.Path:
    """Set (or with None, drop) export.json's "selection": the default export's choice of deploy file."""
    path = export_dir / EXPORT_JSON
    document = _read_export_document(path)
    document.pop("selection", None)
    if selection is not None:
        document["selection"] = selection
    return write_json(path, document)



def read_export_selection(path: pathlib.Path) -> dict[str, Any] | None:
    """The "selection" of an export.json (None if it has none)."""
    return _read_export_document(path).get("selection")



def read_export_json(path: pathlib.Path) -> dict[str, dict[str, Any]]:
    """The artefact entries of an export.json ({} if the file does not exist)."""
    return _read_export_document(path)["artifacts"]



def _remove(path: pathlib.Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()



def _size_bytes(path: pathlib.Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

