"""Exec modes as compositions of the same few pieces: data -> model -> train loop / inference path."""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import numpy as np

import dllogger
from model.complexity import total_macs, total_params
from model.unet import UNetSpec, build_unet, output_size
from utils import checkpoint as ckpt
from utils import distributed
from utils.artifacts import (EVAL_RESULTS, PREDICTIONS, RUN_CONFIG, ModelInfo, load_model_info,
                             save_model_info, write_json)
from utils.config import Config, augment_config, save_config
from utils.data_loader import SegmentationData, fold_split, load_test_data, load_training_data, normalize_image
from utils.errors import UNetError
from utils.inference import predict_images
from utils.metrics import segmentation_metrics
from utils.outputs import write_predictions
from utils.pipeline import CropGeometry
from utils.precision import configure_precision, configure_seeds
from utils.runtimes import as_predictor, load_exported


TRAINING_MODES = ("train", "train_and_evaluate", "train_and_predict", "compress")


def make_logger(cfg: Config, rank: int) -> dllogger.Logger:
    """stdout + JSON lines (log_dir/log.json) + TensorBoard (model_dir/tensorboard); rank 0 only."""
    log_dir = pathlib.Path(cfg.log_dir or cfg.model_dir)
    backends = [dllogger.StdOutBackend(), dllogger.JSONStreamBackend(str(log_dir / "log.json")),
                dllogger.TensorBoardBackend(str(pathlib.Path(cfg.model_dir) / "tensorboard"))]
    return dllogger.Logger(backends, rank=rank)


def load_training_set(cfg: Config) -> SegmentationData:
    return load_training_data(cfg.data_dir, image_stack=cfg.image_stack, mask_stack=cfg.mask_stack,
                              images_dir=cfg.images_dir, masks_dir=cfg.masks_dir, num_classes=cfg.num_classes)


def make_augment(cfg: Config) -> Any:
    """The training augmentation (utils.augment, set by --augment_params), or None with --no-augment."""
    if not cfg.augment:
        return None
    from utils.augment import build_augment_fn

    return build_augment_fn(augment_config(cfg))


def spec_for(cfg: Config, data: SegmentationData) -> UNetSpec:
    return UNetSpec(n_classes=len(data.class_names), in_channels=int(data.images[0].shape[-1]),
                    base_filters=cfg.base_filters, depth=cfg.depth, padding=cfg.padding,
                    batch_norm=cfg.batch_norm, dropout=cfg.dropout)


def check_crop_size(spec: UNetSpec, crop_size: int) -> CropGeometry:
    try:
        return CropGeometry(crop_size, output_size(spec, crop_size))
    except UNetError as exc:
        raise UNetError(f"--crop_size={crop_size}: {exc}") from None


def model_from_info(info: ModelInfo) -> Any:
    """The network described by model.json: its stored architecture (any variant: Tucker-compressed,
    quantized, ...) or, for files without one, the plain U-Net of its spec."""
    import tf_keras as keras

    architecture = info.extra.get("architecture")
    if architecture is None:
        return build_unet(UNetSpec(**info.spec))
    if info.extra.get("quantization", "NONE") == "QAT_INT8":
        # TF-MOT's wrappers do not rebuild the same variables from JSON: rebuild the float model and
        # wrap it again, exactly as training did.
        from model.qat import quantize_model_qat

        return quantize_model_qat(keras.models.model_from_json(architecture))
    import model.quantization  # noqa: F401  (registers the quantized layers for deserialization)

    return keras.models.model_from_json(architecture)


def with_global_policy(architecture: str) -> str:
    """The architecture JSON with every layer's stored dtype policy dropped (the float32 head kept),
    so the layers take the current global policy: how --amp applies to a model trained in float32.
    Weights are float32 variables under either policy, so the checkpoint loads unchanged."""
    import json

    graph = json.loads(architecture)
    for layer in graph["config"]["layers"]:
        if layer["config"].get("name") != "head":
            layer["config"].pop("dtype", None)
    return json.dumps(graph)


def load_trained(run_dir: str | pathlib.Path, which: str, amp: bool = False
                 ) -> tuple[Any, UNetSpec, ModelInfo, int]:
    """Rebuild a training run's network from run_dir/model.json and load its best or last weights
    (with `amp`, in the mixed precision policy that utils.precision.configure_precision set)."""
    info = load_model_info(run_dir)
    if amp and "architecture" in info.extra:
        info = dataclasses.replace(info, extra={**info.extra,
                                                "architecture": with_global_policy(info.extra["architecture"])})
    model = model_from_info(info)
    path = ckpt.checkpoint_dir(run_dir) / (ckpt.BEST if which == "best" else ckpt.LAST)
    loaded = ckpt.load_checkpoint(path, model)
    return model, UNetSpec(**info.spec), info, loaded.step


def restore_model(cfg: Config) -> tuple[Any, UNetSpec, ModelInfo]:
    """The model to evaluate/predict/export with: an exported artefact (--model_path; an ExportedModel
    that utils.runtimes.as_predictor runs) or model_dir's checkpoint."""
    if cfg.model_path:
        exported = load_exported(cfg.model_path)
        return exported, exported.spec, exported.info
    policy = configure_precision(cfg.amp)
    model, spec, info, step = load_trained(cfg.model_dir, cfg.checkpoint, amp=policy != "float32")
    return model, spec, dataclasses.replace(info, extra={**info.extra, "step": step})


