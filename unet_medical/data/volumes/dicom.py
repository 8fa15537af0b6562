"""Read one DICOM series (a folder of single-slice files, or of enhanced multi-frame files) as a Volume
(conventions: data.volumes).

Slices are ordered by their position along the slice normal (ImagePositionPatient projected on
row x column direction), never by file name or InstanceNumber: exporters name files arbitrarily and
InstanceNumber may count in either direction. The affine is built the way dcm2niix and nibabel do:

    LPS = [ F_row * d_col | F_col * d_row | (P_last - P_first) / (N - 1) | P_first ]

with F_row, F_col the ImageOrientationPatient direction cosines, (d_row, d_col) = PixelSpacing and P
the ImagePositionPatient of the first and last slice after sorting; then RAS = diag(-1, -1, 1) LPS.
Pixel values get RescaleSlope and RescaleIntercept (CT: Hounsfield units). Compressed series (JPEG lossless
and baseline, JPEG-LS, JPEG 2000, RLE), as archives and PACS exports often are, are decoded through GDCM.
An enhanced multi-frame file (Enhanced CT / MR: NumberOfFrames with per-frame functional groups, the default
export of recent scanners) contributes one plane per frame, each with its own position, orientation,
spacing and rescale from its per-frame group or else the shared one (DICOM PS3.3 C.7.6.16).
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from collections import defaultdict
from typing import Any, Callable

import numpy as np

from unet_medical.base.errors import UNetError
from unet_medical.data.volumes.record import Volume, spacing_of

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Relative tolerance on equal slice steps; larger gaps mean a missing file or a mixed series.
_STEP_TOLERANCE = 0.01


@dataclasses.dataclass(frozen=True)
class Plane:
    """One image plane of a series: a classic single-frame file, or one frame of a multi-frame file."""

    file: str  # the file it was read from
    series: str  # SeriesInstanceUID
    description: str  # SeriesDescription
    position: np.ndarray  # (3,) ImagePositionPatient, LPS mm
    orientation: np.ndarray  # (6,) ImageOrientationPatient direction cosines
    spacing: tuple[float, float]  # PixelSpacing (row spacing, column spacing), mm
    thickness: float  # SliceThickness, mm
    size: tuple[int, int]  # (Rows, Columns)
    slope: float
    intercept: float
    pixels: Callable[[], np.ndarray]  # the stored pixels (rows, columns), decoded on demand


# ISO 10918-1 JPEG (baseline 8-bit, extended 12-bit): the python-gdcm wheel's plugin in pydicom refuses 12-bit
# extended frames, which older CT archives hold, and imagecodecs' libjpeg-turbo decodes both.
_IMAGECODECS_JPEG = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")


def _jpeg_frames(ds: Any) -> np.ndarray:
    """The stored pixels of a JPEG baseline / extended file decoded frame by frame with imagecodecs, shaped
    as pydicom's pixel_array: (rows, columns) or (frames, rows, columns); signed data (PixelRepresentation 1)
    read as two's complement in BitsStored bits, as PS3.5 8.2.1 asks."""
    import imagecodecs
    from pydicom.encaps import generate_frames

    count = int(ds.get("NumberOfFrames", 1) or 1)
    frames = np.stack([imagecodecs.jpeg8_decode(frame) for frame in generate_frames(ds.PixelData, number_of_frames=count)])
    if int(ds.get("PixelRepresentation", 0)) == 1:
        bits = int(ds.BitsStored)
        frames = frames.astype(np.int32)
        frames = np.where(frames >= 2 ** (bits - 1), frames - 2 ** bits, frames).astype(np.int16)
    return frames if count > 1 else frames[0]


def _decoded(ds: Any) -> np.ndarray:
    """The stored pixels of one file: (rows, columns), or (frames, rows, columns) for a multi-frame file.
    Compressed transfer syntaxes are decoded by pydicom through GDCM (python-gdcm), JPEG baseline and
    extended that it refuses by imagecodecs."""
    try:
        return ds.pixel_array
    except (RuntimeError, ValueError, NotImplementedError, AttributeError) as exc:
        failure: Exception = exc
    if str(ds.file_meta.get("TransferSyntaxUID", "")) in _IMAGECODECS_JPEG:
        try:
            return _jpeg_frames(ds)
        except (RuntimeError, ValueError) as exc:  # imagecodecs' Jpeg8Error and DelayedImportError are these
            failure = exc
    syntax = ds.file_meta.get("TransferSyntaxUID", "an unknown transfer syntax")
    name = getattr(syntax, "name", str(syntax))
    cause = " ".join(str(failure).split())[:300] or type(failure).__name__  # pydicom lists each plugin's reason
    raise UNetError(f"{ds.filename}: pixel data in {name} could not be decoded ({cause}); "
                    "convert the series to uncompressed DICOM or to NIfTI") from failure


