"""Exec modes as compositions of the same few pieces: data -> model -> train loop / inference path -> score.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import time
from typing import Any

import numpy as np

from unet_medical.base import runlog
from unet_medical.base.cpu import describe, peak_memory_mb, read_cpu_info
from unet_medical.model.complexity import total_macs, total_params
from unet_medical.model.unet import UNetSpec
from unet_medical.training import distributed
from unet_medical.training.budget import budget_evaluate_every
from unet_medical.base.artifacts import (EVAL_RESULTS, OVERLAY_BEST, OVERLAY_WORST, RUN_CONFIG,
                                       RunRecord, load_run_record, save_run_record, write_eval_results, write_json)
from unet_medical.cli.config import Config, batch_or_default, save_config
from unet_medical.data.layouts import SegmentationData, load_test_data
from unet_medical.data.folds import fold_split
from unet_medical.data.normalize import normalize_image
from unet_medical.base.errors import UNetError
from unet_medical.inference.tiling import iter_predictions, predict_images
from unet_medical.evaluation.cases import best_and_worst, case_scores
from unet_medical.evaluation.metrics import segmentation_metrics
from unet_medical.inference.outputs import (PredictionWriter, background_class, check_unique_stems, comparison_panel,
                                            write_png)
from unet_medical.base.precision import configure_precision, configure_seeds
from unet_medical.inference.runtimes import as_predictor
from unet_medical.inference.decision import Decision, decide_labels, resolve_decision
from unet_medical.cli.recipe import (FINGERPRINT_FILE, is_volumetric, resolve_batch_size, resolve_deep_supervision,
                                     resolve_recipe, resolve_volume_recipe, trainer_data)
from unet_medical.data.patches3d import parse_patch_size
from unet_medical.cli.recipe import recorded_input_scale
from unet_medical.cli.assemble import (load_training_set, log_path, make_logger, make_model, quantization_config,
                              restore_model)
from unet_medical.cli.curves import write_curves
from unet_medical.cli.decide import FLIP_PASSES, PlainPass, decision_cost_s
from unet_medical.base.runlock import run_lock
from unet_medical.cli.lineage import (TRAINING_MODES, check_evaluation_slices, is_resume, recorded_validation,
                                      refuse_overwrite, require_source, run_source, select_by_name)
from unet_medical.cli import volume_modes
from unet_medical.cli.provenance import PROVENANCE, evaluation_results_name, provenance, training_provenance
from unet_medical.data.mirror_axes import mirror_axes_in_effect
from unet_medical.data.volume_training import VolumeSlices, split_items, volume_record

OVERLAYS = 3  # validation images whose input | prediction | truth panel goes to TensorBoard at each evaluation
REPORT_PANEL_SIDE = 256  # longest side (pixels) of each third of the best/worst case panels



def predict_fold(cfg: Config, model: Any, spec: UNetSpec, images: list[np.ndarray], logger: runlog.Logger | None,
                 input_scale: float, tta: bool) -> list[np.ndarray]:
    """The class probabilities (H, W, K) of each normalized image, tiled as evaluate predicts them."""
    predictor, tile_size = as_predictor(model, cfg.tile_size)
    return predict_images(predictor, spec, images, tile_size=tile_size, max_tile_size=cfg.max_tile_size,
                          context=cfg.tile_context, batch_size=batch_or_default(cfg), tta=tta, logger=logger,
                          label="evaluate", input_scale=input_scale)


def evaluate_images(cfg: Config, model: Any, spec: UNetSpec, images: list[np.ndarray],
                    masks: list[np.ndarray], class_names: tuple[str, ...], logger: runlog.Logger | None = None,
                    input_scale: float = 1.0, decision: Decision = Decision(),
                    probs: list[np.ndarray] | None = None) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Metrics of the tiled prediction of `images` against `masks` under `decision` (threshold, flips),
    and the class probabilities (H, W, K) of each image, at the images' resolution (the network sees them
    at `input_scale`). `probs` given: those (already predicted so) are scored instead. With a `logger`,
    the loop shows its progress."""
    if probs is None:
        probs = predict_fold(cfg, model, spec, images, logger, input_scale, decision.tta)
    return segmentation_metrics(probs, masks, class_names, decision.threshold, background_class(class_names)), probs



