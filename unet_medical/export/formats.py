"""The one export entry point: SavedModel, TF-TRT, ONNX, TFLite and OpenVINO, each checked against Keras.

Every format is built from one `unet_medical.export.serving.UNetServingModule`, so every format computes
the same thing:

- `tile` (float32 tiles (B, T, T, C) in [0, 1] -> {"probabilities": (B, O, O, K) float32}): the
  network plus softmax, i.e. a `unet_medical.inference.tiling.Predictor`. ONNX, TFLite and TF-TRT are converted
  from it, and `unet_medical.inference.runtimes` runs every artefact through `unet_medical.inference.predict_images`, the
  same overlap-tile path as the Keras model.
- `serving_default` (SavedModel only; raw images (B, H, W, C) of the training dtype, any H, W ->
  {"probabilities": (B, H, W, K) float32, "labels": (B, H, W) class ids}), and `serving_uint8`,
  `serving_uint16`, `serving_float32` (float32 already in [0, 1]): normalization and the whole
  overlap-tile prediction of `--exec_mode predict` inside the graph (see utils.export.serving), so
  `tf.saved_model.load` alone reproduces predict, with memory bounded by the tile.

Artefacts, under MODEL_DIR/export/ (names from `artifact_name`):
    savedmodel/          fp32, every signature above
    model.onnx           fp32 (tf2onnx, dynamic batch and tile size), model_int8.onnx (ONNX Runtime
                         static QDQ quantization, calibrated on image tiles)
    model_{fp32,fp16,int8}.tflite   fixed tile T, dynamic batch; fp16 = float16 weights; int8 = full
                         integer kernels (float32 input/output), calibrated on image tiles
    tftrt_{fp32,fp16,int8}/         TF-TRT SavedModel of `tile` (needs TensorFlow built with TensorRT)
    openvino_{fp32,bf16,int8}/      OpenVINO IR (model.xml + model.bin, float32 weights) converted from
                         `tile` by OpenVINO's TensorFlow frontend; bf16 = the float32 file run at bfloat16 inference precision
                         (AMX / AVX512_BF16); int8 = NNCF post-training quantization on training tiles
    export.json          per artefact: UNetSpec, class names, tile size, precision, checkpoint step,
                         parity results; what `unet_medical.inference.runtimes` needs to plan tiles.

Parity: after writing an artefact, the parity images (no labels needed) are predicted through the
tiled path by the Keras model and by the artefact; the artefact's predicted labels must agree with the
Keras model's on >= 99.5 % of pixels (>= 99 % for int8), otherwise the artefact is discarded and the
export fails (UNetError).
"""
from __future__ import annotations

import dataclasses
import datetime
import importlib.util
import os
import pathlib
import shutil
import tempfile
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

import tensorflow as tf

from unet_medical.model.unet import UNetSpec, margin as model_margin
from unet_medical.base.artifacts import read_export_document, write_export_document
from unet_medical.base.errors import UNetError
from unet_medical.base.fileio import size_on_disk
from unet_medical.base.registry import resolve
from unet_medical.inference.runtimes import EXPORT_JSON, PROBABILITIES, TILE_SIGNATURE
from unet_medical.export.parity import SharedExportWork, parity_reports
from unet_medical.inference.artifact_formats import ExportFormat, WriteRequest, format_of
from unet_medical.base.progress import Progress
from unet_medical.export.serving import TILE_INPUT, UNetServingModule


EXPORT_DIR = "export"


CALIBRATION_TILES = 16


ONNX_OPSET = 17


# ----------------------------------------------------------------------------- what can be exported
def artifact_name(export_format: str, precision: str) -> str:
    """File or folder name of an artefact inside MODEL_DIR/export/ (the format's registered file_name)."""
    return format_of(export_format).file_name(precision)


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


def check_tensorrt(precision: str) -> None:
    """The tftrt format's preflight: UNetError when TF-TRT cannot run here."""
    problems = tensorrt_problems()
    if problems:
        raise UNetError("--export_format=tftrt needs TensorRT: " + "; ".join(problems) +
                        ". Alternative for GPU users: --export_format onnx, then build a TensorRT "
                        "engine from model.onnx (trtexec --onnx=model.onnx)")


