"""Run lineage: a mode that works on an existing training run starts from what that run recorded.

Which run: evaluate, predict, export and visualize read `--model_dir` (or, with `--model_path`, the
run folder that holds the exported artefact, RUN/export/<artefact>); every mode with `--init_from`
reads that folder. Benchmarks build their network from the flags and read no run.

What is inherited, unless the flag was given explicitly (command line or --config YAML):
    from RUN/config.yaml (written by runtime.modes.run when the run trained):
        data_dir, image_stack, mask_stack, images_dir, masks_dir, num_classes, fold, num_folds, crop_size,
        checkpoint (the weights the run's SavedModel holds), dims, context_slices, patch_size (how volumes
        were cut; fixed for a resume like the data)
    from RUN/model.json (the weights fix it, so this is the authority):
        padding, base_filters, depth, batch_norm, instance_norm, dropout; for --model_dir modes also the quantization
        settings (shown in the PARAMETER line; the model itself is always rebuilt from model.json)
An explicit architecture flag that contradicts model.json is refused: it could not take effect.

A training mode with --resume_training on a run that has a checkpoint reads its own --model_dir the same
way, and more strictly: the checkpoint was trained on one split of one data set, so the architecture,
the fold, the data and the quantization settings (and --init_from and the Tucker ranks, which shape
the network) all come from the record, and an explicit flag that contradicts one of them is refused;
crop_size, max_steps, num_epochs, batch_size, seed and evaluate_every are inherited but may be given.
A training mode without --resume_training on a folder that holds a checkpoint is refused too, before
anything is written (refuse_overwrite).
(Normalization has no flags: utils.data.normalize has one rule per image dtype.)

Also here: the one-line refusal of a missing run (before anything is created), the slices a run was
trained on (walking its --init_from ancestry, for evaluate's overlap check) and the "this fold is
already finished" test of --skip_finished. No TensorFlow is imported.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

from unet_medical.base import artifacts
from unet_medical.base.artifacts import EVAL_RESULTS, FINGERPRINT, MODEL_JSON, RUN_CONFIG, last_checkpoint, read_run_config
from unet_medical.data.folds import fold_split
from unet_medical.base.errors import UNetError

TRAINING_MODES = ("train", "train_and_evaluate", "train_and_predict", "compress")
# Modes that read the trained run in --model_dir (or the run behind --model_path).
RUN_MODES = ("evaluate", "predict", "export", "visualize")
DATA_KEYS = ("data_dir", "image_stack", "mask_stack", "images_dir", "masks_dir", "num_classes")
SPLIT_KEYS = ("fold", "num_folds")
# checkpoint: the weights the run's SavedModel was written from are the later modes' default too.
# dims, context_slices, patch_size, target_spacing: how volumes were cut (and resampled) for the network
VOLUME_KEYS = ("dims", "context_slices", "patch_size", "target_spacing")
CONFIG_KEYS = (*DATA_KEYS, *SPLIT_KEYS, "crop_size", "checkpoint", *VOLUME_KEYS)
ARCHITECTURE_KEYS = ("padding", "base_filters", "depth", "batch_norm", "instance_norm", "dropout")
QUANTIZATION_KEYS = ("quantization", "weight_i_width", "weight_f_width", "activation_i_width",
                     "activation_f_width", "weight_bits", "activation_bits", "keep_first_float", "keep_last_float")
# What a resume may not change: the checkpoint's weights were trained with these.
RESUME_FIXED_KEYS = (*ARCHITECTURE_KEYS, *SPLIT_KEYS, *DATA_KEYS, *QUANTIZATION_KEYS, "fixed_scheme",
                     "init_from", "rank_factor", "rank", "rank_min", *VOLUME_KEYS, "deep_supervision")
# What a resume inherits but may change by flag: left out, the resume finishes the same run.
RESUME_INHERITED_KEYS = ("crop_size", "max_steps", "num_epochs", "batch_size", "seed", "evaluate_every", "checkpoint")
RESUME_FLAG = "--model_dir (--resume_training)"
_MAX_ANCESTRY = 64  # --init_from chains longer than this are surely a cycle of copied folders


@dataclasses.dataclass(frozen=True)
class RunSource:
    """The training run a mode starts from, and the flag that named it (for messages)."""

    path: pathlib.Path
    flag: str

    def describe(self) -> str:
        return f"{self.flag}={self.path}"


def is_run(path: str | os.PathLike) -> bool:
    """True if `path` is the folder of a training run (it holds model.json)."""
    return (pathlib.Path(path) / MODEL_JSON).is_file()


def _run_of_artifact(model_path: pathlib.Path) -> pathlib.Path | None:
    """RUN for an exported artefact RUN/export/<file or folder> (None if it lives elsewhere)."""
    for candidate in (model_path.parent, model_path.parent.parent):
        if is_run(candidate) and (candidate / RUN_CONFIG).is_file():
            return candidate
    return None


def is_resume(exec_mode: str, model_dir: str | None, resume_training: bool) -> bool:
    """A training mode continuing model_dir's checkpoint (--resume_training and last.npz exists)."""
    return bool(exec_mode in TRAINING_MODES and resume_training and model_dir
                and last_checkpoint(model_dir).is_file())


