"""Where a run's artefacts live in `model_dir`, and the model description that lets a later run
(evaluate, predict, export) rebuild the trained network without the training flags."""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

from utils.errors import UNetError
from utils.fileio import atomic_write_text

MODEL_JSON = "model.json"
EVAL_RESULTS = "eval_results.json"
RUN_CONFIG = "config.yaml"
PREDICTIONS = "predictions"


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a trained model needs besides its weights: architecture and label semantics."""

    spec: dict[str, Any]                 # model.unet.UNetSpec fields
    class_names: tuple[str, ...]
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # variant settings (quantization, ...)


def save_model_info(model_dir: str | pathlib.Path, info: ModelInfo) -> pathlib.Path:
    payload = {"spec": info.spec, "class_names": list(info.class_names), "extra": info.extra}
    return atomic_write_text(pathlib.Path(model_dir) / MODEL_JSON, json.dumps(payload, indent=2))


def load_model_info(model_dir: str | pathlib.Path) -> ModelInfo:
    path = pathlib.Path(model_dir) / MODEL_JSON
    if not path.is_file():
        raise UNetError(f"{path} not found: --model_dir must be the folder of a training run")
    try:
        payload = json.loads(path.read_text())
        return ModelInfo(spec=dict(payload["spec"]), class_names=tuple(payload["class_names"]),
                         extra=dict(payload.get("extra", {})))
    except (ValueError, KeyError, TypeError) as exc:
        raise UNetError(f"{path} is corrupt ({exc})") from None


def write_json(path: str | pathlib.Path, data: dict[str, Any]) -> pathlib.Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))
