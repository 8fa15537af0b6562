"""--exec_mode export: restore a run, export it through utils.export, and write the model card; and the
SavedModel every training run ends with (model_dir/saved_model/).
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import tempfile
import time
from typing import Any

import numpy as np


from unet_medical.data.layouts import SegmentationData, load_test_data, load_training_images
from unet_medical.data.normalize import normalize_image
from unet_medical.base.artifacts import load_run_record
from unet_medical.base.errors import UNetError
from unet_medical.inference.decision import resolve_decision
from unet_medical.inference.tiling import plan_tiles
from unet_medical.inference.runtimes import EXPORT_JSON, load_exported
from unet_medical.base.registry import resolve
from unet_medical.inference.artifact_formats import format_of
from unet_medical.export.formats import (EXPORT_DIR, ExportInputs, artifact_name, check_export_request, export_model,
                                  read_export_json, read_export_selection, record_artifact, write_savedmodel)
from unet_medical.export.model_card import write_model_card
from unet_medical.export.serving import UNetServingModule
from unet_medical.base.timing import latency_summary_ms, time_steps

SAVED_MODEL = "saved_model"  # model_dir/saved_model/: written at the end of training


def load_export_images(cfg: Any) -> tuple[SegmentationData, bool]:
    """(images, whether they are the run's training images): what export calibrates and checks on.

    --input (a folder, stack or image, as for predict) if given; else the images of data_dir's
    training layout (masks are never read, so a data_dir without labels works); else
    data_dir/test-volume.tif. No labels are needed: parity compares the artefact with the Keras model.
    """
    if cfg.input:
        return load_test_data(cfg.data_dir, input_path=cfg.input), False
    data = load_training_images(cfg.data_dir, image_stack=cfg.image_stack, images_dir=cfg.images_dir)
    if data is not None:
        return data, True
    try:
        return load_test_data(cfg.data_dir), False
    except UNetError:
        raise UNetError(f"--data_dir={cfg.data_dir}: no images to calibrate and check the export with (looked "
                        f"for train-volume.tif, --image_stack, {cfg.images_dir}/ and test-volume.tif); pass "
                        "--input FOLDER_OR_STACK") from None


def export_image_split(num_images: int, training_images: bool, num_folds: int,
                       fold: int) -> tuple[np.ndarray, np.ndarray]:
    """(calibration, parity) indices: the run's fold split for its training images, so the artefact
    is checked on the held-out fold it was not calibrated on; every image for both otherwise."""
    from unet_medical.data.folds import fold_split

    if training_images and num_images >= num_folds:
        return fold_split(num_images, num_folds, fold)
    everything = np.arange(num_images)
    return everything, everything


def run_export(cfg: Any, logger: Any) -> dict[str, Any]:
    """--exec_mode export: the checkpoint of cfg.model_dir -> MODEL_DIR/export/<artefact> + export.json.

    With --export_format: that format (--export_precision, default fp32). Without: the deploy file that
    is fastest on this machine among the candidates that pass parity (utils.export.select).
    """
    from unet_medical.cli.assemble import restore_model

    if cfg.model_path:
        raise UNetError(f"--model_path={cfg.model_path}: export reads model_dir's checkpoint "
                        "(--model_dir, --checkpoint); --model_path is for predict/evaluate/benchmark")
    export_dir = pathlib.Path(cfg.model_dir) / EXPORT_DIR
    if load_run_record(cfg.model_dir).spec.get("dims") == 3:
        from unet_medical.cli.volume_export import export_volume_run

        entry, sample = export_volume_run(cfg, logger)
        return finish_export(cfg, logger, entry, sample, "patch", "x".join(map(str, entry["patch_shape"])))
    pairs, fmt, precision = None, None, cfg.export_precision or "fp32"
    if cfg.export_format is None:
        from unet_medical.base.cpu import read_cpu_info
        from unet_medical.export.select import candidates

        pairs = candidates(read_cpu_info(), gpu_count(), cfg.export_precision, run_policy(cfg))
        for name, precision in pairs:
            check_export_request(name, precision)
    else:
        fmt = format_of(cfg.export_format)
        if fmt.run_precision is None:  # a format whose precision is the model's (packed) is checked once restored
            check_export_request(cfg.export_format, precision)
    model, spec, info = restore_model(cfg, logger)
    if fmt is not None and fmt.run_precision is not None:
        precision = resolve(fmt.run_precision)(info)
        check_export_request(cfg.export_format, precision)
    data, training_images = load_export_images(cfg)
    if data.images[0].shape[-1] != spec.in_channels:
        raise UNetError(f"{data.source}: images have {data.images[0].shape[-1]} channel(s), the model expects "
                        f"{spec.in_channels}")
    decision = resolve_decision(cfg.threshold, cfg.tta, info.decision)  # flags win over the run's choice
    calibration_idx, parity_idx = export_image_split(len(data.images), training_images, cfg.num_folds, cfg.fold)
    if pairs is not None:
        from unet_medical.export.select import parity_subset

        parity_idx = parity_subset(parity_idx)
    largest = (max(im.shape[0] for im in data.images), max(im.shape[1] for im in data.images))
    plan = plan_tiles(spec, largest, tile_size=cfg.tile_size, max_tile_size=cfg.max_tile_size,
                      context=cfg.tile_context)
    inputs = ExportInputs(parity_images=[data.images[i] for i in parity_idx],
                          calibration_images=[normalize_image(data.images[i], info.normalization)
                                              for i in calibration_idx],
                          tile_size=plan.tile_size, context=plan.context, max_tile_size=cfg.max_tile_size,
                          serving_tile_size=cfg.tile_size, image_dtype=info.image_dtype,
                          normalization=info.normalization, quantization=info.quantization_config,
                          input_scale=info.input_scale, threshold=decision.threshold, tta=decision.tta)
    extra = {"checkpoint": cfg.checkpoint, "step": info.step, "parity_images": [data.names[i] for i in parity_idx],
             "calibration_source": data.source, "normalization": info.normalization,
             "input_scale": info.input_scale, "decision": dataclasses.asdict(decision)}
    if pairs is not None:
        from unet_medical.export.select import export_fastest

        rebuilt = {p: model_in_precision(cfg, POLICY_OF[p]) for f, p in pairs if f == "savedmodel" and p in POLICY_OF}
        entry = export_fastest(model, spec, info.class_names, export_dir, inputs, pairs, extra=extra, logger=logger,
                               precision_models=rebuilt)
    else:
        source = model_in_precision(cfg, POLICY_OF[precision]) \
            if cfg.export_format == "savedmodel" and precision in POLICY_OF else None
        entry = export_model(model, spec, info.class_names, export_dir, cfg.export_format, precision,
                             inputs, extra=extra, logger=logger, artifact_model=source)
    tile = np.random.default_rng(0).random((1, plan.tile_size, plan.tile_size, spec.in_channels), dtype=np.float32)
    return finish_export(cfg, logger, entry, tile, "tile_size", entry["parity_tile_size"])


# SavedModel precisions that are the Keras model rebuilt under a mixed dtype policy (its float32 head kept).
POLICY_OF = {"bf16": "mixed_bfloat16"}


def gpu_count() -> int:
    from unet_medical.base.precision import gpu_available

    return int(gpu_available())


def run_policy(cfg: Any) -> str:
    """The Keras dtype policy predict would run this run's checkpoint in (--precision, --amp, the run's
    quantization), i.e. what "not exporting" computes in."""
    from unet_medical.base.cpu import read_cpu_info
    from unet_medical.base.precision import decide_precision

    quantization = load_run_record(cfg.model_dir).quantization
    return decide_precision(cfg.precision, cfg.amp, read_cpu_info(), gpu_count(), quantization)[0]


def model_in_precision(cfg: Any, policy: str) -> Any:
    """The run's --checkpoint rebuilt under the Keras dtype policy `policy` (cli.assemble.load_trained; the
    global policy is put back afterwards), for a SavedModel that computes as predict does."""
    import tf_keras as keras

    from unet_medical.cli.assemble import load_trained

    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(policy)
    try:
        return load_trained(cfg.model_dir, cfg.checkpoint)[0]
    finally:
        keras.mixed_precision.set_global_policy(previous)


def finish_export(cfg: Any, logger: Any, entry: dict[str, Any], sample: np.ndarray, size_key: str,
                  size: Any) -> dict[str, Any]:
    """After the artefact(s) of an export are written (2-D or 3-D): log the default export's candidates and
    rewrite the model card, or log one artefact's parity and time it on `sample` (a batch-1 tile or patch);
    then the final EXPORT line. Returns the kept artefact's entry."""
    export_dir = pathlib.Path(cfg.model_dir) / EXPORT_DIR
    if cfg.export_format is None:
        selection = read_export_selection(export_dir / EXPORT_JSON)
        for candidate in selection["candidates"]:
            logger.log("EXPORT", {k: v for k, v in {**candidate, **candidate.get("latency", {})}.items()
                                  if isinstance(v, (int, float, str)) or v is None})
        write_model_card(cfg.model_dir, export_dir, read_export_json(export_dir / EXPORT_JSON), selection)
    else:
        for key, report in entry.get("parity", {}).items():
            logger.log("EXPORT", {"artifact": entry["file"], "check": key,
                                  "label_agreement": report["label_agreement"],
                                  "max_abs_prob_diff": report["max_abs_prob_diff"], "threshold": report["threshold"]})
        entry = finish_artifact(cfg, entry, sample)
    logger.log("EXPORT", {"artifact": str(export_dir / entry["file"]), "format": entry["format"],
                          "precision": entry["precision"], size_key: size,
                          "size_bytes": entry["size_bytes"], "latency_ms_median": entry["latency"]["median_ms"],
                          "deploy": bool(entry.get("deploy"))})
    return entry


