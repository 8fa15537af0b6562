"""Write small DICOM series for tests (pydicom), with geometry chosen by the test."""
from __future__ import annotations

import pathlib

import numpy as np


def write_series(folder: pathlib.Path, planes: list[np.ndarray], positions: list[np.ndarray],
                 orientation: np.ndarray, pixel_spacing: tuple[float, float], names: list[str],
                 series_uid: str | None = None, description: str = "test", slope: float = 1.0,
                 intercept: float = 0.0) -> str:
    """One CT file per plane (rows, columns) int16 at `positions[n]` (LPS mm), named `names[n]`.

    InstanceNumber counts against the position order so that a reader sorting by it would fail.
    Returns the SeriesInstanceUID.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    for n, (plane, position, name) in enumerate(zip(planes, positions, names)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesDescription = "CT", series_uid, description
        ds.StudyInstanceUID, ds.PatientID = "1.2.3", "TEST"
        ds.ImagePositionPatient = [float(v) for v in position]
        ds.ImageOrientationPatient = [float(v) for v in np.ravel(orientation)]
        ds.PixelSpacing = [float(v) for v in pixel_spacing]
        ds.SliceThickness = 1.0
        ds.InstanceNumber = len(planes) - n
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = np.ascontiguousarray(plane.astype(np.int16)).tobytes()
        ds.save_as(folder / name, enforce_file_format=True)
    return series_uid
