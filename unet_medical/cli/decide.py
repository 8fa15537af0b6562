"""The run's decision (unet_medical.inference.decision) chosen when training ends, and recorded.

After the last checkpoint, the weights the run ships (--checkpoint) predict the validation fold once
without flips and, when --tta is unset and affordable, once with them. evaluation.decision.choose_decision
picks the threshold and TTA; the choice goes to model.json ("decision"), to eval_results.json (the same
block, beside the argmax scores it was measured against) and to two RECIPE lines. Evaluate, predict, the
SavedModel and exported files then apply it (resolve_decision: flags win).

A volume run (2-D slices, 2.5-D or 3-D; choose_volume_run_decision) keeps the argmax (no threshold is
scanned: a foreground cut-off fitted on a few cases would move organ boundaries by their noise) and chooses
only mirroring: its validation cases are predicted as evaluate predicts them (cli.volume_modes), without
and, when --tta is unset and the mirrored pass is projected under TTA_TRIAL_LIMIT_S, with mirroring (the
8 flips of each 3-D window, or the 8 in-plane flips/rotations of each slice), scored by the mean per-case
Dice over cases and foreground classes, and climb the same ladder (evaluation.decision.choose_mirroring).
"""
from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any, Sequence

import numpy as np

from unet_medical.base import runlog
from unet_medical.cli.config import batch_or_default
from unet_medical.base.artifacts import EVAL_RESULTS, RunRecord, read_eval_results, save_run_record, write_eval_results
from unet_medical.data.normalize import normalize_image
from unet_medical.evaluation.decision import choose_decision, choose_mirroring
from unet_medical.inference.decision import ARGMAX, AUTO, parse_threshold
from unet_medical.inference.outputs import background_class
from unet_medical.inference.runtimes import as_predictor
from unet_medical.inference.tiling import predict_images

# Flips (or a volume's mirroring) cost FLIP_PASSES passes over the fold, or 2 ** (mirror axes) for a 3-D network (the
# choice's only large cost: the chosen rule is then scored from the probabilities already made); past this many seconds
# the choice is not worth the wait.
TTA_TRIAL_LIMIT_S = 180.0
FLIP_PASSES = 8  # the 8 flips and rotations of a 2-D image, or the mirrors of a volume's three axes
MAX_SCANNED_FOREGROUND = 2  # the rule: a threshold where the data has one or two foreground classes


@dataclasses.dataclass(frozen=True)
class PlainPass:
    """The validation fold as an evaluation just predicted it under the training-time rule (`tta`), at `step`:
    `result` is the probabilities, (H, W, K) per image (2-D), or score_volumes' eval_results (volumes), and
    `seconds` the prediction's wall time. The decision reuses it when the shipped weights are that step's."""

    step: int
    tta: bool
    seconds: float
    result: Any


def flips_affordable(plain_seconds: float, passes: int = FLIP_PASSES) -> bool:
    """Is the flipped (mirrored) pass worth trying, at `passes` x the plain pass's `plain_seconds`? A volume
    run without mirror axes (`passes` 1) has nothing to try."""
    return passes > 1 and passes * plain_seconds <= TTA_TRIAL_LIMIT_S


def decision_cost_s(tta: bool | None, latest: PlainPass | None, passes: int = FLIP_PASSES) -> float:
    """Seconds the end-of-run decision will add to a run whose latest evaluation predicted `latest`: its
    flipped (mirrored) pass, `passes` x the plain one, when --tta is unset (`tta` None) and that is
    affordable; 0 otherwise (the plain pass is the final evaluation's). A --time_budget reserves it
    (training.budget.BudgetCosts.after_s), so the budget covers the decision as well as training."""
    if tta is not None or latest is None or not flips_affordable(latest.seconds, passes):
        return 0.0
    return passes * latest.seconds


def reusable(latest: PlainPass | None, step: int, tta: bool) -> PlainPass | None:
    """`latest` if it predicted the weights of checkpoint `step` under mirroring/flips `tta`, else None."""
    return latest if latest is not None and latest.step == step and latest.tta == tta else None


