"""Exec modes as compositions of the same few pieces: data -> model -> train loop / inference path -> score.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import numpy as np

from unet_medical.base import runlog
from unet_medical.model.complexity import total_macs, total_params
from unet_medical.model.unet import UNetSpec
from unet_medical.training import distributed
from unet_medical.base.artifacts import (EVAL_RESULTS, RUN_CONFIG, RunRecord, load_run_record, save_run_record, write_json)
from unet_medical.cli.config import Config, save_config
from unet_medical.data.layouts import SegmentationData, load_test_data
from unet_medical.data.folds import fold_split
from unet_medical.data.normalize import normalize_image
from unet_medical.base.errors import UNetError
from unet_medical.inference.tiling import predict_images
from unet_medical.evaluation.metrics import segmentation_metrics
from unet_medical.inference.outputs import background_class, comparison_panel, write_predictions
from unet_medical.base.precision import configure_precision, configure_seeds
from unet_medical.inference.runtimes import as_predictor
from unet_medical.cli.recipe import (FINGERPRINT_FILE, PROBE_STEPS, PROBE_WARMUP, class_weights_for, resolve_recipe,
                            sampling_for, steps_for_budget)
from unet_medical.cli.assemble import (load_training_set, log_path, make_augment, make_logger, make_model, quantization_config,
                              restore_model)
from unet_medical.cli.curves import write_curves
from unet_medical.cli import volume_modes
from unet_medical.data.volume_training import VolumeSlices, split_items, volume_record
from unet_medical.cli.lineage import TRAINING_MODES, check_evaluation_slices, require_source, run_source

BUDGET_EVALUATIONS = 4  # validation runs of a --time_budget run without --evaluate_every
OVERLAYS = 3  # validation images whose input | prediction | truth panel goes to TensorBoard at each evaluation



def evaluate_images(cfg: Config, model: Any, spec: UNetSpec, images: list[np.ndarray],
                    masks: list[np.ndarray], class_names: tuple[str, ...], logger: runlog.Logger | None = None
                    ) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Metrics of the tiled, native-resolution prediction of `images` against `masks`, and the
    class probabilities (H, W, K) of each image. With a `logger`, the loop shows its progress."""
    predictor, tile_size = as_predictor(model, cfg.tile_size)
    probs = predict_images(predictor, spec, images, tile_size=tile_size,
                           max_tile_size=cfg.max_tile_size, context=cfg.tile_context,
                           batch_size=cfg.batch_size, tta=cfg.tta, logger=logger, label="evaluate")
    return segmentation_metrics(probs, masks, class_names), probs



