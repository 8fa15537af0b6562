"""Find and load 3D volume data sets: MSD / nnU-Net raw folders and images/ + masks/ folders of volumes.

1. MSD / nnU-Net raw (detected by `dataset.json` or `imagesTr/`):
       dataset.json, imagesTr/CASE_0000.nii.gz [CASE_0001 ...], labelsTr/CASE.nii.gz, imagesTs/CASE_0000...
   File `CASE_XXXX` is channel XXXX of CASE (nnU-Net v2), and channel_names / labels of dataset.json give
   the channel and class names. The original MSD release (v1) is read as well: "modality" for the
   channel names, "labels" as {"0": "background", ...}, one 4D file per case without a channel suffix.
2. Folders: images/CASE.nii.gz + masks/CASE.nii.gz (paired by name without ending), 3D or 4D images.

Each case's channels and labels must share one voxel grid (shape and affine within GRID_TOLERANCE_MM):
a label map resampled or flipped against its image is the error nnU-Net users hit most, and would
train on misplaced labels silently, so it is refused naming both files.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re

import numpy as np

from unet_medical.base.errors import UNetError
from unet_medical.data.volumes import READERS, Volume, read_volume, volume_ending

GRID_TOLERANCE_MM = 1e-3
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclasses.dataclass(frozen=True, eq=False)
class VolumeCase:
    """One case. image.array is (I, J, K, C) with channels last; labels.array (I, J, K) uint8 or None."""

    name: str
    image: Volume
    labels: Volume | None


@dataclasses.dataclass(frozen=True, eq=False)
class VolumeDataSet:
    """Cases with their class and channel names (class i is class_names[i]; 0 is the background)."""

    cases: list[VolumeCase]
    class_names: tuple[str, ...]
    channel_names: tuple[str, ...]
    source: str


@dataclasses.dataclass(frozen=True)
class DatasetJson:
    channel_names: tuple[str, ...]
    class_names: tuple[str, ...]
    file_ending: str


def _ordered(mapping: dict, what: str, path: pathlib.Path) -> tuple[str, ...]:
    """Values of {index: name} ordered by index, which must run 0..N-1."""
    try:
        items = sorted((int(k), str(v)) for k, v in mapping.items())
    except (TypeError, ValueError):
        raise UNetError(f"{path}: {what} must map indices to names, got {mapping!r}") from None
    if [i for i, _ in items] != list(range(len(items))):
        raise UNetError(f"{path}: {what} indices {[i for i, _ in items]} must run 0..{len(items) - 1}")
    return tuple(name for _, name in items)


def read_dataset_json(path: str | os.PathLike) -> DatasetJson:
    """Channel names, class names (by label value) and file ending of an nnU-Net v2 or MSD v1 dataset.json."""
    path = pathlib.Path(path)
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UNetError(f"{path}: not a readable JSON file ({exc})") from None
    channels = meta.get("channel_names", meta.get("modality"))
    labels = meta.get("labels")
    if not isinstance(channels, dict) or not isinstance(labels, dict) or not labels:
        raise UNetError(f"{path}: needs 'channel_names' (or MSD's 'modality') and 'labels' objects")
    if all(str(k).isdigit() for k in labels):  # MSD v1: {"0": "background", "1": "liver"}
        class_names = _ordered(labels, "labels", path)
    else:  # nnU-Net v2: {"background": 0, "liver": 1}; region labels ([1, 2]) are not supported
        if not all(isinstance(v, int) for v in labels.values()):
            raise UNetError(f"{path}: labels {labels} are not one integer per class (nnU-Net region labels "
                            "are not supported)")
        class_names = _ordered({v: k for k, v in labels.items()}, "labels", path)
    ending = str(meta.get("file_ending", ".nii.gz"))
    if ending not in READERS:
        raise UNetError(f"{path}: file_ending {ending!r} cannot be read; expected one of {', '.join(READERS)}")
    return DatasetJson(_ordered(channels, "channel_names", path), class_names, ending)


def same_grid(a: Volume, b: Volume, tolerance_mm: float = GRID_TOLERANCE_MM) -> bool:
    """True if a and b have one voxel grid: equal (I, J, K) and affines equal within tolerance_mm."""
    return a.shape == b.shape and bool(np.abs(a.affine - b.affine).max() <= tolerance_mm)


def require_same_grid(a: Volume, b: Volume, remedy: str = "resample it to its image first") -> None:
    """UNetError naming b and a (and `remedy`) unless b lies on a's voxel grid (same_grid)."""
    if not same_grid(a, b):
        raise UNetError(f"{b.path} does not lie on the voxel grid of {a.path} (shape {b.shape} vs {a.shape}, "
                        f"affine differs by up to {np.abs(a.affine - b.affine).max():.4g} mm); {remedy}")


def _with_channels(channels: list[Volume]) -> Volume:
    """One Volume (I, J, K, C) from single-channel volumes on one grid (a 4D file passes through)."""
    for other in channels[1:]:
        require_same_grid(channels[0], other)
    arrays = [v.array if v.array.ndim == 4 else v.array[..., None] for v in channels]
    return dataclasses.replace(channels[0], array=np.concatenate(arrays, axis=-1))