def choose_run_decision(cfg: Any, model: Any, spec: Any, images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                        class_names: Sequence[str], record: RunRecord, logger: runlog.Logger,
                        plain: PlainPass | None = None) -> tuple[RunRecord, dict[bool, list[np.ndarray]]]:
    """Choose, log and record the decision of `model` (the weights the run ships) on the validation
    `images` (raw, (H, W, C)) and `masks` (H, W). `plain`: the first pass (unflipped, or --tta's), already
    predicted from these weights by the final evaluation, is taken instead of predicted again.

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
                              context=cfg.tile_context, batch_size=batch_or_default(cfg), tta=tta, logger=logger,
                              label="decision", input_scale=record.input_scale)

    start = time.perf_counter()
    allowed = [False, True] if cfg.tta is None else [bool(cfg.tta)]
    if plain is not None and plain.tta == allowed[0]:
        probs_by_tta, plain_seconds = {allowed[0]: list(plain.result)}, plain.seconds
    else:
        probs_by_tta = {allowed[0]: probabilities(allowed[0])}
        plain_seconds = time.perf_counter() - start
    tta_note = ""
    if len(allowed) == 2:
        if flips_affordable(plain_seconds):
            probs_by_tta[True] = probabilities(True)
        else:
            tta_note = (f"; flips not tried: 8 passes over the fold would take about {8 * plain_seconds:.0f} s "
                        f"(limit {TTA_TRIAL_LIMIT_S:g} s)")
    choice = choose_decision(probs_by_tta, masks, background_class(class_names), scan, fixed)
    why_threshold = ("--threshold given" if parsed != AUTO else
                     f"{foreground} foreground classes: the argmax is kept" if not scan else "chosen on validation")
    choice = {**choice, "reason": choice["reason"] + tta_note, "threshold_rule": why_threshold,
              "validation_images": len(images), "seconds": round(time.perf_counter() - start, 1),
              "first_pass": "the final evaluation's" if plain is not None else "predicted"}
    logger.log("RECIPE", {"flag": "threshold", "value": "argmax" if choice["threshold"] is None else choice["threshold"],
                          "reason": f"{why_threshold}: {choice['reason']}"})
    logger.log("RECIPE", {"flag": "tta", "value": choice["tta"],
                          "reason": "--tta given" if cfg.tta is not None else choice["reason"]})
    record = record.replace(decision=choice)
    save_run_record(cfg.model_dir, record)
    return record, probs_by_tta


def choose_volume_run_decision(cfg: Any, model: Any, evaluator: Any, record: RunRecord, logger: runlog.Logger,
                               plain: PlainPass | None = None) -> tuple[RunRecord, dict[bool, dict[str, Any]]]:
    """Choose, log and record whether a volume run mirrors, with `model` (the weights the run ships) on
    the validation cases of `evaluator` (cli.volume_modes.VolumeEvaluator: predict, score). `plain`: the
    final evaluation's scores of these weights, taken for the pass it made instead of predicting again.

    Returns `record` with its "decision" set (also saved to model.json) and the eval_results of the
    validation cases (evaluation.volumes.score_volumes) without (False) and with (True) mirroring, as far
    as they were predicted: the chosen one is written as eval_results.json without predicting again.
    """
    allowed = [False, True] if cfg.tta is None else [bool(cfg.tta)]
    results: dict[bool, dict[str, Any]] = {}
    seconds: dict[bool, float] = {}
    tta_note = ""
    passes = evaluator.mirror_passes
    for tta in allowed:
        if tta and passes == 1 and cfg.tta is None:
            tta_note = "; mirroring not tried: the run mirrors no axis (--mirror_axes none)"
            break
        if tta and False in seconds and not flips_affordable(seconds[False], passes):
            tta_note = (f"; mirroring not tried: {passes} passes over the fold would take about "
                        f"{passes * seconds[False]:.0f} s (limit {TTA_TRIAL_LIMIT_S:g} s)")
            break
        if plain is not None and plain.tta == tta:
            seconds[tta], results[tta] = plain.seconds, plain.result
            continue
        start = time.perf_counter()
        predictions = evaluator.predict(model, tta, "decision")
        seconds[tta] = time.perf_counter() - start  # the prediction alone: scoring costs both passes alike
        results[tta] = evaluator.score(predictions)
    choice = choose_mirroring({tta: scored["mean_dice"] for tta, scored in results.items()})
    measured = ", ".join(f"{'with' if tta else 'without'} mirroring {results[tta]['mean_dice']:.4f} "
                         f"({seconds[tta]:.1f} s)" for tta in results)
    why_threshold = "volumes keep the argmax (a threshold is chosen for 2-D images only)"
    choice = {**choice, "reason": f"{choice['reason']}; measured {measured}{tta_note}", "threshold_rule": why_threshold,
              "validation_cases": len(evaluator.cases), "predict_seconds": {str(t).lower(): round(s, 1)
                                                                           for t, s in seconds.items()},
              "first_pass": "the final evaluation's" if plain is not None else "predicted"}
    logger.log("RECIPE", {"flag": "threshold", "value": "argmax", "reason": why_threshold})
    logger.log("RECIPE", {"flag": "tta", "value": choice["tta"],
                          "reason": ("--tta given; " if cfg.tta is not None else "") + choice["reason"]})
    record = record.replace(decision=choice)
    save_run_record(cfg.model_dir, record)
    return record, results


def record_in_results(model_dir: str | pathlib.Path, choice: dict[str, Any]) -> None:
    """eval_results.json gets the decision block: how the rule its scores use was chosen, against what."""
    path = pathlib.Path(model_dir) / EVAL_RESULTS
    if path.is_file():
        write_eval_results(path, {**read_eval_results(path), "decision": choice})
