"""The run's decision (unet_medical.inference.decision) chosen when training ends, and recorded.

After the last checkpoint, the weights the run ships (--checkpoint) predict the validation fold once
without flips and, when --tta is unset and affordable, once with them. evaluation.decision.choose_decision
picks the threshold and TTA; the choice goes to model.json ("decision"), to eval_results.json (the same
block, beside the argmax scores it was measured against) and to two RECIPE lines. Evaluate, predict, the
SavedModel and exported files then apply it (resolve_decision: flags win).
2-D images only: a volume run keeps the argmax (its per-case scores are surface distances too).
"""
from __future__ import annotations

import pathlib
import time
from typing import Any, Sequence

import numpy as np

from unet_medical.base import runlog
from unet_medical.base.artifacts import EVAL_RESULTS, RunRecord, read_eval_results, save_run_record, write_eval_results
from unet_medical.data.normalize import normalize_image
from unet_medical.evaluation.decision import choose_decision
from unet_medical.inference.decision import ARGMAX, AUTO, parse_threshold
from unet_medical.inference.outputs import background_class
from unet_medical.inference.runtimes import as_predictor
from unet_medical.inference.tiling import predict_images

# Flips cost 8 passes over the fold (the choice's only large cost: the chosen rule is then scored from the
# probabilities already made); past this many seconds the choice is not worth the wait.
TTA_TRIAL_LIMIT_S = 180.0
MAX_SCANNED_FOREGROUND = 2  # the rule: a threshold where the data has one or two foreground classes


def choose_run_decision(cfg: Any, model: Any, spec: Any, images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                        class_names: Sequence[str], record: RunRecord, logger: runlog.Logger
                        ) -> tuple[RunRecord, dict[bool, list[np.ndarray]]]:
    """Choose, log and record the decision of `model` (the weights the run ships) on the validation
    `images` (raw, (H, W, C)) and `masks` (H, W).

    Returns `record` with its "decision" set (also saved to model.json; record_in_results adds it to
    eval_results.json once that file scores the chosen rule) and the validation probabilities, (H, W, K)
    per image, without (False) and with (True) flips, as far as they were predicted.
    """
    parsed = parse_threshold(cfg.threshold)
    foreground = len(class_names) - 1
    scan = parsed == AUTO and foreground <= MAX_SCANNED_FOREGROUND
    fixed = float(parsed) if parsed not in (AUTO, ARGMAX) else None
    normalized = [normalize_image(im, record.normalization) for im in images]
    predictor, tile_size = as_predictor(model, cfg.tile_size)

    def probabilities(tta: bool) -> list[np.ndarray]:
        return predict_images(predictor, spec, normalized, tile_size=tile_size, max_tile_size=cfg.max_tile_size,
                              context=cfg.tile_context, batch_size=cfg.batch_size, tta=tta, logger=logger,
                              label="decision", input_scale=record.input_scale)

    start = time.perf_counter()
    allowed = [False, True] if cfg.tta is None else [bool(cfg.tta)]
    probs_by_tta = {allowed[0]: probabilities(allowed[0])}
    plain_seconds = time.perf_counter() - start
    tta_note = ""
    if len(allowed) == 2:
        if 8 * plain_seconds <= TTA_TRIAL_LIMIT_S:
            probs_by_tta[True] = probabilities(True)
        else:
            tta_note = (f"; flips not tried: 8 passes over the fold would take about {8 * plain_seconds:.0f} s "
                        f"(limit {TTA_TRIAL_LIMIT_S:g} s)")
    choice = choose_decision(probs_by_tta, masks, background_class(class_names), scan, fixed)
    why_threshold = ("--threshold given" if parsed != AUTO else
                     f"{foreground} foreground classes: the argmax is kept" if not scan else "chosen on validation")
    choice = {**choice, "reason": choice["reason"] + tta_note, "threshold_rule": why_threshold,
              "validation_images": len(images), "seconds": round(time.perf_counter() - start, 1)}
    logger.log("RECIPE", {"flag": "threshold", "value": "argmax" if choice["threshold"] is None else choice["threshold"],
                          "reason": f"{why_threshold}: {choice['reason']}"})
    logger.log("RECIPE", {"flag": "tta", "value": choice["tta"],
                          "reason": "--tta given" if cfg.tta is not None else choice["reason"]})
    record = record.replace(decision=choice)
    save_run_record(cfg.model_dir, record)
    return record, probs_by_tta


def record_in_results(model_dir: str | pathlib.Path, choice: dict[str, Any]) -> None:
    """eval_results.json gets the decision block: how the rule its scores use was chosen, against what."""
    path = pathlib.Path(model_dir) / EVAL_RESULTS
    if path.is_file():
        write_eval_results(path, {**read_eval_results(path), "decision": choice})
