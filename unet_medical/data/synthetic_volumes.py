"""Synthetic CT and MR volume sets in the MSD / nnU-Net raw layout, written offline.

    DIR/dataset.json                  channel_names {"0": "CT"} or {"0": "MRI"}, labels, file_ending
    DIR/imagesTr/case_000_0000.nii.gz  image (I, J, K), channel 0
    DIR/labelsTr/case_000.nii.gz       labels 0 background, 1 organ, 2 lesion
    DIR/imagesTs/case_012_0000.nii.gz  test images (no labels)

Each case is a body ellipse with an "organ" ellipsoid holding a smaller "lesion" ellipsoid (two nested
foreground classes), drawn in world millimetres so that the anisotropic voxels (VOXEL_MM, thick slices
as in clinical CT/MR) and the oblique affine (a rotation drawn per case) are part of the geometry a
pipeline must keep. CT intensities are Hounsfield-like int16 (air -1000, fat -100, organ 60, lesion 20,
Gaussian noise sd 12); MR intensities are float32 arbitrary units with a smooth bias field and Rician
noise, the reason MR is z-scored per image rather than clipped like CT.

--kind mr_small is the other common MR shape: many small near-isotropic crops of 1 mm voxels, each its own
shape (SMALL_SHAPE_RANGE: 31-42 x 40-58 x 26-46, median about 36 x 49 x 36, some shorter than a 32-voxel
patch; hippocampus-like) holding one elongated structure split into two adjacent labels, "head" and "tail",
of nearly the same intensity (position along the long axis, not contrast, tells them apart), next to a
dark CSF-like cavity, with the mr kind's bias field and Rician noise. It rehearses the choice between
2D slices and a 3D network on isotropic data (benchmarks/volume_dims.py).

--kind mr_faint has mr_small's shapes, spacing and labels, made hard the way real T1 crops are: the
structure is a bent tube (head thick and rippled, tail thin) nearly as bright as the grey matter around it,
an unlabelled grey-matter body of the same intensity touches its head (as the amygdala does), white-matter
patches and a thin CSF cleft sit beside it, the image is blurred by partial volume, and the intensity scale
differs per case. Shape and context, not contrast, find it; the head / tail boundary is a tilted cut along
its length. mr_small saturates (Dice 0.99 in 3 minutes), so choices about the network are measured here.

Like the 2D kinds they rehearse shapes and geometry; no accuracy measured on them says anything about
real scans. Case n has its own generator SeedSequence(seed, spawn_key=(n,)).
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Callable

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from unet_medical.base.errors import UNetError
from unet_medical.base.fileio import atomic_write_text
from unet_medical.data.volumes import write_nifti_image

VOLUME_KINDS = ("ct", "mr", "mr_small", "mr_faint")
SHAPE = (48, 48, 40)  # (I, J, K) voxels: 38 x 38 mm in plane, 100 mm along the slices
VOXEL_MM = (0.8, 0.8, 2.5)
LABELS = {"background": 0, "organ": 1, "lesion": 2}
CHANNEL_NAMES = {"ct": "CT", "mr": "MRI", "mr_small": "MRI", "mr_faint": "MRI"}
DEFAULT_NUM_TRAINING = 12
NUM_TEST = 4
SMALL_SHAPE = (36, 48, 36)  # (I, J, K) voxels of 1 mm: a crop around a small structure (the median case)
# Per-axis inclusive ranges of a case's shape: public crops around a small structure differ in shape from
# case to case, and a set of equal shapes would hide every padding and windowing path a real set takes.
SMALL_SHAPE_RANGE = ((31, 42), (40, 58), (26, 46))
SMALL_VOXEL_MM = (1.0, 1.0, 1.0)
SMALL_LABELS = {"background": 0, "head": 1, "tail": 2}
SMALL_MR_MEANS = (300.0, 500.0, 540.0)  # tissue, head, tail: nearly equal, position separates the labels
CSF_MEAN = 80.0  # the dark cavity next to the structure


def case_affine(rng: np.random.Generator, voxel_mm: tuple[float, float, float] = VOXEL_MM) -> np.ndarray:
    """(4, 4) oblique affine: `voxel_mm` voxels rotated by up to 20 degrees per axis, RAS mm."""
    affine = np.eye(4)
    rotation = Rotation.from_euler("xyz", rng.uniform(-20, 20, size=3), degrees=True).as_matrix()
    affine[:3, :3] = rotation @ np.diag(voxel_mm)
    affine[:3, 3] = rng.uniform(-50, 50, size=3)
    return affine


def voxel_mm_grid(shape: tuple[int, int, int], voxel_mm: tuple[float, float, float]) -> np.ndarray:
    """(I, J, K, 3) voxel centres in mm of the axis-aligned grid (the affine's rotation is left out)."""
    return np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, voxel_mm)], indexing="ij"), axis=-1)


