"""--export_format: every export format as one registration object (TF-free, so `--help` lists them).

An `ExportFormat` says everything the export stage (unet_medical.export.formats), the default export's
selection (unet_medical.export.select) and the runtimes (unet_medical.inference.runtimes) need: its
name, the precisions it offers, the file or folder name of an artefact, the packages it needs, how to
write one (`write(request)`) and how to run one (`load(path, metadata) -> Predictor`). The hooks are
callables or lazy "package.module:attribute" strings (imported on first use). The writers of the
built-in formats live in the export stage and are only resolved there; this stage only resolves loaders.

A new format is one registration, e.g. from a plugin:

    EXPORT_FORMATS.register("toy", ExportFormat("toy", ("fp32",), lambda precision: "model_toy.npz",
                                                write=write_toy, load=load_toy))
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable, Mapping

from unet_medical.base.registry import Registry, resolve


@dataclasses.dataclass(frozen=True)
class WriteRequest:
    """What a format's writer gets.

    model: the trained tf_keras model (logits out); module: its unet_medical.export.serving.UNetServingModule
    (the `tile` function: float32 tiles (B, T, T, C) in [0, 1] -> softmax probabilities (B, O, O, K));
    spec: the UNetSpec; path: where to write (a file or a folder, not yet existing); precision: one of the
    format's precisions; tile_size: the parity/fixed tile T; tiles: (N, T, T, C) float32 calibration
    tiles or None; progress: counts consumed calibration tiles (or None); quantization: the run's
    quantization config mapping (None for a float run).
    """

    model: Any
    module: Any
    spec: Any
    path: pathlib.Path
    precision: str
    tile_size: int
    tiles: Any = None
    progress: Any = None
    quantization: Mapping[str, Any] | None = None


Writer = Callable[[WriteRequest], "dict[str, Any] | None"]  # returns extra export.json fields, or None
# (artefact path, its export.json entry: "precision", "spec", "class_names", ...) -> Predictor
Loader = Callable[[pathlib.Path, Mapping[str, Any]], Any]


def _int8_only(precision: str) -> bool:
    return precision == "int8"


@dataclasses.dataclass(frozen=True)
class ExportFormat:
    """One export format.

    Args:
        name: the --export_format value.
        precisions: the --export_precision values it offers (packed: the quantization modes it stores).
        file_name: precision -> artefact name inside MODEL_DIR/export/.
        write: Writer or "module:attribute" of one (resolved only by the export stage).
        load: Loader or "module:attribute" of one.
        needs: precision -> Python packages the format needs (checked before any work).
        detect: path -> whether a file or folder is an artefact of this format (for --model_path).
        fixed_tile: the runtime accepts only the exported tile size (TFLite).
        calibrates: precision -> whether the writer needs calibration tiles (int8; TF-TRT: always).
        preflight: optional (precision) -> None raising UNetError when the machine cannot export it.
        serving_signatures: the artefact also has the raw-image serving signatures (SavedModel), whose
            parity is checked too.
        run_precision: optional (run record) -> precision for formats whose precision is the trained
            model's (packed); raises UNetError when the run cannot be exported in this format.
    """

    name: str
    precisions: tuple[str, ...]
    file_name: Callable[[str], str]
    write: Writer | str
    load: Loader | str
    needs: Callable[[str], tuple[str, ...]] = lambda precision: ()
    detect: Callable[[pathlib.Path], bool] = lambda path: False
    fixed_tile: bool = False
    calibrates: Callable[[str], bool] = _int8_only
    preflight: Callable[[str], None] | str | None = None
    serving_signatures: bool = False
    run_precision: Callable[[Any], str] | str | None = None

    def writer(self) -> Writer:
        return resolve(self.write)

    def loader(self) -> Loader:
        return resolve(self.load)


EXPORT_FORMATS: Registry[ExportFormat] = Registry("export format", flag="--export_format")


def format_of(name: str) -> ExportFormat:
    """The registered ExportFormat `name` (UNetError naming --export_format and the choices otherwise)."""
    return EXPORT_FORMATS.get(name)


def _suffix(suffix: str) -> Callable[[pathlib.Path], bool]:
    return lambda path: path.is_file() and path.suffix.lower() == suffix


def _folder_with(marker: str) -> Callable[[pathlib.Path], bool]:
    return lambda path: path.is_dir() and (path / marker).is_file()


SAVED_MODEL_PB = "saved_model.pb"
OPENVINO_XML = "model.xml"  # an OpenVINO artefact is a folder with model.xml (graph) and model.bin (weights)
_WRITERS = "unet_medical.export.formats"
_LOADERS = "unet_medical.inference.runtimes"

for _format in (
    # bf16: the Keras model rebuilt under mixed_bfloat16 (float32 in and out), what predict runs on a bf16 CPU.
    ExportFormat("savedmodel", ("fp32", "bf16"), lambda p: "savedmodel" if p == "fp32" else f"savedmodel_{p}",
                 f"{_WRITERS}:savedmodel_writer",
                 f"{_LOADERS}:load_savedmodel", detect=_folder_with(SAVED_MODEL_PB), serving_signatures=True),
    # TF-TRT artefacts are SavedModels of `tile`: detected as savedmodel, run by the same loader.
    ExportFormat("tftrt", ("fp32", "fp16", "int8"), lambda p: f"tftrt_{p}", f"{_WRITERS}:tftrt_writer",
                 f"{_LOADERS}:load_savedmodel", calibrates=lambda p: True, preflight=f"{_WRITERS}:check_tensorrt"),
    ExportFormat("onnx", ("fp32", "int8"), lambda p: "model.onnx" if p == "fp32" else f"model_{p}.onnx",
                 f"{_WRITERS}:onnx_writer", f"{_LOADERS}:load_onnx", needs=lambda p: ("tf2onnx", "onnxruntime"),
                 detect=_suffix(".onnx")),
    ExportFormat("tflite", ("fp32", "fp16", "int8"), lambda p: f"model_{p}.tflite", f"{_WRITERS}:tflite_writer",
                 f"{_LOADERS}:load_tflite", detect=_suffix(".tflite"), fixed_tile=True),
    ExportFormat("openvino", ("fp32", "bf16", "int8"), lambda p: f"openvino_{p}", f"{_WRITERS}:openvino_writer",
                 f"{_LOADERS}:load_openvino",
                 needs=lambda p: ("openvino",) + (("nncf",) if p == "int8" else ()),  # its own TF frontend
                 detect=_folder_with(OPENVINO_XML)),
    ExportFormat("packed", ("FIXED", "INT", "BNN", "TERNARY"), lambda p: "model_packed.npz",
                 "unet_medical.export.packed:packed_writer", f"{_LOADERS}:load_packed", detect=_suffix(".npz"),
                 calibrates=lambda p: False, run_precision="unet_medical.export.packed:packed_precision"),
):
    EXPORT_FORMATS.register(_format.name, _format)