def _classic_plane(ds: Any) -> Plane:
    return Plane(str(ds.filename), str(ds.get("SeriesInstanceUID", "")), str(ds.get("SeriesDescription", "")),
                 np.asarray(ds.ImagePositionPatient, np.float64), np.asarray(ds.ImageOrientationPatient, np.float64),
                 tuple(float(v) for v in ds.get("PixelSpacing", (1.0, 1.0))),
                 float(ds.get("SliceThickness", 1.0) or 1.0), (int(ds.Rows), int(ds.Columns)),
                 float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0),
                 lambda: _decoded(ds))


def _group_item(groups: list[Any], sequence: str) -> Any | None:
    """The first item of functional group macro `sequence` in the first of `groups` that has it."""
    for group in groups:
        items = group.get(sequence) if group is not None else None
        if items:
            return items[0]
    return None


def _value(item: Any | None, keyword: str, default: Any) -> Any:
    """item's `keyword`, or `default` when the item, the attribute or its value is missing (empty values
    occur: an unset SliceThickness is written as an empty string)."""
    value = item.get(keyword) if item is not None else None
    return default if value in (None, "") else value


def _frame_planes(ds: Any) -> list[Plane]:
    """The planes of an enhanced multi-frame file, one per frame, from its per-frame functional groups
    (falling back to the shared ones); the file's pixels are decoded once, when the first is read."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    per_frame = ds.PerFrameFunctionalGroupsSequence
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    if len(per_frame) != frames:
        raise UNetError(f"{ds.filename}: {frames} frames but {len(per_frame)} per-frame functional groups")
    cache: list[np.ndarray] = []

    def frame(index: int) -> np.ndarray:
        if not cache:
            decoded = _decoded(ds)
            cache.append(decoded.reshape(frames, *decoded.shape[-2:]))
        return cache[0][index]

    planes = []
    for index in range(frames):
        groups = [per_frame[index], shared]
        position = _group_item(groups, "PlanePositionSequence")
        orientation = _group_item(groups, "PlaneOrientationSequence")
        if position is None or orientation is None or "ImagePositionPatient" not in position:
            raise UNetError(f"{ds.filename}: frame {index + 1} has no plane position or orientation; not a volume")
        measures = _group_item(groups, "PixelMeasuresSequence")
        rescale = _group_item(groups, "PixelValueTransformationSequence")
        planes.append(Plane(
            str(ds.filename), str(ds.get("SeriesInstanceUID", "")),
            str(ds.get("SeriesDescription", "")), np.asarray(position.ImagePositionPatient, np.float64),
            np.asarray(orientation.ImageOrientationPatient, np.float64),
            tuple(float(v) for v in _value(measures, "PixelSpacing", (1.0, 1.0))),
            float(_value(measures, "SliceThickness", 1.0)), (int(ds.Rows), int(ds.Columns)),
            float(_value(rescale, "RescaleSlope", 1.0)), float(_value(rescale, "RescaleIntercept", 0.0)),
            lambda index=index: frame(index)))
    return planes


def _read_planes(folder: pathlib.Path) -> list[Plane]:
    """Every image plane of the DICOM files in `folder` (DICOMDIR, reports and non-DICOM files skipped)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    found: list[Plane] = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, EOFError):
            continue
        if "PixelData" not in ds:
            continue
        if "PerFrameFunctionalGroupsSequence" in ds:  # an enhanced object, even of one frame
            found.extend(_frame_planes(ds))
        elif "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds:
            found.append(_classic_plane(ds))
    return found


def _one_series(folder: pathlib.Path, planes: list[Plane]) -> list[Plane]:
    """The planes of the folder's only series; several series are refused, naming each."""
    if not planes:
        raise UNetError(f"{folder}: no DICOM image files (with pixel data and a plane position) found")
    by_series: dict[str, list[Plane]] = defaultdict(list)
    for plane in planes:
        by_series[plane.series].append(plane)
    if len(by_series) > 1:
        listed = "; ".join(f"{uid} '{group[0].description}' ({len({plane.file for plane in group})} files)"
                           for uid, group in sorted(by_series.items()))
        raise UNetError(f"{folder}: holds {len(by_series)} DICOM series, expected one per folder: {listed}")
    return planes


def _orientation(folder: pathlib.Path, planes: list[Plane]) -> np.ndarray:
    """(2, 3) row and column direction cosines, the same for every slice."""
    cosines = np.asarray([plane.orientation for plane in planes])
    if np.abs(cosines - cosines[0]).max() > 1e-4:
        raise UNetError(f"{folder}: slices have different ImageOrientationPatient; not one volume")
    return cosines[0].reshape(2, 3)