def _ellipsoid(mm: np.ndarray, centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Boolean (I, J, K): voxel centres `mm` (I, J, K, 3) inside the axis-aligned ellipsoid."""
    return (((mm - centre) / radii) ** 2).sum(axis=-1) <= 1.0


def case_labels(rng: np.random.Generator, shape: tuple[int, int, int] = SHAPE,
                voxel_mm: tuple[float, float, float] = VOXEL_MM) -> tuple[np.ndarray, np.ndarray]:
    """(body mask bool, labels uint8), both (I, J, K), drawn in millimetres on the `voxel_mm` grid."""
    mm = voxel_mm_grid(shape, voxel_mm)
    extent = np.asarray(shape) * voxel_mm
    middle = extent / 2
    body = _ellipsoid(mm * [1, 1, 0], middle * [1, 1, 0], np.r_[0.46 * extent[:2], 1.0])
    organ_radii = rng.uniform([7, 6, 18], [10, 9, 30])
    organ_centre = middle + rng.uniform(-3, 3, size=3)
    lesion_radii = rng.uniform([3.5, 3.5, 8], [5, 5, 12])
    # the lesion centre stays within half the organ's radii, so it sits inside the organ
    lesion_centre = organ_centre + rng.uniform(-0.4, 0.4, size=3) * (organ_radii - lesion_radii)
    labels = np.zeros(shape, np.uint8)
    labels[_ellipsoid(mm, organ_centre, organ_radii)] = LABELS["organ"]
    labels[_ellipsoid(mm, lesion_centre, lesion_radii)] = LABELS["lesion"]
    labels[~body] = 0
    return body, labels


def ct_intensities(rng: np.random.Generator, body: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Hounsfield-like int16: air -1000 outside the body, fat -100, organ 60, lesion 20, noise sd 12."""
    hu = np.where(body, -100.0, -1000.0)
    hu[labels == LABELS["organ"]] = 60.0
    hu[labels == LABELS["lesion"]] = 20.0
    hu += rng.normal(0, 12, size=hu.shape)
    return np.clip(np.round(hu), -1024, 3071).astype(np.int16)


def small_case_shape(rng: np.random.Generator) -> tuple[int, int, int]:
    """(I, J, K) voxels of one mr_small case, each axis uniform over SMALL_SHAPE_RANGE."""
    return tuple(int(rng.integers(low, high + 1)) for low, high in SMALL_SHAPE_RANGE)


def small_case_labels(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tissue bool, labels uint8, csf bool), all of one shape (I, J, K) from small_case_shape, for a
    mr_small case.

    One structure elongated along J (a head ellipsoid and a thinner tail ellipsoid overlapping it),
    turned by up to 15 degrees per axis; voxels in the head are label 1, the rest of the structure 2,
    so the two labels touch along a surface. A dark cavity lies beside it, as CSF lies beside the
    hippocampus. Tissue fills the crop (the scan was cropped around the structure).
    """
    shape = small_case_shape(rng)
    mm = voxel_mm_grid(shape, SMALL_VOXEL_MM)
    centre = np.asarray(shape) * SMALL_VOXEL_MM / 2 + rng.uniform(-3, 3, size=3)
    # the structure's own frame: rotating the offsets turns every ellipsoid about `centre` together
    turn = Rotation.from_euler("xyz", rng.uniform(-15, 15, size=3), degrees=True).as_matrix()
    local = (mm - centre) @ turn
    head_length, tail_length = rng.uniform(8, 11), rng.uniform(11, 14)
    head = _ellipsoid(local, np.r_[0, -head_length * 0.5, 0], np.r_[rng.uniform(5, 7), head_length, rng.uniform(4, 6)])
    tail = _ellipsoid(local, np.r_[0, tail_length * 0.7, 0], np.r_[rng.uniform(3.5, 4.5), tail_length, rng.uniform(3, 4)])
    side = rng.choice([-1.0, 1.0])  # the cavity sits on either side, so "beside the cavity" is no label cue
    csf = _ellipsoid(local, np.r_[side * rng.uniform(7, 9), 0, 0], np.r_[rng.uniform(1.5, 2.5), 14, 3]) & ~(head | tail)
    labels = np.zeros(shape, np.uint8)
    labels[tail] = SMALL_LABELS["tail"]
    labels[head] = SMALL_LABELS["head"]
    return np.ones(shape, bool), labels, csf


def mr_intensities(rng: np.random.Generator, body: np.ndarray, labels: np.ndarray,
                   means: tuple[float, float, float] = (300.0, 500.0, 800.0),
                   dark: np.ndarray | None = None) -> np.ndarray:
    """float32 arbitrary units: tissue, label 1, label 2 at `means` (default 300, 500, 800), the `dark`
    voxels (bool, optional) at CSF_MEAN, times a linear bias field, Rician noise (sd 25)."""
    signal = np.where(body, means[0], 0.0)
    signal[labels == 1] = means[1]
    signal[labels == 2] = means[2]
    if dark is not None:
        signal[dark] = CSF_MEAN
    ramp = np.meshgrid(*[np.linspace(-1, 1, n) for n in labels.shape], indexing="ij")
    signal *= 1.0 + sum(g * r for g, r in zip(rng.uniform(-0.2, 0.2, size=3), ramp))
    noise = rng.normal(0, 25, size=(2,) + signal.shape)
    return np.hypot(signal + noise[0], noise[1]).astype(np.float32)  # magnitude of complex noise: Rician


def faint_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(image float32, labels uint8) of one mr_faint case, both (I, J, K) from small_case_shape, 1 mm voxels.

    In the structure's frame (turned by up to 15 degrees per axis) y runs along it from the head's front to
    the tail's end (22-28 mm) and its centreline bends in x and z; its elliptic cross-section (height 0.7 x
    width) narrows from a 5.5-7 mm head radius, rippled by 12 %, to a 3-4 mm tail. Label 1 (head) is the
    part in front of a cut at 38-48 % of the length, tilted by up to 0.35 mm per mm of height; the rest is
    label 2. Relative intensities: grey matter 1, white matter 1.3-1.35, CSF 0.3, the structure 1.0-1.08.
    """
    shape = small_case_shape(rng)
    centre = np.asarray(shape) * SMALL_VOXEL_MM / 2 + rng.uniform(-2, 2, size=3)
    turn = Rotation.from_euler("xyz", rng.uniform(-15, 15, size=3), degrees=True).as_matrix()
    local = (voxel_mm_grid(shape, SMALL_VOXEL_MM) - centre) @ turn
    x, y, z = np.moveaxis(local, -1, 0)
    length = rng.uniform(22, 28)
    front = -length * rng.uniform(0.45, 0.55)
    back = front + length
    along = np.clip((y - front) / length, 0, 1)
    bend_x, bend_z = rng.uniform(-0.025, 0.025), rng.uniform(0.01, 0.03)
    cx, cz = bend_x * ((y - front) ** 2 - (length / 2) ** 2), bend_z * (y - front) * (y - back)
    head_r, tail_r = rng.uniform(5.5, 7), rng.uniform(3, 4)
    radius = (head_r + (tail_r - head_r) * along) * (
        1 + 0.12 * np.sin(2 * np.pi * (y - front) / rng.uniform(4, 6) + rng.uniform(0, 2 * np.pi)) * (along < 0.4))
    beyond = y - np.clip(y, front, back)  # rounds the two ends
    dist = np.sqrt(((x - cx) / radius) ** 2 + ((z - cz) / (0.7 * radius)) ** 2 + (beyond / radius) ** 2)
    structure = dist <= 1
    cut = front + length * rng.uniform(0.38, 0.48) + rng.uniform(-0.35, 0.35) * (z - cz)
    labels = np.zeros(shape, np.uint8)
    labels[structure] = SMALL_LABELS["tail"]
    labels[structure & (y < cut)] = SMALL_LABELS["head"]
    tissue = np.where(ndimage.gaussian_filter(rng.normal(size=shape), 3.0) > 0, 1.3, 1.0)
    tissue[((z - cz) > 0.7 * radius + rng.uniform(0.5, 1.5)) & (dist < 1.8)] = 1.35  # white matter over it
    neighbour = np.r_[rng.uniform(-2, 2), front - rng.uniform(3, 5), rng.uniform(1, 3)]
    tissue[_ellipsoid(local, neighbour, rng.uniform([5, 4, 4], [7, 6, 6]))] = 1.0  # unlabelled, same grey
    side = rng.choice([-1.0, 1.0])
    cleft = (np.abs(x - cx - side * (radius + 1.0)) < rng.uniform(0.7, 1.3)) & (np.abs(z - cz) < radius)
    tissue[cleft & (along > 0.1) & (along < 0.95) & ~structure] = 0.3
    tissue[structure] = rng.uniform(1.0, 1.08)
    tissue = ndimage.gaussian_filter(tissue, 0.6)  # partial volume
    ramp = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    tissue *= 1.0 + sum(g * r for g, r in zip(rng.uniform(-0.15, 0.15, size=3), ramp))
    level = rng.uniform(200, 800)  # arbitrary MR units, per case
    noise = rng.normal(0, 0.09 * level, size=(2,) + tissue.shape)
    return np.hypot(tissue * level + noise[0], noise[1]).astype(np.float32), labels


@dataclasses.dataclass(frozen=True)
class VolumeKind:
    """One volume kind: voxel grid, spacing in mm, the label names, and `make`, which draws one case's
    (image float32, labels uint8), both (I, J, K), from a generator."""

    shape: tuple[int, int, int]
    voxel_mm: tuple[float, float, float]
    labels: dict[str, int]
    default_num_training: int
    make: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]]


