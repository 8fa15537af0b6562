"""NIfTI (.nii, .nii.gz) in and out with both header transforms and their codes (nibabel).

NIfTI files carry two transforms, qform and sform, each with a code saying what it means (0 unknown,
1 scanner, 2 aligned, 3 Talairach, 4 MNI, 5 template). Viewers pick one by the codes, so a prediction
must be written with both transforms and both codes of its image, not just "the affine": the most
reported NIfTI problem of nnU-Net and MONAI users is a prediction that opens flipped or shifted.
"""
from __future__ import annotations

import gzip
import os
import pathlib

import numpy as np

from unet_medical.base.errors import UNetError
from unet_medical.base.fileio import atomic_write_bytes
from unet_medical.data.volumes.record import Volume, spacing_of

NIFTI_ENDINGS = (".nii.gz", ".nii")


def read_nifti(path: str | os.PathLike) -> Volume:
    """Read a .nii or .nii.gz file (3D, or 4D with channels last) with both header transforms."""
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    path = pathlib.Path(path)
    try:
        image = nib.load(str(path))
        array = np.asanyarray(image.dataobj)
    except FileNotFoundError:
        raise UNetError(f"{path}: no such file") from None
    except (ImageFileError, OSError, EOFError, ValueError) as exc:
        raise UNetError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    if array.ndim == 5 and array.shape[3] == 1:  # NIfTI puts vector components on axis 4 (time = 1)
        array = array[:, :, :, 0, :]
    if array.ndim == 2:  # a single slice stored as 2D: one voxel thick
        array = array[:, :, None]
    if array.ndim not in (3, 4):
        raise UNetError(f"{path}: {array.ndim}D image of shape {array.shape}; expected 3D (I, J, K) or "
                        "4D (I, J, K, channels)")
    header = image.header
    qform, qcode = header.get_qform(coded=True)
    sform, scode = header.get_sform(coded=True)
    affine = np.asarray(image.affine, dtype=np.float64)  # nibabel's choice: sform if coded, else qform
    return Volume(array=array, affine=affine, spacing=spacing_of(affine), path=str(path),
                  qform=None if qform is None else np.asarray(qform, np.float64),
                  sform=None if sform is None else np.asarray(sform, np.float64),
                  qform_code=int(qcode or 0), sform_code=int(scode or 0),
                  zooms=tuple(float(z) for z in header.get_zooms()[:3]))


def write_nifti_image(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> pathlib.Path:
    """Write a new image (I, J, K) whose affine (4, 4, RAS mm) is both its qform and sform (scanner, code 1).

    For data this package creates (synthetic sets); a prediction uses write_nifti with its input as `like`.
    """
    affine = np.asarray(affine, dtype=np.float64)
    like = Volume(array=np.empty(np.shape(array)[:3], np.uint8), affine=affine, spacing=spacing_of(affine))
    return write_nifti(array, like, path)


def _label_array(labels: np.ndarray, like: Volume, path: pathlib.Path) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape[:3] != like.shape:
        raise UNetError(f"{path}: labels of shape {labels.shape} do not fit the image {like.path or ''} of "
                        f"shape {like.shape}; a prediction must keep the input's voxel grid")
    if labels.dtype == np.bool_:
        return labels.astype(np.uint8)
    if np.issubdtype(labels.dtype, np.integer) and labels.size and 0 <= labels.min() and labels.max() <= 255:
        return labels.astype(np.uint8)  # class indices: the smallest type viewers read as a label map
    return labels


def write_nifti(labels: np.ndarray, like: Volume, path: str | os.PathLike, scale: float | None = None) -> pathlib.Path:
    """Write `labels` (I, J, K[, ...]) as NIfTI with exactly the geometry of `like`.

    The file gets like's qform and sform with their codes (for a DICOM `like`, which has neither, the
    affine as both, code 1 = scanner; for a NIfTI `like` with both codes 0, its voxel sizes and codes 0),
    spacing in mm and no intensity scaling: the image header is
    not copied whole, because its scl_slope/scl_inter (common in CT) would rescale the class indices.
    `scale`: an scl_slope of the file's own (probabilities stored as 0..255 with scale 1/255).
    Written atomically; ".nii.gz" is gzip-compressed, ".nii" not.

    Raises:
        UNetError: the label grid differs from like's, or the path does not end in .nii / .nii.gz.
    """
    import nibabel as nib

    path = pathlib.Path(path)
    ending = next((e for e in NIFTI_ENDINGS if path.name.lower().endswith(e)), None)
    if ending is None:
        raise UNetError(f"{path}: a NIfTI prediction must end in .nii.gz or .nii")
    array = _label_array(labels, like, path)
    uncoded = like.qform_code == 0 and like.sform_code == 0
    if uncoded and like.zooms is not None:
        # A NIfTI input placed by its voxel sizes alone (method 1): ITK and Slicer put its voxel (0, 0, 0) at
        # the origin, where nibabel's affine is centred and flipped; the same uncoded header overlays it in each.
        header = nib.Nifti1Header()
        header.set_data_shape(array.shape)
        header.set_data_dtype(array.dtype)
        header.set_zooms(like.zooms + (1.0,) * (array.ndim - 3))
        image = nib.Nifti1Image(array, None, header=header)
    elif uncoded:  # DICOM: its affine, as scanner coordinates
        image = nib.Nifti1Image(array, None)
        image.set_qform(like.affine, code=1)
        image.set_sform(like.affine, code=1)
    else:
        image = nib.Nifti1Image(array, None)
        # an uncoded transform is written as code 0 (its matrix is then ignored by readers)
        image.set_qform(like.qform if like.qform is not None else like.affine, code=like.qform_code)
        image.set_sform(like.sform if like.sform is not None else like.affine, code=like.sform_code)
    image.header.set_xyzt_units("mm", "sec")
    if scale is not None:
        image.header.set_slope_inter(scale, 0.0)
    data = image.to_bytes()
    if ending == ".nii.gz":
        data = gzip.compress(data, compresslevel=6, mtime=0)  # mtime 0: same labels, same bytes
    try:
        return atomic_write_bytes(path, data)
    except OSError as exc:
        raise UNetError(f"cannot write {path}: {exc.strerror or exc}") from exc
