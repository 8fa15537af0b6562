"""A volume data set as the training data of the 2D (or 3D) network, and what a run must record to predict alike.

load_volume_slices turns an MSD / nnU-Net raw folder or images/ + masks/ volume folders
(data.volume_layouts) into VolumeSlices: the SegmentationData every stage already trains on (one item
per slice, case after case; for --dims 3 one item per case, the whole volume), plus the volumes
themselves, the case of every slice (folds split by case: data.folds.case_fold_split) and the
intensity windows. volume_record is the part of model.json
that lets prediction cut and scale new volumes exactly as training did: --dims, the context slices,
the normalization rule per channel (the CT window in HU, or per-case percentiles), the target spacing
the cases were resampled to (data.volume_resample; None: each case on its own grid) and the case names
on each side of the split.

With a target spacing, every case is resampled once as it is loaded (images cubic, labels per class),
before the windows are measured and the cases cut into slices or patches: the items are on the target
grid, while `volumes` keeps the cases as read (their labels and spacing are what evaluation scores).
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Sequence

import numpy as np

from unet_medical.base.errors import UNetError
from unet_medical.data.folds import case_fold_split, fold_split
from unet_medical.data.layouts import SegmentationData
from unet_medical.data.volume_dims import AUTO, choose_dims, slice_mode, volume_inputs
# the layout module's own channel-file rules, reused so prediction groups files exactly as training did
from unet_medical.data.volume_layouts import (_CHANNEL, VolumeCase, VolumeDataSet, volume_files, _with_channels,
                                              load_volume_data)
from unet_medical.data.volume_resample import (Spacing, choose_target_spacing,
                                               resample_image, resample_labels, resampled_shape)
from unet_medical.data.volume_slices import PERCENTILES, Window, case_image_uint16, set_windows, volume_slices
from unet_medical.data.volumes import Volume, read_dicom_series, read_volume, series_folders, volume_ending


@dataclasses.dataclass(frozen=True, eq=False)
class VolumeSlices(SegmentationData):
    """SegmentationData of a volume set's slices, knowing where each came from.

    Attributes (besides SegmentationData's; images are (I, J, (2 * context + 1) * C) uint16 slices, or
    for --dims 3 whole (I, J, K, C) uint16 volumes with (I, J, K) label maps, one item per case):
        volumes: the cases with their geometry (image and label volumes).
        case_of_slice: (N,) int64 index into volumes.cases of each slice.
        windows: per channel, the data set's CT window (lo, hi) or None (each case's own percentiles).
        dims: the --dims the slices were cut for; context: neighbours per side taken as channels.
        target_spacing: (3,) mm the items were resampled to, or None (each case on its own grid); the
            cases in `volumes` are always as read.
        spacing_reason: why that target (data.volume_resample.choose_target_spacing).
    """

    volumes: VolumeDataSet | None = None
    case_of_slice: np.ndarray | None = None
    windows: tuple[Window | None, ...] = ()
    dims: str = "2"
    context: int = 0
    dims_reason: str = ""  # why --dims auto chose `dims` ("" when --dims was given)
    target_spacing: Spacing | None = None
    spacing_reason: str = ""

    def slices_of(self, case_index: int) -> np.ndarray:
        """Item indices of one case's slices, k = 0..K-1 in order."""
        return np.flatnonzero(self.case_of_slice == case_index)


