"""Apply the adaptive recipe to a training run: fingerprint the training images, choose the settings the
flags left open (utils.data.recipe), print each choice with its reason, save
model_dir/dataset_fingerprint.json, and turn --time_budget into --max_steps from a measured step time.

A resumed run reuses the choices recorded in dataset_fingerprint.json, so it continues the same recipe
(the same crop, sampling, weights and number of steps) whatever the machine's speed is now.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np

from unet_medical.cli.config import Config
from unet_medical.base.artifacts import FINGERPRINT, write_json
from unet_medical.data.fingerprint import measure_fingerprint
from unet_medical.data.layouts import SegmentationData
from unet_medical.data.pipeline import Sampling
from unet_medical.data.recipe import Choice, choose_recipe, parse_class_weights, rare_classes
from unet_medical.base.errors import UNetError

FINGERPRINT_FILE = FINGERPRINT
RECIPE_FLAGS = ("normalization", "input_scale", "crop_size", "foreground_sampling", "class_weights")
# Step-time probe: steps run and thrown away (tracing, allocation), then steps timed.
PROBE_WARMUP, PROBE_STEPS = 3, 8


def resolve_recipe(cfg: Config, data: SegmentationData, train_idx: np.ndarray, padding: str, depth: int | None,
                   logger: Any, is_chief: bool) -> Config:
    """cfg with normalization, input_scale, depth, crop_size, foreground_sampling and class_weights decided
    (flags win; `depth` None lets the recipe choose it)."""
    path = pathlib.Path(cfg.model_dir) / FINGERPRINT_FILE
    if cfg.resume_training and path.is_file():
        recorded = json.loads(path.read_text())
        choices = [Choice(c["flag"], c["value"], "recorded when this run started") for c in recorded["choices"]]
        fingerprint = recorded["fingerprint"]
    else:
        fingerprint = measure_fingerprint([data.images[i] for i in train_idx], [data.masks[i] for i in train_idx],
                                          data.class_names)
        requested = {flag: getattr(cfg, flag) for flag in RECIPE_FLAGS}
        choices = choose_recipe(fingerprint, requested, depth, crop_is_free=padding == "same")
    if not any(c.flag == "input_scale" for c in choices):  # recorded before the scale rule: full resolution
        choices.append(Choice("input_scale", 1.0, "recorded when this run started (before --input_scale)"))
    logger.log("FINGERPRINT", {"images": fingerprint["images"], "channels": fingerprint["channels"],
                               "size_median": f"{fingerprint['height']['median']:.0f}x{fingerprint['width']['median']:.0f}",
                               "smallest_side": fingerprint["smallest_side"],
                               **{f"fraction_{k}": round(v, 4) for k, v in fingerprint["class_fraction"].items()}})
    for choice in choices:
        logger.log("RECIPE", {"flag": choice.flag, "value": choice.value, "reason": choice.reason})
    cfg = cfg.replace(**{c.flag: c.value for c in choices})
    if cfg.class_weights not in ("none", "auto"):
        try:
            parse_class_weights(cfg.class_weights, len(data.class_names))
        except ValueError as exc:
            raise UNetError(f"--class_weights={cfg.class_weights}: {exc} (classes: {', '.join(data.class_names)})")
    if is_chief and not (cfg.resume_training and path.is_file()):
        write_json(path, {"fingerprint": fingerprint,
                          "choices": [{"flag": c.flag, "value": c.value, "reason": c.reason} for c in choices],
                          "rare_classes": rare_classes(fingerprint)})
    return cfg


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


def steps_for_budget(cfg: Config, make_batches: Any, step_fn_factory: Any, logger: Any) -> int:
    """--max_steps that fills --time_budget minutes, from the mean time of PROBE_STEPS real steps.

    `make_batches()` yields training batches; `step_fn_factory()` returns (step function, restore) where
    restore() puts the model and optimizer back as they were, so the probe leaves no trace in the run.
    """
    from unet_medical.base.timing import time_steps

    step_fn, restore = step_fn_factory()
    batches = iter(make_batches())
    seconds = time_steps(lambda _: float(step_fn(*next(batches))), PROBE_WARMUP, PROBE_STEPS)
    restore()
    # The mean, not the median: once the prefetched batches are used up, augmentation shares the cores
    # with the step, and the slower steps are the steady state the budget must cover.
    per_step = float(np.mean(seconds))
    steps = max(1, int(cfg.time_budget * 60.0 / per_step))
    logger.log("RECIPE", {"flag": "max_steps", "value": steps,
                          "reason": f"--time_budget {cfg.time_budget:g} min / {per_step:.3f} s per step (mean of "
                                    f"{PROBE_STEPS} measured steps)"})
    return steps


def recorded_input_scale(cfg: Config, recorded: float) -> float:
    """The input scale evaluate/predict/export use: the trained run's (model.json). A different
    --input_scale is refused: the network learned objects at the recorded scale."""
    if cfg.input_scale is not None and cfg.input_scale != recorded:
        raise UNetError(f"--input_scale={cfg.input_scale:g}: the model in {cfg.model_path or cfg.model_dir} was "
                        f"trained at input scale {recorded:g}; drop the flag")
    return float(recorded)
