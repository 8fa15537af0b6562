"""Volumes keep their geometry: NIfTI round trips keep qform/sform and codes; DICOM series geometry is
checked against the DICOM standard's per-voxel formula, computed independently here."""
from __future__ import annotations

import gzip
import pathlib

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from tests.dicom_fixtures import (COMPRESSED_SYNTAXES, LOSSY_SYNTAXES, compress_series, lossy_series, write_enhanced,
                                  write_series)
from unet_medical.base.errors import UNetError
from unet_medical.data import volumes
from unet_medical.data.volumes.dicom import read_dicom_series

SPACING = (0.8, 0.8, 3.0)


def oblique_affine(flips: tuple[int, int, int]) -> np.ndarray:
    """A rotation by (12, -7, 25) degrees of voxels SPACING mm with axes flipped by `flips` (+-1)."""
    affine = np.eye(4)
    rotation = Rotation.from_euler("xyz", [12, -7, 25], degrees=True).as_matrix()
    affine[:3, :3] = rotation @ np.diag(np.multiply(SPACING, flips))
    affine[:3, 3] = [-31.5, 12.25, 80.0]
    return affine


ORIENTATIONS = {"oblique RAS": (1, 1, 1), "oblique LPS": (-1, -1, 1), "flipped slice axis": (1, 1, -1)}


def save_image(path: pathlib.Path, array: np.ndarray, affine: np.ndarray, qcode: int = 1, scode: int = 2,
               slope: float | None = None) -> nib.Nifti1Image:
    image = nib.Nifti1Image(array, None)
    qform = affine.copy()
    qform[:3, 3] += [1.0, 0.0, 0.0]  # qform differs from sform: a writer that swaps them is caught
    image.set_qform(qform, code=qcode)
    image.set_sform(affine, code=scode)
    if slope is not None:
        image.header.set_slope_inter(slope, 0.0)
    nib.save(image, str(path))
    return nib.load(str(path))


@pytest.mark.parametrize("name", ORIENTATIONS)
def test_nifti_round_trip_writes_the_input_geometry(tmp_path, name):
    affine = oblique_affine(ORIENTATIONS[name])
    rng = np.random.default_rng(0)
    image = rng.integers(-1000, 1000, size=(24, 32, 20)).astype(np.int16)
    source = save_image(tmp_path / "ct.nii.gz", image, affine)
    volume = volumes.read_volume(tmp_path / "ct.nii.gz")
    assert np.array_equal(volume.array, image)
    assert volume.spacing == pytest.approx(SPACING)
    np.testing.assert_allclose(volume.affine, affine, atol=1e-5)  # sform (code 2) wins over qform
    labels = (image > 0).astype(np.uint8) + (image > 500)
    volumes.write_nifti(labels, like=volume, path=tmp_path / "pred.nii.gz")
    written = nib.load(str(tmp_path / "pred.nii.gz"))
    assert written.shape == source.shape
    assert np.array_equal(np.asanyarray(written.dataobj), labels)
    for getter in ("get_qform", "get_sform"):
        expected_matrix, expected_code = getattr(source.header, getter)(coded=True)
        matrix, code = getattr(written.header, getter)(coded=True)
        assert int(code) == int(expected_code)
        np.testing.assert_allclose(matrix, expected_matrix, atol=1e-5)
    assert written.header.get_zooms() == pytest.approx(source.header.get_zooms())


def test_written_labels_ignore_the_image_intensity_scaling(tmp_path):
    """A CT header's scl_slope must not rescale class indices on write."""
    save_image(tmp_path / "ct.nii", np.arange(24 * 4 * 3, dtype=np.int16).reshape(24, 4, 3),
               oblique_affine((1, 1, 1)), slope=2.0)
    volume = volumes.read_volume(tmp_path / "ct.nii")
    assert volume.array.max() == 2 * (24 * 4 * 3 - 1)  # the reader applies the slope
    labels = np.full((24, 4, 3), 2, np.uint8)
    volumes.write_nifti(labels, volume, tmp_path / "pred.nii")
    assert np.array_equal(np.asanyarray(nib.load(str(tmp_path / "pred.nii")).dataobj), labels)


def test_nifti_gz_output_is_deterministic_and_gzip(tmp_path):
    save_image(tmp_path / "a.nii.gz", np.zeros((4, 5, 6), np.int16), oblique_affine((1, 1, 1)))
    volume = volumes.read_volume(tmp_path / "a.nii.gz")
    first = volumes.write_nifti(np.ones((4, 5, 6), np.uint8), volume, tmp_path / "p1.nii.gz").read_bytes()
    second = volumes.write_nifti(np.ones((4, 5, 6), np.uint8), volume, tmp_path / "p2.nii.gz").read_bytes()
    assert first == second
    assert gzip.decompress(first)[344:348] == b"n+1\x00"  # single-file NIfTI-1 magic inside the gzip


