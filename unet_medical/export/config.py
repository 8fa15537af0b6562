"""The export stage's settings: the run's SavedModel and --exec_mode export's format and precision.
Standard library only (no TensorFlow): the command line builds its flags from it."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from unet_medical.inference.artifact_formats import EXPORT_FORMATS  # names only, TF-free
from unet_medical.base.settings import Settings, setting

EXPORT_PRECISIONS = ("fp32", "bf16", "fp16", "int8")


@dataclasses.dataclass(frozen=True)
class ExportConfig(Settings):
    """What leaves the project (unet_medical.export)."""

    section: ClassVar[str] = "export"
    title: ClassVar[str] = "export"

    saved_model: bool = setting(True, "training ends by writing model_dir/saved_model/: the --checkpoint weights as a "
                               "SavedModel whose serving_default runs predict's tiled inference on raw images "
                               "(docs/deployment.md)")
    export_format: str | None = setting(None, "--exec_mode export target (default: export every CPU "
                                       "candidate, time each on this machine and keep the fastest that passes "
                                       "parity, see utils.export.select)", choices=EXPORT_FORMATS.names)
    export_precision: str | None = setting(None, "export precision (default: fp32 for a given --export_format; "
                                          "without one, only candidates of this precision compete; int8 "
                                          "calibrates on images only: no masks needed)", choices=EXPORT_PRECISIONS)