def compress_model(cfg: Config, model: Any, geometry: CropGeometry, logger: dllogger.Logger) -> Any:
    """Tucker-2 decomposition of every eligible conv; the per-layer report goes to the log and
    model_dir/tucker_report.csv."""
    from model.tucker import report_table, tucker_compress, write_report_csv

    compressed, report = tucker_compress(model, rank_factor=cfg.rank_factor, rank=cfg.rank,
                                         rank_min=cfg.rank_min, input_hw=(geometry.input_size,) * 2)
    write_report_csv(report, pathlib.Path(cfg.model_dir) / "tucker_report.csv")
    print(report_table(report), flush=True)
    logger.log("PARAMETER", {
        "tucker_layers_decomposed": sum(not r.kept for r in report),
        "tucker_params_before": sum(r.params_before for r in report),
        "tucker_params_after": sum(r.params_after for r in report),
        "tucker_macs_before": sum(r.macs_before for r in report),
        "tucker_macs_after": sum(r.macs_after for r in report)})
    return compressed


def make_model(cfg: Config, data: SegmentationData, logger: dllogger.Logger) -> tuple[Any, UNetSpec, CropGeometry]:
    """The network to train: a new U-Net, or a trained one (--init_from), then the requested
    transforms (Tucker compression). Every variant is an ordinary Keras model to the training loop."""
    if cfg.init_from:
        import tf_keras as keras

        mixed = keras.mixed_precision.global_policy().name != "float32"  # --amp applies to loaded models too
        model, spec, info, step = load_trained(cfg.init_from, cfg.checkpoint, amp=mixed)
        if info.class_names != data.class_names or spec.in_channels != data.images[0].shape[-1]:
            raise UNetError(f"--init_from {cfg.init_from}: its model has classes {info.class_names} and "
                            f"{spec.in_channels} channels; the data in {cfg.data_dir} has {data.class_names} "
                            f"and {data.images[0].shape[-1]}")
        logger.log("PARAMETER", {"init_from": str(cfg.init_from), "init_step": step})
    else:
        spec = spec_for(cfg, data)
        model = build_unet(spec)
    geometry = check_crop_size(spec, cfg.crop_size)
    if cfg.rank_factor is not None or cfg.rank is not None:
        model = compress_model(cfg, model, geometry, logger)
    float_architecture = model.to_json()
    if cfg.quantization == "QAT_INT8":
        from model.qat import quantize_model_qat
        model = quantize_model_qat(model)
        model.float_architecture = float_architecture
    elif cfg.quantization != "NONE":
        from model.quantization import quantize_unet
        model = quantize_unet(model, quantization_config(cfg))
    return model, spec, geometry


def quantization_config(cfg: Config):
    from model.quantization import QuantizationConfig

    return QuantizationConfig(
        quantization=cfg.quantization, weight_i_width=cfg.weight_i_width, weight_f_width=cfg.weight_f_width,
        activation_i_width=cfg.activation_i_width, activation_f_width=cfg.activation_f_width,
        weight_bits=cfg.weight_bits, activation_bits=cfg.activation_bits,
        keep_first_float=cfg.keep_first_float, keep_last_float=cfg.keep_last_float)


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
    from utils.training import train

    data = load_training_set(cfg)
    train_idx, val_idx = fold_split(len(data.images), cfg.num_folds, cfg.fold)
    if cfg.num_epochs is not None:  # an epoch = one pass over the training images, one crop each
        cfg = cfg.replace(max_steps=-(-cfg.num_epochs * len(train_idx) // (cfg.batch_size * dist.size)))
    configure_seeds(cfg.seed, cfg.deterministic)
    policy = configure_precision(cfg.amp)
    with dist.scope():
        model, spec, geometry = make_model(cfg, data, logger)
    logger.log("PARAMETER", {"precision": policy, "parameters": total_params(model), "input_size": geometry.input_size,
                             "output_size": geometry.output_size,
                             "gflop_per_image": 2 * total_macs(model, (geometry.input_size,) * 2) / 1e9,
                             "train_images": len(train_idx), "validation_images": len(val_idx),
                             "classes": ",".join(data.class_names)})
    if dist.is_chief:
        save_model_info(cfg.model_dir, ModelInfo(spec=dataclasses.asdict(spec), class_names=data.class_names,
                                                 extra={"architecture": getattr(model, "float_architecture", None)
                                                        or model.to_json(),
                                                        "quantization": cfg.quantization,
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
    model, spec, info = restore_model(cfg)
    data = load_training_set(cfg)
    if tuple(data.class_names) != tuple(info.class_names):
        raise UNetError(f"{cfg.data_dir}: classes {data.class_names} differ from the model's {info.class_names}")
    _, val_idx = fold_split(len(data.images), cfg.num_folds, cfg.fold)
    evaluate = make_fold_evaluator(cfg, spec, data, val_idx, logger)
    return evaluate(model, info.extra["step"])


def run_prediction(cfg: Config, logger: dllogger.Logger) -> list[pathlib.Path]:
    model, spec, info = restore_model(cfg)
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
            from utils.benchmark import run_benchmark

            run_benchmark(cfg, logger, dist)
            return
        if cfg.exec_mode in TRAINING_MODES:
            run_training(cfg, logger, dist)
        if cfg.exec_mode == "evaluate":
            run_evaluation(cfg, logger)
        if cfg.exec_mode == "visualize" and dist.is_chief:
            from utils.visualize import write_weight_histograms

            model, _, _ = restore_model(cfg)
            written = write_weight_histograms(model, pathlib.Path(cfg.model_dir) / "visualize")
            logger.log("VISUALIZE", {"histograms": len(written) - 1, "grid": str(written[0])})
        if cfg.exec_mode in ("predict", "train_and_predict") and dist.is_chief:
            run_prediction(cfg, logger)
        if cfg.exec_mode == "export" and dist.is_chief:
            from utils.export import run_export

            run_export(cfg, logger)
        dist.barrier()  # workers leave together: none exits while the chief still evaluates or saves
    finally:
        logger.flush()
