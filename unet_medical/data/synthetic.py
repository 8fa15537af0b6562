"""Synthetic serial-section EM stacks with membrane labels: the project's offline default data.

The stacks imitate the ISBI 2012 training volume (Cardona et al. 2010; Arganda-Carreras et al. 2015)
closely enough to exercise the whole pipeline without a download, and are hard enough that a
threshold does not solve them:

- cells are the cross-sections of a 3D Voronoi tessellation of randomly placed seeds, seen through a
  smooth random displacement field, so their outlines are irregular and curved; because each slice
  cuts the same 3D tessellation a few pixels further along z, cells drift, grow, shrink, appear and
  vanish slowly from slice to slice, like serial sections;
- membranes are dark ridges 2-4 px wide along the cell boundaries (label 0), covering about 15-25 %
  of the pixels (ISBI: 22 %);
- dark organelle-like blobs inside cells are as dark as membranes but labelled interior;
- cells differ in brightness, membrane contrast varies along the membranes, and a low-frequency
  illumination field, fine texture, blur and Gaussian noise are added.

Labels follow the ISBI convention: 255 = cell interior, 0 = membrane.

Example:
    images, labels = make_em_stack(num_slices=4, size=128, seed=1)
    write_isbi_layout("data/synthetic", num_slices=30, size=512, seed=0)
"""
from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np
import tifffile
from scipy import ndimage
from scipy.spatial import cKDTree

from unet_medical.base.errors import UNetError
from unet_medical.base.fileio import atomic_write

ISBI_INTERIOR = 255
ISBI_MEMBRANE = 0

# Distance between adjacent slices in the units of the in-plane pixel grid of the 3D tessellation.
# Cells are ~40 px across, so a cross-section changes visibly from one slice to the next and is
# replaced by other cells after ~10 slices, as in ISBI's 50 nm sections.
SLICE_SPACING_PX = 4.0
# Mean seed spacing (px). With 2-4 px membranes this gives 15-25 % membrane pixels.
MEAN_CELL_SPACING_PX = 38.0
# The test volume of write_isbi_layout uses seed + this offset, far from any seed a user would pick.
TEST_SEED_OFFSET = 1_000_003

# Intensities in [0, 1] before the conversion to uint8.
_INTERIOR_MEAN, _INTERIOR_SPREAD = 0.62, 0.09
_MEMBRANE_DEPTH_RANGE = (0.20, 0.50)
_ORGANELLE_DEPTH = 0.40
_NOISE_STD = 0.06
_BLUR_SIGMA_PX = 0.9
# Log-standard deviation of the seed density: regions of small cells next to regions of large ones.
_DENSITY_LOG_STD = 0.45
# Seeds consulted per pixel for the distance to the cell boundary (see boundary_distance).
_NEIGHBOURS = 4


