"""--loss: the training losses by name. TF-free, so `--help` lists the choices without importing TensorFlow.

A loss is `fn(logits, labels, num_classes, *, dice_weight, weights) -> float32 scalar`:
logits (B, H, W, C) before softmax (any float dtype), labels (B, H, W) integer class ids, weights
(B, H, W) per-pixel weights or None; `dice_weight` is --dice_weight, which a loss may ignore.
Built-in entries are lazy references into unet_medical.training.losses; a plugin registers a callable:

    from unet_medical.training.loss_registry import LOSSES

    @LOSSES.register("toy_mae")
    def toy_mae(logits, labels, num_classes, **options): ...
"""
from __future__ import annotations

from typing import Any, Protocol

from unet_medical.base.registry import Registry


class LossFn(Protocol):
    def __call__(self, logits: Any, labels: Any, num_classes: int, *, dice_weight: float,
                 weights: Any) -> Any: ...


LOSSES: Registry[LossFn] = Registry("loss", flag="--loss")

# Today's loss (and the default): pixel-wise cross-entropy + dice_weight * (1 - mean soft Dice).
DEFAULT_LOSS = "ce_dice"
LOSSES.register_lazy(DEFAULT_LOSS, "unet_medical.training.losses:cross_entropy_dice_loss")
# For thin, branching structures (vessels, membranes): half of the Dice term becomes clDice, Dice between each
# mask and the other's soft skeleton, which punishes a broken vessel more than a thinner one.
LOSSES.register_lazy("ce_dice_cldice", "unet_medical.training.losses:cross_entropy_dice_cldice_loss")
