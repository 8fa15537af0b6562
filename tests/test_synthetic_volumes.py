"""download_dataset.py --synthetic --kind ct|mr: an MSD / nnU-Net raw set with oblique, anisotropic
geometry and two nested foreground classes, readable by data.volumes."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

import download_dataset as dd
from unet_medical.base.errors import UNetError
from unet_medical.data import synthetic_volumes as sv
from unet_medical.data import volumes


@pytest.mark.parametrize("kind,channel", [("ct", "CT"), ("mr", "MRI")])
def test_cli_writes_an_msd_set_with_kept_geometry(tmp_path, capsys, kind, channel):
    assert dd.main(["--synthetic", "--kind", kind, "--num_images", "2", "--data_dir", str(tmp_path)]) == 0
    assert "imagesTr: 2 file(s) written" in capsys.readouterr().out
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": channel} and meta["file_ending"] == ".nii.gz"
    assert meta["labels"] == {"background": 0, "organ": 1, "lesion": 2} and meta["numTraining"] == 2
    assert sorted(p.name for p in (tmp_path / "imagesTr").iterdir()) == ["case_000_0000.nii.gz", "case_001_0000.nii.gz"]
    assert sorted(p.name for p in (tmp_path / "labelsTr").iterdir()) == ["case_000.nii.gz", "case_001.nii.gz"]
    assert len(list((tmp_path / "imagesTs").iterdir())) == sv.NUM_TEST
    for case in ("case_000", "case_001"):
        image = volumes.read_volume(tmp_path / "imagesTr" / f"{case}_0000.nii.gz")
        labels = volumes.read_volume(tmp_path / "labelsTr" / f"{case}.nii.gz")
        assert image.shape == labels.shape == sv.SHAPE
        np.testing.assert_allclose(labels.affine, image.affine, atol=1e-6)
        assert image.spacing == pytest.approx(sv.VOXEL_MM, rel=1e-5)
        assert np.abs(image.affine[:3, :3] - np.diag(np.diag(image.affine[:3, :3]))).max() > 0.05  # oblique
        assert (image.qform_code, image.sform_code) == (1, 1)
        means = [image.array[labels.array == c].mean() for c in range(3)]
        if kind == "ct":
            assert image.array.dtype == np.int16
            assert means[1] == pytest.approx(60, abs=3) and means[2] == pytest.approx(20, abs=3)
        else:
            assert image.array.dtype == np.float32 and means[0] < means[1] < means[2]


def test_cases_hold_a_lesion_nested_in_the_organ_and_are_reproducible():
    for index in range(6):
        first = sv.make_case("ct", np.random.default_rng(index))
        again = sv.make_case("ct", np.random.default_rng(index))
        assert all(np.array_equal(a, b) for a, b in zip(first, again))
        labels = first[1]
        lesion, organ = labels == 2, labels == 1
        assert 100 < lesion.sum() < organ.sum()
        shell = ndimage.binary_dilation(lesion) & ~lesion
        assert organ[shell].mean() > 0.9  # the lesion is (almost) surrounded by organ: nested classes


def test_a_non_empty_destination_and_bad_counts_are_refused(tmp_path):
    sv.write_volume_kind(tmp_path, "mr", 1, seed=0)
    with pytest.raises(UNetError, match="imagesTr is not empty"):
        sv.write_volume_kind(tmp_path, "mr", 1, seed=0)
    with pytest.raises(UNetError, match="num_images=0"):
        sv.write_volume_kind(tmp_path / "new", "ct", 0)


def checked_small_cases(kind: str, count: int):
    """(image, labels) of cases 0 .. count - 1 of a small-crop kind, each checked: the same generator gives the
    same case, and it holds one small structure split into a head larger than its tail, the two touching."""
    for index in range(count):
        first = sv.make_case(kind, np.random.default_rng(index))
        again = sv.make_case(kind, np.random.default_rng(index))
        assert all(np.array_equal(a, b) for a, b in zip(first, again))
        image, labels = first[0], first[1]
        head, tail = labels == 1, labels == 2
        assert 300 < tail.sum() < head.sum() < 0.05 * labels.size  # small structures, as in hippocampus crops
        assert (ndimage.binary_dilation(head) & tail).any()  # adjacent: the labels share a surface
        assert ndimage.label(head | tail)[1] == 1  # one structure split in two, not two blobs
        yield image, labels


def test_mr_small_writes_small_isotropic_cases_with_two_adjacent_labels(tmp_path):
    """--kind mr_small: crops of 1 mm voxels (anisotropy 1) whose shapes differ per case, labels head and tail
    touching."""
    sv.write_volume_kind(tmp_path, "mr_small", 2, seed=3)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "head": 1, "tail": 2} and meta["channel_names"] == {"0": "MRI"}
    image = volumes.read_volume(tmp_path / "imagesTr" / "case_001_0000.nii.gz")
    labels = volumes.read_volume(tmp_path / "labelsTr" / "case_001.nii.gz")
    assert image.shape == labels.shape and image.array.dtype == np.float32
    assert all(low <= n <= high for n, (low, high) in zip(image.shape, sv.SMALL_SHAPE_RANGE))
    np.testing.assert_allclose(labels.affine, image.affine, atol=1e-6)
    assert image.spacing == pytest.approx((1.0, 1.0, 1.0), rel=1e-5)
    for image, labels in checked_small_cases("mr_small", 4):
        head, tail = labels == 1, labels == 2
        tissue = image[labels == 0].mean()
        assert tissue < image[head].mean() and tissue < image[tail].mean()
    assert sv.dataset_json("mr_small", 5)["numTraining"] == 5


def _contrast_to_noise(image: np.ndarray, labels: np.ndarray) -> float:
    """|mean inside the structure - mean of a shell 1-3 voxels outside it| / sd inside it."""
    inside = labels > 0
    shell = ndimage.binary_dilation(inside, iterations=3) & ~ndimage.binary_dilation(inside)
    return float(abs(image[inside].mean() - image[shell].mean()) / image[inside].std())


def test_mr_faint_is_mr_small_geometry_with_a_structure_as_bright_as_its_neighbours(tmp_path):
    """--kind mr_faint: mr_small's shapes, spacing and labels (head larger than tail, touching, one structure),
    but a contrast-to-noise ratio against the voxels around it under 1, where mr_small's is over 3."""
    sv.write_volume_kind(tmp_path, "mr_faint", 2, seed=5)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "head": 1, "tail": 2} and meta["channel_names"] == {"0": "MRI"}
    image = volumes.read_volume(tmp_path / "imagesTr" / "case_001_0000.nii.gz")
    assert image.spacing == pytest.approx((1.0, 1.0, 1.0), rel=1e-5)
    assert all(low <= n <= high for n, (low, high) in zip(image.shape, sv.SMALL_SHAPE_RANGE))
    faint, plain, levels = [], [], []
    for index, (image, labels) in enumerate(checked_small_cases("mr_faint", 8)):
        faint.append(_contrast_to_noise(image, labels))
        levels.append(float(np.median(image)))
        small_image, small_labels, _ = sv.make_case("mr_small", np.random.default_rng(index))
        plain.append(_contrast_to_noise(small_image, small_labels))
    assert max(faint) < 1.0 < 3.0 < min(plain)
    assert max(levels) > 1.5 * min(levels)  # the intensity scale differs per case, as MR units do


def test_mr_small_case_shapes_vary_around_the_median_and_some_are_thinner_than_a_patch():
    """Real crops differ in shape; a 32-voxel patch must be padded on some cases (K from 26)."""
    shapes = np.array([sv.small_case_shape(np.random.default_rng(index)) for index in range(200)])
    assert [len(np.unique(shapes[:, axis])) > 5 for axis in range(3)] == [True] * 3
    low, high = np.array(sv.SMALL_SHAPE_RANGE).T
    assert (shapes >= low).all() and (shapes <= high).all()
    np.testing.assert_allclose(np.median(shapes, axis=0), sv.SMALL_SHAPE, atol=2)
    assert (shapes[:, 2] < 32).any()