def write_run_savedmodel(cfg: Any, image_dtype: Any, logger: Any) -> pathlib.Path:
    """model_dir/saved_model/: the run's --checkpoint weights (last by default) as a SavedModel
    (utils.export.serving).

    One run ships one model: the SavedModel, the final eval_results.json and, since config.yaml records
    --checkpoint and later modes inherit it (cli.lineage), evaluate/predict/export on the run all use
    the same checkpoint file; `--exec_mode predict` with the run's tile flags gives the same probabilities.
    The tile plan is the run's --tile_size / --max_tile_size / --tile_context; `serving_default`
    takes `image_dtype` images (the training data's). A --dims 3 run's takes raw volumes of `image_dtype`
    (the training volumes' as read) and slides its training patch over them (export.volume_serving).
    Both apply the run's decision (flags win): a 3-D run's graph mirrors each window when it says so.
    Written beside and renamed into place, so a crash never leaves a half-written SavedModel. Returns the path.
    """
    from unet_medical.cli.assemble import restore_model

    start = time.perf_counter()
    model, spec, info = restore_model(cfg.replace(model_path=None))
    if spec.dims == 3:  # raw volumes, the run's windows, Gaussian sliding window and mirroring in the graph
        from unet_medical.cli.volume_export import volume_serving_module
        from unet_medical.cli.volume_modes import volume_decision

        decision = volume_decision(cfg.threshold, cfg.tta, info.decision)
        module = volume_serving_module(model, info, image_dtype, decision.tta)
    else:
        decision = resolve_decision(cfg.threshold, cfg.tta, info.decision)
        module = UNetServingModule(model, spec, cfg.tile_context, image_dtype, tile_size=cfg.tile_size,
                                   max_tile_size=cfg.max_tile_size, class_names=info.class_names,
                                   normalization=info.normalization, input_scale=info.input_scale,
                                   threshold=decision.threshold, tta=decision.tta)
    target = pathlib.Path(cfg.model_dir) / SAVED_MODEL
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{SAVED_MODEL}.", dir=cfg.model_dir))
    try:
        write_savedmodel(module, staging / SAVED_MODEL)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging / SAVED_MODEL, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    logger.log("SAVED_MODEL", {"path": str(target), "checkpoint": cfg.checkpoint, "step": info.step,
                               "image_dtype": np.dtype(image_dtype).name, "decision": decision.describe(), "size_bytes": size,
                               "seconds": round(time.perf_counter() - start, 2)})
    return target