def test_user_mistakes_are_one_line_errors(tmp_path):
    with pytest.raises(UNetError, match=r"scan\.mha: not a known volume file; expected one of \.nii\.gz, \.nii"):
        volumes.read_volume(tmp_path / "scan.mha")
    with pytest.raises(UNetError, match="no such file"):
        volumes.read_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "broken.nii.gz").write_bytes(b"not gzip at all")
    with pytest.raises(UNetError, match="broken.nii.gz: not a readable NIfTI file"):
        volumes.read_volume(tmp_path / "broken.nii.gz")
    save_image(tmp_path / "a.nii", np.zeros((4, 5, 6), np.int16), oblique_affine((1, 1, 1)))
    volume = volumes.read_volume(tmp_path / "a.nii")
    with pytest.raises(UNetError, match=r"shape \(4, 5, 7\) do not fit .* shape \(4, 5, 6\)"):
        volumes.write_nifti(np.zeros((4, 5, 7), np.uint8), volume, tmp_path / "p.nii.gz")
    with pytest.raises(UNetError, match="must end in .nii.gz or .nii"):
        volumes.write_nifti(np.zeros((4, 5, 6), np.uint8), volume, tmp_path / "p.png")


def test_registry_picks_the_longest_ending():
    assert volumes.volume_ending("CASE_0000.NII.GZ") == ".nii.gz"
    assert volumes.volume_ending("x.nii") == ".nii"
    assert volumes.volume_ending("x.gz") is None


# ---- DICOM -------------------------------------------------------------------------------------------

def dicom_geometry() -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float]]:
    """Oblique row/column cosines, slice normal, first position (LPS) and PixelSpacing (row, col)."""
    rotation = Rotation.from_euler("zyx", [20, 10, -15], degrees=True).as_matrix()
    return rotation[:, 0], rotation[:, 1], np.array([-120.0, 85.5, -40.0]), (0.7, 0.9)


def write_oblique_series(folder: pathlib.Path, num_slices: int = 6, step: float = 2.5, **kwargs):
    row, col, origin, pixel_spacing = dicom_geometry()
    normal = np.cross(row, col)
    rng = np.random.default_rng(1)
    planes = [rng.integers(-500, 1500, size=(10, 12)).astype(np.int16) for _ in range(num_slices)]
    positions = [origin + k * step * normal for k in range(num_slices)]
    names = [f"IM{(5 * k) % num_slices:03d}.dcm" for k in range(num_slices)]  # 6 slices: names run backwards
    uid = write_series(folder, planes, positions, np.stack([row, col]), pixel_spacing, names, **kwargs)
    return planes, positions, uid


def test_dicom_series_is_sorted_by_position_with_the_standard_geometry(tmp_path):
    planes, positions, _ = write_oblique_series(tmp_path / "s", slope=1.0, intercept=-1024.0)
    volume = volumes.read_volume(tmp_path / "s")
    row, col, _, (d_row, d_col) = dicom_geometry()
    assert volume.shape == (12, 10, 6)
    assert volume.spacing == pytest.approx((d_col, d_row, 2.5))
    rng = np.random.default_rng(2)
    for i, j, k in zip(rng.integers(12, size=20), rng.integers(10, size=20), rng.integers(6, size=20)):
        assert volume.array[i, j, k] == planes[k][j, i] - 1024  # HU: value x slope + intercept
        # DICOM PS3.3 C.7.6.2.1.1: P(i, j) = S + i * F_row * d_col + j * F_col * d_row (LPS)
        lps = positions[k] + i * row * d_col + j * col * d_row
        ras = volume.affine @ [i, j, k, 1]
        np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-6)


def test_dicom_prediction_is_written_with_scanner_codes(tmp_path):
    write_oblique_series(tmp_path / "s")
    volume = read_dicom_series(tmp_path / "s")
    volumes.write_nifti(np.ones(volume.shape, np.uint8), volume, tmp_path / "pred.nii.gz")
    written = nib.load(str(tmp_path / "pred.nii.gz"))
    assert (int(written.header["qform_code"]), int(written.header["sform_code"])) == (1, 1)
    np.testing.assert_allclose(written.affine, volume.affine, atol=1e-5)


