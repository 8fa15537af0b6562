"""Deep supervision (--deep_supervision): the loss also scores coarser decoder levels, through heads that
exist only while training.

As nnU-Net does (Isensee et al., Nature Methods 2021): every decoder level but the deepest gets a 1x1
convolution to class logits, and the loss is sum_l w_l * loss(logits_l, labels_l) with w_l proportional to
1 / 2**(l - 1) (level 1 is the network's own head, full resolution), normalized to sum to 1. The labels of
level l are the full-resolution labels sampled every 2**(l - 1) pixels (nearest neighbour: class ids stay
class ids). The gradient then reaches the deep decoder directly (what it gained: README, "Deep supervision").

The network the run ships is unchanged: the heads are a second Keras model over the same layers
(`SupervisedNetwork.trained`), and their weights travel only in last.npz (the "aux" group) so a resume
continues them. Same padding only: a valid-padding decoder level is not an exact 2**(l-1) subsampling of
the output grid.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import tensorflow as tf
import tf_keras as keras

from unet_medical.base.errors import UNetError
from unet_medical.model.blocks import INITIALIZER, POOL_SIZE, spatial_layers
from unet_medical.training.config import deep_supervision_obstacle

LEVEL_OUTPUT = "dec{level}_relu2"  # the last layer of decoder level `level` (model.blocks.two_conv)


def supervised_levels(depth: int) -> list[int]:
    """Decoder levels that get a head: 1 (the network's own) to depth - 1; the deepest decoder level
    (depth, right above the bottleneck) is left out, as nnU-Net leaves out its two lowest resolutions."""
    return list(range(1, depth))


def level_weights(levels: Sequence[int]) -> list[float]:
    """Loss weight of each level: 1 / 2**(level - 1), normalized to sum 1 (levels 1, 2, 3 -> 4/7, 2/7, 1/7)."""
    raw = [0.5 ** (level - 1) for level in levels]
    return [w / sum(raw) for w in raw]


def subsample(labels: tf.Tensor, level: int) -> tf.Tensor:
    """Labels (B, *spatial) at decoder level `level`: every 2**(level-1)-th pixel along each spatial axis,
    starting at the middle of the first block (nearest neighbour), e.g. (B, 256, 256) -> (B, 64, 64) at level 3.
    Also for per-pixel weights (B, *spatial)."""
    stride = POOL_SIZE ** (level - 1)
    if stride == 1:
        return labels
    spatial = labels.shape.rank - 1
    return labels[(slice(None),) + (slice(stride // 2, None, stride),) * spatial]


@dataclasses.dataclass(frozen=True)
class SupervisedNetwork:
    """`trained`: the network with the heads' outputs too, (logits of level 1, of level 2, ...), each
    (B, *spatial / 2**(level-1), K) float32; `heads`: the head layers (their weights are the "aux" group of
    a checkpoint); `levels` and `weights` as supervised_levels and level_weights."""

    trained: keras.Model
    heads: tuple[keras.layers.Layer, ...]
    levels: tuple[int, ...]
    weights: tuple[float, ...]

    @property
    def aux_variables(self) -> list[tf.Variable]:
        return [v for head in self.heads for v in head.weights]

    def loss(self, loss_fn: Callable[..., tf.Tensor], outputs: Sequence[tf.Tensor], labels: tf.Tensor,
             n_classes: int, dice_weight: float, pixel_weights: tf.Tensor | None) -> tf.Tensor:
        """sum_l w_l * loss_fn(outputs[l], labels at level l): a float32 scalar."""
        total = tf.constant(0.0, tf.float32)
        for level, weight, logits in zip(self.levels, self.weights, outputs):
            scaled = None if pixel_weights is None else subsample(pixel_weights, level)
            value = loss_fn(logits, subsample(labels, level), n_classes, dice_weight=dice_weight, weights=scaled)
            total += weight * tf.cast(value, tf.float32)
        return total


def supervise(model: keras.Model, n_classes: int) -> SupervisedNetwork:
    """`model` (a same-padding U-Net of model.unet, depth >= 3) with a 1x1 head on each supervised decoder level.

    Raises UNetError in one line when the network cannot be deep-supervised (training.config's
    deep_supervision_obstacle of its own layers), or its decoder layers were renamed by a model variant."""
    depth = 0
    while _layer(model, LEVEL_OUTPUT.format(level=depth + 1)) is not None:
        depth += 1
    if depth == 0:
        raise UNetError(f"--deep_supervision: the network has no layer {LEVEL_OUTPUT.format(level=1)} (a quantized "
                        "or compressed model's layers are renamed); train without --deep_supervision")
    first_conv = _layer(model, "dec1_conv1")
    obstacle = deep_supervision_obstacle(getattr(first_conv, "padding", "same"), depth, quantized=False)
    if obstacle is not None:
        raise UNetError(f"--deep_supervision: the network has {obstacle}")
    levels = supervised_levels(depth)
    image = model.inputs[0]
    conv, _, _ = spatial_layers(image.shape.rank - 2)
    heads = tuple(conv(n_classes, 1, kernel_initializer=INITIALIZER, dtype="float32", name=f"ds{level}_head")
                  for level in levels[1:])
    features = [model.get_layer(LEVEL_OUTPUT.format(level=level)).output for level in levels[1:]]
    trained = keras.Model(model.inputs, [model.outputs[0]] + [head(x) for head, x in zip(heads, features)],
                          name=f"{model.name}_supervised")
    return SupervisedNetwork(trained, heads, tuple(levels), tuple(level_weights(levels)))


def _layer(model: keras.Model, name: str) -> keras.layers.Layer | None:
    return next((layer for layer in model.layers if layer.name == name), None)