def check_export_request(export_format: str, precision: str) -> ExportFormat:
    """The registered format, after UNetError for a format/precision this export cannot produce here
    (unknown name, precision it does not offer, machine or packages missing), before any heavy work."""
    fmt = format_of(export_format)
    if precision not in fmt.precisions:
        raise UNetError(f"--export_precision={precision} is not available for --export_format={export_format} "
                        f"(available: {', '.join(fmt.precisions)}; fp16 and int8 CPU models: --export_format tflite)")
    if fmt.preflight is not None:
        resolve(fmt.preflight)(precision)
    missing = [name for name in fmt.needs(precision) if not _importable(name)]
    if missing:
        raise UNetError(f"--export_format={export_format} --export_precision={precision} needs "
                        f"{' and '.join(missing)}: pip install -r requirements.txt")
    return fmt


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


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
    """SavedModel with the serving signatures (raw images, tiled in the graph) and `tile` (float tiles)."""
    tf.saved_model.save(module, str(path), signatures=module.signatures())


def write_onnx(module: UNetServingModule, path: pathlib.Path) -> None:
    """ONNX of the `tile` function (dynamic batch and tile size) via tf2onnx."""
    import tf2onnx

    try:
        tf2onnx.convert.from_function(module.tile, input_signature=module.tile.input_signature,
                                      opset=ONNX_OPSET, output_path=str(path))
    except Exception as exc:  # tf2onnx raises bare exceptions for unsupported graphs
        raise UNetError(f"tf2onnx could not convert the model to ONNX ({type(exc).__name__}: {exc})") from exc


class _TileReader:
    """onnxruntime CalibrationDataReader over calibration tiles, one tile per batch (read lazily, so a
    tracked iterator counts the tiles as the calibrator consumes them)."""

    def __init__(self, input_name: str, tiles: Iterable[np.ndarray]):
        self._input_name, self._tiles = input_name, iter(tiles)

    def get_next(self) -> dict[str, np.ndarray] | None:
        tile = next(self._tiles, None)
        return None if tile is None else {self._input_name: tile[None]}


def _feed(tiles: np.ndarray, progress: Progress | None) -> Iterator[np.ndarray]:
    """The calibration tiles one by one, counted by `progress` (k/N, rate, ETA) when there is one."""
    return progress.track(tiles) if progress is not None else iter(tiles)



def write_onnx_int8(module: UNetServingModule, path: pathlib.Path, tiles: np.ndarray,
                    progress: Progress | None = None) -> None:
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
        quantization.quantize_static(str(prepared), str(path), _TileReader(input_name, _feed(tiles, progress)),
                                     quant_format=quantization.QuantFormat.QDQ, per_channel=True,
                                     activation_type=quantization.QuantType.QInt8,
                                     weight_type=quantization.QuantType.QInt8)


def tflite_flatbuffer(function: Any, trackable: Any, precision: str, tiles: np.ndarray | None = None,
                      progress: Progress | None = None, qat: bool = False) -> bytes:
    """The one TFLite converter: a concrete function (static H, W, or D, H, W) -> flatbuffer bytes.

    fp32; fp16 (float16 weights); int8: for a TF-MOT QAT model (`qat`) from its own trained ranges (no
    representative data set needed), otherwise full-integer kernels calibrated on `tiles` (N, T, T, C).
    Inputs and outputs stay float32 either way.

    Volume models (5-D input): TFLite's CONV_3D / CONV_3D_TRANSPOSE run in float only, so an int8 volume
    model keeps int8 activations between float 3-D convolutions (quantize/dequantize around each). TFLite
    has no builtin MaxPool3D (TF 2.21), and the TensorFlow wheel's interpreter has no Flex delegate to run
    TF ops, so a graph needing TF ops is refused (UNetError naming them; `check_tflite_layers` names the
    layer earlier) rather than converted to a file no runtime here can run.
    """
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], trackable)
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8" and qat:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif precision == "int8":
        if tiles is None:
            raise UNetError("int8 TFLite needs calibration tiles")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([t[None]] for t in _feed(tiles, progress))
        # Every kernel integer; the float32 input/output are quantized/dequantized at the ends.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        return converter.convert()
    except Exception as exc:  # tf.lite's ConverterError lives in a private module
        ops = [line.split(":", 1)[1].strip() for line in str(exc).splitlines() if line.startswith("TF Select ops:")]
        if not ops:
            raise
        raise UNetError(f"TFLite has no builtin op for {', '.join(ops)} and this TensorFlow's interpreter cannot "
                        "run TF ops (no Flex delegate): export this model as ONNX or OpenVINO") from None