def _body_case(rng: np.random.Generator, ct: bool) -> tuple[np.ndarray, np.ndarray]:
    body, labels = case_labels(rng)
    return (ct_intensities if ct else mr_intensities)(rng, body, labels), labels


def _small_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    tissue, labels, csf = small_case_labels(rng)
    return mr_intensities(rng, tissue, labels, SMALL_MR_MEANS, dark=csf), labels


# The kinds `--kind` offers: a new kind is one entry here and its case function.
KIND_GEOMETRY: dict[str, VolumeKind] = {
    "ct": VolumeKind(SHAPE, VOXEL_MM, LABELS, DEFAULT_NUM_TRAINING, lambda rng: _body_case(rng, ct=True)),
    "mr": VolumeKind(SHAPE, VOXEL_MM, LABELS, DEFAULT_NUM_TRAINING, lambda rng: _body_case(rng, ct=False)),
    "mr_small": VolumeKind(SMALL_SHAPE, SMALL_VOXEL_MM, SMALL_LABELS, 100, _small_case),
    "mr_faint": VolumeKind(SMALL_SHAPE, SMALL_VOXEL_MM, SMALL_LABELS, 100, faint_case),
}


def make_case(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, labels uint8, affine (4, 4)) of one case; arrays (I, J, K): KIND_GEOMETRY[kind].shape, or for
    mr_small and mr_faint the case's own shape (small_case_shape)."""
    geometry = KIND_GEOMETRY[kind]
    image, labels = geometry.make(rng)
    return image, labels, case_affine(rng, geometry.voxel_mm)