@dataclasses.dataclass(frozen=True)
class SmoothField:
    """A smooth stationary random field in 3D: a sum of plane waves with random directions and phases.

    Cheap to evaluate on a grid (separable complex exponentials) and at scattered points, and fully
    determined by the generator it was drawn from. Values have zero mean and unit variance.

    Attributes:
        wavevectors: (M, 3) float64, radians per pixel, in (x, y, z) order.
        phases: (M,) float64, radians.
    """

    wavevectors: np.ndarray
    phases: np.ndarray

    @classmethod
    def random(cls, rng: np.random.Generator, min_wavelength: float, max_wavelength: float,
               num_waves: int = 12) -> "SmoothField":
        """Draw a field whose wavelengths (px) lie in [min_wavelength, max_wavelength]."""
        directions = rng.standard_normal((num_waves, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        wavelengths = rng.uniform(min_wavelength, max_wavelength, num_waves)
        wavevectors = directions * (2.0 * np.pi / wavelengths)[:, None]
        return cls(wavevectors, rng.uniform(0.0, 2.0 * np.pi, num_waves))

    @property
    def _amplitude(self) -> float:
        # Each cosine has variance 1/2; this scale gives the sum unit variance.
        return float(np.sqrt(2.0 / len(self.phases)))

    def at_points(self, points: np.ndarray) -> np.ndarray:
        """Values at points (..., 3) given as (x, y, z) in px; returns (...) float64."""
        return self._amplitude * np.cos(points @ self.wavevectors.T + self.phases).sum(axis=-1)

    def on_grid(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Values on the grid z x y x x (1-D coordinate arrays in px); returns (Z, Y, X) float32."""
        total = np.zeros((len(z), len(y), len(x)), np.float32)
        for (kx, ky, kz), phase in zip(self.wavevectors, self.phases):
            plane = np.exp(1j * ky * y)[:, None] * np.exp(1j * kx * x)[None, :]
            total += np.real(np.exp(1j * (kz * z + phase))[:, None, None] * plane[None]).astype(np.float32)
        return self._amplitude * total


def cell_seeds(rng: np.random.Generator, size: int, depth: float) -> np.ndarray:
    """Seed points of the 3D tessellation, (K, 3) float64 (x, y, z) in px.

    A Poisson process thinned by a smooth density field, so some regions hold many small cells and
    others a few large ones (as in the ventral nerve cord: thin neurites beside large axons). Seeds
    extend a margin beyond the volume so that border cells are cut, not closed.
    """
    margin = 2.0 * MEAN_CELL_SPACING_PX
    low = np.array([-margin, -margin, -margin])
    high = np.array([size + margin, size + margin, depth + margin])
    # Relative density exp(s f - s^2 / 2) has mean 1 for a unit Gaussian f; candidates are drawn at
    # 3x the mean rate and kept with probability relative / 3 (clipped above f ~ 2.7, i.e. rarely).
    spread = _DENSITY_LOG_STD
    mean_rate = 1.0 / MEAN_CELL_SPACING_PX ** 3
    count = rng.poisson(3.0 * mean_rate * np.prod(high - low))
    candidates = rng.uniform(low, high, (count, 3))
    density = SmoothField.random(rng, 150.0, 400.0, num_waves=8)
    relative = np.exp(spread * density.at_points(candidates) - 0.5 * spread ** 2)
    keep = rng.uniform(0.0, 3.0, count) < relative
    return candidates[keep]


def boundary_distance(distances: np.ndarray, neighbours_xy: np.ndarray) -> np.ndarray:
    """In-plane distance (px) from each query point to the boundary of its cell.

    The boundary between the nearest seed p1 and another seed pj is the bisecting plane
    |q - p1| = |q - pj|; its trace in the slice through q is a line at in-plane distance
    (|q - pj|^2 - |q - p1|^2) / (2 |(pj - p1)_xy|) from q. A cell's cross-section is the convex
    polygon bounded by these lines, so the distance to its boundary is the minimum over j. It is
    exact when the seeds of all the polygon's edges are among the k nearest; deep inside a large
    cell it may overestimate, which is harmless because only distances of a few px are used, and
    next to a boundary the cells meeting there are the nearest seeds. The second-nearest seed
    alone is not enough: a seed almost straight above p1 is near in 3D while its boundary is far
    away in the slice.

    Args:
        distances: (..., k) float, 3D distances from each query point to its k >= 2 nearest seeds,
            ascending (as returned by cKDTree.query).
        neighbours_xy: (..., k, 2) float, (x, y) in px of those seeds.
    Returns:
        (...) float32, >= 0.
    """
    # float32 keeps ~1e-3 px precision at cell scales and halves the memory traffic.
    squared = np.square(np.asarray(distances, np.float32))
    gap = squared[..., 1:] - squared[..., :1]
    xy = np.asarray(neighbours_xy, np.float32)
    planar_norm = np.hypot(xy[..., 1:, 0] - xy[..., :1, 0], xy[..., 1:, 1] - xy[..., :1, 1])
    return (np.maximum(gap, 0.0) / np.maximum(2.0 * planar_norm, 1e-6)).min(axis=-1)


def upsample2(volume: np.ndarray) -> np.ndarray:
    """Bilinear 2x upsampling of the last two axes, pixel-centre aligned, edges replicated.

    Output pixel 2j lies a quarter of an input pixel before input pixel j and 2j + 1 a quarter after,
    so it weighs input pixels j and j -+ 1 by 3/4 and 1/4.

    Args:
        volume: (..., H, W) float array.
    Returns:
        (..., 2H, 2W), same dtype.
    """
    out = volume
    for axis in (volume.ndim - 2, volume.ndim - 1):
        n = out.shape[axis]
        index = np.arange(n)
        before = np.take(out, np.maximum(index - 1, 0), axis=axis)
        after = np.take(out, np.minimum(index + 1, n - 1), axis=axis)
        interleaved = np.stack([0.75 * out + 0.25 * before, 0.75 * out + 0.25 * after], axis=axis + 1)
        shape = list(out.shape)
        shape[axis] = 2 * n
        out = interleaved.reshape(shape)
    return out.astype(volume.dtype, copy=False)


def make_em_stack(num_slices: int = 30, size: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Generate a labelled EM-like serial-section stack.

    Args:
        num_slices: number of slices N (>= 1).
        size: slice height and width in px (>= 16).
        seed: seed of the random generator; equal seeds give identical stacks.
    Returns:
        images: (N, size, size) uint8.
        labels: (N, size, size) uint8, 255 = cell interior, 0 = membrane (ISBI convention).
    """
    if int(num_slices) != num_slices or num_slices < 1:
        raise UNetError(f"num_slices={num_slices!r}: expected an integer >= 1")
    if int(size) != size or size < 16:
        raise UNetError(f"size={size!r}: expected an integer >= 16 (pixels)")
    if int(seed) != seed or seed < 0:
        raise UNetError(f"seed={seed!r}: expected an integer >= 0")
    num_slices, size = int(num_slices), int(size)
    rng = np.random.default_rng(int(seed))

    # The geometry is evaluated on a half-resolution grid (4x fewer nearest-seed queries) and the
    # smooth fields derived from it are upsampled; only the final thresholds happen at full resolution.
    half = (size + 1) // 2
    coarse = 2.0 * np.arange(half) + 0.5  # full-resolution coordinates of the 2x2 block centres
    z = SLICE_SPACING_PX * np.arange(num_slices, dtype=np.float64)

    seeds = cell_seeds(rng, size, float(z[-1]))
    # Warp gradients stay below ~0.3 so membrane widths are not distorted by more than ~30 %.
    warp_x = SmoothField.random(rng, 120.0, 300.0)
    warp_y = SmoothField.random(rng, 120.0, 300.0)
    warp_amplitude = 6.0
    query = np.empty((num_slices, half, half, 3), np.float64)
    query[..., 0] = coarse[None, None, :] + warp_amplitude * warp_x.on_grid(coarse, coarse, z)
    query[..., 1] = coarse[None, :, None] + warp_amplitude * warp_y.on_grid(coarse, coarse, z)
    query[..., 2] = z[:, None, None]
    distances, nearest = cKDTree(seeds).query(query.reshape(-1, 3), k=_NEIGHBOURS, workers=-1)
    nearest = nearest.reshape(num_slices, half, half, _NEIGHBOURS)
    edge = boundary_distance(distances.reshape(nearest.shape), seeds[:, :2].astype(np.float32)[nearest])

    # Nominal half-width 1.5-2.5 px, varying smoothly along the membranes. Bilinear upsampling of
    # the V-shaped distance field shaves up to ~1 px off each ridge, so the labelled ridges come out
    # 2-4 px wide (median 3 px), thicker where membranes meet.
    width_field = SmoothField.random(rng, 60.0, 160.0).on_grid(coarse, coarse, z)
    half_width = 2.0 + 0.5 * np.tanh(width_field)
    depth_field = SmoothField.random(rng, 50.0, 150.0).on_grid(coarse, coarse, z)
    low, high = _MEMBRANE_DEPTH_RANGE
    membrane_depth = low + (high - low) * 0.5 * (1.0 + np.tanh(depth_field))

    cell_brightness = rng.normal(_INTERIOR_MEAN, _INTERIOR_SPREAD, len(seeds)).astype(np.float32)
    brightness = cell_brightness[nearest[..., 0]]

    organelles = _organelle_mask(rng, edge, half_width)

    edge_full = upsample2(edge)[:, :size, :size]
    half_width_full = upsample2(half_width)[:, :size, :size]
    labels = np.where(edge_full >= half_width_full, ISBI_INTERIOR, ISBI_MEMBRANE).astype(np.uint8)

    image = upsample2(brightness)[:, :size, :size]
    image -= upsample2(organelles * np.float32(_ORGANELLE_DEPTH))[:, :size, :size]
    ridge = np.exp(-np.square(edge_full / (0.8 * half_width_full + 0.6)))
    image -= upsample2(membrane_depth)[:, :size, :size] * ridge
    image = _add_acquisition_effects(rng, image, z)
    images = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    return images, labels


def _organelle_mask(rng: np.random.Generator, edge: np.ndarray, half_width: np.ndarray) -> np.ndarray:
    """Soft (0..1) mask of dark blobs inside cells on the half-resolution grid, (N, h, w) float32.

    Blobs are the high tail of smoothed 3D noise (so they persist over a few slices), kept away from
    membranes so that they are distractors rather than membrane look-alikes touching membranes.
    """
    noise = rng.standard_normal(edge.shape).astype(np.float32)
    blobs = ndimage.gaussian_filter(noise, sigma=(1.0, 2.5, 2.5), mode="reflect")
    blobs /= blobs.std() + 1e-12
    soft = np.clip((blobs - 2.0) / 0.4, 0.0, 1.0)
    clearance = np.clip((edge - half_width - 2.0) / 2.0, 0.0, 1.0)
    return (soft * clearance).astype(np.float32)


def _add_acquisition_effects(rng: np.random.Generator, image: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Texture, low-frequency illumination, blur and noise; (N, H, W) float32 in, same out."""
    num_slices, height, width = image.shape
    texture = rng.standard_normal(image.shape).astype(np.float32)
    texture = ndimage.gaussian_filter(texture, sigma=(0.0, 1.5, 1.5), mode="reflect")
    texture *= np.float32(0.05) / (texture.std() + 1e-12)
    # Illumination varies over hundreds of pixels: the half-resolution grid is plenty.
    coarse = 2.0 * np.arange((max(height, width) + 1) // 2) + 0.5
    light = SmoothField.random(rng, 400.0, 1200.0, num_waves=6).on_grid(coarse, coarse, z)
    light = upsample2(light)[:, :height, :width]
    image = (image + texture) * (1.0 + np.float32(0.12) * light)
    image = ndimage.gaussian_filter(image, sigma=(0.0, _BLUR_SIGMA_PX, _BLUR_SIGMA_PX), mode="reflect")
    image += np.float32(_NOISE_STD) * rng.standard_normal(image.shape, dtype=np.float32)
    return image


# The ImageDescription of every stack this module writes: what tells a synthetic stack from real data.
SYNTHETIC_TAG = "unet_medical synthetic EM stack"


def refuse_overwriting_real_data(path: pathlib.Path) -> None:
    """UNetError if `path` exists and is not a stack this module wrote (real data must never be replaced)."""
    if not path.exists():
        return
    try:
        with tifffile.TiffFile(path) as tif:
            tagged = tif.pages[0].description == SYNTHETIC_TAG
    except (OSError, ValueError, IndexError, tifffile.TiffFileError):
        tagged = False
    if not tagged:
        raise UNetError(f"{path} exists and was not written by --synthetic (real data?): it is kept; "
                        "give another --data_dir or move the file away")


def write_isbi_layout(out_dir: str | os.PathLike, num_slices: int = 30, size: int = 512,
                      seed: int = 0) -> dict[str, pathlib.Path]:
    """Write a synthetic data set in the ISBI 2012 file layout.

    Writes train-volume.tif and train-labels.tif (from `seed`) and test-volume.tif (from
    seed + TEST_SEED_OFFSET, so test cells differ from training cells) as uncompressed multi-page
    uint8 TIFFs, so the data goes through the same loader as the real data.

    Returns:
        {file name: path written}.
    """
    out = pathlib.Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UNetError(f"cannot create output directory {out}: {exc.strerror or exc}") from exc
    stacks_named = ("train-volume.tif", "train-labels.tif", "test-volume.tif")
    for name in stacks_named:
        refuse_overwriting_real_data(out / name)
    train_images, train_labels = make_em_stack(num_slices, size, seed)
    test_images, _ = make_em_stack(num_slices, size, seed + TEST_SEED_OFFSET)
    stacks = {"train-volume.tif": train_images, "train-labels.tif": train_labels,
              "test-volume.tif": test_images}
    written = {}
    for name, stack in stacks.items():
        path = out / name
        try:  # atomic: an interrupted run never leaves a truncated stack under the final name
            atomic_write(path, lambda tmp, stack=stack: tifffile.imwrite(tmp, stack, photometric="minisblack",
                                                                         description=SYNTHETIC_TAG))
        except OSError as exc:
            raise UNetError(f"cannot write {path}: {exc.strerror or exc}") from exc
        written[name] = path
    return written
