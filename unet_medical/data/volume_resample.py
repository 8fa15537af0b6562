"""Resampling volumes to a target voxel spacing and back (nnU-Net's rules, scipy.ndimage.zoom's splines).

A case of shape (I, J, K) at spacing s (mm along i, j, k) becomes round(shape * s / t) voxels at the
target spacing t. The grids are aligned on the volume's outer faces, not on its corner voxel centres
(scipy's grid_mode=True, as skimage.transform.resize, which nnU-Net uses): the physical extent
shape * s is kept, so an object keeps its size in mm.

- Images: cubic spline per channel (order 3).
- Label maps: each class's one-hot map linearly interpolated, then the most likely class per voxel
  (nnU-Net's per-class rule: thin structures survive better than with nearest neighbour).
- Probabilities back onto the case's own grid: linear per class, then the most likely class.
- Anisotropic rule (nnU-Net): when the spacing (or else the target) has one axis more than
  ANISOTROPY_THRESHOLD times coarser than the finest, that out-of-plane axis is resampled with order 0
  (nearest) and the two in-plane axes with the order above, slice by slice: interpolating across
  thick slices would blend anatomy that lies millimetres apart.

The target spacing of a data set (choose_target_spacing, --target_spacing): auto = the median spacing,
applied only when some case's spacing differs from it by more than SPACING_TOLERANCE on some axis.
"""
from __future__ import annotations

import functools
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from unet_medical.base.errors import UNetError

ANISOTROPY_THRESHOLD = 3.0  # nnU-Net's: beyond it the coarse axis is resampled apart, by nearest neighbour
# auto resamples only if some case's spacing is off the median by more than this on some axis. Below it an
# object's size in voxels varies less than the zoom augmentation varies it anyway (2-D 0.8-1.2, 3-D 0.85-1.15),
# so resampling would only cost an interpolation's blur and its time.
SPACING_TOLERANCE = 0.10
IMAGE_ORDER, LABEL_ORDER, PROBABILITY_ORDER = 3, 1, 1
# Cubic-spline weights decay as 0.27 per voxel of distance: dropping those below this floor changes a value
# by less than 1e-6 of the image's range and keeps each axis's matrix to about 25 weights a row.
WEIGHT_FLOOR = 1e-7
TARGET_FLAG = "--target_spacing"

Spacing = tuple[float, float, float]


def parse_target_spacing(text: str) -> Spacing | str:
    """--target_spacing: "auto", "none", or three spacings in mm "A,B,C" (along i, j, k, each > 0)."""
    value = str(text).strip().lower()
    if value in ("auto", "none"):
        return value
    try:
        spacing = tuple(float(v) for v in value.split(","))
    except ValueError:
        spacing = ()
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise UNetError(f"{TARGET_FLAG}={text}: expected auto, none, or three positive spacings in mm, e.g. 1,1,2.5")
    return spacing  # type: ignore[return-value]


def format_spacing(spacing: Sequence[float] | None) -> str:
    """The --target_spacing value of a resolved target: "A,B,C" (mm) or "none"."""
    return "none" if spacing is None else ",".join(f"{float(s):g}" for s in spacing)


