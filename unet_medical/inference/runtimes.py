"""Exported models as `unet_medical.inference.tiling.Predictor`s: SavedModel (and TF-TRT), ONNX Runtime, TFLite,
OpenVINO.

Every runtime runs the exported `tile` function: float32 tiles (B, T, T, C) in [0, 1] -> float32
probabilities (B, O, O, K), exactly what `keras_predictor` returns for the Keras model, so
evaluate/predict/benchmark use `unet_medical.inference.predict_images` unchanged whatever runs the network.

The artefact's entry in export.json (written by utils.export beside it) supplies the UNetSpec,
class names and, for TFLite, the fixed tile size; keep the artefact in the folder it was exported to
(or copy export.json along). `--model_path` may also name the export folder itself: after a default
export (no --export_format) export.json names the deploy file chosen there ("selection" -> "chosen").

    predictor, tile_size = load_predictor("results/export/model_int8.tflite")
    probs = predict_images(predictor, spec, images, tile_size=tile_size)
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import warnings
from typing import Any, Mapping

import numpy as np

from unet_medical.model.unet import UNetSpec
from unet_medical.base.artifacts import EXPORT_JSON, RunRecord, read_export_document
from unet_medical.base.errors import UNetError
from unet_medical.inference.artifact_formats import EXPORT_FORMATS, OPENVINO_XML, SAVED_MODEL_PB
from unet_medical.inference.tiling import Predictor

TILE_SIGNATURE = "tile"
# OpenVINO's CPU inference precision per export precision: fp32 runs exactly in float32, bf16 runs the
# float32 file in bfloat16 (AMX / AVX512_BF16), int8 leaves the layers NNCF did not quantize to the
# plugin's default (bfloat16 on CPUs with AMX, float32 elsewhere).
OPENVINO_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": None}
PROBABILITIES = "probabilities"


def detect_format(path: str | os.PathLike) -> str:
    """The first registered format (unet_medical.inference.artifact_formats) that recognises `path`:
    "savedmodel" (a folder with saved_model.pb), "openvino" (a folder with model.xml), "onnx", "tflite",
    "packed" (.npz), or a plugin's."""
    path = pathlib.Path(path)
    for name in EXPORT_FORMATS.names():
        if EXPORT_FORMATS.get(name).detect(path):
            return name
    if path.is_dir():
        raise UNetError(f"--model_path={path}: a folder must be a SavedModel (saved_model.pb) or an OpenVINO "
                        f"model ({OPENVINO_XML}), or an export folder whose export.json names a deploy file")
    if not path.is_file():
        raise UNetError(f"--model_path={path}: not found")
    raise UNetError(f"--model_path={path}: expected a SavedModel or OpenVINO folder, a .onnx, a .tflite or a "
                    "packed .npz file")


def resolve_deploy_file(path: str | os.PathLike) -> pathlib.Path:
    """`path`, or, for an export folder (export.json beside no model of its own), the deploy file its
    default export chose (export.json "selection" -> "chosen")."""
    path = pathlib.Path(path)
    meta = path / EXPORT_JSON
    if not path.is_dir() or (path / SAVED_MODEL_PB).is_file() or (path / OPENVINO_XML).is_file() \
            or not meta.is_file():
        return path
    try:
        chosen = (read_export_document(meta).get("selection") or {}).get("chosen")
    except AttributeError as exc:
        raise UNetError(f"{meta} is corrupt ({exc})") from None
    if not chosen:
        raise UNetError(f"--model_path={path}: {meta} names no deploy file (export without --export_format "
                        f"chooses one); pass the artefact itself, e.g. {path / 'savedmodel'}")
    return path / chosen


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The artefact's entry of export.json in the artefact's folder."""
    path = pathlib.Path(path)
    meta_path = path.parent / EXPORT_JSON
    if not meta_path.is_file():
        raise UNetError(f"--model_path={path}: {meta_path} not found; an exported model needs the export.json "
                        "written next to it by --exec_mode export")
    try:
        artifacts = read_export_document(meta_path)["artifacts"]
    except (KeyError, TypeError) as exc:
        raise UNetError(f"{meta_path} is corrupt ({exc})") from None
    if path.name not in artifacts:
        raise UNetError(f"--model_path={path}: {meta_path} has no entry for {path.name} "
                        f"(it lists {', '.join(sorted(artifacts)) or 'nothing'})")
    return dict(artifacts[path.name])


def savedmodel_predictor(path: str | os.PathLike) -> Predictor:
    """Predictor over a SavedModel's `tile` signature (also TF-TRT SavedModels)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    if TILE_SIGNATURE not in loaded.signatures:
        raise UNetError(f"{path}: SavedModel has no '{TILE_SIGNATURE}' signature (signatures: "
                        f"{', '.join(loaded.signatures)}); export it with --exec_mode export")
    tile = loaded.signatures[TILE_SIGNATURE]
    (input_name,) = tile.structured_input_signature[1].keys()

    def predict(tiles: np.ndarray) -> np.ndarray:
        return tile(**{input_name: tf.constant(tiles, tf.float32)})[PROBABILITIES].numpy()

    # A signature does not keep its SavedModel alive, and the variables die with the loaded object.
    predict.loaded = loaded  # type: ignore[attr-defined]
    return predict


