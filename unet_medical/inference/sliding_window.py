"""Sliding-window inference of a 3D network over a whole volume (nnU-Net's, Isensee et al. 2021).

Patches of the training size overlap by `overlap` (0.5: each voxel is seen by up to 8 patches); each
patch's softmax probabilities are weighted by a Gaussian importance map (sigma = patch / 8 per axis,
maximum 1), because a same-padding network sees the least context at a patch's border and predicts
worst there; the weighted sums are divided by the summed weights. A volume smaller than the patch
along an axis is zero-padded (centred) to the patch and the result cropped back, so any size works.

`predict` is any callable batch (B, P0, P1, P2, C) float32 -> probabilities (B, P0, P1, P2, K); the
functions here are pure NumPy around it.
"""
from __future__ import annotations

import itertools
from typing import Callable, Sequence

import numpy as np

from unet_medical.base.errors import UNetError
from unet_medical.data.mirror_axes import AXES as MIRROR_AXES

PatchPredictor = Callable[[np.ndarray], np.ndarray]

SIGMA_SCALE = 1.0 / 8.0
"""Gaussian sigma as a fraction of the patch side (nnU-Net)."""


def gaussian_importance(patch: Sequence[int], sigma_scale: float = SIGMA_SCALE) -> np.ndarray:
    """(P0, P1, P2) float32 weights: a Gaussian centred on the patch with sigma = side * sigma_scale per
    axis, scaled to a maximum of 1; its smallest values are raised to the smallest non-zero one, so no
    voxel gets weight 0 (a voxel covered by border voxels only would divide by zero)."""
    axes = []
    for side in patch:
        centre = (side - 1) / 2.0
        sigma = max(side * sigma_scale, 1e-6)
        axes.append(np.exp(-0.5 * ((np.arange(side) - centre) / sigma) ** 2))
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    weights = weights / weights.max()
    smallest = weights[weights > 0].min()
    return np.maximum(weights, smallest).astype(np.float32)


def axis_window_starts(length, patch: int, overlap: float, xp=np):
    """First voxels of the windows along one axis of `length` >= patch voxels: the fewest windows whose
    step is at most patch * (1 - overlap), spread evenly from 0 to length - patch (rounded half to even).

    The one origin rule of NumPy inference and of the SavedModel's graph: `xp` is NumPy, or a namespace
    of the same five names over TensorFlow ops (export.volume_serving.GRAPH_OPS) with `length` a tensor.
    Returns int (n,) starts.
    """
    target = max(1.0, patch * (1.0 - overlap))
    span = xp.asarray(length, xp.float64) - patch
    count = xp.ceil(span / target) + 1.0  # span 0: one window at 0
    step = span / xp.maximum(count - 1.0, 1.0)
    return xp.asarray(xp.rint(step * xp.arange(count)), xp.int32)


def centre_padding(length, patch: int, xp=np):
    """(before, after) zero voxels that centre an axis shorter than the patch in it ((0, 0) otherwise);
    like axis_window_starts, for NumPy ints or (with xp = GRAPH_OPS) tensors."""
    missing = xp.maximum(patch - length, 0)
    return missing // 2, missing - missing // 2


def window_starts(length: int, patch: int, overlap: float) -> list[int]:
    """axis_window_starts as a list, refusing an axis shorter than the patch (pad it first)."""
    if length < patch:
        raise UNetError(f"an axis of {length} voxels is shorter than the patch ({patch}); pad it first")
    return [int(s) for s in axis_window_starts(length, patch, overlap)]


def sliding_window_predict(predict: PatchPredictor, volume: np.ndarray, patch: Sequence[int], *,
                           overlap: float = 0.5, batch_size: int = 1, gaussian: bool = True,
                           mirror: bool = False, mirror_axes: Sequence[int] = MIRROR_AXES) -> np.ndarray:
    """Class probabilities (I, J, K, n_classes) float32 of a volume (I, J, K, C) float32.

    Args:
        predict: batch (B, P0, P1, P2, C) -> probabilities (B, P0, P1, P2, n_classes).
        patch: (P0, P1, P2) window in voxels.
        overlap: fraction of a window shared with its neighbour along each axis, in [0, 1).
        batch_size: windows per `predict` call.
        gaussian: weight each window by gaussian_importance (else uniformly: a plain average).
        mirror: test-time augmentation, the mean over the flips of `mirror_axes` (nnU-Net's mirroring: all
            three axes, 8 passes; data.mirror_axes keeps an axis whose anatomy has an order).
    """
    if volume.ndim != 4:
        raise UNetError(f"sliding-window inference expects a volume (I, J, K, C), got shape {volume.shape}")
    if not 0.0 <= overlap < 1.0:
        raise UNetError(f"overlap must be in [0, 1), got {overlap!r}")
    patch = tuple(int(p) for p in patch)
    shape = volume.shape[:3]
    pad = [tuple(int(n) for n in centre_padding(s, p)) for s, p in zip(shape, patch)]
    padded = np.pad(np.asarray(volume, np.float32), pad + [(0, 0)])
    starts = list(itertools.product(*(window_starts(n, p, overlap) for n, p in zip(padded.shape[:3], patch))))
    weights = gaussian_importance(patch) if gaussian else np.ones(patch, np.float32)
    total: np.ndarray | None = None
    weight_sum = np.zeros(padded.shape[:3], np.float32)
    for first in range(0, len(starts), batch_size):
        chunk = starts[first:first + batch_size]
        windows = np.stack([padded[a:a + patch[0], b:b + patch[1], c:c + patch[2]] for a, b, c in chunk])
        probs = (predict_mirrored(predict, windows, mirror_axes) if mirror
                 else np.asarray(predict(windows), np.float32))
        if total is None:
            total = np.zeros(padded.shape[:3] + (probs.shape[-1],), np.float32)
        for (a, b, c), p in zip(chunk, probs):
            region = (slice(a, a + patch[0]), slice(b, b + patch[1]), slice(c, c + patch[2]))
            total[region] += p * weights[..., None]
            weight_sum[region] += weights
    assert total is not None  # at least one window: every axis is at least one patch long
    result = total / weight_sum[..., None]
    crop = tuple(slice(before, before + s) for (before, _), s in zip(pad, shape))
    return np.ascontiguousarray(result[crop])


def mirror_flips(mirror_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """The batch axes (1-3) each mirrored pass reverses, in the order every implementation sums them: all
    2 ** len(mirror_axes) subsets of the spatial axes `mirror_axes` (0 = I), the plain pass first."""
    axes = sorted(int(a) for a in mirror_axes)
    return [tuple(axis + 1 for axis, flip in zip(axes, flips) if flip)
            for flips in itertools.product((False, True), repeat=len(axes))]


def predict_mirrored(predict: PatchPredictor, windows: np.ndarray,
                     mirror_axes: Sequence[int] = MIRROR_AXES) -> np.ndarray:
    """Mean probabilities over the flips of the spatial axes `mirror_axes` (all three: 8 passes) of a batch
    (B, P0, P1, P2, C)."""
    total = None
    flips = mirror_flips(mirror_axes)
    for axes in flips:
        probs = np.asarray(predict(np.ascontiguousarray(np.flip(windows, axes))), np.float32)
        probs = np.flip(probs, axes)
        total = probs if total is None else total + probs
    return total / float(len(flips))
