"""What every exec mode assembles from the stages: the logger, the data of a run, its model (new,
--init_from, restored from model_dir or --model_path) and its transforms. No mode calls another.
"""
from __future__ import annotations

import pathlib
from typing import Any, Sequence


from unet_medical.base import runlog
from unet_medical.model.unet import UNetSpec, build_unet, output_size
from unet_medical.training import checkpoint as ckpt
from unet_medical.base.artifacts import MODEL_JSON, RunRecord, load_run_record
from unet_medical.cli.config import Config, volumetric_conflict
from unet_medical.model.config import DEFAULT_DEPTH
from unet_medical.model.config import QuantizationSettings
from unet_medical.data.config import augment_config
from unet_medical.data.patches3d import check_patch_size, parse_patch_size
from unet_medical.data.layouts import SegmentationData, load_training_data
from unet_medical.data.volume_layouts import is_volume_layout
from unet_medical.data.volume_training import load_volume_slices
from unet_medical.base.errors import UNetError
from unet_medical.data.pipeline import CropGeometry
from unet_medical.base.precision import configure_precision
from unet_medical.inference.runtimes import load_exported


def log_path(cfg: Config) -> pathlib.Path:
    """The run's JSON-lines log: log_dir/log.json (model_dir/log.json without --log_dir)."""
    return pathlib.Path(cfg.log_dir or cfg.model_dir) / "log.json"


def make_logger(cfg: Config, rank: int) -> runlog.Logger:
    """stdout + JSON lines (log_dir/log.json) + TensorBoard (model_dir/tensorboard); rank 0 only."""
    backends = [runlog.StdOutBackend(), runlog.JSONStreamBackend(str(log_path(cfg))),
                runlog.TensorBoardBackend(str(pathlib.Path(cfg.model_dir) / "tensorboard"))]
    return runlog.Logger(backends, rank=rank)



def load_training_set(cfg: Config) -> SegmentationData:
    """--data_dir's labelled data: 2D images, or a volume set's slices for --dims (data.volume_training)."""
    if cfg.image_stack is None and is_volume_layout(cfg.data_dir, cfg.images_dir):
        return load_volume_slices(cfg.data_dir, images_dir=cfg.images_dir, masks_dir=cfg.masks_dir,
                                  num_classes=cfg.num_classes, dims=cfg.dims, context_slices=cfg.context_slices,
                                  num_folds=cfg.num_folds, fold=cfg.fold, no_3d=volumetric_conflict(cfg),
                                  target_spacing=cfg.target_spacing)
    if cfg.dims == "3":  # a 3D network needs volumes; 2D images would silently train a 2D one
        raise UNetError(f"--dims 3: {cfg.data_dir} holds 2D images, not volumes (NIfTI, MSD / nnU-Net folders)")
    return load_training_data(cfg.data_dir, image_stack=cfg.image_stack, mask_stack=cfg.mask_stack,
                              images_dir=cfg.images_dir, masks_dir=cfg.masks_dir, num_classes=cfg.num_classes)



def make_augment(cfg: Config, mirror_axes: Sequence[int] | None = None) -> Any:
    """The training augmentation (utils.data.augment, set by --augment_params), or None with --no-augment;
    for slices of volumes flipped only along `mirror_axes` (AugmentConfig.flipping_only)."""
    if not cfg.augment:
        return None
    from unet_medical.data.augment import build_augment_fn

    config = augment_config(cfg.augment_params)
    return build_augment_fn(config if mirror_axes is None else config.flipping_only(mirror_axes))



def spec_for(cfg: Config, data: SegmentationData) -> UNetSpec:
    """The U-Net of the flags for `data`: its classes and channels; a 3D U-Net for --dims 3 volumes."""
    dims = 3 if getattr(data, "dims", "2") == "3" else 2
    return UNetSpec(n_classes=len(data.class_names), in_channels=int(data.images[0].shape[-1]),
                    base_filters=cfg.base_filters, depth=cfg.depth or DEFAULT_DEPTH, padding=cfg.padding,
                    batch_norm=cfg.batch_norm, instance_norm=cfg.instance_norm, dropout=cfg.dropout, dims=dims)


def patch_geometry(spec: UNetSpec, patch_size: str | None) -> CropGeometry:
    """--dims 3: the patch's (same-padding, so input = output) longest side stands for the crop in the
    records that expect one; the patches themselves are cut by data.patches3d at --patch_size."""
    patch = parse_patch_size(patch_size)
    if patch is None:
        raise UNetError("--patch_size: not chosen (the --dims 3 recipe sets it before the model is built)")
    check_patch_size(patch, spec.depth)
    return CropGeometry(max(patch), max(patch))



