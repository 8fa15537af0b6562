"""Synthetic data sets by kind, written in the layouts the loader reads (utils.data.layouts).

Kinds:
- "em": serial-section EM stacks in the ISBI 2012 layout (utils.data.synthetic; the default).
- "vessels": fundus photographs with vessel masks (utils.data.synthetic_vessels), 20 by default.
- "nuclei": nucleus images of mixed sizes and styles (utils.data.synthetic_nuclei), 30 by default.
- "lesions": dermoscopy-like RGB images with one or two lesions covering 20-90 % of the image, some cut
  by the border (data.synthetic_lesions), 40 by default: the large-object case of the recipe.
- "ct", "mr": 3D volumes with two nested foreground classes in the MSD / nnU-Net raw layout
  (data.synthetic_volumes), 12 training cases and 4 test cases by default.

The folder kinds are written as `DIR/images/NN.png` + `DIR/masks/NN.png` (shared stems, masks 0/255),
the layout public 2D sets use; "vessels" also writes `DIR/fov/NN.png`, the field-of-view mask
(255 inside the round camera aperture), which the loader ignores and which can restrict metrics to
the FOV as DRIVE's evaluation does.

These sets rehearse the data shapes the pipeline is tested on (RGB, a thin minority class, mixed
sizes, both polarities); they are not a substitute for real data, and no accuracy measured on them
says anything about real images.

Every image has its own random generator, SeedSequence(seed, spawn_key=(i,)): equal seeds give
identical files, and image i does not depend on how many images are written.
"""
from __future__ import annotations

import os
import pathlib
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from unet_medical.data import synthetic, synthetic_lesions, synthetic_nuclei, synthetic_vessels, synthetic_volumes
from unet_medical.data.layouts import ISBI_TRAIN_LABELS, ISBI_TRAIN_VOLUME
from unet_medical.base.errors import UNetError
from unet_medical.base.fileio import atomic_write

KINDS = ("em", "vessels", "nuclei", "lesions") + synthetic_volumes.VOLUME_KINDS
DEFAULT_NUM_IMAGES = {"vessels": 20, "nuclei": 30, "lesions": 40,
                      **{kind: geometry.default_num_training
                         for kind, geometry in synthetic_volumes.KIND_GEOMETRY.items()}}

# One image of a folder kind: {folder name: (H, W) or (H, W, 3) uint8 array}.
Sample = dict[str, np.ndarray]


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of image `index` of a set drawn with `seed`."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def vessel_samples(num_images: int = 20, seed: int = 0) -> Iterator[Sample]:
    """Fundus images (584, 565, 3), vessel masks and FOV masks (584, 565), uint8, 0/255 masks."""
    for index in range(num_images):
        image, vessels, fov = synthetic_vessels.make_fundus_image(image_rng(seed, index))
        yield {"images": image, "masks": vessels, "fov": fov}


def nuclei_samples(num_images: int = 30, seed: int = 0) -> Iterator[Sample]:
    """Nucleus images (H, W, 3) of mixed sizes and masks (H, W), uint8; styles cycle by index."""
    for index in range(num_images):
        rng = image_rng(seed, index)
        shape = synthetic_nuclei.SHAPES[int(rng.integers(len(synthetic_nuclei.SHAPES)))]
        style = synthetic_nuclei.STYLES[index % len(synthetic_nuclei.STYLES)]
        image, mask = synthetic_nuclei.make_nuclei_image(rng, style, shape)
        yield {"images": image, "masks": mask}


def lesion_samples(num_images: int = 40, seed: int = 0) -> Iterator[Sample]:
    """Lesion images (H, W, 3) of a few sizes near 256 x 320 and masks (H, W), uint8, 0/255 masks."""
    for index in range(num_images):
        rng = image_rng(seed, index)
        shape = synthetic_lesions.SHAPES[int(rng.integers(len(synthetic_lesions.SHAPES)))]
        image, mask = synthetic_lesions.make_lesion_image(rng, shape)
        yield {"images": image, "masks": mask}


