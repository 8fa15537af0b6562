"""--exec_mode export of a --dims 3 run, and the serving module of its SavedModel.

The run's volume record (model.json) gives the patch (the sliding window) and the intensity windows; the
artefacts go through the one exporter's format registry (export.volume.export_volume_model): SavedModel,
ONNX and OpenVINO (TFLite is refused in one line: no builtin MaxPool3D), each checked against the Keras
model on whole patches cut as sliding-window inference cuts them (the SavedModel's serving signature
also on a whole raw volume, mirrored as the run's decision says). Without --export_format the default export's candidates that apply to 3-D
compete as for 2-D (export.select.select_fastest), timed on one patch.
"""
from __future__ import annotations

import dataclasses
import datetime
import pathlib
from typing import Any

import numpy as np

from unet_medical.base import runlog
from unet_medical.base.errors import UNetError
from unet_medical.cli.config import Config
from unet_medical.cli.volume_modes import SLIDING_OVERLAP, require_volume_run, volume_decision
from unet_medical.data.folds import case_fold_split
from unet_medical.data.mirror_axes import AXES as MIRROR_AXES
from unet_medical.data.normalize import normalize_image
from unet_medical.data.volume_training import (case_inputs, load_volume_slices, prediction_cases, recorded_target,
                                               windows_from_record)
from unet_medical.export.formats import EXPORT_DIR, check_export_request, check_tflite_layers
from unet_medical.export.volume import VOLUME_FORMATS, ServingCase, export_volume_model, volume_patches
from unet_medical.export.volume_serving import VolumeServingModule

PARITY_PATCHES = 8        # whole patches of the held-out cases every artefact must agree on
CALIBRATION_PATCHES = 16  # int8 calibration patches of the training cases (the 2-D export's tile count)
SERVING_CASES = 1         # whole held-out volumes the SavedModel's serving signature is checked on


def volume_serving_module(model: Any, info: Any, image_dtype: Any, mirror: bool = False) -> VolumeServingModule:
    """The SavedModel computation of a 3-D run (info: its RunRecord): its patch, windows and class names, and
    `mirror` (the decision in effect: cli.volume_modes.volume_decision) over its recorded mirror axes."""
    record = info.volume
    if not record or "patch_size" not in record:
        raise UNetError("model.json: a --dims 3 run records its volume normalization and patch_size; this one "
                        "does not (train it again)")
    return VolumeServingModule(model, record["patch_size"], windows_from_record(record["normalization"]),
                               image_dtype=image_dtype, overlap=SLIDING_OVERLAP, class_names=info.class_names,
                               mirror=mirror, mirror_axes=record.get("mirror_axes", MIRROR_AXES),
                               target_spacing=recorded_target(record))


def volume_export_pairs(cfg: Config, model: Any, logger: runlog.Logger) -> list[tuple[str, str]]:
    """The (format, precision) pairs to export: --export_format's (refused in one line if 2-D only), or the
    default export's candidates that apply to a 3-D model (the others logged as left out, with why)."""
    if cfg.export_format is not None:
        if cfg.export_format not in VOLUME_FORMATS:
            raise UNetError(f"--export_format={cfg.export_format}: not available for --dims 3 runs (available: "
                            f"{', '.join(VOLUME_FORMATS)})")
        precision = cfg.export_precision or "fp32"
        check_export_request(cfg.export_format, precision)
        if (cfg.export_format, precision) == ("savedmodel", "bf16"):
            raise UNetError("--export_format savedmodel --export_precision bf16: a --dims 3 run's SavedModel is "
                            "exported in fp32 only; give --export_precision fp32")
        if cfg.export_format == "tflite":
            check_tflite_layers(model)
        return [(cfg.export_format, precision)]
    from unet_medical.base.cpu import read_cpu_info
    from unet_medical.base.precision import gpu_available
    from unet_medical.export.select import candidates

    kept = []
    for fmt, precision in candidates(read_cpu_info(), int(gpu_available()), cfg.export_precision):
        reason = None if fmt in VOLUME_FORMATS else "a 2-D format"
        if (fmt, precision) == ("savedmodel", "bf16"):
            reason = "a --dims 3 run's SavedModel is exported in fp32 only"
        if fmt == "tflite" and reason is None:
            try:
                check_tflite_layers(model)
            except UNetError as exc:
                reason = str(exc)
        if reason is None:
            kept.append((fmt, precision))
        else:
            logger.log("EXPORT", {"candidate": f"{fmt} {precision}", "status": "left out", "reason": reason})
    if not kept:
        raise UNetError(f"--export_precision={cfg.export_precision}: no default-export candidate applies to a 3-D "
                        "model; give --export_format onnx or openvino")
    return kept