def dataset_json(kind: str, num_training: int) -> dict:
    return {"name": f"synthetic {kind}", "description": "synthetic stand-in written by download_dataset.py "
            "--synthetic; not real data", "channel_names": {"0": CHANNEL_NAMES[kind]},
            "labels": dict(KIND_GEOMETRY[kind].labels),
            "numTraining": num_training, "file_ending": ".nii.gz"}


def _check_destination(out: pathlib.Path) -> None:
    """Refuse a folder holding another data set the loader would mix with this one."""
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        if (out / folder).is_dir() and any(not p.name.startswith(".") for p in (out / folder).iterdir()):
            raise UNetError(f"{out / folder} is not empty: its cases would be loaded with the new set; "
                            "use an empty directory")


def write_volume_kind(out_dir: str | os.PathLike, kind: str, num_training: int | None = None,
                      seed: int = 0) -> list[pathlib.Path]:
    """Write `num_training` labelled cases and NUM_TEST test images of `kind` (VOLUME_KINDS) to out_dir.

    Returns:
        The paths written (images and labels as .nii.gz, then dataset.json).
    """
    if kind not in VOLUME_KINDS:
        raise UNetError(f"kind {kind!r} is not a volume kind; expected one of {', '.join(VOLUME_KINDS)}")
    num_training = KIND_GEOMETRY[kind].default_num_training if num_training is None else num_training
    if int(num_training) != num_training or num_training < 1:
        raise UNetError(f"num_images={num_training!r}: expected an integer >= 1 (training cases)")
    if int(seed) != seed or seed < 0:
        raise UNetError(f"seed={seed!r}: expected an integer >= 0")
    out = pathlib.Path(out_dir)
    _check_destination(out)
    written = []
    for index in range(int(num_training) + NUM_TEST):
        rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(index,)))
        image, labels, affine = make_case(kind, rng)
        case = f"case_{index:03d}"
        if index < num_training:
            written.append(write_nifti_image(image, affine, out / "imagesTr" / f"{case}_0000.nii.gz"))
            written.append(write_nifti_image(labels, affine, out / "labelsTr" / f"{case}.nii.gz"))
        else:
            written.append(write_nifti_image(image, affine, out / "imagesTs" / f"{case}_0000.nii.gz"))
    written.append(atomic_write_text(out / "dataset.json", json.dumps(dataset_json(kind, int(num_training)),
                                                                      indent=2) + "\n"))
    return written