_FOLDER_KINDS: dict[str, tuple[Callable[[int, int], Iterator[Sample]], tuple[str, ...]]] = {
    "vessels": (vessel_samples, ("images", "masks", "fov")),
    "nuclei": (nuclei_samples, ("images", "masks")),
    "lesions": (lesion_samples, ("images", "masks")),
}


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise UNetError(f"kind {kind!r} is unknown; expected one of {', '.join(KINDS)}")


def _check_count(name: str, value: int) -> None:
    if int(value) != value or value < 1:
        raise UNetError(f"{name}={value!r}: expected an integer >= 1")


def _stems(num_images: int) -> list[str]:
    width = max(2, len(str(num_images - 1)))
    return [f"{index:0{width}d}" for index in range(num_images)]


def _check_destination(out: pathlib.Path, folders: tuple[str, ...], stems: list[str]) -> None:
    """Refuse a folder that already holds data the loader would mix with (or prefer to) the new set."""
    for name in (ISBI_TRAIN_VOLUME, ISBI_TRAIN_LABELS):
        if (out / name).exists():
            raise UNetError(f"{out} holds {name}: the loader would read that ISBI layout instead of the "
                            "images/ and masks/ folders written now; use an empty directory")
    expected = {f"{stem}.png" for stem in stems}
    for folder in folders:
        path = out / folder
        if not path.is_dir():
            continue
        others = sorted(p.name for p in path.iterdir() if not p.name.startswith(".") and p.name not in expected)
        if others:
            shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            raise UNetError(f"{path} holds {len(others)} file(s) this run would not overwrite ({shown}); they "
                            "would be loaded with the new set: use an empty directory or remove them")


def _save_png(path: pathlib.Path, array: np.ndarray) -> None:
    try:  # atomic: an interrupted run never leaves a truncated PNG under its final name
        atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG", compress_level=1))
    except OSError as exc:
        raise UNetError(f"cannot write {path}: {exc.strerror or exc}") from exc


def write_folder_kind(out_dir: str | os.PathLike, kind: str, num_images: int | None = None,
                      seed: int = 0) -> list[pathlib.Path]:
    """Write a folder-layout kind ("vessels", "nuclei" or "lesions") into out_dir.

    Args:
        out_dir: destination (created if needed); must not hold other files in the folders written.
        kind: "vessels", "nuclei" or "lesions".
        num_images: images to write (None: DEFAULT_NUM_IMAGES[kind]).
        seed: integer >= 0.
    Returns:
        The paths written, image by image.
    """
    check_kind(kind)
    if kind not in _FOLDER_KINDS:
        raise UNetError(f"kind {kind!r} is not a folder kind; expected one of {', '.join(_FOLDER_KINDS)}")
    num_images = DEFAULT_NUM_IMAGES[kind] if num_images is None else num_images
    _check_count("num_images", num_images)
    if int(seed) != seed or seed < 0:
        raise UNetError(f"seed={seed!r}: expected an integer >= 0")
    make, folders = _FOLDER_KINDS[kind]
    out = pathlib.Path(out_dir)
    stems = _stems(int(num_images))
    _check_destination(out, folders, stems)
    try:
        for folder in folders:
            (out / folder).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UNetError(f"cannot create output directory {out}: {exc.strerror or exc}") from exc
    written = []
    for stem, sample in zip(stems, make(int(num_images), int(seed))):
        for folder in folders:
            path = out / folder / f"{stem}.png"
            _save_png(path, sample[folder])
            written.append(path)
    return written


def write_kind(out_dir: str | os.PathLike, kind: str = "em", *, seed: int = 0, num_slices: int = 30,
               size: int = 512, num_images: int | None = None) -> list[pathlib.Path]:
    """Write any kind: "em" via synthetic.write_isbi_layout (num_slices, size), "ct"/"mr" as an MSD set
    (num_images training cases), the others as folders."""
    check_kind(kind)
    if kind == "em":
        return list(synthetic.write_isbi_layout(out_dir, num_slices=num_slices, size=size, seed=seed).values())
    if kind in synthetic_volumes.VOLUME_KINDS:
        return synthetic_volumes.write_volume_kind(out_dir, kind, num_images, seed)
    return write_folder_kind(out_dir, kind, num_images, seed)