def load_volume_slices(data_dir: str | os.PathLike, *, images_dir: str = "images", masks_dir: str = "masks",
                       num_classes: int | None = None, dims: str = "2", context_slices: int = 1,
                       windows: tuple[Window | None, ...] | None = None, num_folds: int | None = None,
                       fold: int = 0, no_3d: str = "", target_spacing: str | Sequence[float] | None = None
                       ) -> VolumeSlices:
    """The labelled volumes of data_dir cut into the network's slices for --dims (module docstring).

    dims "auto" is decided here from the set's median geometry (volume_dims.choose_dims); `no_3d` says why
    the run's other flags rule the 3D network out ("" when they do not).

    windows None: the CT window is measured on the training cases of fold `fold` of `num_folds` (all
    cases without num_folds), so no validation voxel shapes the scale the model is judged on; a run's
    evaluation passes the windows it recorded instead.

    target_spacing: --target_spacing ("auto", "none", "A,B,C" mm) or a run's recorded (3,) mm or None;
    decided here from the cases as read (choose_target_spacing), which are then resampled to it.
    """
    if dims != AUTO:
        slice_mode(dims)  # an unknown --dims fails before any volume is read
    volumes = load_volume_data(data_dir, images_dir, masks_dir, num_classes)
    target, spacing_reason = choose_target_spacing(np.array([c.image.spacing for c in volumes.cases]),
                                                   target_spacing, [c.name for c in volumes.cases])
    as_read, volumes = volumes, resample_dataset(volumes, target)
    reason = ""
    if dims == AUTO:
        geometry = geometry_summary(volumes)
        dims, reason = choose_dims(geometry["anisotropy"], min(geometry["shape_median"][:3]), no_3d)
    mode = slice_mode(dims)
    context = mode.context(context_slices)
    if windows is None:
        train_cases = (np.arange(len(volumes.cases)) if num_folds is None
                       else fold_split(len(volumes.cases), num_folds, fold)[0])  # = case_fold_split's cases
        windows = set_windows(dataclasses.replace(volumes, cases=[volumes.cases[i] for i in train_cases]))
    resampled = {"volumes": as_read, "target_spacing": target, "spacing_reason": spacing_reason}
    if mode.volumetric:
        return dataclasses.replace(whole_volumes(volumes, windows, mode.dims), dims_reason=reason, **resampled)
    cut = volume_slices(volumes, windows, context=context)
    data = cut.data
    return VolumeSlices(data.images, data.masks, data.names, data.class_names, data.source,
                        mask_format=f"NIfTI label maps, classes {', '.join(data.class_names)} "
                                    f"[{len(volumes.cases)} cases, {len(data.images)} slices]",
                        case_of_slice=cut.case_of_slice, windows=cut.windows, dims=mode.dims,
                        context=context, dims_reason=reason, **resampled)


def resample_case(case: VolumeCase, target: Spacing | None, num_classes: int) -> VolumeCase:
    """The case on the `target` grid (mm): image (I', J', K', C) float32 by cubic spline, labels per class
    (data.volume_resample), the affine's columns rescaled to the new spacing with the outer faces kept.
    target None, or a target that leaves the shape unchanged: the case as it is."""
    spacing = case.image.spacing
    if target is None or resampled_shape(case.image.shape, spacing, target) == case.image.shape:
        return case
    image = resample_image(case.image.array, spacing, target)
    grid = resampled_grid(case.image, image.shape[:3])
    labels = None
    if case.labels is not None:
        labels = dataclasses.replace(case.labels, array=resample_labels(case.labels.array, spacing, target,
                                                                        num_classes), **grid)
    return VolumeCase(case.name, dataclasses.replace(case.image, array=image, **grid), labels)


def resampled_grid(volume: Volume, shape: Sequence[int]) -> dict[str, Any]:
    """Volume fields of `volume`'s field of view sampled as `shape` voxels: its affine with each column
    scaled by old / new size and the origin moved so the outer faces stay where they were (the grid of
    data.volume_resample); no NIfTI header transforms (the resampled case is never written)."""
    scale = np.asarray(volume.shape, np.float64) / np.asarray(shape, np.float64)
    affine = np.array(volume.affine, np.float64)
    # voxel 0's centre moves from half an old voxel to half a new voxel inside the first face
    affine[:3, 3] += affine[:3, :3] @ ((scale - 1.0) / 2.0)
    affine[:3, :3] = affine[:3, :3] * scale
    return {"affine": affine, "spacing": tuple(float(s) for s in np.asarray(volume.spacing) * scale),
            "qform": None, "sform": None, "qform_code": 0, "sform_code": 0}


def resample_dataset(volumes: VolumeDataSet, target: Spacing | None) -> VolumeDataSet:
    """Every case of `volumes` on the `target` grid (resample_case); None: `volumes` itself."""
    if target is None:
        return volumes
    cases = [resample_case(case, target, len(volumes.class_names)) for case in volumes.cases]
    return dataclasses.replace(volumes, cases=cases)


