"""Single-file, atomic checkpoints of a model (and optionally its optimizer) as `.npz`.

One file per checkpoint, replaced atomically (utils.fileio): a SIGKILL or a full disk during a save
leaves the previous checkpoint intact, and there is never a half-written checkpoint to resume from.
Variables are stored in the model's (deterministic) variable order with their names, and checked by
name and shape on restore, so loading a checkpoint into a different architecture fails with a clear
message instead of silently mis-assigning weights.

The layout under `model_dir/checkpoints/`:
    last.npz   model + optimizer + step: what --resume_training continues from
    best.npz   model weights with the best validation score so far

Groups inside a file: "model" (model.weights), "optimizer" (optimizer.variables: step counter and
slots) and, for a dynamic-scale LossScaleOptimizer (mixed_float16), "loss_scale": the current loss
scale and its good-step counter, which `optimizer.variables` leaves out. Without them a resumed
float16 run would restart at 2**15 and 0 and drift from the uninterrupted run. Checkpoints written
before the "loss_scale" group existed still load; the scale then restarts (CheckpointInfo.missing).
"""
from __future__ import annotations

import dataclasses
import io
import json
import pathlib
import zipfile
from typing import Any, Sequence

import numpy as np
import tf_keras as keras

from unet_medical.base.artifacts import BEST_CHECKPOINT, CHECKPOINTS, LAST_CHECKPOINT
from unet_medical.base.errors import UNetError
from unet_medical.base.fileio import atomic_savez

LAST = LAST_CHECKPOINT
BEST = BEST_CHECKPOINT


# Groups a checkpoint may lack and still load (written before they existed); the variables keep their
# initial values.
OPTIONAL_GROUPS = ("loss_scale",)


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    step: int
    meta: dict[str, Any]
    missing: tuple[str, ...] = ()  # OPTIONAL_GROUPS the file did not hold (left at their initial values)


def checkpoint_dir(model_dir: str | pathlib.Path) -> pathlib.Path:
    return pathlib.Path(model_dir) / CHECKPOINTS


def loss_scale_variables(optimizer: Any) -> list:
    """[current loss scale (float32 scalar), good-step counter (int64 scalar)] of a tf_keras
    LossScaleOptimizer with a dynamic scale; [] for any other optimizer or a fixed scale.

    tf_keras exposes the counter variable (`dynamic_counter`) but the scale only as a tensor copy
    (`loss_scale`), so the scale variable is read from the dynamic-scale state object.
    """
    if not isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer) or not optimizer.dynamic:
        return []
    return [optimizer._loss_scale.current_loss_scale, optimizer.dynamic_counter]


def optimizer_state(optimizer: Any) -> list:
    """Every variable an exact resume needs from the optimizer: its own plus the loss-scale state."""
    return list(optimizer.variables) + loss_scale_variables(optimizer)


def _variables(model: Any, optimizer: Any | None, aux: Sequence[Any] = ()) -> dict[str, list]:
    groups = {"model": list(model.weights)}
    if optimizer is not None:
        groups["optimizer"] = list(optimizer.variables)
        scale = loss_scale_variables(optimizer)
        if scale:
            groups["loss_scale"] = scale
    if aux:
        groups["aux"] = list(aux)
    return groups


def save_checkpoint(path: str | pathlib.Path, model: Any, optimizer: Any | None = None, *,
                    step: int, meta: dict[str, Any] | None = None, aux: Sequence[Any] = ()) -> pathlib.Path:
    """Write model (and optimizer) variables plus `step` and JSON-able `meta` to `path` atomically. `aux`:
    variables that train but do not ship (training.deep_supervision's heads), the "aux" group."""
    arrays: dict[str, np.ndarray] = {}
    names: dict[str, list[str]] = {}
    for group, variables in _variables(model, optimizer, aux).items():
        names[group] = [v.name for v in variables]
        for i, v in enumerate(variables):
            arrays[f"{group}/{i:05d}"] = v.numpy()
    header = {"step": int(step), "meta": meta or {}, "names": names}
    arrays["header"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)

    return atomic_savez(path, arrays)


def read_header(path: str | pathlib.Path) -> CheckpointInfo:
    """Step and metadata of a checkpoint without loading its tensors."""
    with _open(path) as data:
        header = json.loads(data["header"].tobytes().decode("utf-8"))
    return CheckpointInfo(step=header["step"], meta=header["meta"])


def _open(path: str | pathlib.Path) -> Any:
    path = pathlib.Path(path)
    if not path.is_file():
        raise UNetError(f"checkpoint {path} not found (train first, or check --model_dir)")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UNetError(f"checkpoint {path} is unreadable or corrupt ({exc})") from None


def load_checkpoint(path: str | pathlib.Path, model: Any, optimizer: Any | None = None,
                    aux: Sequence[Any] = ()) -> CheckpointInfo:
    """Restore variables saved by save_checkpoint into `model` (and `optimizer`, which must be built, and
    the `aux` variables).

    Raises UNetError if the checkpoint does not match the model's variables in count, name or shape.
    """
    path = pathlib.Path(path)
    with _open(path) as data:
        try:
            header = json.loads(data["header"].tobytes().decode("utf-8"))
            groups = _variables(model, optimizer, aux)
            pending, missing = [], []
            for group, variables in groups.items():
                saved_names = header["names"].get(group)
                if saved_names is None and group in OPTIONAL_GROUPS:
                    missing.append(group)
                    continue
                if saved_names is None:
                    why = " (it was written without --deep_supervision)" if group == "aux" else ""
                    raise UNetError(f"checkpoint {path} holds no {group} state{why}")
                if len(saved_names) != len(variables):
                    raise UNetError(
                        f"checkpoint {path} does not match the model: it holds {len(saved_names)} {group} "
                        f"variables, the model has {len(variables)} (different --base_filters/--depth/"
                        "--batch_norm/--padding, quantization or --deep_supervision?)")
                for i, v in enumerate(variables):
                    value = data[f"{group}/{i:05d}"]
                    if tuple(value.shape) != tuple(v.shape):
                        raise UNetError(
                            f"checkpoint {path} does not match the model: {saved_names[i]} has shape "
                            f"{value.shape}, the model's {v.name} has {tuple(v.shape)}")
                    pending.append((v, value))
        except (KeyError, ValueError, zipfile.BadZipFile, io.UnsupportedOperation) as exc:
            raise UNetError(f"checkpoint {path} is corrupt ({exc})") from None
    for v, value in pending:
        v.assign(value)
    return CheckpointInfo(step=header["step"], meta=header["meta"], missing=tuple(missing))
