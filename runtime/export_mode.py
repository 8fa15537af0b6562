"""--exec_mode export: restore a run, export it through utils.export, and write the model card.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import numpy as np


from model.unet import smallest_valid_input
from utils.data.normalize import normalize_image
from utils.errors import UNetError
from utils.inference.tiling import plan_tiles
from utils.inference.runtimes import EXPORT_JSON, load_exported
from utils.export.formats import (EXPORT_DIR, ExportInputs, check_export_request, export_model, read_export_json,
                                  read_export_selection, record_artifact)
from utils.export.model_card import write_model_card
from utils.timing import latency_summary_ms, time_steps


def run_export(cfg: Any, logger: Any) -> dict[str, Any]:
    """--exec_mode export: the checkpoint of cfg.model_dir -> MODEL_DIR/export/<artefact> + export.json.

    With --export_format: that format (--export_precision, default fp32). Without: the deploy file that
    is fastest on this machine among the candidates that pass parity (utils.export.select).
    """
    from utils.data.folds import fold_split
    from runtime.assemble import load_training_set, restore_model

    if cfg.model_path:
        raise UNetError(f"--model_path={cfg.model_path}: export reads model_dir's checkpoint "
                        "(--model_dir, --checkpoint); --model_path is for predict/evaluate/benchmark")
    if cfg.export_format == "packed":
        return run_packed_export(cfg, logger)
    pairs = None
    if cfg.export_format is None:
        from utils.cpu import read_cpu_info
        from utils.export.select import candidates
        from utils.precision import gpu_available

        pairs = candidates(read_cpu_info(), int(gpu_available()), cfg.export_precision)
        for fmt, precision in pairs:
            check_export_request(fmt, precision)
    else:
        cfg = cfg.replace(export_precision=cfg.export_precision or "fp32")
        check_export_request(cfg.export_format, cfg.export_precision)
    model, spec, info = restore_model(cfg, logger)
    data = load_training_set(cfg)
    if tuple(data.class_names) != tuple(info.class_names):
        raise UNetError(f"{cfg.data_dir}: classes {data.class_names} differ from the model's {info.class_names}")
    train_idx, val_idx = fold_split(len(data.images), cfg.num_folds, cfg.fold)
    largest = (max(im.shape[0] for im in data.images), max(im.shape[1] for im in data.images))
    plan = plan_tiles(spec, largest, tile_size=cfg.tile_size, max_tile_size=cfg.max_tile_size,
                      context=cfg.tile_context)
    inputs = ExportInputs(parity_images=[data.images[i] for i in val_idx],
                          calibration_images=[normalize_image(data.images[i]) for i in train_idx],
                          tile_size=plan.tile_size, context=plan.context, max_tile_size=cfg.max_tile_size)
    export_dir = pathlib.Path(cfg.model_dir) / EXPORT_DIR
    extra = {"checkpoint": cfg.checkpoint, "step": info.extra.get("step"),
             "parity_images": [data.names[i] for i in val_idx]}
    if pairs is not None:
        from utils.export.select import export_fastest

        entry = export_fastest(model, spec, info.class_names, export_dir, inputs, pairs, extra=extra)
        selection = read_export_selection(export_dir / EXPORT_JSON)
        for candidate in selection["candidates"]:
            logger.log("EXPORT", {k: v for k, v in {**candidate, **candidate.get("latency", {})}.items()
                                  if isinstance(v, (int, float, str)) or v is None})
        write_model_card(cfg.model_dir, export_dir, read_export_json(export_dir / EXPORT_JSON), selection)
    else:
        entry = export_model(model, spec, info.class_names, export_dir, cfg.export_format, cfg.export_precision,
                             inputs, extra=extra)
        for key, report in entry.get("parity", {}).items():
            logger.log("EXPORT", {"artifact": entry["file"], "check": key,
                                  "label_agreement": report["label_agreement"],
                                  "max_abs_prob_diff": report["max_abs_prob_diff"], "threshold": report["threshold"]})
        entry = finish_artifact(cfg, entry, entry["parity_tile_size"], spec.in_channels)
    logger.log("EXPORT", {"artifact": str(export_dir / entry["file"]), "format": entry["format"],
                          "precision": entry["precision"], "tile_size": entry["parity_tile_size"],
                          "size_bytes": entry["size_bytes"], "latency_ms_median": entry["latency"]["median_ms"],
                          "deploy": bool(entry.get("deploy"))})
    return entry



def finish_artifact(cfg: Any, entry: dict[str, Any], tile_size: int, channels: int) -> dict[str, Any]:
    """Time the written artefact on one tile (utils.timing), record that in export.json, rewrite the model card."""
    export_dir = pathlib.Path(cfg.model_dir) / EXPORT_DIR
    exported = load_exported(export_dir / entry["file"])
    tile = np.random.default_rng(0).random((1, tile_size, tile_size, channels), dtype=np.float32)
    entry = {**entry, "latency": latency_summary_ms(time_steps(lambda i: exported(tile), 1, 5))}
    record_artifact(export_dir, entry)
    write_model_card(cfg.model_dir, export_dir, read_export_json(export_dir / EXPORT_JSON),
                     read_export_selection(export_dir / EXPORT_JSON))
    return entry



def run_packed_export(cfg: Any, logger: Any) -> dict[str, Any]:
    """--export_format packed: a quantized model's weights bit-packed at their bit width (model/packing.py).

    The reported size is the file's size on disk, next to the float32 weights of the same network
    written the same way; the reloaded model must reproduce the fake-quantized model exactly.
    """
    from model.packing import load_packed, save_packed
    from model.quantizers import QuantizationConfig
    from runtime.assemble import restore_model

    model, spec, info = restore_model(cfg, logger)
    qconfig = info.extra.get("quantization_config")
    if not qconfig or qconfig.get("quantization") in ("NONE", "QAT_INT8"):
        raise UNetError(f"--export_format=packed: {cfg.model_dir} holds a "
                        f"{(qconfig or {}).get('quantization', 'float')} model; packing needs a FIXED, INT, BNN "
                        "or TERNARY model (train with --quantization ...); for QAT_INT8 export tflite int8")
    export_dir = pathlib.Path(cfg.model_dir) / EXPORT_DIR
    export_dir.mkdir(parents=True, exist_ok=True)
    path = export_dir / "model_packed.npz"
    save_packed(model, QuantizationConfig.from_mapping(qconfig), path)
    float_bytes = _float32_weights_bytes(model, export_dir / ".model_fp32_reference.npz")
    size = smallest_valid_input(spec, 32)
    tile = np.random.default_rng(0).random((1, size, size, spec.in_channels), dtype=np.float32)
    max_diff = float(np.max(np.abs(load_packed(path)(tile).numpy() - model(tile).numpy())))
    if max_diff > 1e-5:
        raise UNetError(f"{path}: the reloaded packed model differs from the trained one by {max_diff}")
    entry = {"file": path.name, "format": "packed", "precision": qconfig["quantization"],
             "spec": dataclasses.asdict(spec), "class_names": list(info.class_names), "tile_size": None,
             "size_bytes": path.stat().st_size, "float32_weights_bytes": float_bytes,
             "size_ratio_vs_float32": float_bytes / path.stat().st_size, "max_abs_logit_diff": max_diff,
             "quantization_config": qconfig, "step": info.extra.get("step")}
    record_artifact(export_dir, entry)
    entry = finish_artifact(cfg, entry, size, spec.in_channels)
    logger.log("EXPORT", {"artifact": str(path), "format": "packed", "size_bytes": entry["size_bytes"],
                          "float32_weights_bytes": float_bytes,
                          "size_ratio_vs_float32": round(entry["size_ratio_vs_float32"], 3)})
    return entry



def _float32_weights_bytes(model: Any, scratch: pathlib.Path) -> int:
    """Bytes of the model's weights written as float32 in the same container (architecture + npz)."""
    from model.packing import save_float32

    size = save_float32(model, scratch)
    scratch.unlink()
    return size