def write_tflite(module: UNetServingModule, path: pathlib.Path, precision: str, tile_size: int,
                 tiles: np.ndarray | None, progress: Progress | None = None, qat: bool = False) -> None:
    """TFLite of `tile` at a fixed tile size (dynamic batch), see tflite_flatbuffer (`qat`: the module's
    model is a TF-MOT QAT model)."""
    path.write_bytes(tflite_flatbuffer(module.fixed_tile_function(tile_size), module, precision, tiles, progress,
                                       qat=qat))


def keras_to_tflite(model: Any, input_shape: Sequence[int], precision: str = "int8") -> bytes:
    """A Keras model's own outputs (no softmax added) as TFLite for (B, H, W, C) or (B, D, H, W, C)
    float32 inputs, any B.

    The model is called from a tf.function held by a tf.Module, which converts where a SavedModel export
    of a QAT model with a quantized Conv2DTranspose would fail. Used for models that are not U-Nets of a
    run (tests/test_qat.py); a run's models are exported with export_model.
    """
    shape = tuple(input_shape)
    if len(shape) not in (3, 4) or not all(isinstance(n, (int, np.integer)) and n > 0 for n in shape):
        raise UNetError(f"input_shape={input_shape!r}: expected (height, width, channels) or (depth, height, "
                        "width, channels) positive integers")
    check_tflite_layers(model)
    holder = tf.Module()
    holder.model = model
    holder.serve = tf.function(lambda images: model(images, training=False),
                               input_signature=[tf.TensorSpec((None, *map(int, shape)), tf.float32, name="images")])
    return tflite_flatbuffer(holder.serve.get_concrete_function(), holder, precision, qat=is_qat_model(model))


# Layers TFLite has no builtin op for (TF 2.21); the pip TensorFlow's interpreter cannot run TF ops instead.
_NO_TFLITE_BUILTIN = ("MaxPooling3D", "AveragePooling3D")


def check_tflite_layers(model: Any) -> None:
    """UNetError naming the first layer TFLite cannot run (a TF-MOT wrapper is looked through), before a
    conversion that would fail with a converter message about the graph (for a QAT model: a quantization
    scale constraint) instead of the layer."""
    for layer in getattr(model, "layers", ()):
        inner = getattr(layer, "layer", layer)
        if type(inner).__name__ in _NO_TFLITE_BUILTIN:
            raise UNetError(f"layer {layer.name!r} ({type(inner).__name__}): TFLite has no builtin op for it and this "
                            "TensorFlow's interpreter cannot run TF ops (no Flex delegate): export this model as "
                            "ONNX or OpenVINO")


def is_qat_model(model: Any) -> bool:
    """Whether `model` is a TF-MOT QAT model (layers wrapped in QuantizeWrapper), without importing TF-MOT."""
    return any(type(layer).__name__.startswith("QuantizeWrapper") for layer in getattr(model, "layers", ()))


def write_openvino(module: UNetServingModule, path: pathlib.Path, precision: str, tiles: np.ndarray | None) -> None:
    """OpenVINO IR folder (model.xml + model.bin) of `tile`, dynamic batch and tile size, float32 weights.

    Converted by OpenVINO's TensorFlow frontend from the concrete `tile` function, the graph every other
    format is converted from (tf2onnx took over a minute of a paper-net export; this takes seconds). fp32 and
    bf16 write the same float32 file (bf16 is an inference-precision setting,
    utils.inference.runtimes.OPENVINO_HINTS); int8 is NNCF post-training quantization with activation
    ranges from `tiles`.
    """
    import openvino as ov

    from unet_medical.inference.runtimes import OPENVINO_XML

    graph = ov.convert_model(module.tile.get_concrete_function())
    if precision == "int8":
        import nncf

        if tiles is None:
            raise UNetError("int8 OpenVINO needs calibration tiles")
        graph = nncf.quantize(graph, nncf.Dataset([t[None] for t in tiles]), subset_size=len(tiles))
    path.mkdir(parents=True, exist_ok=True)
    # compress_to_fp16 defaults to True: exported files keep float32 weights.
    ov.save_model(graph, str(path / OPENVINO_XML), compress_to_fp16=False)