def onnx_predictor(path: str | os.PathLike, threads: int | None = None) -> Predictor:
    """Predictor over an ONNX model with ONNX Runtime (CUDA if this onnxruntime has it, else CPU)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UNetError(f"{path}: running ONNX models needs onnxruntime (pip install -r requirements.txt)") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3  # keep optimizer notices out of the structured log
    if threads:
        options.intra_op_num_threads = threads
    preferred = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    providers = [p for p in preferred if p in ort.get_available_providers()]
    session = ort.InferenceSession(str(path), options, providers=providers)
    input_name = session.get_inputs()[0].name

    def predict(tiles: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: np.ascontiguousarray(tiles, np.float32)})[0]

    return predict


def tflite_predictor(path: str | os.PathLike, threads: int | None = None) -> Predictor:
    """Predictor over a TFLite model (tf.lite.Interpreter, XNNPACK delegate by default).

    The batch dimension is resized on demand; quantized (int8/uint8) inputs and outputs, if a model
    has them, are (de)quantized with the tensor's scale and zero point.
    """
    import tensorflow as tf

    if not pathlib.Path(path).is_file():
        raise UNetError(f"TFLite file {path}: not found")
    with warnings.catch_warnings():
        # TF 2.21 warns that tf.lite.Interpreter moves to ai_edge_litert; it still ships and works.
        warnings.simplefilter("ignore", UserWarning)
        interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=threads or os.cpu_count())
    interpreter.allocate_tensors()
    input_detail = interpreter.get_input_details()[0]
    output_index = interpreter.get_output_details()[0]["index"]
    expected = tuple(int(d) for d in input_detail["shape_signature"][1:])

    def predict(tiles: np.ndarray) -> np.ndarray:
        if tuple(tiles.shape[1:]) != expected:
            raise UNetError(f"{path}: TFLite model takes tiles of shape {expected}, got {tuple(tiles.shape[1:])}")
        if tuple(interpreter.get_input_details()[0]["shape"]) != tuple(tiles.shape):
            interpreter.resize_tensor_input(input_detail["index"], list(tiles.shape))
            interpreter.allocate_tensors()
        interpreter.set_tensor(input_detail["index"], _to_tensor_dtype(tiles, interpreter.get_input_details()[0]))
        interpreter.invoke()
        output = interpreter.get_output_details()[0]
        return _from_tensor_dtype(interpreter.get_tensor(output_index), output)

    return predict


def _to_tensor_dtype(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return np.ascontiguousarray(x, np.float32)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)


def _from_tensor_dtype(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    if np.dtype(detail["dtype"]) == np.float32:
        return x
    scale, zero_point = detail["quantization"]
    return ((x.astype(np.float32) - zero_point) * scale).astype(np.float32)


def openvino_predictor(path: str | os.PathLike, precision: str = "fp32") -> Predictor:
    """Predictor over an OpenVINO model folder (model.xml + model.bin) on the CPU plugin, at the inference
    precision OPENVINO_HINTS gives for the export precision; one infer request, dynamic batch and tile."""
    try:
        import openvino as ov
    except ImportError:
        raise UNetError(f"{path}: running OpenVINO models needs openvino (pip install -r requirements.txt)") from None
    hint = OPENVINO_HINTS.get(precision)
    compiled = ov.Core().compile_model(str(pathlib.Path(path) / OPENVINO_XML), "CPU",
                                       {"INFERENCE_PRECISION_HINT": hint} if hint else {})
    request = compiled.create_infer_request()
    output = compiled.output(0)

    def predict(tiles: np.ndarray) -> np.ndarray:
        return np.asarray(request.infer({0: np.ascontiguousarray(tiles, np.float32)})[output], np.float32)

    predict.compiled = compiled  # type: ignore[attr-defined]  (the request needs its compiled model alive)
    return predict


def packed_predictor(path: str | os.PathLike) -> Predictor:
    """A bit-packed quantized model (unet_medical/model/packing.py), rebuilt as a Keras model."""
    from unet_medical.model.packing import load_packed
    from unet_medical.inference.tiling import keras_predictor

    return keras_predictor(load_packed(path))


# Loaders in the registry's form, (path, export.json entry) -> Predictor (unet_medical.inference.artifact_formats).
def load_savedmodel(path: pathlib.Path, metadata: Mapping[str, Any]) -> Predictor:
    return savedmodel_predictor(path)


def load_onnx(path: pathlib.Path, metadata: Mapping[str, Any]) -> Predictor:
    return onnx_predictor(path)


def load_tflite(path: pathlib.Path, metadata: Mapping[str, Any]) -> Predictor:
    return tflite_predictor(path)


def load_openvino(path: pathlib.Path, metadata: Mapping[str, Any]) -> Predictor:
    return openvino_predictor(path, metadata.get("precision", "fp32"))


def load_packed(path: pathlib.Path, metadata: Mapping[str, Any]) -> Predictor:
    return packed_predictor(path)


@dataclasses.dataclass(frozen=True)
class ExportedModel:
    """An exported artefact ready to run: call it like a Predictor.

    tile_size: the only tile the runtime accepts (TFLite), or None for any valid tile size.
    """

    path: pathlib.Path
    format: str
    precision: str
    spec: UNetSpec
    class_names: tuple[str, ...]
    tile_size: int | None
    metadata: dict[str, Any]
    predictor: Predictor = dataclasses.field(repr=False)

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        return self.predictor(tiles)

    @property
    def info(self) -> RunRecord:
        """The run record of the exported file (spec, class names, step, where it came from)."""
        return RunRecord(spec=dataclasses.asdict(self.spec), class_names=self.class_names,
                         step=self.metadata.get("step"), model_path=str(self.path),
                         normalization=self.metadata.get("normalization", "global"),
                         input_scale=float(self.metadata.get("input_scale", 1.0)),
                         decision=self.metadata.get("decision"))

    def tile_size_for(self, requested: int | None) -> int | None:
        """The inference tile: the fixed one if the runtime has one (a different --tile_size is an error)."""
        if self.tile_size is None:
            return requested
        if requested is not None and requested != self.tile_size:
            raise UNetError(f"--tile_size={requested}: {self.path} was exported for {self.tile_size}-pixel tiles; "
                            f"drop --tile_size or export again with --tile_size {requested}")
        return self.tile_size


def load_exported(model_path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> ExportedModel:
    """Load an exported artefact (or an export folder's deploy file); metadata defaults to its export.json entry."""
    path = resolve_deploy_file(model_path)
    fmt = detect_format(path)
    meta = read_metadata(path) if metadata is None else metadata
    try:
        spec = UNetSpec(**meta["spec"])
        class_names = tuple(meta["class_names"])
        tile_size = meta.get("tile_size")
        precision = meta.get("precision", "fp32")
        recorded = meta.get("format", fmt)
    except (KeyError, TypeError) as exc:
        raise UNetError(f"{path}: export metadata is incomplete ({exc}); export the model again") from None
    # The recorded format decides (a TF-TRT folder is detected as a SavedModel; a plugin's .npz as packed).
    loader = EXPORT_FORMATS.get(recorded).loader()
    return ExportedModel(path=path, format=recorded, precision=precision, spec=spec, class_names=class_names,
                         tile_size=tile_size, metadata=meta, predictor=loader(path, meta))


def load_predictor(model_path: str | os.PathLike) -> tuple[Predictor, int | None]:
    """(Predictor, fixed tile size or None) for a SavedModel folder, a .onnx or a .tflite file."""
    exported = load_exported(model_path)
    return exported, exported.tile_size


def as_predictor(model: Any, tile_size: int | None) -> tuple[Predictor, int | None]:
    """(Predictor, tile size) for a Keras model or an ExportedModel, for utils.inference.predict_images."""
    if isinstance(model, ExportedModel):
        return model, model.tile_size_for(tile_size)
    from unet_medical.inference.tiling import keras_predictor

    return keras_predictor(model), tile_size
