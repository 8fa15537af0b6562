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

Like the 2D kinds they rehearse shapes and geometry; no accuracy measured on them says anything about
real scans. Case n has its own generator SeedSequence(seed, spawn_key=(n,)).
"""
from __future__ import annotations

import json
import os
import pathlib

import numpy as np
from scipy.spatial.transform import Rotation

from unet_medical.base.errors import UNetError
from unet_medical.base.fileio import atomic_write_text
from unet_medical.data.volumes import write_nifti_image

VOLUME_KINDS = ("ct", "mr")
SHAPE = (48, 48, 40)  # (I, J, K) voxels: 38 x 38 mm in plane, 100 mm along the slices
VOXEL_MM = (0.8, 0.8, 2.5)
LABELS = {"background": 0, "organ": 1, "lesion": 2}
CHANNEL_NAMES = {"ct": "CT", "mr": "MRI"}
DEFAULT_NUM_TRAINING = 12
NUM_TEST = 4


def case_affine(rng: np.random.Generator) -> np.ndarray:
    """(4, 4) oblique affine: VOXEL_MM voxels rotated by up to 20 degrees per axis, RAS mm."""
    affine = np.eye(4)
    rotation = Rotation.from_euler("xyz", rng.uniform(-20, 20, size=3), degrees=True).as_matrix()
    affine[:3, :3] = rotation @ np.diag(VOXEL_MM)
    affine[:3, 3] = rng.uniform(-50, 50, size=3)
    return affine


def _ellipsoid(mm: np.ndarray, centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Boolean (I, J, K): voxel centres `mm` (I, J, K, 3) inside the axis-aligned ellipsoid."""
    return (((mm - centre) / radii) ** 2).sum(axis=-1) <= 1.0


def case_labels(rng: np.random.Generator, shape: tuple[int, int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """(body mask bool, labels uint8), both (I, J, K), drawn in millimetres on the VOXEL_MM grid."""
    mm = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, VOXEL_MM)], indexing="ij"), axis=-1)
    extent = np.asarray(shape) * VOXEL_MM
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


def mr_intensities(rng: np.random.Generator, body: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """float32 arbitrary units: tissue 300, organ 500, lesion 800, times a linear bias field, Rician noise."""
    signal = np.where(body, 300.0, 0.0)
    signal[labels == LABELS["organ"]] = 500.0
    signal[labels == LABELS["lesion"]] = 800.0
    ramp = np.meshgrid(*[np.linspace(-1, 1, n) for n in labels.shape], indexing="ij")
    signal *= 1.0 + sum(g * r for g, r in zip(rng.uniform(-0.2, 0.2, size=3), ramp))
    noise = rng.normal(0, 25, size=(2,) + signal.shape)
    return np.hypot(signal + noise[0], noise[1]).astype(np.float32)  # magnitude of complex noise: Rician


def make_case(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, labels uint8, affine (4, 4)) of one case; arrays SHAPE in (I, J, K) order."""
    body, labels = case_labels(rng)
    image = ct_intensities(rng, body, labels) if kind == "ct" else mr_intensities(rng, body, labels)
    return image, labels, case_affine(rng)


def dataset_json(kind: str, num_training: int) -> dict:
    return {"name": f"synthetic {kind}", "description": "synthetic stand-in written by download_dataset.py "
            "--synthetic; not real data", "channel_names": {"0": CHANNEL_NAMES[kind]}, "labels": dict(LABELS),
            "numTraining": num_training, "file_ending": ".nii.gz"}


def _check_destination(out: pathlib.Path) -> None:
    """Refuse a folder holding another data set the loader would mix with this one."""
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        if (out / folder).is_dir() and any(not p.name.startswith(".") for p in (out / folder).iterdir()):
            raise UNetError(f"{out / folder} is not empty: its cases would be loaded with the new set; "
                            "use an empty directory")


def write_volume_kind(out_dir: str | os.PathLike, kind: str, num_training: int | None = None,
                      seed: int = 0) -> list[pathlib.Path]:
    """Write `num_training` labelled cases and NUM_TEST test images of `kind` ("ct" or "mr") to out_dir.

    Returns:
        The paths written (images and labels as .nii.gz, then dataset.json).
    """
    if kind not in VOLUME_KINDS:
        raise UNetError(f"kind {kind!r} is not a volume kind; expected one of {', '.join(VOLUME_KINDS)}")
    num_training = DEFAULT_NUM_TRAINING if num_training is None else num_training
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
