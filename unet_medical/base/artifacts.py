"""Where a run's artefacts live in `model_dir`, and the typed run record (model.json) that lets a later run
(evaluate, predict, export) rebuild the trained network without the training flags."""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Callable, Mapping

from unet_medical.base.errors import UNetError
from unet_medical.base.fileio import atomic_write_text

MODEL_JSON = "model.json"
EVAL_RESULTS = "eval_results.json"
EXPORT_JSON = "export.json"  # in RUN/export/: one entry per exported file, and the default export's choice
RUN_CONFIG = "config.yaml"  # the run's settings: {"config_version": 2, section: {flag: value}}; version 1 was flat
CONFIG_VERSION = 2
PREDICTIONS = "predictions"
FINGERPRINT = "dataset_fingerprint.json"  # the data fingerprint and the recipe chosen from it
CHECKPOINTS = "checkpoints"  # training.checkpoint's folder: LAST_CHECKPOINT (resume) and BEST_CHECKPOINT
LAST_CHECKPOINT = "last.npz"
BEST_CHECKPOINT = "best.npz"


def last_checkpoint(model_dir: str | pathlib.Path) -> pathlib.Path:
    """model_dir/checkpoints/last.npz: what --resume_training continues from."""
    return pathlib.Path(model_dir) / CHECKPOINTS / LAST_CHECKPOINT


def checkpoint_file(model_dir: str | pathlib.Path, which: str) -> pathlib.Path:
    """model_dir/checkpoints/best.npz or last.npz (--checkpoint best / last)."""
    return pathlib.Path(model_dir) / CHECKPOINTS / (BEST_CHECKPOINT if which == "best" else LAST_CHECKPOINT)

REPORT = "report.html"  # the run on one self-contained page (cli/report.py)
# input | prediction | truth of the best and the worst validation case of the latest evaluation
OVERLAY_BEST = "overlay_best.png"
OVERLAY_WORST = "overlay_worst.png"


# How a trained network is stored and deployed, decided from its quantization in one place:
#   float   plain float32 weights (SavedModel, ONNX, TFLite from the float network)
#   qat     TF-MOT int8 quantization-aware training: ships as int8 TFLite
#   packed  fake-quantized FIXED / INT / BNN / TERNARY: ships as bit-packed weights
VARIANTS = ("float", "qat", "packed")


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """What a trained model needs besides its weights, written to and read from model_dir/model.json.

    Fields:
        spec: model.unet.UNetSpec fields.
        class_names: one name per output channel.
        architecture: Keras JSON of the float network (before TF-MOT wrapping), or None for a plain U-Net.
        quantization: "NONE", "FIXED", "INT", "BNN", "TERNARY" or "QAT_INT8".
        quantization_config: model.quantizers.QuantizationConfig.to_dict() of the run, if any.
        step: training step of the weights in use (set when a checkpoint is loaded).
        model_path: the exported file these weights come from (--model_path), if any.
        normalization: utils.data.normalize mode the network was trained with ("global" or "per_image").
        image_dtype: NumPy dtype name of the training images (the SavedModel's serving_default input).
        precision: the Keras dtype policy training (or this restore) ran in ("float32", "mixed_bfloat16", ...).
        input_scale: images are resampled by this factor before the network and its probabilities back to
            the input's size (data.resample); 1 for runs recorded before the option existed.
        volume: for a run trained on medical volumes, how volumes were cut and scaled and which cases
            trained and validated (data.volume_training.volume_record); None for 2D images.
        train_files, validation_files: for 2D images, the names of the images of each side of the split
            (data.layouts names: 'a.png', 'train-volume.tif[3]'), so evaluate scores and guards by name,
            whatever was added to the data folder since; None for runs recorded before.
        decision: how probabilities become labels, chosen on the validation fold when training ended
            (evaluation.decision: {"threshold": t or None, "tta": bool, "reason": ..., "scores": ...});
            None for the argmax without flips (runs recorded before, volumes, no validation fold).
    """

    spec: dict[str, Any]
    class_names: tuple[str, ...]
    architecture: str | None = None
    quantization: str = "NONE"
    quantization_config: dict[str, Any] | None = None
    step: int | None = None
    model_path: str | None = None
    normalization: str = "global"
    image_dtype: str | None = None
    precision: str | None = None
    input_scale: float = 1.0
    volume: dict[str, Any] | None = None
    train_files: list[str] | None = None
    validation_files: list[str] | None = None
    decision: dict[str, Any] | None = None

    @property
    def variant(self) -> str:
        """"float", "qat" or "packed" (see VARIANTS)."""
        if self.quantization == "QAT_INT8":
            return "qat"
        return "float" if self.quantization == "NONE" else "packed"

    def replace(self, **changes: Any) -> "RunRecord":
        return dataclasses.replace(self, **changes)


_STORED = ("architecture", "quantization", "quantization_config", "step", "normalization", "image_dtype", "precision",
           "input_scale", "volume", "train_files", "validation_files", "decision")


# --- versioned run files ------------------------------------------------------------------------------
# model.json, eval_results.json (with eval_results_<weights>.json and eval_before_finetune.json, which
# share its layout) and export.json carry "schema_version". Each has one writer and one reader below.
#   version 1: the files written before the field existed (no "schema_version"); model.json of the very
#              first releases nested the quantization fields under "extra"
#   version 2: version 1 with "schema_version": 2; model.json keeps every field at the top level
# A reader migrates older versions to the current layout and refuses a newer one it cannot know.
SCHEMA_KEY = "schema_version"
SCHEMA_VERSION = 2


