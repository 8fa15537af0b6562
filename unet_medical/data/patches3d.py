"""Training patches for the 3D U-Net (--dims 3): random patches of whole volumes, foreground
oversampling and 3D augmentation, as pure NumPy functions of (seed, sample number).

Volumes are (I, J, K, C) float32 (normalized) with (I, J, K) integer label maps; a patch is
(P0, P1, P2, C) with its (P0, P1, P2) labels. Voxel axes keep the file's order: I, J in-plane, K
along the slices.

Sampling follows nnU-Net (Isensee et al., Nature Methods 2021): a `foreground` fraction of the
patches (a third by default) is centred on a voxel of a foreground class, chosen by first drawing
a class present in the case and then one of its voxels, so small classes (a lesion next to an organ)
are seen as often as large ones; the other patches are placed uniformly. A volume smaller than the
patch along an axis is zero-padded (image and background label) to the patch, centred.

Augmentation (VolumeAugment): a flip of each axis, a 90-degree rotation in the I-J plane (only when
the patch is square in-plane, so its shape stays), an intensity scale and shift; with probability
`affine_prob` a small rotation about the K axis and an isotropic scaling; with probability
`elastic_prob` the U-Net paper's elastic deformation in 3D (a coarse lattice of Gaussian displacements,
cubic-spline interpolated to every voxel). The affine and the deformation are applied while cutting
the patch out of the whole volume (scipy.ndimage, linear for the image, nearest for the labels), so
rotated corners hold real voxels rather than fill values, and the volume is resampled once.

Every patch is a function of (seed, g) only, g the global sample number (step * global batch +
rank * batch + position in the batch): a run resumed at step s draws the patches an uninterrupted run
draws, as the 2D pipeline (data.pipeline) does.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from unet_medical.base.errors import UNetError

PatchSize = tuple[int, int, int]

FOREGROUND_FRACTION = 1.0 / 3.0
"""nnU-Net's oversample_foreground_percent: a third of the patches centred on foreground."""
MAX_CANDIDATES_PER_CLASS = 4096
"""Foreground voxels kept per case and class as patch centres: a uniform subsample is as good a
choice of centres as every voxel, and bounds memory on large volumes."""


# ---------------------------------------------------------------------------------------------------
# Patch size

def parse_patch_size(text: str | None) -> PatchSize | None:
    """'64' -> (64, 64, 64); '48,48,32' -> (48, 48, 32); None -> None. UNetError names --patch_size."""
    if text is None:
        return None
    parts = [p.strip() for p in str(text).replace("x", ",").split(",")]
    try:
        sides = [int(p) for p in parts]
    except ValueError:
        sides = []
    if len(sides) == 1:
        sides = sides * 3
    if len(sides) != 3 or min(sides) < 1:
        raise UNetError(f"--patch_size={text}: expected one positive integer (a cube) or three, e.g. 48,48,32")
    return (sides[0], sides[1], sides[2])


def check_patch_size(patch: PatchSize, depth: int) -> None:
    """Refuse (one line naming --patch_size) a side that 2**depth poolings cannot halve evenly."""
    step = 2 ** depth
    bad = [p for p in patch if p % step]
    if bad:
        raise UNetError(f"--patch_size={','.join(map(str, patch))}: every side must be a multiple of "
                        f"2**depth = {step} (depth {depth}), got {bad[0]}")


def choose_depth_3d(median_shape: Sequence[int], cap: int) -> int:
    """Poolings of a 3D U-Net for volumes of `median_shape` voxels: as many as keep the coarsest map
    at least 4 voxels along the shortest (capped) side, 1 to 4 (nnU-Net stops at 4 voxels too)."""
    shortest = max(1, min(min(int(s), cap) for s in median_shape))
    return int(min(4, max(1, math.floor(math.log2(shortest / 4))))) if shortest >= 8 else 1