def choose_target_spacing(spacings: np.ndarray, request: str | Sequence[float] | None, names: Sequence[str] = ()
                          ) -> tuple[Spacing | None, str]:
    """(target spacing in mm or None = keep every case's grid, why) for cases of `spacings` (N, 3) mm.

    request: "auto" (resample to the median spacing when some case is off it by more than
    SPACING_TOLERANCE on some axis), "none", three spacings "A,B,C" or a sequence of three floats.
    """
    parsed = parse_target_spacing(request) if isinstance(request, str) else request
    if parsed is None or parsed == "none":
        return None, f"{TARGET_FLAG} none: every case stays on its own voxel grid"
    if parsed != "auto":
        target = tuple(round(float(s), 6) for s in parsed)
        return target, f"{TARGET_FLAG} {format_spacing(target)}: every case is resampled to it"  # type: ignore
    spacings = np.asarray(spacings, np.float64).reshape(-1, 3)
    median = np.median(spacings, axis=0)
    deviation = np.abs(spacings / median - 1.0)
    case, axis = np.unravel_index(int(np.argmax(deviation)), deviation.shape)
    worst = float(deviation[case, axis])
    median_text = "x".join(f"{s:g}" for s in np.round(median, 4))
    if worst <= SPACING_TOLERANCE:
        return None, (f"{TARGET_FLAG} auto: every case's spacing is within {SPACING_TOLERANCE:.0%} of the median "
                      f"{median_text} mm on every axis (largest {worst:.1%}), so each stays on its own grid "
                      "(resampling would only blur by interpolation and cost time)")
    name = names[case] if len(names) > case else f"case {case}"
    target = tuple(round(float(s), 4) for s in median)
    return target, (f"{TARGET_FLAG} auto: {name}'s spacing {'x'.join(f'{s:g}' for s in spacings[case])} mm is "  # type: ignore
                    f"{worst:.0%} off the median {median_text} mm along axis {'IJK'[axis]} (more than "
                    f"{SPACING_TOLERANCE:.0%}): every case is resampled to the median spacing (nnU-Net)")


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, int, int]:
    """round(shape * spacing / target), at least one voxel per axis: (I', J', K') of the resampled case."""
    new = np.round(np.asarray(shape[:3], np.float64) * np.asarray(spacing, np.float64) / np.asarray(target, np.float64))
    return tuple(int(max(1, n)) for n in new)  # type: ignore[return-value]


def out_of_plane_axis(spacing: Sequence[float], target: Sequence[float]) -> int | None:
    """The axis resampled apart by nearest neighbour (nnU-Net's rule), or None.

    The spacing's coarsest axis if it is more than ANISOTROPY_THRESHOLD times its finest, else the
    target's; None if neither is that anisotropic or two axes tie for coarsest (no single slice axis).
    """
    for grid in (np.asarray(spacing, np.float64), np.asarray(target, np.float64)):
        if grid.max() / grid.min() > ANISOTROPY_THRESHOLD:
            coarse = np.flatnonzero(np.isclose(grid, grid.max()))
            return int(coarse[0]) if len(coarse) == 1 else None
    return None


@functools.lru_cache(maxsize=64)
def axis_weights(size: int, new_size: int, order: int) -> Any:
    """(new_size, size) scipy.sparse CSR float32 matrix resampling `size` samples to `new_size` along one axis.

    Its rows are scipy.ndimage.zoom's own weights (a spline of `order`, spline prefilter included, faces aligned,
    mirrored boundary), read off by zooming the identity; weights below WEIGHT_FLOOR are dropped.
    """
    from scipy import ndimage, sparse

    weights = ndimage.zoom(np.eye(size), (new_size / size, 1.0), order=order, mode="reflect", grid_mode=True)
    weights[np.abs(weights) < WEIGHT_FLOOR] = 0.0
    return sparse.csr_matrix(weights.astype(np.float32))


def resample_axis(volume: np.ndarray, axis: int, new_size: int, order: int) -> np.ndarray:
    """float32 `volume` with `axis` resampled to new_size samples (axis_weights); other axes untouched."""
    if volume.shape[axis] == new_size:
        return volume
    moved = np.moveaxis(volume, axis, 0)
    flat = moved.reshape(moved.shape[0], -1)
    out = np.asarray(axis_weights(moved.shape[0], new_size, order) @ flat, np.float32)
    return np.moveaxis(out.reshape((new_size,) + moved.shape[1:]), 0, axis)