def export_volumes(cfg: Config, info: Any) -> tuple[list[np.ndarray], list[ServingCase], list[str], str]:
    """(calibration volumes, parity cases (raw, normalized, spacing), parity case names, their source).

    --input (files, a folder, a DICOM series: as predict reads them) gives both; else the run's data_dir,
    cut, resampled and scaled as recorded: the fold's training cases calibrate, its held-out cases check
    parity. Normalized volumes are (I, J, K, C) float32 in [0, 1], on the run's target grid if it has one;
    raw volumes are as read, at their spacing in mm.
    """
    record = require_volume_run(cfg, info)
    if cfg.input:
        cases = prediction_cases(cfg.input, len(record["channel_names"]))
        normalized = [normalize_image(case_inputs(image, record)[0], info.normalization) for _, image in cases]
        return normalized, [(image.array, n, image.spacing) for (_, image), n in zip(cases, normalized)], \
            [name for name, _ in cases], cfg.input
    data = load_volume_slices(cfg.data_dir, images_dir=cfg.images_dir, masks_dir=cfg.masks_dir,
                              num_classes=cfg.num_classes, dims=record["dims"],
                              context_slices=record["context_slices"],
                              windows=windows_from_record(record["normalization"]),
                              target_spacing=recorded_target(record))
    train_idx, val_idx = case_fold_split(data.case_of_slice, cfg.num_folds, cfg.fold)
    normalized = {int(i): normalize_image(data.images[int(i)], info.normalization) for i in (*train_idx, *val_idx)}
    parity = [(data.volumes.cases[int(i)].image.array, normalized[int(i)], data.volumes.cases[int(i)].image.spacing)
              for i in val_idx]
    return [normalized[int(i)] for i in train_idx], parity, [data.volumes.cases[int(i)].name for i in val_idx], \
        cfg.data_dir


def export_volume_run(cfg: Config, logger: runlog.Logger) -> tuple[dict[str, Any], np.ndarray]:
    """--exec_mode export of a 3-D run: writes MODEL_DIR/export/<artefact> + export.json; returns the kept
    artefact's entry (after a default export: with its latency) and the (1, P0, P1, P2, C) patch to time it on.
    cli.export_mode logs the parity, times a single artefact and writes the model card, as for 2-D."""
    import tensorflow as tf

    from unet_medical.cli.assemble import restore_model
    from unet_medical.export.select import select_fastest

    model, spec, info = restore_model(cfg, logger)
    require_volume_run(cfg, info)
    pairs = volume_export_pairs(cfg, model, logger)
    calibration, parity_cases, names, source = export_volumes(cfg, info)
    patch = tuple(info.volume["patch_size"])
    parity = volume_patches([n for _, n, _ in parity_cases], patch, PARITY_PATCHES, SLIDING_OVERLAP)
    calibration_patches = volume_patches(calibration or [n for _, n, _ in parity_cases], patch, CALIBRATION_PATCHES,
                                         SLIDING_OVERLAP)
    decision = volume_decision(cfg.threshold, cfg.tta, info.decision)  # flags win over the run's choice
    module = volume_serving_module(model, info, parity_cases[0][0].dtype, decision.tta)
    export_dir = pathlib.Path(cfg.model_dir) / EXPORT_DIR
    fields = {"spec": dict(info.spec), "class_names": list(info.class_names), "checkpoint": cfg.checkpoint,
              "step": info.step, "parity_cases": names, "parity_patches": len(parity), "calibration_source": source,
              "normalization": info.normalization, "volume_normalization": info.volume["normalization"],
              "decision": dataclasses.asdict(decision),
              "tensorflow": tf.__version__, "created": datetime.datetime.now(datetime.timezone.utc).isoformat()}

    def export_one(fmt: str, precision: str) -> dict[str, Any]:
        return export_volume_model(model, export_dir, fmt, precision, parity, calibration_patches,
                                   module=module if fmt == "savedmodel" else None,
                                   serving_cases=parity_cases[:SERVING_CASES], fields=fields, serving_module=module)

    sample = parity[:1]
    if cfg.export_format is None:
        return select_fastest(export_dir, pairs, export_one, sample, {"patch_shape": list(patch)}, logger=logger), sample
    return export_one(*pairs[0]), sample