def refuse_overwrite(exec_mode: str, model_dir: str | None, resume_training: bool) -> None:
    """Refuse (one line, before anything is written) to train from scratch into a folder whose
    checkpoint --resume_training would continue: its records would be replaced by another experiment's."""
    if exec_mode not in TRAINING_MODES or resume_training or not model_dir:
        return
    path = last_checkpoint(model_dir)
    if path.is_file():
        raise UNetError(f"--model_dir={model_dir}: {path} already holds a training checkpoint; pass "
                        "--resume_training to continue it, or choose a new --model_dir (nothing was written)")


def run_source(exec_mode: str, model_dir: str | None, init_from: str | None, model_path: str | None,
               benchmark: bool = False, resume_training: bool = False) -> RunSource | None:
    """The run whose recorded configuration `exec_mode` starts from, or None (a fresh run)."""
    if benchmark or exec_mode == "benchmark":
        return None
    if is_resume(exec_mode, model_dir, resume_training):
        return RunSource(pathlib.Path(model_dir), RESUME_FLAG)
    if exec_mode in RUN_MODES:
        if model_path:
            run = _run_of_artifact(pathlib.Path(model_path))
            if run is not None:
                return RunSource(run, "--model_path")
            return RunSource(pathlib.Path(model_dir), "--model_dir") if model_dir and is_run(model_dir) else None
        return RunSource(pathlib.Path(model_dir or "."), "--model_dir")
    if init_from:
        return RunSource(pathlib.Path(init_from), "--init_from")
    return None


def require_source(exec_mode: str, model_dir: str | None, init_from: str | None, model_path: str | None,
                   benchmark: bool = False) -> None:
    """Stop with one line naming the flag when the run (or exported model) a mode needs is missing.

    Called before anything is written, so a mistyped --model_dir creates no folder and no log.
    """
    if benchmark or exec_mode == "benchmark":
        return
    if exec_mode in RUN_MODES and model_path:
        if not pathlib.Path(model_path).exists():
            raise UNetError(f"--model_path={model_path}: not found (nothing was created)")
        return
    if exec_mode in RUN_MODES and not is_run(model_dir or "."):
        raise UNetError(f"--model_dir={model_dir}: no training run there ({MODEL_JSON} not found); "
                        f"--exec_mode {exec_mode} needs the folder a training run wrote (nothing was created)")
    if init_from and not is_run(init_from):
        raise UNetError(f"--init_from={init_from}: no training run there ({MODEL_JSON} not found; nothing "
                        "was created)")


def read_model_json(run_dir: str | os.PathLike) -> dict[str, Any]:
    """RUN/model.json in the current layout (base.artifacts migrates older versions); it must have a spec."""
    path = pathlib.Path(run_dir) / MODEL_JSON
    try:
        raw = artifacts.read_model_json(path)
    except OSError as exc:
        raise UNetError(f"{path}: not readable ({exc})") from None
    if not isinstance(raw.get("spec"), Mapping):
        raise UNetError(f"{path}: has no model spec")
    return raw


def recorded_quantization(model: Mapping[str, Any]) -> dict[str, Any]:
    """model.json's quantization settings: top-level "quantization_config" as base.artifacts writes it,
    or nested under "extra" in files of earlier versions; the top-level "quantization" wins."""
    qconfig = dict(model.get("quantization_config") or (model.get("extra") or {}).get("quantization_config") or {})
    if isinstance(model.get("quantization"), str):
        qconfig["quantization"] = model["quantization"]
    return qconfig