def resample_to_shape(volume: np.ndarray, shape: Sequence[int], order: int, slice_axis: int | None = None
                      ) -> np.ndarray:
    """(I, J, K[, C]) -> (I', J', K'[, C]) float32, each channel by a spline of `order`, faces aligned.

    slice_axis given: that axis is resampled with order 0 (nearest slice), the other two with `order`,
    nnU-Net's treatment of anisotropic volumes. The tensor-product spline is separable, so the axes are
    resampled one after another, each by a sparse matrix of scipy.ndimage.zoom's weights: the same values
    as one 3-D zoom (within 1e-6 of the range) at a seventh to a ninth of its time on a 512x512x100 CT
    (benchmarks/volume_resample.py).
    An axis whose size does not change is left alone.
    """
    array = np.asarray(volume)
    if array.ndim == 4:
        return np.stack([resample_to_shape(array[..., c], shape, order, slice_axis)
                         for c in range(array.shape[-1])], axis=-1)
    if array.ndim != 3:
        raise UNetError(f"resampling expects an (I, J, K) or (I, J, K, C) volume, got shape {array.shape}")
    out = array.astype(np.float32)  # a copy: the result never shares memory with the input
    for axis, size in enumerate(shape[:3]):
        out = resample_axis(out, axis, int(size), 0 if axis == slice_axis else order)
    return np.ascontiguousarray(out)


def resample_image(image: np.ndarray, spacing: Sequence[float], target: Sequence[float]) -> np.ndarray:
    """(I, J, K[, C]) image at `spacing` mm -> float32 at `target` mm (cubic; anisotropic rule above)."""
    shape = resampled_shape(image.shape, spacing, target)
    return resample_to_shape(image, shape, IMAGE_ORDER, out_of_plane_axis(spacing, target))


def most_likely_class(class_maps: Iterable[np.ndarray]) -> np.ndarray:
    """uint8 (I, J, K): index of the largest of the class maps (I, J, K) given in class order; ties go to
    the lower class. Maps are consumed one at a time, so only two are held besides the result."""
    best, labels = None, None
    for c, values in enumerate(class_maps):
        if best is None:
            best, labels = values.astype(np.float32, copy=True), np.zeros(values.shape, np.uint8)
            continue
        better = values > best
        labels[better] = c
        np.maximum(best, values, out=best)
    if labels is None:
        raise UNetError("no class maps to choose from")
    return labels


def resample_labels(labels: np.ndarray, spacing: Sequence[float], target: Sequence[float],
                    num_classes: int) -> np.ndarray:
    """(I, J, K) class indices at `spacing` mm -> uint8 (I', J', K') at `target` mm: every class's one-hot
    map linearly interpolated (anisotropic rule above), then the most likely class."""
    shape = resampled_shape(labels.shape, spacing, target)
    if tuple(labels.shape) == shape:
        return np.asarray(labels, np.uint8).copy()
    axis = out_of_plane_axis(spacing, target)
    return most_likely_class(resample_to_shape((labels == c).astype(np.float32), shape, LABEL_ORDER, axis)
                             for c in range(num_classes))


def probabilities_on_grid(probabilities: np.ndarray, shape: Sequence[int], spacing: Sequence[float],
                          target: Sequence[float]) -> np.ndarray:
    """float32 (I, J, K, n) class probabilities on a case's own grid (`shape`, `spacing` mm) from (I', J', K', n)
    predicted at `target` mm: each class linearly interpolated back (anisotropic rule above), as
    probabilities_to_labels does before its argmax."""
    classes = (probabilities[..., c] for c in range(probabilities.shape[-1]))
    return np.stack(list(class_maps_on_grid(classes, shape, spacing, target)), axis=-1)


def class_maps_on_grid(class_maps: Iterable[np.ndarray], shape: Sequence[int], spacing: Sequence[float],
                       target: Sequence[float]) -> Iterator[np.ndarray]:
    """A case's class probability maps (I', J', K') predicted at `target` mm, each linearly interpolated
    back onto the case's own grid (`shape`, `spacing` mm; anisotropic rule above), one at a time."""
    axis = out_of_plane_axis(spacing, target)
    return (resample_to_shape(p, shape, PROBABILITY_ORDER, axis) for p in class_maps)


def probabilities_to_labels(class_maps: Iterable[np.ndarray], shape: Sequence[int], spacing: Sequence[float],
                            target: Sequence[float]) -> np.ndarray:
    """uint8 (I, J, K) label map on a case's own grid from its class probability maps predicted at
    `target` mm (class_maps_on_grid), then the most likely class."""
    return most_likely_class(class_maps_on_grid(class_maps, shape, spacing, target))