def _label_volume(path: pathlib.Path, image: Volume, num_classes: int) -> Volume:
    labels = read_volume(path)
    if labels.array.ndim == 4 and labels.array.shape[-1] == 1:  # some tools write a trailing time axis of 1
        labels = dataclasses.replace(labels, array=labels.array[..., 0])
    if labels.array.ndim != 3:
        raise UNetError(f"{path}: a label map must be 3D, got shape {labels.array.shape}")
    require_same_grid(image, labels)
    values = np.unique(labels.array)
    bad = [v for v in values.tolist() if v != int(v) or not 0 <= v < num_classes]
    if bad:
        raise UNetError(f"{path}: label values {bad[:8]} are not class indices 0..{num_classes - 1} "
                        "(dataset.json labels)")
    return dataclasses.replace(labels, array=labels.array.astype(np.uint8))


def volume_files(folder: pathlib.Path, ending: str | None = None) -> dict[str, pathlib.Path]:
    """{name without ending: path} of the volume files in folder (only `ending` if given)."""
    if not folder.is_dir():
        raise UNetError(f"{folder}: folder does not exist")
    found = {}
    for path in sorted(folder.iterdir()):
        found_ending = volume_ending(path)
        if path.name.startswith(".") or found_ending is None or (ending and found_ending != ending):
            continue
        found[path.name[: -len(found_ending)]] = path
    if not found:
        raise UNetError(f"{folder}: no volume files found (looked for {ending or ', '.join(READERS)})")
    return found


def _msd_channel_files(folder: pathlib.Path, ending: str, num_channels: int) -> dict[str, list[pathlib.Path]]:
    """{case: [channel 0 path, ...]} of an images folder; a file without _XXXX is a 4D MSD v1 case."""
    by_case: dict[str, dict[int, pathlib.Path]] = {}
    for stem, path in volume_files(folder, ending).items():
        match = _CHANNEL.match(stem)
        case, channel = (match["case"], int(match["channel"])) if match else (stem, -1)
        by_case.setdefault(case, {})[channel] = path
    cases = {}
    for case, files in sorted(by_case.items()):
        if -1 in files:
            cases[case] = [files[-1]]
            continue
        if sorted(files) != list(range(num_channels)):
            raise UNetError(f"{folder}: case {case} has channel files {sorted(files)}, expected "
                            f"{list(range(num_channels))} (_0000 ... per dataset.json channel_names)")
        cases[case] = [files[c] for c in range(num_channels)]
    return cases


def load_msd(data_dir: str | os.PathLike, split: str = "Tr") -> VolumeDataSet:
    """Load imagesTr + labelsTr (split "Tr") or imagesTs without labels (split "Ts") of an MSD folder."""
    root = pathlib.Path(data_dir)
    meta = read_dataset_json(root / "dataset.json")
    cases = []
    for case, files in _msd_channel_files(root / f"images{split}", meta.file_ending, len(meta.channel_names)).items():
        image = _with_channels([read_volume(path) for path in files])
        if image.array.shape[-1] != len(meta.channel_names):
            raise UNetError(f"{files[0]}: {image.array.shape[-1]} channel(s) but dataset.json names "
                            f"{len(meta.channel_names)}")
        labels = None
        if split == "Tr":
            label_path = root / "labelsTr" / f"{case}{meta.file_ending}"
            if not label_path.is_file():
                raise UNetError(f"{label_path}: missing; every case in imagesTr needs its label map")
            labels = _label_volume(label_path, image, len(meta.class_names))
        cases.append(VolumeCase(case, image, labels))
    return VolumeDataSet(cases, meta.class_names, meta.channel_names, str(root))


def load_volume_folders(data_dir: str | os.PathLike, images_dir: str = "images", masks_dir: str = "masks",
                        num_classes: int | None = None) -> VolumeDataSet:
    """Load images/CASE.nii.gz + masks/CASE.nii.gz (num_classes None: the largest label value + 1, at least 2)."""
    root = pathlib.Path(data_dir)
    images, masks = volume_files(root / images_dir), volume_files(root / masks_dir)
    unpaired = sorted(set(images) ^ set(masks))
    if unpaired:
        raise UNetError(f"{root}: unpaired cases {', '.join(unpaired[:5])}; {images_dir}/ and {masks_dir}/ "
                        "are paired by file name without ending")
    loaded = [(case, _with_channels([read_volume(images[case])])) for case in images]
    if num_classes is None:
        num_classes = max(2, 1 + max(int(read_volume(masks[c]).array.max()) for c in images))
    cases = [VolumeCase(case, image, _label_volume(masks[case], image, num_classes)) for case, image in loaded]
    class_names = ("background",) + tuple(f"class{i}" for i in range(1, num_classes))
    channels = cases[0].image.array.shape[-1]
    if any(c.image.array.shape[-1] != channels for c in cases):
        raise UNetError(f"{root / images_dir}: cases have different channel counts")
    return VolumeDataSet(cases, class_names, tuple(f"channel{i}" for i in range(channels)), str(root))


def is_volume_layout(data_dir: str | os.PathLike, images_dir: str = "images") -> bool:
    """True if data_dir holds an MSD set or an images folder of volume files."""
    root = pathlib.Path(data_dir)
    if (root / "dataset.json").is_file() or (root / "imagesTr").is_dir():
        return True
    folder = root / images_dir
    return folder.is_dir() and any(volume_ending(p) for p in folder.iterdir())


def load_volume_data(data_dir: str | os.PathLike, images_dir: str = "images", masks_dir: str = "masks",
                     num_classes: int | None = None) -> VolumeDataSet:
    """Labelled volumes of data_dir in whichever layout it holds (module docstring)."""
    root = pathlib.Path(data_dir)
    if (root / "dataset.json").is_file() or (root / "imagesTr").is_dir():
        return load_msd(root, "Tr")
    return load_volume_folders(root, images_dir, masks_dir, num_classes)