def recorded_values(source: RunSource) -> dict[str, Any]:
    """What `source` recorded for the inherited flags (only the keys it recorded)."""
    config = read_run_config(source.path)
    keys = RESUME_FIXED_KEYS + RESUME_INHERITED_KEYS if source.flag == RESUME_FLAG else CONFIG_KEYS
    values = {key: config[key] for key in keys if key in config}
    model = read_model_json(source.path)
    values.update({key: model["spec"][key] for key in ARCHITECTURE_KEYS if key in model["spec"]})
    if source.flag != "--init_from":  # a fine-tuned model's quantization is the new run's choice
        qconfig = recorded_quantization(model)
        values.update({key: qconfig[key] for key in (*QUANTIZATION_KEYS, "fixed_scheme") if key in qconfig})
    return values


def _same_value(key: str, given: Any, recorded: Any) -> bool:
    """Equal settings; folders compare by their real path."""
    if key in ("data_dir", "init_from") and given is not None and recorded is not None:
        return os.path.realpath(str(given)) == os.path.realpath(str(recorded))
    return given == recorded


def refuse_contradictions(values: Mapping[str, Any], recorded: Mapping[str, Any], source: RunSource) -> None:
    """An explicit flag that the run's record fixes to another value: UNetError naming both values."""
    if source.flag == RESUME_FLAG:
        for key in RESUME_FIXED_KEYS:
            if key in values and key in recorded and not _same_value(key, values[key], recorded[key]):
                raise UNetError(f"--{key}={values[key]!r}: {source.path} recorded {key}={recorded[key]!r} "
                                f"and its checkpoint was trained with it; a resume cannot change it, drop --{key}")
        return
    for key in ARCHITECTURE_KEYS:
        if key in values and key in recorded and values[key] != recorded[key]:
            raise UNetError(f"--{key}={values[key]!r}: {source.describe()} holds a network with {key}="
                            f"{recorded[key]!r} ({MODEL_JSON}); a trained network's architecture cannot "
                            f"change, drop --{key}")