def write_tftrt(module: UNetServingModule, path: pathlib.Path, precision: str, tile_size: int,
                tiles: np.ndarray | None, progress: Progress | None = None) -> None:
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

        def inputs(tracked: Progress | None = None):
            for t in _feed(tiles, tracked):
                yield (tf.constant(t[None]),)

        converter.convert(calibration_input_fn=(lambda: inputs(progress)) if precision == "int8" else None)
        converter.build(input_fn=inputs)
        converter.save(str(path))


# Writers in the registry's form (unet_medical.inference.artifact_formats): WriteRequest -> extra entry fields.
def savedmodel_writer(request: WriteRequest) -> None:
    # The layers with weights do the arithmetic (the input layer and the head are float32 under every policy).
    computes = {layer.compute_dtype for layer in request.model.layers if layer.weights and layer.name != "head"}
    wanted = {"fp32": "float32", "bf16": "bfloat16"}[request.precision]
    if computes and computes != {wanted}:  # the file's precision is the model's policy, never a label
        raise UNetError(f"savedmodel {request.precision}: the model computes in {', '.join(sorted(computes))}; "
                        f"rebuild it under the matching dtype policy (--exec_mode export does)")
    write_savedmodel(request.module, request.path)


def onnx_writer(request: WriteRequest) -> None:
    if request.precision == "fp32":
        write_onnx(request.module, request.path)
    else:
        write_onnx_int8(request.module, request.path, request.tiles, request.progress)


def tflite_writer(request: WriteRequest) -> None:
    check_tflite_layers(request.model)
    write_tflite(request.module, request.path, request.precision, request.tile_size, request.tiles, request.progress,
                 qat=is_qat_model(request.model))


def tftrt_writer(request: WriteRequest) -> None:
    write_tftrt(request.module, request.path, request.precision, request.tile_size, request.tiles, request.progress)


def openvino_writer(request: WriteRequest) -> None:
    write_openvino(request.module, request.path, request.precision, request.tiles)


# ----------------------------------------------------------------------------- the entry point
@dataclasses.dataclass(frozen=True)
class ExportInputs:
    """The data an export needs besides the model (images only: no labels are needed).

    parity_images: raw images (H, W, C) uint8/uint16 (normalized here) on which the artefact must
        agree with the Keras model.
    calibration_images: normalized images (H, W, C) float32, for int8 calibration.
    tile_size: the tile of the "tiled" parity check and of fixed-tile formats (TFLite).
    context, max_tile_size, serving_tile_size: the tile plan of the SavedModel's serving signatures,
        i.e. predict's --tile_context, --max_tile_size and --tile_size (None: planned per image size).
    image_dtype: dtype of `serving_default` (the training images'); None: the parity images'.
    normalization: utils.data.normalize mode of the run (applied to parity images and in the serving graph).
    quantization: the run's quantization config (the packed format stores the weights at its bit width).
    input_scale: the run's input scale (RunRecord.input_scale), applied by parity checks and the serving graph.
    threshold, tta: the run's decision (inference.decision), applied by the serving graph; with tta the
        serving parity's Keras reference averages the same flips.
    serving_images_per_dtype: the SavedModel's serving signatures are checked on the first this many parity
        images of each dtype (None: on every one; the `tile` function is checked on every one either way).
    """

    parity_images: list[np.ndarray]
    calibration_images: list[np.ndarray]
    tile_size: int
    context: int
    max_tile_size: int = 1024
    serving_tile_size: int | None = None
    image_dtype: str | None = None
    normalization: str = "global"
    quantization: dict[str, Any] | None = None
    input_scale: float = 1.0
    threshold: float | None = None
    tta: bool = False
    serving_images_per_dtype: int | None = None


