"""Where a run's artefacts live in `model_dir`, and the typed run record (model.json) that lets a later run
(evaluate, predict, export) rebuild the trained network without the training flags."""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Mapping

from unet_medical.base.errors import UNetError
from unet_medical.base.fileio import atomic_write_text

MODEL_JSON = "model.json"
EVAL_RESULTS = "eval_results.json"
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

    @property
    def variant(self) -> str:
        """"float", "qat" or "packed" (see VARIANTS)."""
        if self.quantization == "QAT_INT8":
            return "qat"
        return "float" if self.quantization == "NONE" else "packed"

    def replace(self, **changes: Any) -> "RunRecord":
        return dataclasses.replace(self, **changes)


_STORED = ("architecture", "quantization", "quantization_config", "step", "normalization", "image_dtype", "precision",
           "input_scale", "volume", "train_files", "validation_files")


def save_run_record(model_dir: str | pathlib.Path, record: RunRecord) -> pathlib.Path:
    payload = {"spec": record.spec, "class_names": list(record.class_names),
               **{k: getattr(record, k) for k in _STORED}}
    return atomic_write_text(pathlib.Path(model_dir) / MODEL_JSON, json.dumps(payload, indent=2))


def load_run_record(model_dir: str | pathlib.Path) -> RunRecord:
    path = pathlib.Path(model_dir) / MODEL_JSON
    if not path.is_file():
        raise UNetError(f"{path} not found: --model_dir must be the folder of a training run")
    try:
        payload = json.loads(path.read_text())
        stored = {**payload.get("extra", {}), **payload}  # model.json of earlier versions nests them in "extra"
        return RunRecord(spec=dict(payload["spec"]), class_names=tuple(payload["class_names"]),
                         **{k: stored[k] for k in _STORED if k in stored})
    except (ValueError, KeyError, TypeError) as exc:
        raise UNetError(f"{path} is corrupt ({exc})") from None


def write_json(path: str | pathlib.Path, data: dict[str, Any]) -> pathlib.Path:
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

