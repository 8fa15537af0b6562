"""The evaluation stage's settings: how predictions are scored. Standard library only (no TensorFlow):
the command line builds its flags from it."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from unet_medical.base.settings import Settings, at_least, setting


@dataclasses.dataclass(frozen=True)
class EvaluationConfig(Settings):
    """How a held-out fold or a test set is scored (unet_medical.evaluation)."""

    section: ClassVar[str] = "evaluation"
    title: ClassVar[str] = "evaluation"

    nsd_tolerance: float = setting(2.0, "volumes: normalized surface distance tolerance in mm",
                                   rule=at_least(0, "millimetres"))
