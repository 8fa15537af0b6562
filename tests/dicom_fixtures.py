"""Write small DICOM series for tests (pydicom), with geometry chosen by the test."""
from __future__ import annotations

import pathlib

import numpy as np


def ct_dataset(sop_class: str, series_uid: str, description: str):
    """An uncompressed (explicit VR little endian) CT dataset of `sop_class` in series `series_uid`, with its
    file meta and identifiers; the caller adds geometry and pixels."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesDescription = "CT", series_uid, description
    ds.StudyInstanceUID, ds.PatientID = "1.2.3", "TEST"
    return ds


def write_series(folder: pathlib.Path, planes: list[np.ndarray], positions: list[np.ndarray],
                 orientation: np.ndarray, pixel_spacing: tuple[float, float], names: list[str],
                 series_uid: str | None = None, description: str = "test", slope: float = 1.0,
                 intercept: float = 0.0) -> str:
    """One CT file per plane (rows, columns) int16 at `positions[n]` (LPS mm), named `names[n]`.

    InstanceNumber counts against the position order so that a reader sorting by it would fail.
    Returns the SeriesInstanceUID.
    """
    from pydicom.uid import CTImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    for n, (plane, position, name) in enumerate(zip(planes, positions, names)):
        ds = ct_dataset(CTImageStorage, series_uid, description)
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


# Lossless transfer syntaxes a series may come in, each encoded here by imagecodecs (JPEG family) or by
# pydicom itself (RLE): independent of GDCM, which the reader decodes them with.
COMPRESSED_SYNTAXES = {
    "JPEG Lossless SV1": "1.2.840.10008.1.2.4.70",
    "JPEG-LS Lossless": "1.2.840.10008.1.2.4.80",
    "JPEG 2000 Lossless": "1.2.840.10008.1.2.4.90",
    "RLE Lossless": "1.2.840.10008.1.2.5",
}


def compress_series(folder: pathlib.Path, syntax: str) -> None:
    """Rewrite every file of a series written by write_series in the transfer syntax `syntax` (a key of
    COMPRESSED_SYNTAXES), one fragment per frame; the stored 16-bit patterns are kept exactly."""
    import imagecodecs
    from pydicom import dcmread
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    uid = COMPRESSED_SYNTAXES[syntax]
    for path in sorted(folder.iterdir()):
        ds = dcmread(path)
        if uid == RLELossless:
            ds.compress(RLELossless, encoding_plugin="pydicom")
        else:
            stored = ds.pixel_array.view(np.uint16)  # two's complement bit patterns, as DICOM stores them
            frame = {"1.2.840.10008.1.2.4.70": lambda a: imagecodecs.ljpeg_encode(a, bitspersample=16),
                     "1.2.840.10008.1.2.4.80": lambda a: imagecodecs.jpegls_encode(a, level=0),
                     "1.2.840.10008.1.2.4.90": lambda a: imagecodecs.jpeg2k_encode(a, level=0, codecformat="J2K",
                                                                                   reversible=True)}[uid](stored)
            ds.PixelData = encapsulate([frame])
            ds["PixelData"].VR = "OB"
            ds.file_meta.TransferSyntaxUID = uid
        ds.save_as(path, enforce_file_format=True)


# Lossy JPEG syntaxes (ISO 10918-1 process 1, 8-bit, and process 2/4, 12-bit) with the stored bits each takes.
LOSSY_SYNTAXES = {"JPEG Baseline": ("1.2.840.10008.1.2.4.50", 8), "JPEG Extended": ("1.2.840.10008.1.2.4.51", 12)}


def lossy_series(folder: pathlib.Path, syntax: str, quality: int = 90, signed: bool = False) -> None:
    """Rewrite a series written by write_series as `syntax` (a key of LOSSY_SYNTAXES), encoded by imagecodecs
    at JPEG `quality`: stored values become unsigned (8 or 12 bits, shifted by the series' minimum) and the
    rescale intercept moves by the same shift, so the values a reader returns are unchanged but for JPEG's
    loss. `signed`: the values stay as they are, stored as two's complement in the syntax's bits
    (PixelRepresentation 1). The caller's values must fit the syntax's bits. LossyImageCompression is set, as
    the standard asks."""
    import imagecodecs
    from pydicom import dcmread
    from pydicom.encaps import encapsulate

    uid, bits = LOSSY_SYNTAXES[syntax]
    paths = sorted(folder.iterdir())
    shift = 0 if signed else -min(int(dcmread(path).pixel_array.min()) for path in paths)
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1)) if signed else (0, 2 ** bits)
    for path in paths:
        ds = dcmread(path)
        stored = ds.pixel_array.astype(np.int32) + shift
        if stored.min() < low or stored.max() >= high:
            raise ValueError(f"{path}: values {stored.min()}..{stored.max()} do not fit {bits} bits")
        stored = (stored & (2 ** bits - 1)).astype(np.uint8 if bits == 8 else np.uint16)  # the bit pattern
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = (8 if bits == 8 else 16), bits, bits - 1
        ds.PixelRepresentation = int(signed)
        ds.RescaleIntercept = float(ds.RescaleIntercept) - shift * float(ds.RescaleSlope)
        ds.PixelData = encapsulate([imagecodecs.jpeg8_encode(stored, level=quality, bitspersample=bits)])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
        ds.file_meta.TransferSyntaxUID = uid
        ds.save_as(path, enforce_file_format=True)


def write_enhanced(path: pathlib.Path, planes: list[np.ndarray], positions: list[np.ndarray],
                   orientation: np.ndarray, pixel_spacing: tuple[float, float], order: list[int],
                   slope: float = 1.0, intercept: float = 0.0, series_uid: str | None = None) -> None:
    """One Enhanced CT file holding planes[order[0]], planes[order[1]], ... as its frames: each frame's
    ImagePositionPatient in its per-frame functional group, orientation, pixel measures and rescale in the
    shared group (DICOM PS3.3 C.7.6.16), as scanners that export enhanced objects write them."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import EnhancedCTImageStorage, generate_uid

    ds = ct_dataset(EnhancedCTImageStorage, series_uid or generate_uid(), "enhanced")
    ds.NumberOfFrames = len(order)
    ds.Rows, ds.Columns = planes[0].shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1

    def item(**values) -> Dataset:
        entry = Dataset()
        for key, value in values.items():
            setattr(entry, key, value)
        return entry

    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([item(ImageOrientationPatient=[float(v) for v in np.ravel(orientation)])])
    shared.PixelMeasuresSequence = Sequence([item(PixelSpacing=[float(v) for v in pixel_spacing], SliceThickness=1.0)])
    shared.PixelValueTransformationSequence = Sequence([item(RescaleSlope=slope, RescaleIntercept=intercept,
                                                             RescaleType="HU")])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for k in order:
        group = Dataset()
        group.PlanePositionSequence = Sequence([item(ImagePositionPatient=[float(v) for v in positions[k]])])
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = np.ascontiguousarray(np.stack([planes[k] for k in order]).astype(np.int16)).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