def test_a_folder_with_two_series_is_refused_naming_both(tmp_path):
    _, _, first = write_oblique_series(tmp_path / "s", description="axial")
    row, col, origin, spacing = dicom_geometry()
    second = write_series(tmp_path / "s", [np.zeros((10, 12), np.int16)], [origin], np.stack([row, col]),
                          spacing, ["other.dcm"], description="scout")
    (tmp_path / "s" / "notes.txt").write_text("not DICOM")  # skipped, not an error
    with pytest.raises(UNetError) as info:
        read_dicom_series(tmp_path / "s")
    message = str(info.value)
    assert "\n" not in message and "2 DICOM series" in message
    assert f"{first} 'axial' (6 files)" in message and f"{second} 'scout' (1 files)" in message


def test_a_missing_slice_and_an_empty_folder_are_refused(tmp_path):
    write_oblique_series(tmp_path / "s")
    (tmp_path / "s" / "IM003.dcm").unlink()  # k = 3 (5 * 3 % 6 == 3): a gap in the middle
    with pytest.raises(UNetError, match="slice spacing varies from 2.500 to 5.000 mm"):
        read_dicom_series(tmp_path / "s")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UNetError, match="no DICOM image files"):
        volumes.read_volume(tmp_path / "empty")


@pytest.mark.parametrize("syntax", sorted(COMPRESSED_SYNTAXES))
def test_a_compressed_series_reads_as_its_uncompressed_self(tmp_path, syntax):
    # Archives and PACS exports store series compressed; each lossless syntax must give the same voxels
    # (negative stored values included) and the same geometry.
    write_oblique_series(tmp_path / "s", slope=1.0, intercept=-1024.0)
    plain = volumes.read_volume(tmp_path / "s")
    compress_series(tmp_path / "s", syntax)
    from pydicom import dcmread
    assert dcmread(tmp_path / "s" / "IM000.dcm").file_meta.TransferSyntaxUID == COMPRESSED_SYNTAXES[syntax]
    compressed = volumes.read_volume(tmp_path / "s")
    assert compressed.array.dtype == plain.array.dtype and plain.array.min() < 0
    np.testing.assert_array_equal(compressed.array, plain.array)
    np.testing.assert_allclose(compressed.affine, plain.affine)


@pytest.mark.parametrize("syntax, signed", [("JPEG Baseline", False), ("JPEG Extended", False), ("JPEG Extended", True)])
def test_a_lossy_jpeg_series_reads_as_its_source_within_the_codec_loss(tmp_path, syntax, signed):
    # Older MR and secondary-capture archives hold 8-bit baseline or 12-bit extended JPEG: lossy, so the
    # voxels come back near their source, on exactly its geometry. Smooth planes, as scans are, so that
    # quality 90 loses little; a decoder that mis-shifted, mis-scaled or transposed would be far off.
    row, col, origin, pixel_spacing = dicom_geometry()
    bits = LOSSY_SYNTAXES[syntax][1]
    rows, cols = np.mgrid[0:24, 0:20]
    offset = -(2 ** (bits - 1)) if signed else 0  # signed: every value negative, stored as two's complement
    planes = [np.round(offset + (2 ** (bits - 1) - 1) * (0.5 + 0.2 * np.sin(rows / 5.0 + k) + 0.2 * np.cos(cols / 4.0 - k)))
              .astype(np.int16) for k in range(5)]
    normal = np.cross(row, col)
    positions = [origin + k * 2.0 * normal for k in range(5)]
    write_series(tmp_path / "s", planes, positions, np.stack([row, col]), pixel_spacing,
                 [f"IM{k}.dcm" for k in range(5)], slope=2.0, intercept=-100.0)
    plain = volumes.read_volume(tmp_path / "s")
    lossy_series(tmp_path / "s", syntax, signed=signed)
    from pydicom import dcmread
    assert dcmread(tmp_path / "s" / "IM0.dcm").file_meta.TransferSyntaxUID == LOSSY_SYNTAXES[syntax][0]
    lossy = volumes.read_volume(tmp_path / "s")
    assert lossy.shape == plain.shape == (20, 24, 5)
    np.testing.assert_allclose(lossy.affine, plain.affine)
    error = np.abs(lossy.array.astype(np.float64) - plain.array.astype(np.float64))
    assert (plain.array < 0).all() if signed else (plain.array >= -100).all()
    value_range = 2.0 * (2 ** bits - 1)  # slope 2
    assert error.mean() < 0.01 * value_range and error.max() < 0.06 * value_range
    assert not np.array_equal(lossy.array, plain.array)  # it was lossy, so this compared decoded voxels


@pytest.mark.parametrize("syntax, name", [("JPEG-LS Lossless", "JPEG-LS Lossless"),
                                          ("JPEG Extended", "JPEG Extended (Process 2 and 4)")])
