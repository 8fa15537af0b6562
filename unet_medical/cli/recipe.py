"""Apply the adaptive recipe to a training run: fingerprint the training images, choose the settings the
flags left open (utils.data.recipe), print each choice with its reason, save
model_dir/dataset_fingerprint.json, and turn the run's settings into the trainer's inputs (trainer_data).
--time_budget becomes a number of steps inside the training loop (utils.training.budget).

A resumed run reuses the choices recorded in dataset_fingerprint.json, so it continues the same recipe
(the same crop, sampling, weights and number of steps) whatever the machine's speed is now.

--dims 3 has its own few choices (resolve_volume_recipe): the patch and the depth from the training
cases' median shape, a third of the patches on foreground, no class weights, volumes at full resolution.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

from unet_medical.cli.config import Config
from unet_medical.base.artifacts import FINGERPRINT, write_json
from unet_medical.data.fingerprint import measure_fingerprint
from unet_medical.data.config import augment_config
from unet_medical.data.patches3d import (FOREGROUND_FRACTION, check_patch_size, choose_depth_3d,
                                         choose_patch_size, parse_patch_size)
from unet_medical.data.volume_training import VolumeSlices
from unet_medical.data.layouts import SegmentationData
from unet_medical.data.mirror_axes import (axis_order_agreement, choose_mirror_axes, format_mirror_axes,
                                          mirror_axes_in_effect)
from unet_medical.data.normalize import normalize_image
from unet_medical.data.pipeline import CropGeometry, Sampling
from unet_medical.data.resample import rescale_pairs
from unet_medical.data.recipe import Choice, choose_recipe, parse_class_weights, rare_classes
from unet_medical.base.errors import UNetError
from unet_medical.training.config import choose_batch_size, deep_supervision_obstacle
from unet_medical.training.loop import TrainData

FINGERPRINT_FILE = FINGERPRINT
RECIPE_FLAGS = ("normalization", "input_scale", "crop_size", "foreground_sampling", "class_weights")


def recorded_recipe(cfg: Config, path: pathlib.Path) -> tuple[dict[str, Any], list[Choice]] | None:
    """The fingerprint and choices a resumed run recorded in `path` when it started; None for a new run."""
    if not (cfg.resume_training and path.is_file()):
        return None
    recorded = json.loads(path.read_text())
    return recorded["fingerprint"], [Choice(c["flag"], c["value"], "recorded when this run started")
                                     for c in recorded["choices"]]


def apply_choices(cfg: Config, choices: list[Choice], class_names: Sequence[str], logger: Any,
                  record_path: pathlib.Path | None, record: dict[str, Any], logged: Sequence[str] = ()) -> Config:
    """cfg with the recipe's choices: each logged as a RECIPE line (but the flags in `logged`, which an earlier
    step logged), --class_weights checked against the classes, and (record_path given: a new run's chief)
    `record` plus the choices saved there."""
    for choice in choices:
        if choice.flag not in logged:
            logger.log("RECIPE", {"flag": choice.flag, "value": choice.value, "reason": choice.reason})
    cfg = cfg.replace(**{c.flag: c.value for c in choices})
    if cfg.class_weights not in ("none", "auto"):
        try:
            parse_class_weights(cfg.class_weights, len(class_names))
        except ValueError as exc:
            raise UNetError(f"--class_weights={cfg.class_weights}: {exc} (classes: {', '.join(class_names)})")
    if record_path is not None:
        write_json(record_path, {**record, "choices": [{"flag": c.flag, "value": c.value, "reason": c.reason}
                                                       for c in choices]})
    return cfg


def resolve_recipe(cfg: Config, data: SegmentationData, train_idx: np.ndarray, padding: str, depth: int | None,
                   logger: Any, is_chief: bool, preset: Mapping[str, str] | None = None) -> Config:
    """cfg with normalization, input_scale, depth, crop_size, foreground_sampling and class_weights decided
    (flags win; `depth` None lets the recipe choose it). `preset`: {flag: reason} of values an earlier rule set
    and logged (volumes: the normalization), recorded with that reason instead of "given on the command line"."""
    preset = dict(preset or {})
    path = pathlib.Path(cfg.model_dir) / FINGERPRINT_FILE
    recorded = recorded_recipe(cfg, path)
    if recorded is not None:
        fingerprint, choices = recorded
    else:
        fingerprint = measure_fingerprint([data.images[i] for i in train_idx], [data.masks[i] for i in train_idx],
                                          data.class_names)
        requested = {flag: getattr(cfg, flag) for flag in RECIPE_FLAGS}
        choices = [Choice(c.flag, c.value, preset.get(c.flag, c.reason))
                   for c in choose_recipe(fingerprint, requested, depth, crop_is_free=padding == "same")]
        if isinstance(data, VolumeSlices) and data.volumes is not None and cfg.mirror_axes == "auto":  # --dims 2, 2.5
            cases = np.unique(data.case_of_slice[train_idx])
            choices.append(mirror_axes_choice([data.volumes.cases[int(c)].labels.array for c in cases],
                                              data.class_names, fingerprint, slices=True))
    if not any(c.flag == "input_scale" for c in choices):  # recorded before the scale rule: full resolution
        choices.append(Choice("input_scale", 1.0, "recorded when this run started (before --input_scale)"))
    logger.log("FINGERPRINT", {"images": fingerprint["images"], "channels": fingerprint["channels"],
                               "size_median": f"{fingerprint['height']['median']:.0f}x{fingerprint['width']['median']:.0f}",
                               "smallest_side": fingerprint["smallest_side"],
                               **{f"fraction_{k}": round(v, 4) for k, v in fingerprint["class_fraction"].items()}})
    return apply_choices(cfg, choices, data.class_names, logger, path if is_chief and recorded is None else None,
                         {"fingerprint": fingerprint, "rare_classes": rare_classes(fingerprint)}, logged=tuple(preset))


def mirror_axes_choice(label_maps: Sequence[np.ndarray], class_names: Sequence[str], fingerprint: dict[str, Any],
                       slices: bool = False) -> Choice:
    """The --mirror_axes choice (data.mirror_axes) from the training cases' (I, J, K) label maps; the measured
    class order goes into `fingerprint` (recorded with the choices)."""
    fingerprint["class_order"] = axis_order_agreement(label_maps, range(1, len(class_names)))
    axes, reason = choose_mirror_axes(fingerprint["class_order"], class_names, slices=slices)
    return Choice("mirror_axes", format_mirror_axes(axes), reason)


def resolve_deep_supervision(cfg: Config, padding: str, depth: int, dims: int, resuming: bool, logger: Any) -> Config:
    """cfg with --deep_supervision decided when the flags left it unset, logged as a RECIPE line: on for a
    same-padding float U-Net (2-D or 3-D) of depth 3 or more (training.deep_supervision), off otherwise. A resumed run
    whose record predates the setting trained without it."""
    if cfg.deep_supervision is not None:
        return cfg
    if resuming:
        value, why = False, "this run was recorded before --deep_supervision: its checkpoint trained without heads"
    elif obstacle := deep_supervision_obstacle(padding, depth, cfg.quantization != "NONE" or cfg.exec_mode == "compress"):
        value, why = False, obstacle
    else:
        levels = "level 2" if depth == 3 else f"levels 2-{depth - 1}"
        evidence = ("on the synthetic mr_faint set, structures as bright as their neighbours, at the recipe's 15 "
                    "minutes: test mean Dice +0.1 and +0.8 points (two seeds) for a step 3-8 % slower" if dims == 3 else
                    "nnU-Net's deep supervision; measured on the synthetic kinds")
        value, why = True, (f"decoder {levels} also scored through {'1x1x1' if dims == 3 else '1x1'} heads "
                            f"that ship in no file ({evidence}, README)")
    logger.log("RECIPE", {"flag": "deep_supervision", "value": value, "reason": why})
    return cfg.replace(deep_supervision=value)


def resolve_batch_size(cfg: Config, dims: int, padding: str, logger: Any) -> Config:
    """cfg with --batch_size decided when the flags (or a resumed run's config.yaml) left it open, logged as a
    RECIPE line (training.config.choose_batch_size)."""
    if cfg.batch_size is not None:
        return cfg
    value, why = choose_batch_size(dims, padding)
    logger.log("RECIPE", {"flag": "batch_size", "value": value, "reason": why})
    return cfg.replace(batch_size=value)


PATCH_CAP_CPU, PATCH_CAP_GPU = 64, 128  # voxels per patch side: what a step can afford on each


def patch_cap() -> tuple[int, str]:
    """(largest patch side, why): 128 with a GPU, 64 on CPU (a 64^3 patch is already ~260k voxels per sample)."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return PATCH_CAP_GPU, "a GPU"
    return PATCH_CAP_CPU, "CPU only"


def is_volumetric(data: SegmentationData) -> bool:
    """True for --dims 3 data: whole volumes, one item per case."""
    return isinstance(data, VolumeSlices) and data.dims == "3"


def volume_choices(cfg: Config, median_shape: list[int], depth: int | None) -> list[Choice]:
    """The --dims 3 recipe (flags win): depth and patch size from the median case shape, foreground
    sampling, class weights and input scale."""
    cap, device = patch_cap()
    choices = []
    if depth is None:
        depth = choose_depth_3d(median_shape, cap)
        choices.append(Choice("depth", depth, f"poolings that keep the coarsest map at least 4 voxels on the "
                                              f"shortest side of the median case ({min(median_shape)}, at most {cap})"))
    if cfg.patch_size is None:
        patch, reason = choose_patch_size(median_shape, depth, cap)
        choices.append(Choice("patch_size", ",".join(map(str, patch)), f"{reason} ({device})"))
    else:
        check_patch_size(parse_patch_size(cfg.patch_size), depth)
    if cfg.foreground_sampling is None:
        choices.append(Choice("foreground_sampling", round(FOREGROUND_FRACTION, 4),
                              "a third of the patches centred on a foreground voxel (nnU-Net)"))
    if cfg.class_weights == "auto":
        choices.append(Choice("class_weights", "none", "patches oversample the foreground; CE + Dice (nnU-Net)"))
    if cfg.input_scale is None:
        choices.append(Choice("input_scale", 1.0, "volumes are seen at full resolution (--dims 3)"))
    return choices


def resolve_volume_recipe(cfg: Config, data: VolumeSlices, train_idx: np.ndarray, depth: int | None, logger: Any,
                          is_chief: bool) -> Config:
    """resolve_recipe for --dims 3: cfg with depth, patch_size, foreground_sampling, class_weights,
    input_scale and mirror_axes (data.mirror_axes) decided, each logged as a RECIPE line; recorded in
    dataset_fingerprint.json, which a resume reads back."""
    path = pathlib.Path(cfg.model_dir) / FINGERPRINT_FILE
    recorded = recorded_recipe(cfg, path)
    if recorded is not None:
        fingerprint, choices = recorded
    else:
        shapes = np.array([data.images[i].shape[:3] for i in train_idx], np.float64)
        fingerprint = {"cases": len(train_idx), "shape_median": [int(s) for s in np.median(shapes, axis=0)]}
        choices = volume_choices(cfg, fingerprint["shape_median"], depth)
        if cfg.mirror_axes == "auto":
            choices.append(mirror_axes_choice([data.masks[i] for i in train_idx], data.class_names, fingerprint))
    return apply_choices(cfg, choices, data.class_names, logger, path if is_chief and recorded is None else None,
                         {"fingerprint": fingerprint, "rare_classes": []})


def volume_trainer_data(cfg: Config, data: VolumeSlices, train_idx: np.ndarray, geometry: CropGeometry,
                        n_classes: int) -> TrainData:
    """trainer_data for --dims 3: the training volumes (I, J, K, C) normalized, cut into --patch_size
    patches, a --foreground_sampling share centred on a foreground class (every class but background),
    flipped only along the run's mirror axes."""
    images = [normalize_image(data.images[i], cfg.normalization) for i in train_idx]
    return TrainData(images=images, masks=[data.masks[i] for i in train_idx], names=[data.names[i] for i in train_idx],
                     geometry=geometry, n_classes=n_classes,
                     sampling=Sampling(foreground=float(cfg.foreground_sampling or 0.0),
                                       classes=tuple(range(1, n_classes))),
                     class_weights=class_weights_for(cfg, n_classes), patch_size=parse_patch_size(cfg.patch_size),
                     volume_augment=augment_config(cfg.augment_params, "3").flipping_only(
                         mirror_axes_in_effect(cfg.mirror_axes)) if cfg.augment else None)


def sampling_for(cfg: Config, class_names: tuple[str, ...]) -> Sampling:
    """Crops centred on the rare classes of the recorded fingerprint, at cfg.foreground_sampling."""
    fraction = cfg.foreground_sampling or 0.0
    if fraction <= 0:
        return Sampling()
    path = pathlib.Path(cfg.model_dir) / FINGERPRINT_FILE
    rare = json.loads(path.read_text()).get("rare_classes", []) if path.is_file() else []
    # Given by flag on a set with no rare class: centre on every class but the first (background).
    classes = tuple(class_names.index(n) for n in rare) or tuple(range(1, len(class_names)))
    return Sampling(foreground=float(fraction), classes=classes)


def class_weights_for(cfg: Config, num_classes: int) -> list[float] | None:
    return None if cfg.class_weights in ("auto", "none") else parse_class_weights(cfg.class_weights, num_classes)


def trainer_data(cfg: Config, data: SegmentationData, train_idx: np.ndarray, geometry: CropGeometry,
                 n_classes: int) -> TrainData:
    """The batch stream's inputs of a run whose recipe is resolved (resolve_recipe): the training images
    normalized as cfg.normalization says, its crops, sampling, augmentation and class weights. Training
    and the training benchmark both start from this, so the benchmark times the run's real step."""
    from unet_medical.cli.assemble import make_augment

    if is_volumetric(data):
        return volume_trainer_data(cfg, data, train_idx, geometry, n_classes)

    images = [normalize_image(data.images[i], cfg.normalization) for i in train_idx]
    # The network trains on images seen at the input scale; validation is scored at the input's size.
    images, masks = rescale_pairs(images, [data.masks[i] for i in train_idx], cfg.input_scale or 1.0, n_classes)
    # Slices of volumes flip only along their mirror axes (data.mirror_axes); 2-D images along both.
    mirror = mirror_axes_in_effect(cfg.mirror_axes) if isinstance(data, VolumeSlices) else None
    return TrainData(images=images, masks=masks, names=[data.names[i] for i in train_idx],
                     geometry=geometry, n_classes=n_classes, augment=make_augment(cfg, mirror),
                     sampling=sampling_for(cfg, data.class_names), class_weights=class_weights_for(cfg, n_classes))


def recorded_input_scale(cfg: Config, recorded: float) -> float:
    """The input scale evaluate/predict/export use: the trained run's (model.json). A different
    --input_scale is refused: the network learned objects at the recorded scale."""
    if cfg.input_scale is not None and cfg.input_scale != recorded:
        raise UNetError(f"--input_scale={cfg.input_scale:g}: the model in {cfg.model_path or cfg.model_dir} was "
                        f"trained at input scale {recorded:g}; drop the flag")
    return float(recorded)