def whole_volumes(volumes: VolumeDataSet, windows: tuple[Window | None, ...], dims: str) -> VolumeSlices:
    """VolumeSlices with one item per case: its (I, J, K, C) uint16 image under `windows` and its
    (I, J, K) labels (--dims 3; items and cases coincide, so folds by case need nothing new)."""
    if len(windows) != len(volumes.channel_names):
        raise UNetError(f"{len(windows)} intensity windows for {len(volumes.channel_names)} channels")
    images = [case_image_uint16(case, windows) for case in volumes.cases]
    masks = [np.ascontiguousarray(case.labels.array) for case in volumes.cases]
    return VolumeSlices(images, masks, [case.name for case in volumes.cases], volumes.class_names, volumes.source,
                        mask_format=f"NIfTI label maps, classes {', '.join(volumes.class_names)} "
                                    f"[{len(volumes.cases)} cases, whole volumes]",
                        volumes=volumes, case_of_slice=np.arange(len(volumes.cases), dtype=np.int64),
                        windows=tuple(windows), dims=dims, context=0)


def split_items(data: SegmentationData, num_folds: int, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx) of fold `fold`: by case for volume slices, contiguous blocks of images otherwise."""
    if isinstance(data, VolumeSlices):
        return case_fold_split(data.case_of_slice, num_folds, fold)
    return fold_split(len(data.images), num_folds, fold)


def cases_of(data: VolumeSlices, items: np.ndarray) -> list[str]:
    """Names of the cases that own `items` (slice indices), in data set order."""
    owners = np.unique(data.case_of_slice[np.asarray(items, np.int64)])
    return [data.volumes.cases[int(i)].name for i in owners]


def normalization_record(windows: tuple[Window | None, ...], channel_names: tuple[str, ...]) -> list[dict[str, Any]]:
    """Per channel, JSON-ready: {"channel", "rule": "ct_window" with "window": [lo, hi] in the image's
    units, or "per_case_percentiles" with "percentiles"}."""
    out = []
    for name, window in zip(channel_names, windows):
        if window is None:
            out.append({"channel": name, "rule": "per_case_percentiles", "percentiles": list(PERCENTILES)})
        else:
            out.append({"channel": name, "rule": "ct_window", "window": [float(window[0]), float(window[1])]})
    return out


def windows_from_record(record: list[dict[str, Any]]) -> tuple[Window | None, ...]:
    """The windows normalization_record described (inverse of it)."""
    try:
        return tuple((float(c["window"][0]), float(c["window"][1])) if c["rule"] == "ct_window" else None
                     for c in record)
    except (KeyError, TypeError, IndexError) as exc:
        raise UNetError(f"model.json: volume normalization record {record!r} is incomplete ({exc})") from None


def geometry_summary(volumes: VolumeDataSet) -> dict[str, Any]:
    """Median voxel spacing (mm, along I, J, K), anisotropy (largest / smallest median spacing) and median
    shape (voxels) of a set's cases."""
    spacing = np.median(np.array([c.image.spacing for c in volumes.cases], np.float64), axis=0)
    shape = np.median(np.array([c.image.shape for c in volumes.cases], np.float64), axis=0)
    return {"spacing_median_mm": [round(float(s), 4) for s in spacing],
            "anisotropy": round(float(spacing.max() / spacing.min()), 3),
            "shape_median": [int(s) for s in shape]}


def volume_record(data: VolumeSlices, train_idx: np.ndarray, val_idx: np.ndarray,
                  patch_size: Sequence[int] | None = None, mirror_axes: Sequence[int] | None = None) -> dict[str, Any]:
    """model.json's "volume" entry: how to cut and scale volumes as this run did, and which cases it saw;
    for --dims 3 also the training patch (voxels), the sliding window of prediction, and the axes its
    training flipped (`mirror_axes`), the only ones test-time mirroring flips."""
    record = {"dims": data.dims, "context_slices": data.context,
              "target_spacing_mm": None if data.target_spacing is None else [float(s) for s in data.target_spacing],
              "channel_names": list(data.volumes.channel_names),
              "normalization": normalization_record(data.windows, data.volumes.channel_names),
              "train_cases": cases_of(data, train_idx), "validation_cases": cases_of(data, val_idx),
              **geometry_summary(data.volumes)}
    if patch_size is not None:
        record["patch_size"] = [int(p) for p in patch_size]
    if mirror_axes is not None:
        record["mirror_axes"] = [int(a) for a in mirror_axes]
    return record


