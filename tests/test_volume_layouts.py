"""MSD / nnU-Net raw and images/ + masks/ volume layouts: channels, class names, geometry, refusals.
Files are written with nibabel directly, not with the package's writer."""
from __future__ import annotations

import json
import pathlib

import nibabel as nib
import numpy as np
import pytest

from unet_medical.base.errors import UNetError
from unet_medical.data import volume_layouts as vl

SHAPE = (8, 9, 5)
AFFINE = np.array([[0.0, -0.8, 0.1, 20.0], [0.8, 0.0, 0.0, -5.0], [0.0, 0.05, 3.0, 7.5], [0, 0, 0, 1]])


def save(path: pathlib.Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))


def labels_for(seed: int, num_classes: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, num_classes, size=SHAPE).astype(np.uint8)


def write_nnunet(root: pathlib.Path, cases=("a", "b")) -> dict:
    (root).mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"1": "ADC", "0": "T2"},
                                                   "labels": {"background": 0, "tumour": 2, "liver": 1},
                                                   "file_ending": ".nii.gz", "numTraining": len(cases)}))
    arrays = {}
    for n, case in enumerate(cases):
        channels = [np.full(SHAPE, 10 * n + c, np.int16) for c in range(2)]
        for c, channel in enumerate(channels):
            save(root / "imagesTr" / f"{case}_{c:04d}.nii.gz", channel)
        save(root / "labelsTr" / f"{case}.nii.gz", labels_for(n))
        arrays[case] = (channels, labels_for(n))
    return arrays


def test_nnunet_raw_channels_and_class_names(tmp_path):
    arrays = write_nnunet(tmp_path)
    data = vl.load_volume_data(tmp_path)
    assert data.class_names == ("background", "liver", "tumour")  # ordered by label value
    assert data.channel_names == ("T2", "ADC")
    assert [c.name for c in data.cases] == ["a", "b"]
    for case in data.cases:
        channels, labels = arrays[case.name]
        assert case.image.array.shape == SHAPE + (2,)
        assert np.array_equal(case.image.array[..., 1], channels[1])  # _0001 is channel 1
        assert np.array_equal(case.labels.array, labels) and case.labels.array.dtype == np.uint8
        np.testing.assert_allclose(case.image.affine, AFFINE, atol=1e-6)
        assert case.image.spacing == pytest.approx((0.8, np.hypot(0.8, 0.05), np.hypot(0.1, 3.0)), rel=1e-6)


def test_msd_v1_four_d_images_and_test_split(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"modality": {"0": "FLAIR", "1": "T1w"},
                                                       "labels": {"0": "background", "1": "edema"}}))
    image = np.random.default_rng(0).normal(size=SHAPE + (2,)).astype(np.float32)
    save(tmp_path / "imagesTr" / "BRATS_001.nii.gz", image)
    save(tmp_path / "labelsTr" / "BRATS_001.nii.gz", labels_for(0, 2))
    save(tmp_path / "imagesTs" / "BRATS_002.nii.gz", image)
    data = vl.load_msd(tmp_path)
    assert data.class_names == ("background", "edema") and data.channel_names == ("FLAIR", "T1w")
    assert np.array_equal(data.cases[0].image.array, image)
    test = vl.load_msd(tmp_path, "Ts")
    assert [c.name for c in test.cases] == ["BRATS_002"] and test.cases[0].labels is None