def default_crop_size(spec: UNetSpec) -> int:
    """The crop when neither the flags nor a data fingerprint chose one: the paper's 572 tile for valid
    padding, 256 for same padding (the recipe's smallest crop)."""
    return 572 if spec.padding == "valid" else 256


def check_crop_size(spec: UNetSpec, crop_size: int | None) -> CropGeometry:
    crop_size = default_crop_size(spec) if crop_size is None else crop_size
    try:
        return CropGeometry(crop_size, output_size(spec, crop_size))
    except UNetError as exc:
        raise UNetError(f"--crop_size={crop_size}: {exc}") from None



def model_from_info(info: RunRecord, source: str | pathlib.Path = "model.json") -> Any:
    """The network described by model.json (`source`, named in errors): its stored architecture (any
    variant: Tucker-compressed, quantized, ...) or, for files without one, the plain U-Net of its spec.
    The architecture is rebuilt in Keras' safe mode with Lambda layers refused (model.serialization):
    a run folder from elsewhere never runs code."""
    from unet_medical.model.serialization import model_from_json

    architecture = info.architecture
    if architecture is None:
        return build_unet(UNetSpec(**info.spec))
    if info.variant == "qat":
        # TF-MOT's wrappers do not rebuild the same variables from JSON: rebuild the float model and
        # wrap it again, exactly as training did.
        from unet_medical.model.qat import quantize_model_qat

        return quantize_model_qat(model_from_json(architecture, source))
    from unet_medical.model import quantized_layers  # noqa: F401  (registers the quantized layers for deserialization)

    return model_from_json(architecture, source)



def with_global_policy(architecture: str, source: str | pathlib.Path = "model.json") -> str:
    """The architecture JSON with every layer's stored dtype policy dropped (the float32 head kept),
    so the layers take the current global policy: the precision of the run that loads a model decides,
    not the one it was trained in. Weights are float32 variables under every policy, so the checkpoint
    loads unchanged."""
    import json

    try:
        graph = json.loads(architecture)
        layers = graph["config"]["layers"]
    except (ValueError, KeyError, TypeError) as exc:
        raise UNetError(f"{source}: the stored architecture is not a Keras model's JSON ({exc})") from None
    for layer in layers:
        if layer["config"].get("name") != "head":
            layer["config"].pop("dtype", None)
    return json.dumps(graph)



def load_trained(run_dir: str | pathlib.Path, which: str) -> tuple[Any, UNetSpec, RunRecord, int]:
    """Rebuild a training run's network from run_dir/model.json and load its best or last weights,
    in the dtype policy utils.precision.configure_precision set for this run (float32 or mixed)."""
    info = load_run_record(run_dir)
    source = pathlib.Path(run_dir) / MODEL_JSON
    if info.architecture is not None:
        info = info.replace(architecture=with_global_policy(info.architecture, source))
    model = model_from_info(info, source)
    path = ckpt.checkpoint_dir(run_dir) / (ckpt.BEST if which == "best" else ckpt.LAST)
    loaded = ckpt.load_checkpoint(path, model)
    return model, UNetSpec(**info.spec), info, loaded.step



def restore_model(cfg: Config, logger: runlog.Logger | None = None) -> tuple[Any, UNetSpec, RunRecord]:
    """The model to evaluate/predict/export with: an exported artefact (--model_path; an ExportedModel
    that utils.inference.runtimes.as_predictor runs) or model_dir's checkpoint.

    A checkpoint is rebuilt in the precision of --precision/--amp (utils.precision; fake-quantized
    models in float32), except for --exec_mode export: always float32, so exported files compute in
    float32 even if training ran in bfloat16. The choice and its reason go to `logger` as a PARAMETER line.
    """
    if cfg.model_path:
        exported = load_exported(cfg.model_path)
        if logger is not None:
            logger.log("PARAMETER", {"precision": exported.precision, "precision_reason":
                                     f"{exported.path} was exported in {exported.precision}; "
                                     "--precision/--amp do not apply to exported models"})
        return exported, exported.spec, exported.info
    quantization = load_run_record(cfg.model_dir).quantization
    if cfg.exec_mode == "export":
        policy, reason = configure_precision("fp32", quantization=quantization)
        reason = "export: exported files compute in float32 whatever the training precision"
    else:
        policy, reason = configure_precision(cfg.precision, cfg.amp, quantization)
    if logger is not None:
        logger.log("PARAMETER", {"precision": policy, "precision_reason": reason})
    model, spec, info, step = load_trained(cfg.model_dir, cfg.checkpoint)
    return model, spec, info.replace(step=step, precision=policy)