def finish_artifact(cfg: Any, entry: dict[str, Any], sample: np.ndarray) -> dict[str, Any]:
    """Time the written artefact on `sample` (a batch-1 tile or patch; base.timing), record that in
    export.json, rewrite the model card."""
    export_dir = pathlib.Path(cfg.model_dir) / EXPORT_DIR
    exported = load_exported(export_dir / entry["file"])
    entry = {**entry, "latency": latency_summary_ms(time_steps(lambda i: exported(sample), 1, 5))}
    record_artifact(export_dir, entry)
    write_model_card(cfg.model_dir, export_dir, read_export_json(export_dir / EXPORT_JSON),
                     read_export_selection(export_dir / EXPORT_JSON))
    return entry



def tftrt_model(cfg: Any, logger: Any) -> Any:
    """--use_trt: the run's TF-TRT artefact (fp16 with --amp, else fp32) as an ExportedModel, exported
    first when missing or made from another checkpoint. One clear UNetError without TensorRT."""
    import tensorflow as tf

    from unet_medical.training import checkpoint as ckpt

    if not tf.sysconfig.get_build_info().get("is_tensorrt_build", False):
        raise UNetError(f"--use_trt: this TensorFlow {tf.__version__} has no TensorRT (is_tensorrt_build is false; "
                        "pip wheels never have it): run inside NVIDIA's NGC TensorFlow container "
                        "(nvcr.io/nvidia/tensorflow), or predict without --use_trt")
    precision = "fp16" if cfg.amp else "fp32"
    path = pathlib.Path(cfg.model_dir) / EXPORT_DIR / artifact_name("tftrt", precision)
    which = ckpt.checkpoint_dir(cfg.model_dir) / (ckpt.BEST if cfg.checkpoint == "best" else ckpt.LAST)
    step = ckpt.read_header(which).step
    recorded = load_exported_metadata(path) if path.exists() else {}
    if (recorded.get("step"), recorded.get("checkpoint")) != (step, cfg.checkpoint):
        run_export(cfg.replace(export_format="tftrt", export_precision=precision, use_trt=False), logger)
    logger.log("PARAMETER", {"use_trt": str(path), "precision": precision})
    return load_exported(path)


def load_exported_metadata(path: pathlib.Path) -> dict[str, Any]:
    """The export.json entry of an artefact ({} when it has none)."""
    from unet_medical.inference.runtimes import read_metadata

    try:
        return read_metadata(path)
    except UNetError:
        return {}