def choose_patch_size(median_shape: Sequence[int], depth: int, cap: int = 64) -> tuple[PatchSize, str]:
    """(patch, reason): the median case shape, each side clipped to `cap` voxels (compute on CPU) and
    rounded to a multiple of 2**depth (down, unless that would leave nothing, then up: the volume is
    padded). nnU-Net starts from the median shape too, pads it up to the multiple and shrinks it to fit the
    GPU's memory; on a CPU budget rounding down measured better (more steps in the same time)."""
    step = 2 ** depth
    sides = []
    for side in median_shape:
        clipped = min(int(side), cap)
        sides.append(max(step, clipped // step * step))
    patch = (sides[0], sides[1], sides[2])
    reason = (f"median case shape {'x'.join(str(int(s)) for s in median_shape)} voxels, each side clipped to "
              f"{cap} and rounded down to a multiple of 2**depth = {step} (rounded up, as nnU-Net pads it, the patch "
              "trained 0.7x the steps in the same time and scored 1.9 Dice points lower on synthetic mr_faint, README)")
    return patch, reason


# ---------------------------------------------------------------------------------------------------
# Sampling

def pad_to_patch(image: np.ndarray, mask: np.ndarray, patch: PatchSize) -> tuple[np.ndarray, np.ndarray]:
    """image (I, J, K, C) and mask (I, J, K) zero-padded (centred) to at least `patch` per axis."""
    pad = [(max(0, p - s) // 2, max(0, p - s) - max(0, p - s) // 2) for s, p in zip(mask.shape, patch)]
    if not any(before or after for before, after in pad):
        return image, mask
    return np.pad(image, pad + [(0, 0)]), np.pad(mask, pad)


def foreground_candidates(mask: np.ndarray, classes: Sequence[int], rng: np.random.Generator,
                          max_count: int = MAX_CANDIDATES_PER_CLASS) -> dict[int, np.ndarray]:
    """{class: (M, 3) int64 voxel indices} of the `classes` present in `mask` (I, J, K), at most
    `max_count` each (a uniform subsample). Classes absent from the mask are left out."""
    found = {}
    for c in classes:
        voxels = np.argwhere(mask == c)
        if len(voxels) > max_count:
            voxels = voxels[np.sort(rng.choice(len(voxels), max_count, replace=False))]
        if len(voxels):
            found[int(c)] = voxels.astype(np.int64)
    return found


def patch_origin(shape: Sequence[int], patch: PatchSize, rng: np.random.Generator,
                 centre: np.ndarray | None = None) -> np.ndarray:
    """(3,) int64 first voxel of a patch inside a volume of `shape` (every side >= the patch's):
    uniform over all positions, or the one that centres `centre` (clipped to stay inside)."""
    limits = np.array(shape[:3], np.int64) - np.array(patch, np.int64)  # last valid origin per axis
    if centre is None:
        return np.array([rng.integers(0, int(high) + 1) for high in limits], np.int64)
    return np.clip(np.asarray(centre, np.int64) - np.array(patch, np.int64) // 2, 0, limits)


@dataclasses.dataclass(frozen=True)
class VolumeAugment:
    """Probabilities and ranges of the 3D augmentation (module docstring). Defaults are mild: the
    nnU-Net ranges for intensities, 15 degrees and 0.85-1.15 for the affine.

    Args:
        flip_prob: probability of flipping each of the three axes, or one per axis (I, J, K), e.g.
            `flip_prob=0.5:0:0.5` keeps the J axis's direction (an anatomy whose order along J is fixed).
        rot90_prob: probability of a 90, 180 or 270 degree rotation in the I-J plane.
        intensity_prob: probability of x * scale + shift with scale in `scale_range`, shift in `shift_range`
            (in normalized units, [0, 1] spans the intensity window).
        affine_prob: probability of a rotation about K by up to `max_angle_deg` and an isotropic scaling
            in `zoom_range` (zoom > 1 magnifies).
        elastic_prob: probability of the elastic deformation; 0 by default, as in nnU-Net's 3D trainer.
            At 0.2 (nnU-Net v1's p_eldef) the CPU recipe's 3 minutes on the synthetic mr_small set trained
            586 steps instead of 656 and scored mean Dice 0.985 against 0.989 (one seed each, docs/volumes.md):
            no gain to pay for. `--augment_params elastic_prob=0.2` turns it on.
        elastic_grid: lattice points per side of the displacement lattice (the U-Net paper: 3).
        elastic_sigma: standard deviation of the lattice displacements, voxels of each axis.
    """

    flip_prob: float | tuple[float, float, float] = 0.5
    rot90_prob: float = 0.5
    intensity_prob: float = 0.5
    scale_range: tuple[float, float] = (0.9, 1.1)
    shift_range: tuple[float, float] = (-0.1, 0.1)
    affine_prob: float = 0.2
    max_angle_deg: float = 15.0
    zoom_range: tuple[float, float] = (0.85, 1.15)
    elastic_prob: float = 0.0
    elastic_grid: int = 3
    elastic_sigma: float = 3.0

    def __post_init__(self) -> None:
        for name in ("flip_prob", "rot90_prob", "intensity_prob", "affine_prob", "elastic_prob"):
            value = getattr(self, name)
            if not (_is_probability(value) or (name == "flip_prob" and isinstance(value, tuple) and len(value) == 3
                                               and all(map(_is_probability, value)))):
                expected = "a probability in [0, 1]" + (", or three (I:J:K)" if name == "flip_prob" else "")
                raise UNetError(f"{name}={value!r}: expected {expected}")
        for name in ("scale_range", "shift_range", "zoom_range"):
            value = getattr(self, name)
            if not (isinstance(value, tuple) and len(value) == 2 and all(map(math.isfinite, value))
                    and value[0] <= value[1]):
                raise UNetError(f"{name}={value!r}: expected low:high with low <= high")
        if min(self.zoom_range) <= 0:
            raise UNetError(f"zoom_range={self.zoom_range!r}: expected zooms > 0")
        if not 0.0 <= self.max_angle_deg <= 180.0:
            raise UNetError(f"max_angle_deg={self.max_angle_deg!r}: expected 0 to 180 degrees")
        if isinstance(self.elastic_grid, bool) or not isinstance(self.elastic_grid, int) or self.elastic_grid < 2:
            raise UNetError(f"elastic_grid={self.elastic_grid!r}: expected an int >= 2")
        if not 0.0 <= self.elastic_sigma < math.inf:
            raise UNetError(f"elastic_sigma={self.elastic_sigma!r}: expected >= 0 voxels")


    def axis_flip_probs(self) -> tuple[float, float, float]:
        """The flip probability of the I, J and K axes."""
        flip = self.flip_prob
        return tuple(map(float, flip)) if isinstance(flip, tuple) else (float(flip),) * 3  # type: ignore[return-value]


    def flipping_only(self, axes: Sequence[int]) -> "VolumeAugment":
        """These settings with no flip along the axes not in `axes` (data.mirror_axes: an ordered axis), and no
        in-plane 90-degree rotation unless I and J are both in `axes` (a quarter turn carries J's order onto I,
        a half turn flips both)."""
        kept = tuple(p if axis in axes else 0.0 for axis, p in enumerate(self.axis_flip_probs()))
        rot90 = self.rot90_prob if {0, 1} <= set(axes) else 0.0
        if kept == self.axis_flip_probs() and rot90 == self.rot90_prob:
            return self
        return dataclasses.replace(self, flip_prob=kept, rot90_prob=rot90)


def _is_probability(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0.0 <= value <= 1.0


def affine_of(rng: np.random.Generator, augment: VolumeAugment) -> np.ndarray:
    """(3, 3) matrix mapping patch offsets (voxels from the patch centre) to volume offsets: a rotation
    about the K axis by a uniform angle in +-max_angle_deg, divided by a uniform zoom."""
    angle = math.radians(rng.uniform(-augment.max_angle_deg, augment.max_angle_deg))
    zoom = rng.uniform(*augment.zoom_range)
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
    return rotation / zoom


def lattice_weights(size: int, grid: int) -> np.ndarray:
    """(size, grid) float64 weights of cubic-spline interpolation from `grid` lattice points spread
    over an axis of `size` samples (first and last points on the end samples): row i gives sample i as
    a weighted sum of the lattice values, as scipy.ndimage.zoom(..., order=3) of the lattice would."""
    from scipy import ndimage  # here, not at the top: data.config (the flags) imports this module

    # One lattice point at a time in 1-D: zooming a (grid, grid) identity would also run the spline
    # prefilter along its second axis, which scipy starts from a truncated sum on so short an axis.
    return np.stack([ndimage.zoom(unit, size / grid, order=3, mode="reflect") for unit in np.eye(grid)], axis=1)


def elastic_displacement(rng: np.random.Generator, patch: PatchSize, grid: int, sigma: float) -> np.ndarray:
    """(P0, P1, P2, 3) float64 smooth random displacement, voxels along each axis: a (grid, grid, grid, 3)
    lattice of N(0, sigma**2) draws interpolated to every voxel by cubic splines, separably (one small
    matrix per axis, so the cost is a few matrix products, not a 3D spline fit per component)."""
    lattice = rng.normal(0.0, sigma, (grid, grid, grid, 3))
    w0, w1, w2 = (lattice_weights(p, grid) for p in patch)
    return np.einsum("ia,jb,kc,abcd->ijkd", w0, w1, w2, lattice, optimize=True)


def cut_patch(image: np.ndarray, mask: np.ndarray, origin: np.ndarray, patch: PatchSize,
              matrix: np.ndarray | None = None,
              displacement: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The patch at `origin` of image (I, J, K, C) and mask (I, J, K): (P0, P1, P2, C) float32 and
    (P0, P1, P2) int32. With `matrix` (3, 3) and/or `displacement` (P0, P1, P2, 3) voxels, voxel o of
    the patch reads the volume at centre + matrix @ (o - (patch - 1) / 2) + displacement[o], centre the
    patch's centre in the volume: linear interpolation for the image, nearest for the labels, zeros
    outside the volume."""
    if matrix is None and displacement is None:
        window = tuple(slice(int(o), int(o) + p) for o, p in zip(origin, patch))
        return image[window].astype(np.float32), mask[window].astype(np.int32)
    from scipy import ndimage  # here, not at the top: data.config (the flags) imports this module

    matrix = np.eye(3) if matrix is None else matrix
    half = (np.array(patch, np.float64) - 1.0) / 2.0
    coords = np.tensordot(matrix, np.indices(patch, dtype=np.float64) - half[:, None, None, None], axes=1)
    coords += (np.asarray(origin, np.float64) + half)[:, None, None, None]
    if displacement is not None:
        coords += np.moveaxis(displacement, -1, 0)
    channels = [ndimage.map_coordinates(image[..., c], coords, order=1, mode="constant", cval=0.0)
                for c in range(image.shape[-1])]
    labels = ndimage.map_coordinates(mask, coords, order=0, mode="constant", cval=0)
    return np.stack(channels, axis=-1).astype(np.float32), labels.astype(np.int32)


def augment_patch(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                  augment: VolumeAugment) -> tuple[np.ndarray, np.ndarray]:
    """Flips, in-plane 90-degree rotation and intensity scale/shift of a patch (P0, P1, P2, C) and its
    labels (P0, P1, P2); the shapes stay."""
    for axis, flip_prob in enumerate(augment.axis_flip_probs()):
        if rng.random() < flip_prob:
            image, mask = np.flip(image, axis), np.flip(mask, axis)
    if image.shape[0] == image.shape[1] and rng.random() < augment.rot90_prob:
        k = int(rng.integers(1, 4))
        image, mask = np.rot90(image, k, axes=(0, 1)), np.rot90(mask, k, axes=(0, 1))
    if rng.random() < augment.intensity_prob:
        image = image * np.float32(rng.uniform(*augment.scale_range)) + np.float32(rng.uniform(*augment.shift_range))
    return np.ascontiguousarray(image, np.float32), np.ascontiguousarray(mask, np.int32)


def sample_patch(image: np.ndarray, mask: np.ndarray, patch: PatchSize, rng: np.random.Generator, *,
                 foreground: float = FOREGROUND_FRACTION, candidates: dict[int, np.ndarray] | None = None,
                 augment: VolumeAugment | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One training patch of a volume (already padded to the patch, pad_to_patch): (P0, P1, P2, C)
    float32 image and (P0, P1, P2) int32 labels, centred on a foreground voxel with probability
    `foreground` when the case has one (`candidates`, foreground_candidates), else placed uniformly."""
    centre = None
    if candidates and rng.random() < foreground:
        classes = sorted(candidates)
        voxels = candidates[classes[int(rng.integers(len(classes)))]]
        centre = voxels[int(rng.integers(len(voxels)))]
    origin = patch_origin(mask.shape, patch, rng, centre)
    matrix = affine_of(rng, augment) if augment is not None and rng.random() < augment.affine_prob else None
    displacement = None
    if augment is not None and augment.elastic_prob > 0 and rng.random() < augment.elastic_prob:
        displacement = elastic_displacement(rng, patch, augment.elastic_grid, augment.elastic_sigma)
    image_patch, mask_patch = cut_patch(image, mask, origin, patch, matrix, displacement)
    if augment is not None:
        image_patch, mask_patch = augment_patch(image_patch, mask_patch, rng, augment)
    return image_patch, mask_patch


# ---------------------------------------------------------------------------------------------------
# Batches

@dataclasses.dataclass(frozen=True)
class PatchSource:
    """Volumes ready for patch_batch: padded to the patch, with their foreground candidates.

    images: (I, J, K, C) float32 each; masks: (I, J, K) each; candidates: per case {class: (M, 3)}."""

    images: list[np.ndarray]
    masks: list[np.ndarray]
    candidates: list[dict[int, np.ndarray]]
    patch: PatchSize


def prepare_patch_source(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], names: Sequence[str],
                         patch: PatchSize, classes: Sequence[int], seed: int) -> PatchSource:
    """Pad every volume to `patch` and find its candidate centres on `classes` (one draw from `seed`)."""
    if not len(images):
        raise UNetError("no training volume: every case went to validation (check --num_folds)")
    padded_images, padded_masks, candidates = [], [], []
    rng = np.random.default_rng([int(seed), 7_000_003])
    for name, image, mask in zip(names, images, masks):
        if image.ndim != 4 or mask.shape != image.shape[:3]:
            raise UNetError(f"{name}: expected an image (I, J, K, C) and labels (I, J, K), got "
                            f"{image.shape} and {mask.shape}")
        image, mask = pad_to_patch(np.asarray(image, np.float32), np.asarray(mask), patch)
        padded_images.append(image)
        padded_masks.append(mask)
        candidates.append(foreground_candidates(mask, classes, rng))
    return PatchSource(padded_images, padded_masks, candidates, patch)


def sample_case(seed: int, g: int, num_cases: int) -> int:
    """The case of global sample g: per epoch (num_cases samples) a permutation of the cases, drawn
    from (seed, epoch), so every case is seen once per epoch (shuffling without replacement)."""
    order = np.random.default_rng([int(seed), 1_000_003, g // num_cases]).permutation(num_cases)
    return int(order[g % num_cases])


def patch_batch(source: PatchSource, step: int, *, batch_size: int, seed: int, rank: int = 0,
                world_size: int = 1, foreground: float = FOREGROUND_FRACTION,
                augment: VolumeAugment | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Worker `rank`'s batch of training step `step`: images (B, P0, P1, P2, C) float32, labels
    (B, P0, P1, P2) int32, B = batch_size; a pure function of (seed, step, rank)."""
    images, labels = [], []
    for position in range(batch_size):
        g = step * batch_size * world_size + rank * batch_size + position
        case = sample_case(seed, g, len(source.images))
        rng = np.random.default_rng([int(seed), 2_000_029, g])
        image, mask = sample_patch(source.images[case], source.masks[case], source.patch, rng,
                                   foreground=foreground, candidates=source.candidates[case], augment=augment)
        images.append(image)
        labels.append(mask)
    return np.stack(images), np.stack(labels)


def make_patch_dataset(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], names: Sequence[str],
                       patch: PatchSize, *, batch_size: int, seed: int, start_step: int, max_steps: int,
                       classes: Sequence[int], foreground: float = FOREGROUND_FRACTION,
                       augment: VolumeAugment | None = None, rank: int = 0, world_size: int = 1):
    """tf.data batches (images (B, P0, P1, P2, C) float32, labels (B, P0, P1, P2) int32) for steps
    start_step..max_steps-1 (patch_batch per step, run by tf.numpy_function: the patches are NumPy
    and SciPy; prefetching overlaps them with the training step)."""
    import tensorflow as tf

    from unet_medical.data.pipeline import without_autotune_thread  # (TensorFlow only when a stream is built)

    source = prepare_patch_source(images, masks, names, patch, classes, seed)
    channels = int(source.images[0].shape[-1])

    def batch(step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return patch_batch(source, int(step), batch_size=batch_size, seed=seed, rank=rank, world_size=world_size,
                           foreground=foreground, augment=augment)

    def as_tensors(step: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image, label = tf.numpy_function(batch, [step], (tf.float32, tf.int32), stateful=False)
        return (tf.ensure_shape(image, (batch_size, *patch, channels)),
                tf.ensure_shape(label, (batch_size, *patch)))

    dataset = tf.data.Dataset.range(start_step, max_steps)
    dataset = dataset.map(as_tensors, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return without_autotune_thread(dataset.prefetch(2))