def compress_model(cfg: Config, model: Any, geometry: CropGeometry, logger: runlog.Logger,
                   write_report: bool = True) -> Any:
    """Tucker-2 decomposition of every eligible conv; the per-layer report goes to the log and (with
    `write_report`) model_dir/tucker_report.csv, the whole network's cost to model_dir/tucker_summary.json
    (cli.tucker_summary; the scores are added when fine-tuning ends)."""
    import time

    from unet_medical.cli import tucker_summary
    from unet_medical.model.complexity import isotropic_size, total_macs, total_params
    from unet_medical.model.tucker import report_table, tucker_compress, write_report_csv

    # MACs at the training input: the square crop of a 2-D model, the --patch_size patch of a 3-D one.
    patch = parse_patch_size(cfg.patch_size) if model.inputs[0].shape.rank == 5 else None
    size = patch or isotropic_size(model, geometry.input_size)
    started = time.perf_counter()
    compressed, report = tucker_compress(model, rank_factor=cfg.rank_factor, rank=cfg.rank, rank_min=cfg.rank_min,
                                         input_hw=size)
    seconds = time.perf_counter() - started
    decomposed = sum(not r.kept for r in report)
    if write_report:
        write_report_csv(report, pathlib.Path(cfg.model_dir) / "tucker_report.csv")
        tucker_summary.write_model_part(
            cfg.model_dir, rank_factor=cfg.rank_factor, rank=cfg.rank, rank_min=cfg.rank_min, input_size=size,
            layers=len(report), decomposed=decomposed, params=(total_params(model), total_params(compressed)),
            macs=(total_macs(model, size), total_macs(compressed, size)))
    print(report_table(report), flush=True)
    logger.log("PARAMETER", {
        "tucker_layers_decomposed": decomposed,
        "tucker_params_before": sum(r.params_before for r in report),
        "tucker_params_after": sum(r.params_after for r in report),
        "tucker_macs_before": sum(r.macs_before for r in report),
        "tucker_macs_after": sum(r.macs_after for r in report),
        "tucker_seconds": round(seconds, 3)})  # factorization (one BLAS thread) + rebuild + MAC counting
    return compressed



def make_model(cfg: Config, data: SegmentationData, logger: runlog.Logger, write_report: bool = True
               ) -> tuple[Any, UNetSpec, CropGeometry]:
    """The network to train: a new U-Net, or a trained one (--init_from), then the requested
    transforms (Tucker compression; its report file only with `write_report`). Every variant is an
    ordinary Keras model to the training loop."""
    if cfg.init_from:
        model, spec, info, step = load_trained(cfg.init_from, cfg.checkpoint)  # in this run's precision
        if info.class_names != data.class_names or spec.in_channels != data.images[0].shape[-1]:
            raise UNetError(f"--init_from {cfg.init_from}: its model has classes {info.class_names} and "
                            f"{spec.in_channels} channels; the data in {cfg.data_dir} has {data.class_names} "
                            f"and {data.images[0].shape[-1]}")
        wanted = spec_for(cfg, data).dims
        if spec.dims != wanted:
            raise UNetError(f"--init_from {cfg.init_from}: its model is a {spec.dims}D U-Net; --dims "
                            f"{getattr(data, 'dims', '2')} trains a {wanted}D one")
        logger.log("PARAMETER", {"init_from": str(cfg.init_from), "init_step": step})
    else:
        spec = spec_for(cfg, data)
        model = build_unet(spec)
    geometry = check_crop_size(spec, cfg.crop_size) if spec.dims == 2 else patch_geometry(spec, cfg.patch_size)
    if cfg.rank_factor is not None or cfg.rank is not None:
        model = compress_model(cfg, model, geometry, logger, write_report)
    float_architecture = model.to_json()
    if cfg.quantization == "QAT_INT8":
        from unet_medical.model.qat import quantize_model_qat
        model = quantize_model_qat(model)
        model.float_architecture = float_architecture
    elif cfg.quantization != "NONE":
        from unet_medical.model.quantization import quantize_unet
        model = quantize_unet(model, quantization_config(cfg))
    return model, spec, geometry



def quantization_config(cfg: Config):
    """model.quantizers.QuantizationConfig of the run's quantization settings (imports TensorFlow)."""
    from unet_medical.model.quantizers import QuantizationConfig

    return QuantizationConfig.from_mapping(cfg.stage(QuantizationSettings).to_dict())

