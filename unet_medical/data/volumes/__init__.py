"""Medical volumes with their geometry: read NIfTI (and, via data.dicom_series, DICOM), write NIfTI.

Conventions (the same for every reader, so a prediction lands where its input was):
- `Volume.array` is in the file's voxel index order (i, j, k[, c]): for NIfTI exactly the stored order
  (nibabel's), for DICOM i = column, j = row, k = slice along the slice normal (dcm2niix's order).
- `Volume.affine` (4 x 4) maps a voxel index (i, j, k, 1) to world coordinates in mm, RAS+ (x to the
  patient's Right->Left is negative: the NIfTI convention). DICOM's LPS is converted on reading.
- `Volume.spacing` (mm) is the distance between neighbouring voxel centres along i, j and k: the norms
  of the affine's first three columns.

Modules: record (Volume), nifti (read_nifti, write_nifti: qform/sform kept), dicom (read_dicom_series).

Readers are found by file ending in READERS (ending -> function); a new format is one entry there.
Reader chosen by measurement against SimpleITK: docs/volumes.md.
"""
from __future__ import annotations

import os
import pathlib
from typing import Callable

from unet_medical.base.errors import UNetError
from unet_medical.data.volumes.dicom import read_dicom_series, series_folders
from unet_medical.data.volumes.nifti import read_nifti, write_nifti, write_nifti_image
from unet_medical.data.volumes.record import Volume, spacing_of

__all__ = ["READERS", "Volume", "is_volume_file", "read_dicom_series", "read_nifti", "read_volume",
           "series_folders", "spacing_of", "volume_ending", "write_nifti",
           "write_nifti_image"]

# File ending -> reader. The longest matching ending wins (".nii.gz" before ".gz").
READERS: dict[str, Callable[[pathlib.Path], Volume]] = {
    ".nii.gz": read_nifti,
    ".nii": read_nifti,
}


def volume_ending(path: str | os.PathLike) -> str | None:
    """The READERS ending `path` has (lower case), or None."""
    name = pathlib.Path(path).name.lower()
    endings = [e for e in READERS if name.endswith(e)]
    return max(endings, key=len) if endings else None


def is_volume_file(path: str | os.PathLike) -> bool:
    return volume_ending(path) is not None


def read_volume(path: str | os.PathLike) -> Volume:
    """Read a volume file by its ending (READERS), or a folder as one DICOM series.

    Raises:
        UNetError: unknown ending (the message lists the known ones), missing or unreadable file.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        return read_dicom_series(path)
    ending = volume_ending(path)
    if ending is None:
        raise UNetError(f"{path}: not a known volume file; expected one of {', '.join(READERS)} "
                        "or a folder holding one DICOM series")
    return READERS[ending](path)