def with_run_defaults(values: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """`values` (the flags given explicitly) completed by the recorded configuration of the run the
    mode starts from; explicit values win. Raises UNetError for a missing run or an explicit
    architecture flag that contradicts the trained network."""
    setting = {**defaults, **values}
    args = (setting["exec_mode"], setting["model_dir"], setting["init_from"], setting["model_path"],
            bool(setting["benchmark"]))
    require_source(*args)
    refuse_overwrite(setting["exec_mode"], setting["model_dir"], bool(setting["resume_training"]))
    source = run_source(*args, resume_training=bool(setting["resume_training"]))
    values = {**values, **outputs_of_exported(setting, values, source)}
    if source is None:
        return dict(values)
    recorded = recorded_values(source)
    refuse_contradictions(values, recorded, source)
    return {**{k: v for k, v in recorded.items() if k not in values}, **values}


def outputs_of_exported(setting: Mapping[str, Any], values: Mapping[str, Any], source: RunSource | None
                        ) -> dict[str, Any]:
    """evaluate/predict with --model_path and no explicit --model_dir: the outputs go into the run the
    exported file came from (RUN/export/FILE), beside the weights that made them, instead of ./results,
    where runs of unrelated models would mix. A file outside a run must name its --model_dir."""
    if setting["exec_mode"] not in ("evaluate", "predict") or not setting["model_path"] or "model_dir" in values:
        return {}
    if source is not None and source.flag == "--model_path":
        return {"model_dir": str(source.path)}
    raise UNetError(f"--model_path={setting['model_path']}: not in a training run's export/ folder, so its "
                    "outputs have no run to go to; give --model_dir (nothing was created)")


def _same_data(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Do two configurations select the same training images (same folder, same stack/folder)?"""
    if a.get("data_dir") is None or b.get("data_dir") is None:
        return False
    return (os.path.realpath(a["data_dir"]) == os.path.realpath(b["data_dir"])
            and a.get("image_stack") == b.get("image_stack") and a.get("images_dir") == b.get("images_dir"))


def recorded_names(run_dir: str | os.PathLike, key: str) -> list[str] | None:
    """model.json's `key` ("train_files" or "validation_files"): the image names of one side of the
    run's split; None for runs recorded before names were (or without model.json)."""
    if not is_run(run_dir):
        return None
    names = read_model_json(run_dir).get(key)
    return [str(n) for n in names] if isinstance(names, list) else None


def training_slices(run_dir: str | os.PathLike, names: Sequence[str], data: Mapping[str, Any]
                    ) -> dict[str, list[str]]:
    """image name -> the runs (with their fold) that trained on it, over `run_dir` and its --init_from
    ancestry, counting only runs that read the same data as `data` (data_dir, image_stack, images_dir).
    A run's recorded train_files are compared by name; a run recorded before them falls back to its
    fold of today's `names` (which is wrong if images were added since). Runs without config.yaml
    contribute nothing (unknown split)."""
    seen: dict[str, list[str]] = {}
    visited: set[str] = set()
    current: str | None = str(run_dir)
    while current is not None and os.path.realpath(current) not in visited and len(visited) < _MAX_ANCESTRY:
        visited.add(os.path.realpath(current))
        config = read_run_config(current)
        trained = config.get("exec_mode") in TRAINING_MODES and (config.get("max_steps", 0) > 0
                                                                 or config.get("num_epochs"))
        if trained and _same_data(config, data) and "fold" in config and "num_folds" in config:
            train_names = recorded_names(current, "train_files")
            if train_names is None:
                train_idx, _ = fold_split(len(names), int(config["num_folds"]), int(config["fold"]))
                train_names = [names[i] for i in train_idx.tolist()]
            for name in train_names:
                seen.setdefault(name, []).append(f"{current} (fold {config['fold']} of {config['num_folds']})")
        current = config.get("init_from")
    return seen


def check_evaluation_slices(run_dir: str | os.PathLike, val_names: Sequence[str], names: Sequence[str],
                            data: Mapping[str, Any], fold: int, num_folds: int) -> None:
    """Refuse (UNetError, one line) to score on images the run or its ancestors trained on, by name."""
    refuse_trained_on(val_names, training_slices(run_dir, names, data), "slices", fold, num_folds)


def refuse_trained_on(val_names: Sequence[str], seen: Mapping[str, Any], unit: str, fold: int, num_folds: int) -> None:
    """The leak guard's one line: some of `val_names` ("slices" or "cases") are keys of `seen` (name -> the
    runs that trained on it)."""
    overlap = [name for name in val_names if name in seen]
    if overlap:
        runs = sorted({run for name in overlap for run in seen[name]})
        raise UNetError(f"--fold={fold} --num_folds={num_folds}: {len(overlap)} of the {len(val_names)} evaluation "
                        f"{unit} (first: {overlap[0]}) were training {unit} of {'; '.join(runs)}; evaluate the "
                        "run's own fold (omit --fold/--num_folds) or pass --allow_training_slices")


def recorded_validation(run_dir: str | os.PathLike, data: Mapping[str, Any], fold: int, num_folds: int
                        ) -> list[str] | None:
    """The validation image names `run_dir` recorded, when `fold`/`num_folds` and `data` are the run's own
    (else None: another fold is split from today's images and checked by check_evaluation_slices)."""
    config = read_run_config(run_dir)
    if config.get("fold") != fold or config.get("num_folds") != num_folds or not _same_data(config, data):
        return None
    return recorded_names(run_dir, "validation_files")


def select_by_name(names: Sequence[str], wanted: Sequence[str], data_dir: str, run_dir: str | os.PathLike
                   ) -> np.ndarray:
    """Indices of `wanted` in `names`; one-line UNetError if the data folder no longer holds one."""
    index = {name: i for i, name in enumerate(names)}
    missing = [name for name in wanted if name not in index]
    if missing:
        raise UNetError(f"{data_dir}: {len(missing)} of the {len(wanted)} validation images {run_dir} recorded "
                        f"(first: {missing[0]}) are not there any more; evaluate on the data it was trained with")
    return np.array([index[name] for name in wanted], dtype=int)


def finished_evaluation(model_dir: str | os.PathLike, max_steps: int | None, fold: int, num_folds: int
                        ) -> dict[str, Any] | None:
    """model_dir's eval_results.json if it is the evaluation of this fold at `max_steps`, else None.

    max_steps None: the run's own target, which --time_budget recorded in its fingerprint file.
    """
    if max_steps is None:
        try:
            max_steps = json.loads((pathlib.Path(model_dir) / FINGERPRINT).read_text())["max_steps"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
    path = pathlib.Path(model_dir) / EVAL_RESULTS
    try:
        results = artifacts.read_eval_results(path)
    except OSError:
        return None  # no evaluation yet (a damaged or newer file is refused in one line)
    done = (results.get("step") == max_steps and results.get("fold") == fold
            and results.get("num_folds") == num_folds)
    return dict(results) if done else None