def _sorted_by_normal(folder: pathlib.Path, planes: list[Plane], normal: np.ndarray) -> tuple[list[Plane], np.ndarray]:
    """Slices sorted by position along `normal`, and their positions P (N, 3) in LPS mm."""
    positions = np.asarray([plane.position for plane in planes])
    depth = positions @ normal
    order = np.argsort(depth, kind="stable")
    depth = depth[order]
    if len(depth) > 1:
        steps = np.diff(depth)
        if steps.min() <= 1e-6 * max(1.0, abs(steps).max()):
            raise UNetError(f"{folder}: several slices share one position (echoes, phases or a "
                            "duplicated file?); expected one slice per position")
        if np.abs(steps - steps.mean()).max() > _STEP_TOLERANCE * steps.mean():
            raise UNetError(f"{folder}: slice spacing varies from {steps.min():.3f} to {steps.max():.3f} mm "
                            "(missing slices?); expected evenly spaced slices")
    return [planes[i] for i in order], positions[order]


def _voxels(folder: pathlib.Path, planes: list[Plane]) -> np.ndarray:
    """(columns, rows, slices) modality values: stored pixels times RescaleSlope plus RescaleIntercept."""
    shapes = {plane.size for plane in planes}
    if len(shapes) > 1:
        raise UNetError(f"{folder}: slices have different sizes {sorted(shapes)}; not one volume")
    values, scaled = [], False
    for plane in planes:
        pixels = plane.pixels()
        if plane.slope != 1 or plane.intercept != 0:
            pixels = pixels * plane.slope + plane.intercept
            scaled = True
        values.append(pixels)
    stack = np.stack(values, axis=-1)  # (rows, columns, slices)
    if scaled and np.all(np.mod(stack, 1) == 0) and stack.min() >= -32768 and stack.max() <= 32767:
        stack = stack.astype(np.int16)  # integer HU: keep the compact type CT is stored in
    elif scaled:
        stack = stack.astype(np.float32)
    return np.ascontiguousarray(stack.transpose(1, 0, 2))


def series_affine(row_cosine: np.ndarray, column_cosine: np.ndarray, pixel_spacing: tuple[float, float],
                  positions: np.ndarray, slice_thickness: float) -> np.ndarray:
    """The (4, 4) LPS affine of sorted slices (module docstring).

    Args:
        row_cosine, column_cosine: (3,) ImageOrientationPatient halves (direction of increasing column
            index, then of increasing row index).
        pixel_spacing: DICOM PixelSpacing (row spacing, column spacing) in mm.
        positions: (N, 3) ImagePositionPatient of the slices in sorted order, mm.
        slice_thickness: the step in mm along the normal used when N == 1.
    """
    affine = np.eye(4)
    affine[:3, 0] = row_cosine * pixel_spacing[1]
    affine[:3, 1] = column_cosine * pixel_spacing[0]
    if len(positions) > 1:
        affine[:3, 2] = (positions[-1] - positions[0]) / (len(positions) - 1)
    else:
        affine[:3, 2] = np.cross(row_cosine, column_cosine) * slice_thickness
    affine[:3, 3] = positions[0]
    return affine


def _holds_image_file(folder: pathlib.Path) -> bool:
    """Does `folder` itself hold a DICOM image slice? Headers only, stopping at the first one found."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError):
            continue
        if "ImagePositionPatient" in ds or "PerFrameFunctionalGroupsSequence" in ds:
            return True
    return False


def series_folders(root: str | os.PathLike) -> list[pathlib.Path]:
    """The folders at or under `root` that themselves hold DICOM image slices, in path order (hidden
    folders skipped): an export laid out as one folder per series (CASE/, or PATIENT/STUDY/SERIES/)."""
    root = pathlib.Path(root)
    found = []
    for folder in sorted([root, *(p for p in root.rglob("*") if p.is_dir())]):
        if not any(part.startswith(".") for part in folder.relative_to(root).parts) and _holds_image_file(folder):
            found.append(folder)
    return found


def read_dicom_series(folder: str | os.PathLike) -> Volume:
    """Read the one DICOM series in `folder` as a Volume (I = columns, J = rows, K = slices; RAS mm).

    Raises:
        UNetError: no image files, several series (each named), mixed orientations or sizes, two
            files at one position, or unevenly spaced slices.
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise UNetError(f"{folder}: not a folder (a DICOM series is read from a folder of slice files)")
    planes = _one_series(folder, _read_planes(folder))
    cosines = _orientation(folder, planes)
    normal = np.cross(cosines[0], cosines[1])
    planes, positions = _sorted_by_normal(folder, planes, normal)
    affine = LPS_TO_RAS @ series_affine(cosines[0], cosines[1], planes[0].spacing, positions, planes[0].thickness)
    return Volume(array=_voxels(folder, planes), affine=affine, spacing=spacing_of(affine), path=str(folder))
