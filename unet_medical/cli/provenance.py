"""Which model, weights file, precision and inputs produced an evaluate's scores or a predict's files.

Every evaluate writes a `provenance` block into its results and every predict a provenance.json beside its
files, so a score or a mask can be traced to the exact bytes that made it (the file's SHA-256) long after
later runs wrote theirs. A standalone evaluate writes eval_results_<weights>.json: the training run's
eval_results.json, which the model card and the CV summary read, stays the training run's.
"""
from __future__ import annotations

import os
import pathlib
from typing import Any, Sequence

from unet_medical.base.artifacts import EVAL_RESULTS, RunRecord, checkpoint_file
from unet_medical.base.fileio import sha256_of
from unet_medical.cli.config import Config

PROVENANCE = "provenance.json"


def weights_file(cfg: Config) -> pathlib.Path:
    """The file the restored model's weights came from: --model_path, or model_dir's --checkpoint."""
    if cfg.model_path:
        return pathlib.Path(cfg.model_path)
    return checkpoint_file(cfg.model_dir, cfg.checkpoint)


def provenance(cfg: Config, info: RunRecord, data_source: str | os.PathLike, names: Sequence[str]
               ) -> dict[str, Any]:
    """The provenance block of a standalone evaluate or predict."""
    path = weights_file(cfg)
    return {"model_file": str(path.resolve()), "model_sha256": sha256_of(path),
            "checkpoint": None if cfg.model_path else cfg.checkpoint, "step": info.step,
            "precision": info.precision, "normalization": info.normalization,
            "data": str(pathlib.Path(data_source).resolve()), "files": list(names)}


def training_provenance(cfg: Config, precision: str, names: Sequence[str]) -> dict[str, Any]:
    """The provenance block of an evaluation during training: the network in memory at that step."""
    return {"model_file": None, "model_sha256": None, "checkpoint": "in memory at the evaluated step",
            "precision": precision, "normalization": cfg.normalization,
            "data": str(pathlib.Path(cfg.data_dir).resolve()), "files": list(names)}


def evaluation_results_name(cfg: Config) -> str:
    """eval_results_<weights>.json of a standalone evaluate: eval_results_last.json, eval_results_best.json,
    or eval_results_<exported file name>.json."""
    tag = pathlib.Path(cfg.model_path).name if cfg.model_path else cfg.checkpoint
    stem = EVAL_RESULTS.removesuffix(".json")
    return f"{stem}_{''.join(c if c.isalnum() or c in '-_.' else '_' for c in tag)}.json"