def test_msd_as_released_skips_macos_resource_forks(tmp_path):
    """The MSD tars (Task04_Hippocampus among them) ship '._CASE.nii.gz' AppleDouble files beside the cases:
    a few bytes that are not NIfTI. Read as released, they are passed over, not refused or taken as cases."""
    (tmp_path / "dataset.json").write_text(json.dumps({"modality": {"0": "MRI"},
                                                       "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
                                                       "training": [{"image": "./imagesTr/hippocampus_001.nii.gz",
                                                                     "label": "./labelsTr/hippocampus_001.nii.gz"}],
                                                       "test": ["./imagesTs/hippocampus_267.nii.gz"]}))
    image = np.random.default_rng(1).random(SHAPE).astype(np.float32)
    save(tmp_path / "imagesTr" / "hippocampus_001.nii.gz", image)
    save(tmp_path / "labelsTr" / "hippocampus_001.nii.gz", labels_for(1))
    save(tmp_path / "imagesTs" / "hippocampus_267.nii.gz", image)
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        name = "hippocampus_001" if folder != "imagesTs" else "hippocampus_267"
        (tmp_path / folder / f"._{name}.nii.gz").write_bytes(b"\x00\x05\x16\x07Mac OS X        ")
    data = vl.load_msd(tmp_path)
    assert [c.name for c in data.cases] == ["hippocampus_001"]
    assert data.class_names == ("background", "Anterior", "Posterior") and data.channel_names == ("MRI",)
    np.testing.assert_array_equal(data.cases[0].image.array[..., 0], image)
    assert [c.name for c in vl.load_msd(tmp_path, "Ts").cases] == ["hippocampus_267"]


def test_images_and_masks_folders_of_volumes(tmp_path):
    for n in range(2):
        save(tmp_path / "images" / f"p{n}.nii.gz", np.zeros(SHAPE, np.int16))
        save(tmp_path / "masks" / f"p{n}.nii.gz", labels_for(n, 4))
    assert vl.is_volume_layout(tmp_path)
    data = vl.load_volume_data(tmp_path)
    assert data.class_names == ("background", "class1", "class2", "class3")
    assert [c.name for c in data.cases] == ["p0", "p1"] and data.cases[0].image.array.shape == SHAPE + (1,)


def test_mistakes_are_refused_naming_the_file(tmp_path):
    write_nnunet(tmp_path / "flip")
    flipped = AFFINE.copy()
    flipped[:3, 0] *= -1
    save(tmp_path / "flip" / "labelsTr" / "b.nii.gz", labels_for(1), flipped)
    with pytest.raises(UNetError, match=r"labelsTr/b.nii.gz does not lie on the voxel grid of .*b_0000.nii.gz"):
        vl.load_msd(tmp_path / "flip")

    write_nnunet(tmp_path / "gap")
    (tmp_path / "gap" / "imagesTr" / "a_0001.nii.gz").unlink()
    with pytest.raises(UNetError, match=r"case a has channel files \[0\], expected \[0, 1\]"):
        vl.load_msd(tmp_path / "gap")

    write_nnunet(tmp_path / "values")
    save(tmp_path / "values" / "labelsTr" / "a.nii.gz", np.full(SHAPE, 3, np.uint8))
    with pytest.raises(UNetError, match=r"a.nii.gz: label values \[3\] are not class indices 0..2"):
        vl.load_msd(tmp_path / "values")

    write_nnunet(tmp_path / "nolabel")
    (tmp_path / "nolabel" / "labelsTr" / "b.nii.gz").unlink()
    with pytest.raises(UNetError, match="b.nii.gz: missing; every case in imagesTr needs its label map"):
        vl.load_msd(tmp_path / "nolabel")

    (tmp_path / "regions").mkdir()
    (tmp_path / "regions" / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "T1"}, "labels": {"background": 0, "whole": [1, 2]}}))
    with pytest.raises(UNetError, match="region labels"):
        vl.load_msd(tmp_path / "regions")


def test_float_labels_and_a_trailing_axis_of_one_are_read_as_class_ids(tmp_path):
    # Tools save label maps as float32 0.0/1.0/2.0, or with a time axis of length 1 (I, J, K, 1).
    write_nnunet(tmp_path)
    plain = vl.load_msd(tmp_path)
    save(tmp_path / "labelsTr" / "a.nii.gz", labels_for(0).astype(np.float32))
    save(tmp_path / "labelsTr" / "b.nii.gz", labels_for(1)[..., None])
    data = vl.load_msd(tmp_path)
    for case, reference in zip(data.cases, plain.cases):
        assert case.labels.array.dtype == np.uint8 and case.labels.array.shape == SHAPE
        np.testing.assert_array_equal(case.labels.array, reference.labels.array)