def _migrate_model_json_v1(document: dict[str, Any]) -> dict[str, Any]:
    """Version 1 model.json: the fields early files nested under "extra" move to the top level
    (a top-level value wins, as it did when both were read)."""
    extra = document.pop("extra", None)
    return {**extra, **document} if isinstance(extra, dict) else document


def _unchanged(document: dict[str, Any]) -> dict[str, Any]:
    return document


# file kind -> {version: migration of a document of that version to the next}
_MIGRATIONS: dict[str, dict[int, Callable[[dict[str, Any]], dict[str, Any]]]] = {
    MODEL_JSON: {1: _migrate_model_json_v1},
    EVAL_RESULTS: {1: _unchanged},
    EXPORT_JSON: {1: _unchanged},
}


def write_versioned_json(path: str | pathlib.Path, document: Mapping[str, Any]) -> pathlib.Path:
    """`document` with the current schema_version, written atomically (keys sorted, indented)."""
    return write_json(path, {**document, SCHEMA_KEY: SCHEMA_VERSION})


def read_json_object(path: pathlib.Path) -> dict[str, Any]:
    """The JSON object in `path`; UNetError (one line naming the file) if it is not readable JSON or not
    an object."""
    try:
        document = json.loads(path.read_text())
    except ValueError as exc:
        raise UNetError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(document, dict):
        raise UNetError(f"{path}: expected a JSON object, got {type(document).__name__}")
    return document


def read_versioned_json(path: str | pathlib.Path, kind: str) -> dict[str, Any]:
    """The JSON object in `path`, a file of `kind` (MODEL_JSON, EVAL_RESULTS or EXPORT_JSON), migrated
    to the current layout; "schema_version" is taken out (it describes the file, not its contents).
    UNetError (one line naming the file) if it is unreadable, not an object, or of an unknown version."""
    path = pathlib.Path(path)
    document = read_json_object(path)
    version = document.pop(SCHEMA_KEY, 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise UNetError(f"{path}: {SCHEMA_KEY} {version!r} is not a version number")
    if version > SCHEMA_VERSION:
        raise UNetError(f"{path}: {SCHEMA_KEY} {version} is newer than this version of unet_medical reads "
                        f"(up to {SCHEMA_VERSION}); upgrade unet_medical to read it")
    for step in range(version, SCHEMA_VERSION):
        document = _MIGRATIONS[kind][step](document)
    return document


def read_model_json(path: str | pathlib.Path) -> dict[str, Any]:
    """A model.json (RUN/model.json, or the file itself) as a current-version dict."""
    path = pathlib.Path(path)
    return read_versioned_json(path / MODEL_JSON if path.is_dir() else path, MODEL_JSON)


def read_eval_results(path: str | pathlib.Path) -> dict[str, Any]:
    """An eval_results*.json (or eval_before_finetune.json) as a current-version dict."""
    return read_versioned_json(path, EVAL_RESULTS)


def write_eval_results(path: str | pathlib.Path, results: Mapping[str, Any]) -> pathlib.Path:
    return write_versioned_json(path, results)


def read_export_document(path: str | pathlib.Path) -> dict[str, Any]:
    """An export.json as a current-version dict: {"artifacts": {file: entry}, "selection": ...}."""
    return read_versioned_json(path, EXPORT_JSON)


def write_export_document(path: str | pathlib.Path, document: Mapping[str, Any]) -> pathlib.Path:
    return write_versioned_json(path, document)


def save_run_record(model_dir: str | pathlib.Path, record: RunRecord) -> pathlib.Path:
    payload = {"spec": record.spec, "class_names": list(record.class_names),
               **{k: getattr(record, k) for k in _STORED}}
    return write_versioned_json(pathlib.Path(model_dir) / MODEL_JSON, payload)


def load_run_record(model_dir: str | pathlib.Path) -> RunRecord:
    path = pathlib.Path(model_dir) / MODEL_JSON
    if not path.is_file():
        raise UNetError(f"{path} not found: --model_dir must be the folder of a training run")
    payload = read_model_json(path)
    try:
        return RunRecord(spec=dict(payload["spec"]), class_names=tuple(payload["class_names"]),
                         **{k: payload[k] for k in _STORED if k in payload})
    except (ValueError, KeyError, TypeError) as exc:
        raise UNetError(f"{path} is corrupt ({exc})") from None


def write_json(path: str | pathlib.Path, data: Mapping[str, Any]) -> pathlib.Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))


def flatten_config(raw: Any, source: str = RUN_CONFIG) -> Any:
    """A config.yaml mapping as {flag: value}: version 2 files group flags by stage section
    ({"config_version": 2, "training": {"batch_size": 4, ...}, ...}); files without "config_version"
    (version 1, and --config files people write) are flat already. Anything else is returned as it is."""
    if not isinstance(raw, Mapping) or "config_version" not in raw:
        return raw
    if raw["config_version"] != CONFIG_VERSION:
        raise UNetError(f"{source}: config_version {raw['config_version']!r} is not one this version reads "
                        f"({CONFIG_VERSION})")
    flat: dict[str, Any] = {}
    for section, values in raw.items():
        if section == "config_version":
            continue
        if not isinstance(values, Mapping):
            raise UNetError(f"{source}: section {section!r} is not a mapping of flag names to values")
        flat.update(values)
    return flat


def read_run_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """RUN/config.yaml as {flag: value} (any version; {} for a run that predates it); UNetError if unreadable."""
    import yaml

    path = pathlib.Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        return {}
    try:
        raw = flatten_config(yaml.safe_load(path.read_text()) or {}, str(path))
    except (OSError, yaml.YAMLError) as exc:
        raise UNetError(f"{path}: not readable YAML ({exc})") from None
    if not isinstance(raw, Mapping):
        raise UNetError(f"{path}: expected a mapping of flag names to values")
    return dict(raw)