def export_model(model: Any, spec: UNetSpec, class_names: Sequence[str], export_dir: str | os.PathLike,
                 export_format: str, precision: str, inputs: ExportInputs, *,
                 extra: dict[str, Any] | None = None, check_parity: bool = True,
                 calibration_count: int = CALIBRATION_TILES, logger: Any = None, artifact_model: Any = None,
                 shared: SharedExportWork | None = None) -> dict[str, Any]:
    """Write one artefact into `export_dir`, check its parity, record it in export.json.

    The artefact is written under a temporary name and moved into place only after it passed the
    parity check, so a failed export never leaves a model that disagrees with the checkpoint.
    `check_parity=False` (benchmarks on untrained weights) skips the check and records no parity.
    `artifact_model`: the model the artefact is written from when it is not `model` (the Keras model rebuilt
    in bfloat16 for a bf16 SavedModel); parity always compares with `model`. `shared`: work reused across
    the candidates of a default export.
    With a `logger` (a dllogger.Logger), each step gets an EXPORT line when it starts, and calibration and
    the parity predictions show their progress. Returns the artefact's export.json entry.
    """
    fmt = check_export_request(export_format, precision)
    export_dir = pathlib.Path(export_dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    name = fmt.file_name(precision)
    shared = shared or SharedExportWork()
    source = artifact_model if artifact_model is not None else model
    module = shared.once(("serving module", id(source)),  # the model is kept with it: its id is never reused
                         lambda: (source, serving_module(source, spec, class_names, inputs)))[1]
    tiles = None
    if fmt.calibrates(precision):  # int8 calibration, and TF-TRT's engine shapes
        tiles = calibration_tiles(inputs.calibration_images, inputs.tile_size,
                                  model_margin(spec) + inputs.context, calibration_count)
    entry = {
        "format": export_format, "precision": precision, "file": name,
        "spec": dataclasses.asdict(spec), "class_names": list(class_names),
        # None: any valid tile size; otherwise the runtime only accepts this tile.
        "tile_size": inputs.tile_size if fmt.fixed_tile else None,
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
        calibrating = tiles is not None and precision == "int8"
        _log_step(logger, name, f"convert and calibrate on {len(tiles)} tiles" if calibrating else "write")
        with Progress(len(tiles) if tiles is not None else 0, "calibrate", logger, unit="tile",
                      enabled=logger is not None and calibrating) as calibration:
            written = fmt.writer()(WriteRequest(model=source, module=module, spec=spec, path=staged, precision=precision,
                                                tile_size=inputs.tile_size, tiles=tiles, progress=calibration,
                                                quantization=inputs.quantization))
        entry.update(written or {})
        if check_parity:
            _log_step(logger, name, f"parity on {len(inputs.parity_images)} held-out images")
            reports = parity_reports(model, spec, staged, entry, inputs, logger, shared)
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
        entry["size_bytes"] = size_on_disk(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    record_artifact(export_dir, entry)
    return entry


def _log_step(logger: Any, name: str, step: str) -> None:
    if logger is not None:
        logger.log("EXPORT", {"artifact": name, "step": step})


def serving_module(model: Any, spec: UNetSpec, class_names: Sequence[str], inputs: ExportInputs) -> UNetServingModule:
    """The UNetServingModule of an export: the serving tile plan and image dtype of `inputs`."""
    image_dtype = inputs.image_dtype or (inputs.parity_images[0].dtype if inputs.parity_images else np.uint8)
    return UNetServingModule(model, spec, inputs.context, image_dtype, tile_size=inputs.serving_tile_size,
                             max_tile_size=inputs.max_tile_size, class_names=class_names,
                             normalization=inputs.normalization, input_scale=inputs.input_scale,
                             threshold=inputs.threshold, tta=inputs.tta)


def _read_export_document(path: pathlib.Path) -> dict[str, Any]:
    if not path.is_file():
        return {"artifacts": {}}
    try:
        document = read_export_document(path)
        document["artifacts"] = dict(document["artifacts"])
        return document
    except (ValueError, KeyError, TypeError) as exc:
        raise UNetError(f"{path} is corrupt ({exc}); delete it and export again") from None



def record_artifact(export_dir: pathlib.Path, entry: dict[str, Any]) -> pathlib.Path:
    """Add or replace the artefact's entry in export_dir/export.json (atomically; other keys kept)."""
    path = export_dir / EXPORT_JSON
    document = _read_export_document(path)
    document["artifacts"][entry["file"]] = entry
    return write_export_document(path, document)



def forget_artifact(export_dir: pathlib.Path, name: str) -> None:
    """Delete the artefact `name` and its export.json entry."""
    _remove(export_dir / name)
    path = export_dir / EXPORT_JSON
    document = _read_export_document(path)
    if document["artifacts"].pop(name, None) is not None:
        write_export_document(path, document)



def record_selection(export_dir: pathlib.Path, selection: dict[str, Any] | None) -> pathlib.Path:
    """Set (or with None, drop) export.json's "selection": the default export's choice of deploy file."""
    path = export_dir / EXPORT_JSON
    document = _read_export_document(path)
    document.pop("selection", None)
    if selection is not None:
        document["selection"] = selection
    return write_export_document(path, document)



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

