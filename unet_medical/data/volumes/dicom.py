"""Read one DICOM series (a folder of single-slice files) as a Volume (conventions: data.volumes).

Slices are ordered by their position along the slice normal (ImagePositionPatient projected on
row x column direction), never by file name or InstanceNumber: exporters name files arbitrarily and
InstanceNumber may count in either direction. The affine is built the way dcm2niix and nibabel do:

    LPS = [ F_row * d_col | F_col * d_row | (P_last - P_first) / (N - 1) | P_first ]

with F_row, F_col the ImageOrientationPatient direction cosines, (d_row, d_col) = PixelSpacing and P
the ImagePositionPatient of the first and last slice after sorting; then RAS = diag(-1, -1, 1) LPS.
Pixel values get RescaleSlope and RescaleIntercept (CT: Hounsfield units). Compressed series (JPEG lossless
and baseline, JPEG-LS, JPEG 2000, RLE), as archives and PACS exports often are, are decoded through GDCM.
"""
from __future__ import annotations

import os
import pathlib
from collections import defaultdict

import numpy as np

from unet_medical.base.errors import UNetError
from unet_medical.data.volumes.record import Volume, spacing_of

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Relative tolerance on equal slice steps; larger gaps mean a missing file or a mixed series.
_STEP_TOLERANCE = 0.01


def _read_headers(folder: pathlib.Path) -> list:
    """Every DICOM file in `folder` that holds image pixels (DICOMDIR, reports and non-DICOM files skipped)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    found = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, EOFError):
            continue
        if "PixelData" in ds and "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds:
            found.append(ds)
    return found


def _one_series(folder: pathlib.Path, datasets: list) -> list:
    """The files of the folder's only series; several series are refused, naming each."""
    if not datasets:
        raise UNetError(f"{folder}: no DICOM image files (with pixel data and ImagePositionPatient) found")
    by_series: dict[str, list] = defaultdict(list)
    for ds in datasets:
        by_series[str(ds.get("SeriesInstanceUID", ""))].append(ds)
    if len(by_series) > 1:
        listed = "; ".join(f"{uid} '{group[0].get('SeriesDescription', '')}' ({len(group)} files)"
                           for uid, group in sorted(by_series.items()))
        raise UNetError(f"{folder}: holds {len(by_series)} DICOM series, expected one per folder: {listed}")
    return datasets


def _orientation(folder: pathlib.Path, datasets: list) -> np.ndarray:
    """(2, 3) row and column direction cosines, the same for every slice."""
    cosines = np.asarray([np.asarray(ds.ImageOrientationPatient, dtype=np.float64) for ds in datasets])
    if np.abs(cosines - cosines[0]).max() > 1e-4:
        raise UNetError(f"{folder}: slices have different ImageOrientationPatient; not one volume")
    return cosines[0].reshape(2, 3)


def _sorted_by_normal(folder: pathlib.Path, datasets: list, normal: np.ndarray) -> tuple[list, np.ndarray]:
    """Slices sorted by position along `normal`, and their positions P (N, 3) in LPS mm."""
    positions = np.asarray([np.asarray(ds.ImagePositionPatient, dtype=np.float64) for ds in datasets])
    depth = positions @ normal
    order = np.argsort(depth, kind="stable")
    depth = depth[order]
    if len(depth) > 1:
        steps = np.diff(depth)
        if steps.min() <= 1e-6 * max(1.0, abs(steps).max()):
            raise UNetError(f"{folder}: several files share one slice position (echoes, phases or a "
                            "duplicated file?); expected one slice per position")
        if np.abs(steps - steps.mean()).max() > _STEP_TOLERANCE * steps.mean():
            raise UNetError(f"{folder}: slice spacing varies from {steps.min():.3f} to {steps.max():.3f} mm "
                            "(missing slices?); expected evenly spaced slices")
    return [datasets[i] for i in order], positions[order]


def _pixels(ds) -> np.ndarray:
    """The stored pixels (rows, columns) of one slice file. Compressed transfer syntaxes (JPEG lossless and
    baseline, JPEG-LS, JPEG 2000, RLE) are decoded by pydicom through GDCM (python-gdcm)."""
    try:
        return ds.pixel_array
    except (RuntimeError, ValueError, NotImplementedError, AttributeError) as exc:
        syntax = ds.file_meta.get("TransferSyntaxUID", "an unknown transfer syntax")
        name = getattr(syntax, "name", str(syntax))
        cause = " ".join(str(exc).split())[:300] or type(exc).__name__  # pydicom lists each plugin's reason
        raise UNetError(f"{ds.filename}: pixel data in {name} could not be decoded ({cause}); "
                        "convert the series to uncompressed DICOM or to NIfTI") from exc


def _voxels(folder: pathlib.Path, datasets: list) -> np.ndarray:
    """(columns, rows, slices) modality values: stored pixels times RescaleSlope plus RescaleIntercept."""
    shapes = {(int(ds.Rows), int(ds.Columns)) for ds in datasets}
    if len(shapes) > 1:
        raise UNetError(f"{folder}: slices have different sizes {sorted(shapes)}; not one volume")
    planes, scaled = [], False
    for ds in datasets:
        plane = _pixels(ds)
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        if slope != 1 or intercept != 0:
            plane = plane * slope + intercept
            scaled = True
        planes.append(plane)
    stack = np.stack(planes, axis=-1)  # (rows, columns, slices)
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
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["ImagePositionPatient"])
        except (InvalidDicomError, OSError, EOFError):
            continue
        if "ImagePositionPatient" in ds:
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
    datasets = _one_series(folder, _read_headers(folder))
    cosines = _orientation(folder, datasets)
    normal = np.cross(cosines[0], cosines[1])
    datasets, positions = _sorted_by_normal(folder, datasets, normal)
    spacing = tuple(float(v) for v in datasets[0].get("PixelSpacing", (1.0, 1.0)))
    thickness = float(datasets[0].get("SliceThickness", 1.0) or 1.0)
    affine = LPS_TO_RAS @ series_affine(cosines[0], cosines[1], spacing, positions, thickness)
    return Volume(array=_voxels(folder, datasets), affine=affine, spacing=spacing_of(affine), path=str(folder))
