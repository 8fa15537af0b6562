"""Volumes as 2D slices for the 2D U-Net (--dims 2): each case cut along its third voxel axis (K).

Slice k of a case is image.array[:, :, k, :] as (H, W, C) = (I, J, C) and labels.array[:, :, k] as
(H, W); predicted slices stacked back along K give a label map on the case's own voxel grid, which
data.volumes.write_nifti saves with the input's geometry.

Intensities become the uint16 images SegmentationData holds, through a window per channel:
- CT ("CT" channel name, Hounsfield units): one window for the whole data set, the 0.5 and 99.5
  percentiles of the foreground voxels (label > 0) of the training cases, nnU-Net's CT rule (the HU
  scale is absolute, so every case gets the same window and the window must be stored with the model
  for prediction).
- Any other channel (MRI, ...): each case's own 0.5 and 99.5 percentiles, nnU-Net's per-image rule
  (MR intensities have no absolute scale).
window [lo, hi] maps linearly to 0..65535 (values outside are clipped); "global" normalization then
gives [0, 1] over the window.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from unet_medical.base.errors import UNetError
from unet_medical.data.layouts import SegmentationData
from unet_medical.data.volume_dims import volume_inputs
from unet_medical.data.volume_layouts import VolumeCase, VolumeDataSet

PERCENTILES = (0.5, 99.5)
# Foreground voxels sampled per case for the CT window: percentiles are stable long before every voxel
# of a large CT set is read (nnU-Net samples 10,000 per case).
CT_SAMPLES_PER_CASE = 10_000

Window = tuple[float, float]


@dataclasses.dataclass(frozen=True, eq=False)
class SliceSet:
    """The slices of a volume set and where each came from.

    Attributes:
        data: SegmentationData of all slices, case after case, k increasing; names "CASE[k]".
        case_of_slice: (N,) int64, index into `cases` of each slice's case (for folds by case).
        cases: case names, in data set order.
        windows: per channel, the CT window (lo, hi) of the set, or None for per-case windows.
    """

    data: SegmentationData
    case_of_slice: np.ndarray
    cases: tuple[str, ...]
    windows: tuple[Window | None, ...]


def ct_window(cases: list[VolumeCase], channel: int, seed: int = 0) -> Window:
    """(0.5, 99.5) percentiles of channel `channel` over labelled foreground voxels, sampled per case."""
    rng = np.random.default_rng(seed)
    samples = []
    for case in cases:
        if case.labels is None:
            raise UNetError(f"case {case.name}: the CT window needs labelled training cases")
        values = case.image.array[..., channel][case.labels.array > 0]
        if len(values) > CT_SAMPLES_PER_CASE:
            values = rng.choice(values, CT_SAMPLES_PER_CASE, replace=False)
        samples.append(values)
    voxels = np.concatenate(samples) if samples else np.empty(0)
    if voxels.size == 0:
        raise UNetError("no foreground voxel in any label map: the CT intensity window cannot be measured")
    lo, hi = np.percentile(voxels.astype(np.float64), PERCENTILES)
    return float(lo), float(hi)


def to_uint16(values: np.ndarray, window: Window) -> np.ndarray:
    """values clipped to window [lo, hi] and mapped linearly to 0..65535 (a flat window gives zeros)."""
    lo, hi = window
    if hi <= lo:
        return np.zeros(values.shape, np.uint16)
    scaled = (np.clip(values.astype(np.float64), lo, hi) - lo) * (65535.0 / (hi - lo))
    return np.round(scaled).astype(np.uint16)


def set_windows(dataset: VolumeDataSet) -> tuple[Window | None, ...]:
    """Per channel: the data set's CT window for a "CT" channel, None (per-case windows) otherwise."""
    return tuple(ct_window(dataset.cases, c) if name.upper() == "CT" else None
                 for c, name in enumerate(dataset.channel_names))


def case_image_uint16(case: VolumeCase, windows: tuple[Window | None, ...]) -> np.ndarray:
    """(I, J, K, C) uint16 image of one case under `windows` (None: the case's own percentiles)."""
    channels = []
    for c, window in enumerate(windows):
        values = case.image.array[..., c]
        if window is None:
            window = tuple(float(v) for v in np.percentile(values, PERCENTILES))
        channels.append(to_uint16(values, window))
    return np.stack(channels, axis=-1)


def volume_slices(dataset: VolumeDataSet, windows: tuple[Window | None, ...] | None = None,
                  context: int = 0) -> SliceSet:
    """All slices of `dataset` (see the module docstring); windows None: measured here (set_windows).

    context > 0 (--dims 2.5): each slice's image also holds its `context` neighbours on each side
    as channels (data.volume_dims.slice_input); masks stay the centre slice's.
    """
    windows = set_windows(dataset) if windows is None else windows
    if len(windows) != len(dataset.channel_names):
        raise UNetError(f"{len(windows)} intensity windows for {len(dataset.channel_names)} channels")
    images, masks, names, owner = [], [], [], []
    labelled = all(case.labels is not None for case in dataset.cases)
    for index, case in enumerate(dataset.cases):
        image = case_image_uint16(case, windows)
        for k, inputs in enumerate(volume_inputs(image, context)):
            images.append(inputs)
            if labelled:
                masks.append(np.ascontiguousarray(case.labels.array[:, :, k]))
            names.append(f"{case.name}[{k}]")
            owner.append(index)
    data = SegmentationData(images, masks if labelled else None, names, dataset.class_names, dataset.source)
    return SliceSet(data, np.asarray(owner, np.int64), tuple(c.name for c in dataset.cases), windows)


def stack_slices(predicted: list[np.ndarray]) -> np.ndarray:
    """(H, W) class maps of one case's slices k = 0..K-1 -> (I, J, K) label map on the case's grid."""
    return np.stack(predicted, axis=-1)