def make_fold_evaluator(cfg: Config, spec: UNetSpec, data: SegmentationData, val_idx: np.ndarray,
                        logger: runlog.Logger, normalization: str):
    images = [normalize_image(data.images[i], normalization) for i in val_idx]
    masks = [data.masks[i] for i in val_idx]

    def evaluate(model: Any, step: int) -> dict[str, Any]:
        metrics, probs = evaluate_images(cfg, model, spec, images, masks, data.class_names, logger)
        results = {**metrics, "fold": cfg.fold, "num_folds": cfg.num_folds, "step": int(step),
                   "num_images": len(images), "tta": cfg.tta}
        write_json(pathlib.Path(cfg.model_dir) / EVAL_RESULTS, results)
        # ("eval", step): the JSON log keeps validation records apart from training steps, and the
        # TensorBoard backend plots them as eval/<metric> at that step.
        logger.log(("eval", int(step)), {k: v for k, v in results.items() if isinstance(v, (int, float))})
        skip = background_class(data.class_names)
        logger.images(int(step), {
            f"eval/input_prediction_truth_{i}": comparison_panel(images[i], probs[i].argmax(-1), masks[i],
                                                                 skip_class=skip)[None]
            for i in range(min(OVERLAYS, len(images)))})
        return results

    return evaluate



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
    if cfg.num_epochs is not None:  # an epoch = one pass over the training images, one crop each
        cfg = cfg.replace(max_steps=-(-cfg.num_epochs * len(train_idx) // (cfg.batch_size * dist.size)))
    configure_seeds(cfg.seed, cfg.deterministic)
    policy, reason = configure_precision(cfg.precision, cfg.amp, cfg.quantization)
    padding, depth = cfg.padding, cfg.depth
    if cfg.init_from:  # the architecture is the trained run's: its padding and depth bound the crop
        record = load_run_record(cfg.init_from)
        padding, depth = record.spec["padding"], record.spec["depth"]
    if volumes:
        cfg = volume_modes.prepare_training(cfg, data, logger)
    cfg = resolve_recipe(cfg, data, train_idx, padding, depth, logger, dist.is_chief)
    if dist.is_chief:  # config.yaml holds the settings in effect, so later modes and resumes see them
        save_config(cfg, pathlib.Path(cfg.model_dir) / RUN_CONFIG)
    with dist.scope():
        model, spec, geometry = make_model(cfg, data, logger)
    logger.log("PARAMETER", {"precision": policy, "precision_reason": reason, "parameters": total_params(model),
                             "input_size": geometry.input_size,
                             "output_size": geometry.output_size,
                             "gflop_per_image": 2 * total_macs(model, (geometry.input_size,) * 2) / 1e9,
                             "train_images": len(train_idx), "validation_images": len(val_idx),
                             "classes": ",".join(data.class_names), "masks": data.mask_format})
    if dist.is_chief:
        save_run_record(cfg.model_dir, RunRecord(
            spec=dataclasses.asdict(spec), class_names=data.class_names,
            architecture=getattr(model, "float_architecture", None) or model.to_json(),
            quantization=cfg.quantization, quantization_config=quantization_config(cfg).to_dict(),
            normalization=cfg.normalization, image_dtype=data.images[0].dtype.name, precision=policy,
            volume=volume_record(data, train_idx, val_idx) if volumes else None))
    logger.hparams({k: v for k, v in cfg.to_dict().items() if v is not None})
    augment = make_augment(cfg)
    keys = score_keys(data.class_names)

    def plot() -> None:  # curves.png from the whole log, after every evaluation and at the end
        write_curves(log_path(cfg), cfg.model_dir, keys)

    # Plain `train` evaluates only when asked to (--evaluate_every); the other modes also at the end.
    wants_eval = cfg.exec_mode != "train" or bool(cfg.evaluate_every)
    evaluate = None
    if wants_eval:
        make_evaluator = volume_modes.make_volume_evaluator if volumes else make_fold_evaluator
        evaluate_fold = make_evaluator(cfg, spec, data, val_idx, logger, cfg.normalization)

        def evaluate(model: Any, step: int) -> dict[str, Any]:
            results = evaluate_fold(model, step)
            plot()
            return results
    if cfg.exec_mode == "compress" and dist.is_chief:
        before = evaluate(model, 0)  # the compressed model before fine-tuning
        write_json(pathlib.Path(cfg.model_dir) / "eval_before_finetune.json", before)
    train_images = [normalize_image(data.images[i], cfg.normalization) for i in train_idx]
    train_masks, train_names = [data.masks[i] for i in train_idx], [data.names[i] for i in train_idx]
    sampling, class_weights = sampling_for(cfg, data.class_names), class_weights_for(cfg, spec.n_classes)
    if cfg.time_budget is not None:
        cfg = budget_max_steps(cfg, model, spec, geometry, train_images, train_masks, train_names, augment,
                               sampling, class_weights, logger, dist)
    state = train(cfg, model, train_images=train_images, train_masks=train_masks, train_names=train_names,
                  geometry=geometry, n_classes=spec.n_classes, logger=logger, dist=dist, evaluate=evaluate,
                  augment=augment, sampling=sampling, class_weights=class_weights)
    if evaluate is not None and dist.is_chief and state.last_eval is None:
        # Resumed at max_steps ("nothing to train"): a run interrupted during its final evaluation
        # still gets it, at the step of the checkpoint the model now holds.
        state.last_eval = evaluate(model, state.step)
    if dist.is_chief:
        logger.flush()
        plot()
    if cfg.saved_model and dist.is_chief:  # after the final checkpoint: every weight file is on disk
        from unet_medical.cli.export_mode import write_run_savedmodel

        write_run_savedmodel(cfg, data.images[0].dtype, logger)
    return state.last_eval



def budget_max_steps(cfg: Config, model: Any, spec: UNetSpec, geometry: Any, images: list[np.ndarray],
                     masks: list[np.ndarray], names: list[str], augment: Any, sampling: Any,
                     class_weights: list[float] | None, logger: runlog.Logger, dist: Any) -> Config:
    """cfg with --max_steps filling --time_budget (recorded on first start; a resume reuses it)."""
    from unet_medical.data.pipeline import make_train_dataset
    from unet_medical.training.loop import make_optimizer, make_train_step

    path = pathlib.Path(cfg.model_dir) / FINGERPRINT_FILE
    recorded = json.loads(path.read_text()) if path.is_file() else {}
    if cfg.resume_training and "max_steps" in recorded:
        return with_budget_evaluations(cfg.replace(max_steps=int(recorded["max_steps"])))
    if dist.size > 1:
        raise UNetError("--time_budget: one process measures the step time; with several workers give --max_steps")
    initial = model.get_weights()

    def step_fn_factory():
        with dist.scope():
            optimizer = make_optimizer(cfg, dist.size)
        step = make_train_step(model, optimizer, spec.n_classes, cfg.dice_weight, dist, xla=cfg.xla,
                               class_weights=class_weights)
        return step, lambda: model.set_weights(initial)

    def make_batches():
        return make_train_dataset(images, masks, names, geometry, batch_size=cfg.batch_size, seed=cfg.seed,
                                  start_step=0, max_steps=PROBE_WARMUP + PROBE_STEPS, augment=augment,
                                  sampling=sampling)

    cfg = with_budget_evaluations(cfg.replace(max_steps=steps_for_budget(cfg, make_batches, step_fn_factory,
                                                                         logger)))
    if dist.is_chief:
        write_json(path, {**recorded, "max_steps": cfg.max_steps})
        save_config(cfg, pathlib.Path(cfg.model_dir) / RUN_CONFIG)
    return cfg


def with_budget_evaluations(cfg: Config) -> Config:
    """Without --evaluate_every, a budgeted run still evaluates BUDGET_EVALUATIONS times (curve, best.npz)."""
    if cfg.evaluate_every is not None:
        return cfg
    return cfg.replace(evaluate_every=max(1, cfg.max_steps // BUDGET_EVALUATIONS))


def run_evaluation(cfg: Config, logger: runlog.Logger) -> dict[str, Any]:
    if volume_modes.is_volume_data(cfg):
        return volume_modes.run_volume_evaluation(cfg, logger)
    model, spec, info = restore_model(cfg, logger)
    data = load_training_set(cfg)
    if tuple(data.class_names) != tuple(info.class_names):
        raise UNetError(f"{cfg.data_dir}: classes {data.class_names} differ from the model's {info.class_names}")
    _, val_idx = fold_split(len(data.images), cfg.num_folds, cfg.fold)
    source = run_source(cfg.exec_mode, cfg.model_dir, cfg.init_from, cfg.model_path)
    if source is not None and not cfg.allow_training_slices:
        check_evaluation_slices(source.path, val_idx, len(data.images), cfg.to_dict(), cfg.fold, cfg.num_folds)
    evaluate = make_fold_evaluator(cfg, spec, data, val_idx, logger, info.normalization)
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
    images = [normalize_image(im, info.normalization) for im in data.images]
    if images[0].shape[-1] == 1 and spec.in_channels == 3:  # grayscale input to a colour model: as RGB
        images = [np.repeat(im, 3, axis=-1) for im in images]
    if images[0].shape[-1] != spec.in_channels:
        raise UNetError(f"{data.source}: images have {images[0].shape[-1]} channels, the model expects "
                        f"{spec.in_channels}")
    predictor, tile_size = as_predictor(model, cfg.tile_size)
    probs = predict_images(predictor, spec, images, tile_size=tile_size,
                           max_tile_size=cfg.max_tile_size, context=cfg.tile_context,
                           batch_size=cfg.batch_size, tta=cfg.tta, logger=logger, label="predict")
    source = pathlib.Path(data.source)
    stack_name = source.name.split(".")[0] if source.suffix.lower() in (".tif", ".tiff") else None
    written = write_predictions(volume_modes.prediction_dir(cfg), probs, images, data.names,
                                info.class_names, stack_name)
    logger.log("PREDICT", {"images": len(images), "output": str(written[0]), "masks": str(written[1]),
                           "step": info.step})
    return written



def run(cfg: Config) -> None:
    """Execute cfg.exec_mode."""
    # Before anything is written: a mode that needs a run stops here if it is missing (parse_config
    # checked already; a Config built in code gets the same guarantee).
    require_source(cfg.exec_mode, cfg.model_dir, cfg.init_from, cfg.model_path, cfg.benchmark)
    model_dir = pathlib.Path(cfg.model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    dist = distributed.create(cfg.distribution)
    logger = make_logger(cfg, dist.rank)
    if dist.is_chief:  # the training run's configuration stays in config.yaml; other modes beside it
        mode = "benchmark" if cfg.benchmark else cfg.exec_mode
        save_config(cfg, model_dir / (RUN_CONFIG if mode in TRAINING_MODES else f"config_{mode}.yaml"))
    logger.log("PARAMETER", {k: v for k, v in cfg.to_dict().items() if v is not None})
    source = run_source(cfg.exec_mode, cfg.model_dir, cfg.init_from, cfg.model_path, cfg.benchmark)
    if source is not None:  # where the values not given as flags came from (runtime.lineage)
        logger.log("PARAMETER", {"lineage": source.describe()})
    try:
        if cfg.exec_mode == "benchmark" or cfg.benchmark:
            from unet_medical.cli.benchmark import run_benchmark

            run_benchmark(cfg, logger, dist)
            return
        if cfg.exec_mode in TRAINING_MODES:
            run_training(cfg, logger, dist)
        if cfg.exec_mode == "evaluate":
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
        dist.barrier()  # workers leave together: none exits while the chief still evaluates or saves
    finally:
        logger.flush()