def write_ct_spacings(out_dir: str | os.PathLike, spacings: list[tuple[float, float, float]], num_test: int = 1,
                      seed: int = 0) -> list[pathlib.Path]:
    """A ct-kind set whose cases differ in voxel spacing: labelled case n at spacings[n] (mm), then `num_test`
    test images at the spacings after them (cycling), each covering the ct kind's field of view
    (SHAPE x VOXEL_MM mm, so shapes differ) with its organ and lesion drawn in millimetres. The rehearsal set of
    resampling to the median spacing (data.volume_resample); the ct kind itself keeps one spacing.
    """
    out = pathlib.Path(out_dir)
    _check_destination(out)
    num_training, written = len(spacings) - num_test, []
    if num_training < 1:
        raise UNetError(f"spacings: {len(spacings)} given, need more than num_test={num_test}")
    for index, voxel_mm in enumerate(spacings):
        rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(index,)))
        voxel_mm = tuple(float(v) for v in voxel_mm)
        shape = tuple(int(round(n * s / v)) for n, s, v in zip(SHAPE, VOXEL_MM, voxel_mm))
        body, labels = case_labels(rng, shape, voxel_mm)
        image, affine, case = ct_intensities(rng, body, labels), case_affine(rng, voxel_mm), f"case_{index:03d}"
        if index < num_training:
            written.append(write_nifti_image(image, affine, out / "imagesTr" / f"{case}_0000.nii.gz"))
            written.append(write_nifti_image(labels, affine, out / "labelsTr" / f"{case}.nii.gz"))
        else:
            written.append(write_nifti_image(image, affine, out / "imagesTs" / f"{case}_0000.nii.gz"))
    written.append(atomic_write_text(out / "dataset.json", json.dumps(dataset_json("ct", num_training), indent=2) + "\n"))
    return written