class FoldEvaluator:
    """evaluate(model, step): scores of the validation images under `decision` into model_dir/`results_name`
    with the `origin` provenance block (cli.provenance) and, when `decision` is the run's recorded choice,
    its `decision_record` (how it was chosen); the training run's own file (EVAL_RESULTS) also gets the
    best/worst case overlays that belong to it. `latest` keeps the probabilities of its last prediction under
    the default rule (cli.decide.PlainPass), which the end-of-training decision reuses."""

    def __init__(self, cfg: Config, spec: UNetSpec, data: SegmentationData, val_idx: np.ndarray,
                 logger: runlog.Logger, normalization: str, input_scale: float = 1.0,
                 origin: dict[str, Any] | None = None, results_name: str = EVAL_RESULTS,
                 decision: Decision = Decision(), decision_record: dict[str, Any] | None = None):
        self.cfg, self.spec, self.logger, self.input_scale = cfg, spec, logger, input_scale
        self.origin, self.results_name, self.default, self.decision_record = origin, results_name, decision, decision_record
        self.class_names = data.class_names
        self.images = [normalize_image(data.images[i], normalization) for i in val_idx]
        self.masks = [data.masks[i] for i in val_idx]
        self.names = [data.names[i] for i in val_idx]
        self.indices = [int(i) for i in val_idx]
        self.skip = background_class(data.class_names)
        self.latest: PlainPass | None = None

    def __call__(self, model: Any, step: int, decision: Decision | None = None,
                 probs: list[np.ndarray] | None = None) -> dict[str, Any]:
        cfg, images, masks, skip = self.cfg, self.images, self.masks, self.skip
        decision = self.default if decision is None else decision
        if probs is None:  # predicted here, timed alone (the decision's 8x rule reads the prediction's time)
            started = time.perf_counter()
            probs = predict_fold(cfg, model, self.spec, images, self.logger, self.input_scale, decision.tta)
            if decision == self.default:
                self.latest = PlainPass(int(step), decision.tta, time.perf_counter() - started, probs)
        metrics, probs = evaluate_images(cfg, model, self.spec, images, masks, self.class_names, self.logger,
                                         self.input_scale, decision, probs)
        predicted = [decide_labels(p, decision.threshold, skip) for p in probs]
        per_case = case_scores(predicted, masks, self.class_names, self.names, self.indices)
        results = {**metrics, "fold": cfg.fold, "num_folds": cfg.num_folds, "step": int(step),
                   "num_images": len(images), "tta": decision.tta, "threshold": decision.threshold,
                   "per_case": per_case}
        if self.origin is not None:
            results["provenance"] = self.origin
        if self.decision_record is not None and decision == self.default:
            results["decision"] = self.decision_record
        write_eval_results(pathlib.Path(cfg.model_dir) / self.results_name, results)
        if self.results_name == EVAL_RESULTS:
            write_case_overlays(pathlib.Path(cfg.model_dir), per_case, images, predicted, masks, skip)
        # ("eval", step): the JSON log keeps validation records apart from training steps, and the
        # TensorBoard backend plots them as eval/<metric> at that step.
        # A re-scoring under the decision chosen at the end is a series of its own: the curves stay argmax.
        series = "eval" if decision == self.default else "eval_decided"
        self.logger.log((series, int(step)), {k: v for k, v in results.items() if isinstance(v, (int, float))})
        self.logger.images(int(step), {
            f"{series}/input_prediction_truth_{i}": comparison_panel(images[i], predicted[i], masks[i],
                                                                 skip_class=skip)[None]
            for i in range(min(OVERLAYS, len(images)))})
        return results


def make_fold_evaluator(cfg: Config, spec: UNetSpec, data: SegmentationData, val_idx: np.ndarray,
                        logger: runlog.Logger, normalization: str, input_scale: float = 1.0,
                        origin: dict[str, Any] | None = None, results_name: str = EVAL_RESULTS,
                        decision: Decision = Decision(), decision_record: dict[str, Any] | None = None
                        ) -> FoldEvaluator:
    """The FoldEvaluator of the validation images `val_idx`."""
    return FoldEvaluator(cfg, spec, data, val_idx, logger, normalization, input_scale, origin, results_name,
                         decision, decision_record)