def recorded_target(record: dict[str, Any]) -> Spacing | None:
    """The target spacing (mm) a run's volume record names; None for runs on each case's own grid (and
    for runs recorded before resampling existed)."""
    target = record.get("target_spacing_mm")
    return None if target is None else tuple(float(s) for s in target)  # type: ignore[return-value]


def case_inputs(image: Volume, record: dict[str, Any]) -> list[np.ndarray]:
    """The network inputs (uint16 slices k = 0..K-1; for --dims 3 one (I, J, K, C) volume) of a new image
    volume (I, J, K[, C]) under a run's volume record, exactly as its training items were made: on the
    record's target grid when it names one (the slices then number K', not K)."""
    array = image.array if image.array.ndim == 4 else image.array[..., None]
    channels = len(record["channel_names"])
    if array.shape[-1] != channels:
        raise UNetError(f"{image.path}: {array.shape[-1]} channel(s), the model was trained on {channels} "
                        f"({', '.join(record['channel_names'])})")
    case = resample_case(VolumeCase("", dataclasses.replace(image, array=array), None), recorded_target(record), 0)
    scaled = case_image_uint16(case, windows_from_record(record["normalization"]))
    if slice_mode(record["dims"]).volumetric:
        return [scaled]
    return volume_inputs(scaled, int(record["context_slices"]))


def _channel_groups(files: dict[str, pathlib.Path], channels: int, folder: pathlib.Path
                    ) -> dict[str, list[pathlib.Path]]:
    """{case: channel files} of a folder: nnU-Net naming (CASE_0000, CASE_0001, ...) when every file has
    a four-digit channel suffix, else one case per file (4D files carry their channels)."""
    matches = {stem: _CHANNEL.match(stem) for stem in files}
    if not all(matches.values()):
        return {stem: [path] for stem, path in files.items()}
    by_case: dict[str, dict[int, pathlib.Path]] = {}
    for stem, match in matches.items():
        by_case.setdefault(match["case"], {})[int(match["channel"])] = files[stem]
    for case, found in by_case.items():
        if sorted(found) != list(range(channels)):
            raise UNetError(f"{folder}: case {case} has channel files {sorted(found)}, the model needs "
                            f"{list(range(channels))} (_0000 ... one per channel it was trained on)")
    return {case: [found[c] for c in range(channels)] for case, found in sorted(by_case.items())}


def prediction_cases(path: str | os.PathLike, channels: int) -> list[tuple[str, Volume]]:
    """(case name, image (I, J, K, C)) of every volume to predict at `path`.

    path is one .nii/.nii.gz file (its name without ending and channel suffix is the case), an MSD /
    nnU-Net folder (dataset.json: its imagesTs/), a folder of volume files (nnU-Net channel files
    CASE_0000 ... are grouped into one case), a folder holding one DICOM series (the case is the
    folder's name), or a folder of DICOM series folders at any depth (each a case, named by its path
    below `path` joined with "_": CASE/ -> CASE, P1/STUDY/CT/ -> P1_STUDY_CT).
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise UNetError(f"--input={path}: no such file or folder")
    if path.is_file():
        ending = volume_ending(path)
        if ending is None:
            raise UNetError(f"--input={path}: not a volume file (.nii, .nii.gz) nor a DICOM series folder")
        stem = path.name[: -len(ending)]
        match = _CHANNEL.match(stem)
        return [(match["case"] if match else stem, _with_channels([read_volume(path)]))]
    if (path / "dataset.json").is_file():
        path = path / "imagesTs"
    if path.is_dir() and any(volume_ending(p) for p in path.iterdir()):
        groups = _channel_groups(volume_files(path), channels, path)
        return [(case, _with_channels([read_volume(p) for p in files])) for case, files in groups.items()]
    folders = series_folders(path) if path.is_dir() else []
    if folders and folders[0] != path:  # slices only below `path`: one folder per series (CASE/, P/STUDY/SERIES/)
        return [("_".join(f.relative_to(path).parts), _with_channels([read_dicom_series(f)])) for f in folders]
    image = read_dicom_series(path)  # raises one line naming the folder if it holds no series
    return [(path.name, _with_channels([image]))]