def test_an_undecodable_slice_is_refused_in_one_line_naming_the_file_and_its_syntax(tmp_path, syntax, name):
    # JPEG Extended fails in GDCM's plugin and then in imagecodecs: the second decoder's failure is one line too.
    from pydicom import dcmread
    from pydicom.encaps import encapsulate, generate_frames

    write_oblique_series(tmp_path / "s")
    (compress_series if syntax in COMPRESSED_SYNTAXES else lossy_series)(tmp_path / "s", syntax)
    path = tmp_path / "s" / "IM001.dcm"
    ds = dcmread(path)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 3]])  # a truncated transfer
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(UNetError) as info:
        volumes.read_volume(tmp_path / "s")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: pixel data in {name}")
    assert "could not be decoded" in message


def test_an_enhanced_multi_frame_file_reads_as_the_same_series_of_single_files(tmp_path):
    # Recent scanners export one Enhanced CT/MR file per series: the frames come in any order, their
    # positions in per-frame functional groups, orientation, spacing and rescale in the shared group.
    planes, positions, _ = write_oblique_series(tmp_path / "classic", slope=1.0, intercept=-1024.0)
    row, col, _, pixel_spacing = dicom_geometry()
    write_enhanced(tmp_path / "enhanced" / "series.dcm", planes, positions, np.stack([row, col]), pixel_spacing,
                   order=[3, 0, 5, 1, 4, 2], intercept=-1024.0)
    classic, enhanced = volumes.read_volume(tmp_path / "classic"), volumes.read_volume(tmp_path / "enhanced")
    assert enhanced.shape == classic.shape == (12, 10, 6) and enhanced.array.dtype == classic.array.dtype
    np.testing.assert_array_equal(enhanced.array, classic.array)
    np.testing.assert_allclose(enhanced.affine, classic.affine, atol=1e-9)
    (tmp_path / "notes").mkdir()
    assert volumes.series_folders(tmp_path) == [tmp_path / "classic", tmp_path / "enhanced"]
    write_enhanced(tmp_path / "one" / "frame.dcm", planes, positions, np.stack([row, col]), pixel_spacing, order=[2],
                   intercept=-1024.0)  # an enhanced object of one frame is still read by its functional groups
    single = volumes.read_volume(tmp_path / "one")
    assert single.shape == (12, 10, 1)
    np.testing.assert_array_equal(single.array[..., 0], classic.array[..., 2])


def test_an_enhanced_file_with_two_frames_at_one_position_is_refused(tmp_path):
    planes, positions, _ = write_oblique_series(tmp_path / "classic")
    row, col, _, pixel_spacing = dicom_geometry()
    write_enhanced(tmp_path / "enhanced" / "echoes.dcm", planes, positions, np.stack([row, col]), pixel_spacing,
                   order=[0, 1, 2, 3, 4, 5, 0])  # a second echo of the first position
    with pytest.raises(UNetError, match="several slices share one position"):
        volumes.read_volume(tmp_path / "enhanced")


def test_a_nifti_placed_by_its_voxel_sizes_alone_is_written_back_the_same_way(tmp_path):
    # Both codes 0 (NIfTI method 1): ITK and Slicer place voxel (0, 0, 0) at the origin by pixdim alone, while
    # nibabel's affine for it is centred and flipped. A prediction written with that affine and code 1 would
    # not overlay its input there; it must keep codes 0 and the voxel sizes.
    image = nib.Nifti1Image(np.zeros((5, 6, 7), np.int16), None)
    image.header.set_zooms((0.8, 0.9, 2.5))
    image.set_qform(None, code=0)
    image.set_sform(None, code=0)
    nib.save(image, tmp_path / "scan.nii.gz")
    volume = volumes.read_volume(tmp_path / "scan.nii.gz")
    volumes.write_nifti(np.ones(volume.shape, np.uint8), volume, tmp_path / "pred.nii.gz")
    volumes.write_nifti(np.full(volume.shape + (2,), 255, np.uint8), volume, tmp_path / "prob.nii.gz", scale=1 / 255)
    for name in ("pred", "prob"):
        written = nib.load(tmp_path / f"{name}.nii.gz")
        header = written.header
        assert (int(header["qform_code"]), int(header["sform_code"])) == (0, 0)
        assert header.get_zooms()[:3] == pytest.approx((0.8, 0.9, 2.5))
        assert [float(header[k]) for k in ("quatern_b", "quatern_c", "quatern_d", "qoffset_x")] == [0, 0, 0, 0]
        np.testing.assert_allclose(written.affine, volume.affine)
    assert nib.load(tmp_path / "prob.nii.gz").get_fdata().max() == pytest.approx(1.0)