def write_case_overlays(model_dir: pathlib.Path, per_case: list[dict[str, Any]], images: list[np.ndarray],
                        predicted: list[np.ndarray], masks: list[np.ndarray], skip_class: int
                        ) -> tuple[pathlib.Path, pathlib.Path]:
    """model_dir/overlay_best.png and overlay_worst.png: input | prediction | truth of the validation
    cases with the highest and lowest per-case mean Dice (evaluation.cases), for the run report.
    Written at every evaluation, so they always belong to the eval_results.json beside them."""
    best, worst = best_and_worst(per_case)
    written = []
    for position, name in ((best, OVERLAY_BEST), (worst, OVERLAY_WORST)):
        panel = comparison_panel(images[position], predicted[position], masks[position], skip_class=skip_class,
                                 max_side=REPORT_PANEL_SIDE)
        written.append(write_png(model_dir / name, panel))
    return written[0], written[1]


def score_keys(class_names: tuple[str, ...]) -> tuple[str, ...]:
    """The validation scores of curves.png: the first foreground class's Dice, and the mean."""
    background = background_class(class_names)
    first = next((name for i, name in enumerate(class_names) if i != background), class_names[0])
    return f"{first}_dice", "mean_dice"



def run_training(cfg: Config, logger: runlog.Logger, dist: Any) -> dict[str, Any] | None:
    from unet_medical.training.loop import train

    data = load_training_set(cfg)
    train_idx, val_idx = split_items(data, cfg.num_folds, cfg.fold)  # volumes: by case
    volumes = isinstance(data, VolumeSlices)
    if volumes and cfg.dims != data.dims:  # --dims auto: the data's choice is the run's (and is checked)
        cfg = cfg.replace(dims=data.dims)
    configure_seeds(cfg.seed, cfg.deterministic)
    policy, reason = configure_precision(cfg.precision, cfg.amp, cfg.quantization)
    padding, depth = cfg.padding, cfg.depth
    if cfg.init_from:  # the architecture is the trained run's: its padding and depth bound the crop
        record = load_run_record(cfg.init_from)
        padding, depth = record.spec["padding"], record.spec["depth"]
    preset = {}  # values the volume rules set and logged before the 2-D recipe
    if volumes:
        preset = {"normalization": volume_modes.VOLUME_NORMALIZATION} if cfg.normalization == "auto" else {}
        cfg = volume_modes.prepare_training(cfg, data, logger)
    if is_volumetric(data):  # --dims 3: patch size and depth from the case shapes
        cfg = resolve_volume_recipe(cfg, data, train_idx, depth, logger, dist.is_chief)
    else:
        cfg = resolve_recipe(cfg, data, train_idx, padding, depth, logger, dist.is_chief, preset)
    cfg = resolve_batch_size(cfg, 3 if is_volumetric(data) else 2, padding, logger)
    if cfg.num_epochs is not None:  # an epoch = one pass over the training images, one crop each
        cfg = cfg.replace(max_steps=-(-cfg.num_epochs * len(train_idx) // (cfg.batch_size * dist.size)))
    cfg, measure_budget = steps_of_budget(cfg, logger)
    resuming = is_resume(cfg.exec_mode, cfg.model_dir, cfg.resume_training)
    with dist.scope():
        # A resume's Tucker report is the run's record: it is not rewritten (the ranks cannot change).
        model, spec, geometry = make_model(cfg, data, logger, write_report=not resuming)
    cfg = resolve_deep_supervision(cfg, spec.padding, spec.depth, spec.dims, resuming, logger)
    # complexity counts 2D inputs; a 3D run states its patch instead
    sizes = ({"input_size": geometry.input_size, "output_size": geometry.output_size,
              "gflop_per_image": 2 * total_macs(model, (geometry.input_size,) * 2) / 1e9}
             if spec.dims == 2 else {"patch_size": cfg.patch_size})
    logger.log("PARAMETER", {"precision": policy, "precision_reason": reason, "cpu": describe(read_cpu_info()),
                             "parameters": total_params(model), **sizes, "batch_size": cfg.batch_size,
                             "train_images": len(train_idx), "validation_images": len(val_idx),
                             "classes": ",".join(data.class_names), "masks": data.mask_format})
    record = RunRecord(
        spec=dataclasses.asdict(spec), class_names=data.class_names,
        architecture=getattr(model, "float_architecture", None) or model.to_json(),
        quantization=cfg.quantization, quantization_config=quantization_config(cfg).to_dict(),
        normalization=cfg.normalization, image_dtype=data.images[0].dtype.name, precision=policy,
        input_scale=cfg.input_scale,
        volume=volume_record(data, train_idx, val_idx, *((parse_patch_size(cfg.patch_size), mirror_axes_in_effect(cfg.mirror_axes))
                                                         if spec.dims == 3 else ())) if volumes else None,
        train_files=None if volumes else [data.names[i] for i in train_idx],
        validation_files=None if volumes else [data.names[i] for i in val_idx])
    logger.hparams({k: v for k, v in cfg.to_dict().items() if v is not None})
    keys = score_keys(data.class_names)

    def plot() -> None:  # curves.png from the whole log, after every evaluation and at the end
        write_curves(log_path(cfg), cfg.model_dir, keys)

    # Plain `train` evaluates only when asked to (--evaluate_every); the other modes also at the end.
    wants_eval = cfg.exec_mode != "train" or bool(cfg.evaluate_every)
    evaluate = None
    if wants_eval:
        if volumes:
            origin = training_provenance(cfg, policy, volume_modes.cases_of(data, val_idx))
            # Until the decision is chosen at the end, validation scores are unmirrored (unless --tta).
            evaluate_fold = volume_modes.make_volume_evaluator(cfg, spec, data, val_idx, logger, cfg.normalization,
                                                               origin, tta=bool(cfg.tta))
        else:
            origin = training_provenance(cfg, policy, [data.names[i] for i in val_idx])
            # Until the decision is chosen at the end, validation scores are the argmax's.
            evaluate_fold = make_fold_evaluator(cfg, spec, data, val_idx, logger, cfg.normalization, cfg.input_scale,
                                                origin, decision=Decision(None, bool(cfg.tta)))

        def evaluate(model: Any, step: int) -> dict[str, Any]:
            results = evaluate_fold(model, step)
            plot()
            return results

    def write_records(step: int) -> None:
        """config.yaml (the settings in effect, for later modes and resumes) and model.json, written
        once a resume's checkpoint has loaded: a refused or failed resume leaves the record alone."""
        if not dist.is_chief:
            return
        save_config(cfg, pathlib.Path(cfg.model_dir) / RUN_CONFIG)
        save_run_record(cfg.model_dir, record)
        if cfg.exec_mode == "compress" and step == 0:
            before = evaluate(model, 0)  # the compressed model before fine-tuning
            write_eval_results(pathlib.Path(cfg.model_dir) / "eval_before_finetune.json", before)
    # A resumed budget's total is recorded: the loop trains to it (cfg.max_steps) and measures nothing.
    loop_cfg = cfg if measure_budget else cfg.replace(time_budget=None)
    decides = dist.is_chief and evaluate is not None and len(val_idx) > 0
    started = time.perf_counter()
    state = train(loop_cfg, model, trainer_data(cfg, data, train_idx, geometry, spec.n_classes), logger=logger,
                  dist=dist, evaluate=evaluate, on_start=write_records,
                  on_total_fixed=lambda total, every: record_budget_total(cfg, total, every),
                  after_training_s=(lambda: decision_cost_s(cfg.tta, getattr(evaluate_fold, "latest", None),
                                                            getattr(evaluate_fold, "mirror_passes", FLIP_PASSES)))
                  if decides else None)
    # Wall time of this session's train() (evaluations included); a resumed run logs one per session.
    logger.log("TRAINING", {"step": state.step, "seconds": round(time.perf_counter() - started, 3),
                            "batch_size": cfg.batch_size, "replicas": dist.size, "peak_memory_mb": peak_memory_mb()})
    if dist.is_chief:
        logger.flush()
        plot()
    if decides:
        if volumes:
            decide_volume_mirroring(cfg, record, evaluate_fold, logger)
        else:
            decide_on_validation(cfg, data, val_idx, record, evaluate_fold, logger)
    if measure_budget and dist.is_chief:  # what the budget covered: training, its evaluations, the decision
        logger.log("RECIPE", {"time_budget_s": cfg.time_budget * 60.0,
                              "budget_spent_s": round(time.perf_counter() - started, 2)})
    if cfg.saved_model and dist.is_chief:  # after the final checkpoint: every weight file is on disk
        from unet_medical.cli.export_mode import write_run_savedmodel

        # A 3D run's SavedModel takes the volumes as read (its graph applies the window), not the uint16 items.
        raw = data.volumes.cases[0].image.array.dtype if spec.dims == 3 else data.images[0].dtype
        write_run_savedmodel(cfg, raw, logger)
    if dist.is_chief:
        write_run_report(cfg.model_dir, logger)
    return state.last_eval


def decide_on_validation(cfg: Config, data: SegmentationData, val_idx: np.ndarray, record: RunRecord,
                         evaluate_fold: Any, logger: runlog.Logger) -> RunRecord:
    """The run's decision (cli.decide) on its validation fold; when it is not the argmax the fold is scored
    again under it, so eval_results.json (and a later `--exec_mode evaluate`) score what the run ships."""
    from unet_medical.cli.assemble import restore_model
    from unet_medical.cli.decide import choose_run_decision, record_in_results, reusable

    shipped, spec, info = restore_model(cfg.replace(model_path=None))  # the --checkpoint weights
    # The final evaluation predicted these very weights when it ran at the checkpoint's step.
    plain = reusable(getattr(evaluate_fold, "latest", None), info.step, bool(cfg.tta))
    record, probs_by_tta = choose_run_decision(cfg, shipped, spec, [data.images[i] for i in val_idx],
                                               [data.masks[i] for i in val_idx], data.class_names, record, logger,
                                               plain)
    decision = resolve_decision("auto", None, record.decision)
    if decision != Decision(None, bool(cfg.tta)):  # scored from the probabilities the choice was made on
        evaluate_fold(shipped, info.step, decision=decision, probs=probs_by_tta[decision.tta])
    record_in_results(cfg.model_dir, record.decision)
    return record


def decide_volume_mirroring(cfg: Config, record: RunRecord, evaluate_fold: Any, logger: runlog.Logger) -> RunRecord:
    """A volume run's decision (cli.decide: the argmax, mirrored or not) on its validation cases; when it
    mirrors and training did not, eval_results.json is rewritten from the mirrored label maps the choice
    was made on (no third pass over the cases)."""
    from unet_medical.cli.assemble import restore_model
    from unet_medical.cli.decide import choose_volume_run_decision, record_in_results, reusable

    shipped, _, info = restore_model(cfg.replace(model_path=None))  # the --checkpoint weights
    plain = reusable(getattr(evaluate_fold, "latest", None), info.step, bool(cfg.tta))
    record, results = choose_volume_run_decision(cfg, shipped, evaluate_fold, record, logger, plain)
    tta = bool(record.decision["tta"])
    if tta != bool(cfg.tta):
        evaluate_fold(shipped, info.step, tta=tta, scored=results[tta])
    record_in_results(cfg.model_dir, record.decision)
    return record


def write_run_report(model_dir: str, logger: runlog.Logger) -> pathlib.Path | None:
    """model_dir/report.html at the end of training. The run's files are all on disk already, so a
    report that cannot be written costs one warning line and never the run."""
    from unet_medical.cli.report import write_report

    try:
        path = write_report(model_dir)
    except Exception as exc:  # noqa: BLE001 - any failure here must leave the finished run intact
        logger.log("WARNING", {"message": f"{model_dir}: report.html not written ({type(exc).__name__}: {exc})"})
        return None
    logger.log("REPORT", {"path": str(path)})
    return path



def steps_of_budget(cfg: Config, logger: runlog.Logger) -> tuple[Config, bool]:
    """(cfg with the run's --max_steps, whether the loop must measure the step time to fix it).

    An explicit --max_steps that overruled a --time_budget is said so; a resumed budgeted run takes the
    total recorded when its step time was measured (dataset_fingerprint.json) and never measures again."""
    if cfg.time_budget_ignored is not None:
        logger.log("RECIPE", {"flag": "max_steps", "value": cfg.max_steps,
                              "reason": f"--max_steps given: --time_budget {cfg.time_budget_ignored:g} ignored"})
        return cfg, False
    if cfg.time_budget is None:
        return cfg, False
    path = pathlib.Path(cfg.model_dir) / FINGERPRINT_FILE
    recorded = json.loads(path.read_text()) if path.is_file() else {}
    if cfg.resume_training and "max_steps" in recorded:
        total = int(recorded["max_steps"])
        logger.log("RECIPE", {"flag": "max_steps", "value": total,
                              "reason": f"recorded when the --time_budget {cfg.time_budget:g} run measured its "
                                        f"step time ({path.name})"})
        # Runs recorded before evaluate_every was: the BUDGET_EVALUATIONS evaluations they planned.
        every = recorded["evaluate_every"] if "evaluate_every" in recorded else budget_evaluate_every(
            total, cfg.evaluate_every)
        return cfg.replace(max_steps=total, evaluate_every=every), False
    return cfg, True


def record_budget_total(cfg: Config, total: int, evaluate_every: int | None) -> None:
    """The total a --time_budget run fixed, in dataset_fingerprint.json (resumes, --skip_finished) and
    config.yaml (the settings in effect)."""
    path = pathlib.Path(cfg.model_dir) / FINGERPRINT_FILE
    recorded = json.loads(path.read_text()) if path.is_file() else {}
    write_json(path, {**recorded, "max_steps": total, "evaluate_every": evaluate_every})
    save_config(cfg.replace(max_steps=total, evaluate_every=evaluate_every), pathlib.Path(cfg.model_dir) / RUN_CONFIG)


def run_evaluation(cfg: Config, logger: runlog.Logger) -> dict[str, Any]:
    if volume_modes.is_volume_data(cfg):
        return volume_modes.run_volume_evaluation(cfg, logger)
    model, spec, info = restore_model(cfg, logger)
    data = load_training_set(cfg)
    if tuple(data.class_names) != tuple(info.class_names):
        raise UNetError(f"{cfg.data_dir}: classes {data.class_names} differ from the model's {info.class_names}")
    source = run_source(cfg.exec_mode, cfg.model_dir, cfg.init_from, cfg.model_path)
    # The run's own fold: exactly the images it recorded as validation, whatever was added since.
    recorded = None if source is None else recorded_validation(source.path, cfg.to_dict(), cfg.fold, cfg.num_folds)
    if recorded is not None:
        val_idx = select_by_name(data.names, recorded, cfg.data_dir, source.path)
    else:
        _, val_idx = fold_split(len(data.images), cfg.num_folds, cfg.fold)
    if source is not None and not cfg.allow_training_slices:
        check_evaluation_slices(source.path, [data.names[i] for i in val_idx], data.names, cfg.to_dict(),
                                cfg.fold, cfg.num_folds)
    origin = provenance(cfg, info, cfg.data_dir, [data.names[i] for i in val_idx])
    decision = resolve_decision(cfg.threshold, cfg.tta, info.decision)
    chosen = info.decision if decision == resolve_decision("auto", None, info.decision) else None
    evaluate = make_fold_evaluator(cfg, spec, data, val_idx, logger, info.normalization,
                                   recorded_input_scale(cfg, info.input_scale), origin, evaluation_results_name(cfg),
                                   decision, chosen)
    return evaluate(model, info.step)



def run_prediction(cfg: Config, logger: runlog.Logger) -> list[pathlib.Path]:
    if cfg.use_trt:
        from unet_medical.cli.export_mode import tftrt_model

        model = tftrt_model(cfg, logger)
        spec, info = model.spec, model.info
    else:
        model, spec, info = restore_model(cfg, logger)
    volume = volume_modes.volume_record_of(cfg, info)
    if volume is not None:
        return volume_modes.run_volume_prediction(cfg, logger, model, spec, info, volume)
    data = load_test_data(cfg.data_dir, input_path=cfg.input)
    check_input_dtype(data.source, data.images[0].dtype, info)
    images = [normalize_image(im, info.normalization) for im in data.images]
    if images[0].shape[-1] == 1 and spec.in_channels == 3:  # grayscale input to a colour model: as RGB
        images = [np.repeat(im, 3, axis=-1) for im in images]
    if images[0].shape[-1] != spec.in_channels:
        raise UNetError(f"{data.source}: images have {images[0].shape[-1]} channels, the model expects "
                        f"{spec.in_channels}")
    check_unique_stems(data.names, data.source)
    source = pathlib.Path(data.source)
    stack_name = source.name.split(".")[0] if source.suffix.lower() in (".tif", ".tiff") else None
    predictor, tile_size = as_predictor(model, cfg.tile_size)
    decision = resolve_decision(cfg.threshold, cfg.tta, info.decision)
    logger.log("PARAMETER", {"decision": decision.describe()})
    probs = iter_predictions(predictor, spec, images, tile_size=tile_size,
                             max_tile_size=cfg.max_tile_size, context=cfg.tile_context,
                             batch_size=batch_or_default(cfg), tta=decision.tta, logger=logger, label="predict",
                             input_scale=recorded_input_scale(cfg, info.input_scale))
    # Each map is written as it is made: a predict that stops half-way keeps the images it finished.
    out = volume_modes.prediction_dir(cfg)
    write_json(out / PROVENANCE, provenance(cfg, info, data.source, data.names))  # first: a partial predict has it too
    with PredictionWriter(out, data.names, info.class_names, stack_name, threshold=decision.threshold) as writer:
        for name, p, image in zip(data.names, probs, images):
            writer.add(name, p, image)
    written = writer.written
    logger.log("PREDICT", {"images": len(images), "output": str(written[0]), "masks": str(written[1]),
                           "step": info.step, "peak_memory_mb": peak_memory_mb()})
    return written



def check_input_dtype(source: str, dtype: np.dtype, info: RunRecord) -> None:
    """Refuse images of another dtype than the training images' under global normalization: it divides by
    the dtype's maximum, so 12-bit data in uint16 given to a uint8-trained model comes out ~16x too dark
    and the masks are silent garbage. per_image normalization rescales each image and is safe."""
    if info.normalization == "per_image" or info.image_dtype is None or np.dtype(dtype).name == info.image_dtype:
        return
    raise UNetError(f"{source}: images are {np.dtype(dtype).name}, the model was trained on {info.image_dtype} "
                    f"images with global normalization (model.json image_dtype); convert them to "
                    f"{info.image_dtype}, or train with --normalization per_image")


def run(cfg: Config) -> None:
    """Execute cfg.exec_mode."""
    # Before anything is written: a mode that needs a run stops here if it is missing (parse_config
    # checked already; a Config built in code gets the same guarantee).
    require_source(cfg.exec_mode, cfg.model_dir, cfg.init_from, cfg.model_path, cfg.benchmark)
    refuse_overwrite(cfg.exec_mode, cfg.model_dir, cfg.resume_training)
    model_dir = pathlib.Path(cfg.model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    dist = distributed.create(cfg.distribution)
    # One writer per folder (base.runlock); workers of a distributed run share the chief's.
    with run_lock(model_dir) if dist.is_chief else contextlib.nullcontext():
        run_locked(cfg, dist)


def run_locked(cfg: Config, dist: Any) -> None:
    """Execute cfg.exec_mode in its (locked) model_dir."""
    model_dir = pathlib.Path(cfg.model_dir)
    logger = make_logger(cfg, dist.rank)
    mode = "benchmark" if cfg.benchmark else cfg.exec_mode
    if dist.is_chief and mode not in TRAINING_MODES:  # a training run writes config.yaml in run_training
        save_config(cfg, model_dir / f"config_{mode}.yaml")
    logger.log("PARAMETER", {k: v for k, v in cfg.to_dict().items() if v is not None})
    source = run_source(cfg.exec_mode, cfg.model_dir, cfg.init_from, cfg.model_path, cfg.benchmark,
                        cfg.resume_training)
    if source is not None:  # where the values not given as flags came from (runtime.lineage)
        logger.log("PARAMETER", {"lineage": source.describe()})
    try:
        if cfg.exec_mode == "benchmark" or cfg.benchmark:
            from unet_medical.cli.benchmark import run_benchmark

            run_benchmark(cfg, logger, dist)
            return
        if cfg.exec_mode in TRAINING_MODES:
            run_training(cfg, logger, dist)
        if cfg.exec_mode == "compress" and dist.is_chief:  # the scores of original, decomposed, fine-tuned
            from unet_medical.cli.tucker_summary import add_scores, headline

            logger.log("TUCKER", headline(add_scores(cfg.model_dir, cfg.init_from)))
        # Evaluate, like predict and export, runs on the chief alone: every rank holds the same weights
        # (broadcast), so other ranks would only race it writing the same eval_results file.
        if cfg.exec_mode == "evaluate" and dist.is_chief:
            run_evaluation(cfg, logger)
        if cfg.exec_mode == "visualize" and dist.is_chief:
            from unet_medical.cli.visualize import write_weight_histograms

            model, _, _ = restore_model(cfg, logger)
            written = write_weight_histograms(model, pathlib.Path(cfg.model_dir) / "visualize")
            logger.log("VISUALIZE", {"histograms": len(written) - 1, "grid": str(written[0])})
        if cfg.exec_mode in ("predict", "train_and_predict") and dist.is_chief:
            run_prediction(cfg, logger)
        if cfg.exec_mode == "export" and dist.is_chief:
            from unet_medical.cli.export_mode import run_export

            run_export(cfg, logger)
            write_run_report(cfg.model_dir, logger)  # the report's export table now lists the new file
        dist.barrier()  # workers leave together: none exits while the chief still evaluates or saves
    finally:
        logger.flush()

