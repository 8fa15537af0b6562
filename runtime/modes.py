"""Exec modes as compositions of the same few pieces: data -> model -> train loop / inference path -> score.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import numpy as np

import dllogger
from model.complexity import total_macs, total_params
from model.unet import UNetSpec
from utils.training import distributed
from utils.artifacts import (EVAL_RESULTS, PREDICTIONS, RUN_CONFIG, ModelInfo, save_model_info, write_json)
from runtime.config import Config, save_config
from utils.data.layouts import SegmentationData, load_test_data
from utils.data.folds import fold_split
from utils.data.normalize import normalize_image
from utils.errors import UNetError
from utils.inference.tiling import predict_images
from utils.score.metrics import segmentation_metrics
from utils.inference.outputs import write_predictions
from utils.precision import configure_precision, configure_seeds
from utils.inference.runtimes import as_predictor
from runtime.assemble import (load_training_set, make_augment, make_logger, make_model, quantization_config,
                              restore_model)


TRAINING_MODES = ("train", "train_and_evaluate", "train_and_predict", "compress")



def evaluate_images(cfg: Config, model: Any, spec: UNetSpec, images: list[np.ndarray],
                    masks: list[np.ndarray], class_names: tuple[str, ...]) -> dict[str, Any]:
    """Metrics of the tiled, native-resolution prediction of `images` against `masks`."""
    predictor, tile_size = as_predictor(model, cfg.tile_size)
    probs = predict_images(predictor, spec, images, tile_size=tile_size,
                           max_tile_size=cfg.max_tile_size, context=cfg.tile_context,
                           batch_size=cfg.batch_size, tta=cfg.tta)
    return segmentation_metrics(probs, masks, class_names)



def make_fold_evaluator(cfg: Config, spec: UNetSpec, data: SegmentationData, val_idx: np.ndarray,
                        logger: dllogger.Logger):
    images = [normalize_image(data.images[i]) for i in val_idx]
    masks = [data.masks[i] for i in val_idx]

    def evaluate(model: Any, step: int) -> dict[str, Any]:
        metrics = evaluate_images(cfg, model, spec, images, masks, data.class_names)
        results = {**metrics, "fold": cfg.fold, "num_folds": cfg.num_folds, "step": int(step),
                   "num_images": len(images), "tta": cfg.tta}
        write_json(pathlib.Path(cfg.model_dir) / EVAL_RESULTS, results)
        logger.log(("eval", int(step)), {k: v for k, v in results.items() if isinstance(v, (int, float))})
        return results

    return evaluate



def run_training(cfg: Config, logger: dllogger.Logger, dist: Any) -> dict[str, Any] | None:
    from utils.training.loop import train

    data = load_training_set(cfg)
    train_idx, val_idx = fold_split(len(data.images), cfg.num_folds, cfg.fold)
    if cfg.num_epochs is not None:  # an epoch = one pass over the training images, one crop each
        cfg = cfg.replace(max_steps=-(-cfg.num_epochs * len(train_idx) // (cfg.batch_size * dist.size)))
    configure_seeds(cfg.seed, cfg.deterministic)
    policy, reason = configure_precision(cfg.precision, cfg.amp, cfg.quantization)
    with dist.scope():
        model, spec, geometry = make_model(cfg, data, logger)
    logger.log("PARAMETER", {"precision": policy, "precision_reason": reason, "parameters": total_params(model),
                             "input_size": geometry.input_size,
                             "output_size": geometry.output_size,
                             "gflop_per_image": 2 * total_macs(model, (geometry.input_size,) * 2) / 1e9,
                             "train_images": len(train_idx), "validation_images": len(val_idx),
                             "classes": ",".join(data.class_names)})
    if dist.is_chief:
        save_model_info(cfg.model_dir, ModelInfo(spec=dataclasses.asdict(spec), class_names=data.class_names,
                                                 extra={"architecture": getattr(model, "float_architecture", None)
                                                        or model.to_json(),
                                                        "quantization": cfg.quantization,
                                                        "precision": policy,
                                                        "quantization_config": quantization_config(cfg).to_dict()}))
    augment = make_augment(cfg)
    # Plain `train` evaluates only when asked to (--evaluate_every); the other modes also at the end.
    wants_eval = cfg.exec_mode != "train" or cfg.evaluate_every > 0
    evaluate = make_fold_evaluator(cfg, spec, data, val_idx, logger) if wants_eval else None
    if cfg.exec_mode == "compress" and dist.is_chief:
        before = evaluate(model, 0)  # the compressed model before fine-tuning
        write_json(pathlib.Path(cfg.model_dir) / "eval_before_finetune.json", before)
    state = train(cfg, model, train_images=[normalize_image(data.images[i]) for i in train_idx],
                  train_masks=[data.masks[i] for i in train_idx],
                  train_names=[data.names[i] for i in train_idx], geometry=geometry,
                  n_classes=spec.n_classes, logger=logger, dist=dist, evaluate=evaluate, augment=augment)
    return state.last_eval



def run_evaluation(cfg: Config, logger: dllogger.Logger) -> dict[str, Any]:
    model, spec, info = restore_model(cfg, logger)
    data = load_training_set(cfg)
    if tuple(data.class_names) != tuple(info.class_names):
        raise UNetError(f"{cfg.data_dir}: classes {data.class_names} differ from the model's {info.class_names}")
    _, val_idx = fold_split(len(data.images), cfg.num_folds, cfg.fold)
    evaluate = make_fold_evaluator(cfg, spec, data, val_idx, logger)
    return evaluate(model, info.extra["step"])



def run_prediction(cfg: Config, logger: dllogger.Logger) -> list[pathlib.Path]:
    model, spec, info = restore_model(cfg, logger)
    data = load_test_data(cfg.data_dir, input_path=cfg.input)
    images = [normalize_image(im) for im in data.images]
    if images[0].shape[-1] != spec.in_channels:
        raise UNetError(f"{data.source}: images have {images[0].shape[-1]} channels, the model expects "
                        f"{spec.in_channels}")
    predictor, tile_size = as_predictor(model, cfg.tile_size)
    probs = predict_images(predictor, spec, images, tile_size=tile_size,
                           max_tile_size=cfg.max_tile_size, context=cfg.tile_context,
                           batch_size=cfg.batch_size, tta=cfg.tta)
    source = pathlib.Path(data.source)
    stack_name = source.name.split(".")[0] if source.suffix.lower() in (".tif", ".tiff") else None
    written = write_predictions(pathlib.Path(cfg.model_dir) / PREDICTIONS, probs, images, data.names,
                                info.class_names, stack_name)
    logger.log("PREDICT", {"images": len(images), "output": str(written[0]), "step": info.extra["step"]})
    return written



def run(cfg: Config) -> None:
    """Execute cfg.exec_mode."""
    model_dir = pathlib.Path(cfg.model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    dist = distributed.create(cfg.distribution)
    logger = make_logger(cfg, dist.rank)
    if dist.is_chief:  # the training run's configuration stays in config.yaml; other modes beside it
        mode = "benchmark" if cfg.benchmark else cfg.exec_mode
        save_config(cfg, model_dir / (RUN_CONFIG if mode in TRAINING_MODES else f"config_{mode}.yaml"))
    logger.log("PARAMETER", {k: v for k, v in cfg.to_dict().items() if v is not None})
    try:
        if cfg.exec_mode == "benchmark" or cfg.benchmark:
            from runtime.benchmark import run_benchmark

            run_benchmark(cfg, logger, dist)
            return
        if cfg.exec_mode in TRAINING_MODES:
            run_training(cfg, logger, dist)
        if cfg.exec_mode == "evaluate":
            run_evaluation(cfg, logger)
        if cfg.exec_mode == "visualize" and dist.is_chief:
            from runtime.visualize import write_weight_histograms

            model, _, _ = restore_model(cfg, logger)
            written = write_weight_histograms(model, pathlib.Path(cfg.model_dir) / "visualize")
            logger.log("VISUALIZE", {"histograms": len(written) - 1, "grid": str(written[0])})
        if cfg.exec_mode in ("predict", "train_and_predict") and dist.is_chief:
            run_prediction(cfg, logger)
        if cfg.exec_mode == "export" and dist.is_chief:
            from runtime.export_mode import run_export

            run_export(cfg, logger)
        dist.barrier()  # workers leave together: none exits while the chief still evaluates or saves
    finally:
        logger.flush()

