"""Synthetic kinds: vessel and nuclei generators, the folder writer, and download_dataset --kind."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

import download_dataset as dd
from unet_medical.data import layouts, synthetic_kinds, synthetic_nuclei, synthetic_vessels
from unet_medical.base.errors import UNetError


@pytest.fixture(scope="module")
def vessel_set():
    return list(synthetic_kinds.vessel_samples(4, seed=0))


@pytest.fixture(scope="module")
def nuclei_set():
    return list(synthetic_kinds.nuclei_samples(6, seed=0))


def _segment_distance(yy: np.ndarray, xx: np.ndarray, start: tuple, end: tuple) -> np.ndarray:
    """Distance from pixel centres to the segment start-end (y, x), by projection: a reference."""
    p, q = np.array(start, float), np.array(end, float)
    d = q - p
    t = np.clip(((yy - p[0]) * d[0] + (xx - p[1]) * d[1]) / (d @ d), 0.0, 1.0)
    return np.hypot(yy - (p[0] + t * d[0]), xx - (p[1] + t * d[1]))


# --------------------------------------------------------------------------- vessels: geometry
def test_rasterised_vessels_are_unions_of_capsules_without_notches():
    # A wide straight vessel crossed by a thin one, and a thin one leaving it at an angle: the mask
    # must be the union of the two capsules (pixels within width/2 of each centre line).
    shape = (80, 90)
    wide = synthetic_vessels.Vessel(np.array([[40.3, 5.0], [40.3, 85.0]]), np.array([8.0, 8.0]))
    cross = synthetic_vessels.Vessel(np.array([[5.0, 30.2], [75.0, 50.7]]), np.array([2.0, 2.0]))
    branch = synthetic_vessels.Vessel(np.array([[40.3, 60.0], [10.0, 80.0]]), np.array([3.0, 3.0]))
    mask, opacity = synthetic_vessels._rasterise([wide, cross, branch], shape)
    yy, xx = np.indices(shape, dtype=float)
    reference = ((_segment_distance(yy, xx, (40.3, 5.0), (40.3, 85.0)) <= 4.0)
                 | (_segment_distance(yy, xx, (5.0, 30.2), (75.0, 50.7)) <= 1.0)
                 | (_segment_distance(yy, xx, (40.3, 60.0), (10.0, 80.0)) <= 1.5))
    # Centre lines are sampled every 0.5 px, so only pixels within ~0.01 px of an edge may differ.
    assert np.sum(mask != reference) <= 4
    assert opacity.dtype == np.float32 and 0.0 <= opacity.min() and opacity.max() <= 1.0
    assert opacity[40, 20] > 0.9 and opacity[2, 2] < 1e-3  # wide vessels are at full depth


def test_thin_vessels_stay_connected():
    diagonal = synthetic_vessels.Vessel(np.array([[3.25, 3.25], [50.75, 61.5]]), np.array([1.0, 1.0]))
    mask, _ = synthetic_vessels._rasterise([diagonal], (64, 64))
    _, count = ndimage.label(mask, structure=np.ones((3, 3)))
    assert count == 1 and 40 <= mask.sum() <= 3 * 62


# --------------------------------------------------------------------------- vessels: images
def test_vessel_images_shapes_dtypes_and_fractions(vessel_set):
    fractions = []
    for sample in vessel_set:
        image, mask, fov = sample["images"], sample["masks"], sample["fov"]
        assert image.shape == synthetic_vessels.FUNDUS_SHAPE + (3,) and image.dtype == np.uint8
        assert mask.shape == fov.shape == synthetic_vessels.FUNDUS_SHAPE
        assert mask.dtype == fov.dtype == np.uint8
        assert set(np.unique(mask)) == {0, 255} and set(np.unique(fov)) == {0, 255}
        vessels, inside = mask > 0, fov > 0
        assert not np.any(vessels & ~inside)
        assert 0.6 <= inside.mean() <= 0.75  # a round FOV of ~540 px in 565 x 584
        fractions.append(vessels.mean())
        # One tree per image, from the optic disc.
        labels, count = ndimage.label(vessels, structure=np.ones((3, 3)))
        assert np.bincount(labels.ravel())[1:].max() >= 0.9 * vessels.sum()
        # Widths: mostly thin (1-3 px), a few wide trunks (up to ~8 px; crossings add a little).
        inscribed = ndimage.distance_transform_edt(vessels)[vessels]
        assert np.median(inscribed) <= 1.5 and 2.5 <= np.percentile(inscribed, 99.5) <= 5.0
    assert all(0.06 <= f <= 0.14 for f in fractions)
    assert 0.08 <= np.mean(fractions) <= 0.12


def test_vessels_are_darker_in_green_and_outside_the_fov_is_dark(vessel_set):
    means = []
    for sample in vessel_set:
        image = sample["images"].astype(np.float64)
        vessels, inside = sample["masks"] > 0, sample["fov"] > 0
        background = inside & ~ndimage.binary_dilation(vessels, iterations=3)
        # Wide vessels against the background right beside them (the optic disc is brighter).
        wide = vessels & (ndimage.distance_transform_edt(vessels) >= 2.5)
        near = ndimage.binary_dilation(wide, iterations=7) & background
        drop = [1.0 - image[..., c][wide].mean() / image[..., c][near].mean() for c in range(3)]
        assert drop[1] > 0.25 and drop[1] > drop[0] + 0.15 and drop[1] > drop[2]
        assert image[vessels, 1].mean() < image[background, 1].mean()
        assert image[~inside].mean() < 8.0 and image[inside].mean() > 40.0
        # A red-dominated fundus: red > green > blue over the FOV.
        red, green, blue = (image[..., c][inside].mean() for c in range(3))
        assert red > green > blue
        means.append(image[inside].mean())
    assert np.ptp(means) > 5.0  # global brightness varies from image to image


def test_vessel_set_is_deterministic_per_seed_and_per_index():
    first = list(synthetic_kinds.vessel_samples(2, seed=3))
    again = list(synthetic_kinds.vessel_samples(1, seed=3))
    other = list(synthetic_kinds.vessel_samples(1, seed=4))
    for key in ("images", "masks", "fov"):
        np.testing.assert_array_equal(first[0][key], again[0][key])
    assert not np.array_equal(first[0]["masks"], first[1]["masks"])
    assert not np.array_equal(first[0]["masks"], other[0]["masks"])


# --------------------------------------------------------------------------- nuclei
def test_rasterised_nucleus_is_its_ellipse():
    nucleus = synthetic_nuclei.Nucleus(y=30.4, x=41.7, a=14.0, b=8.0, angle=0.6, ripple=((0.0, 0.0),) * 3,
                                       strength=1.0)
    mask, strength = synthetic_nuclei.rasterise_nuclei([nucleus], (64, 80))
    yy, xx = np.indices((64, 80), dtype=float)
    # Rotating the ellipse's own axes by -angle, written independently of the module.
    along = (xx - 41.7) * math.cos(0.6) + (yy - 30.4) * math.sin(0.6)
    across = -(xx - 41.7) * math.sin(0.6) + (yy - 30.4) * math.cos(0.6)
    reference = (along / 14.0) ** 2 + (across / 8.0) ** 2 <= 1.0
    assert np.sum(mask != reference) <= 2  # float32 rounding on the outline
    assert strength.max() == pytest.approx(1.0, abs=0.01) and strength[~ndimage.binary_dilation(mask)].max() == 0


def test_nuclei_placement_sizes_and_touching():
    rng = np.random.default_rng(5)
    for style in synthetic_nuclei.STYLES:
        nuclei = synthetic_nuclei.place_nuclei(rng, (400, 300), style)
        radii = np.array([math.sqrt(n.a * n.b) for n in nuclei])
        assert len(nuclei) >= 5
        assert all(4.0 <= n.b <= n.a <= 25.0 for n in nuclei)  # both semi-axes in the 4-25 px range
        assert np.ptp(radii) > 2.0
        centres = np.array([[n.y, n.x] for n in nuclei])
        gaps = np.hypot(*(centres[:, None] - centres[None]).transpose(2, 0, 1))
        touching = (gaps <= (radii[:, None] + radii[None]) * 1.0) & ~np.eye(len(nuclei), dtype=bool)
        assert touching.any(axis=1).mean() > 0.1


def test_nuclei_images_mix_sizes_styles_and_polarity(nuclei_set):
    shapes = set()
    for index, sample in enumerate(nuclei_set):
        image, mask = sample["images"], sample["masks"]
        shapes.add(image.shape[:2])
        assert image.dtype == mask.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert image.shape[:2] in synthetic_nuclei.SHAPES and mask.shape == image.shape[:2]
        assert set(np.unique(mask)) == {0, 255}
        nucleus = mask > 0
        assert 0.05 <= nucleus.mean() <= 0.45
        gray = image.astype(np.float64).mean(axis=-1)
        style = synthetic_nuclei.STYLES[index % 3]
        if style == "fluorescence":
            assert np.array_equal(image[..., 0], image[..., 1]) and np.median(gray[~nucleus]) < 40
            assert gray[nucleus].mean() > gray[~nucleus].mean() + 30
        elif style == "brightfield":
            assert np.median(gray[~nucleus]) > 120 and gray[nucleus].mean() < gray[~nucleus].mean() - 20
        else:  # stained tissue: pink background (R, B above G), purple nuclei (B above R), darker
            red, green, blue = (image[..., c].astype(np.float64) for c in range(3))
            assert np.median(red[~nucleus]) > np.median(green[~nucleus]) + 20
            assert np.median(blue[~nucleus]) > np.median(green[~nucleus]) + 20
            assert blue[nucleus].mean() > red[nucleus].mean() and gray[nucleus].mean() < gray[~nucleus].mean() - 30
        # Nucleus-sized objects: the median equivalent radius of connected pieces is in range.
        labels, count = ndimage.label(nucleus)
        areas = np.bincount(labels.ravel())[1:]
        assert 3.0 <= math.sqrt(np.median(areas) / math.pi) <= 25.0
    assert len(shapes) >= 2


def test_nuclei_set_is_deterministic_per_seed():
    first = list(synthetic_kinds.nuclei_samples(2, seed=9))
    again = list(synthetic_kinds.nuclei_samples(2, seed=9))
    other = list(synthetic_kinds.nuclei_samples(1, seed=10))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a["images"], b["images"])
        np.testing.assert_array_equal(a["masks"], b["masks"])
    assert not np.array_equal(first[0]["masks"], other[0]["masks"]) or first[0]["images"].shape != \
        other[0]["images"].shape


# --------------------------------------------------------------------------- writing and loading
@pytest.mark.parametrize("kind,count", [("vessels", 2), ("nuclei", 3)])
def test_written_folder_kinds_go_through_the_loader(tmp_path, kind, count):
    written = synthetic_kinds.write_folder_kind(tmp_path, kind, count, seed=1)
    folders = ("images", "masks", "fov") if kind == "vessels" else ("images", "masks")
    assert sorted({p.parent.name for p in written}) == sorted(folders)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [f"{i:02d}.png" for i in range(count)]
    data = layouts.load_training_data(tmp_path)
    expected = list(synthetic_kinds.vessel_samples(count, 1) if kind == "vessels"
                    else synthetic_kinds.nuclei_samples(count, 1))
    assert len(data) == count and data.class_names == ("background", "foreground")
    for image, mask, sample in zip(data.images, data.masks, expected):
        np.testing.assert_array_equal(image, sample["images"])
        np.testing.assert_array_equal(mask, sample["masks"] // 255)


def test_writer_refuses_folders_holding_other_files(tmp_path):
    synthetic_kinds.write_folder_kind(tmp_path, "nuclei", 3, seed=0)
    with pytest.raises(UNetError, match=r"images holds 1 file\(s\) this run would not overwrite \(02\.png\)"):
        synthetic_kinds.write_folder_kind(tmp_path, "nuclei", 2, seed=0)
    synthetic_kinds.write_folder_kind(tmp_path, "nuclei", 3, seed=1)  # same names: overwritten
    (tmp_path / "isbi").mkdir()
    (tmp_path / "isbi" / "train-volume.tif").write_bytes(b"")
    with pytest.raises(UNetError, match=r"holds train-volume\.tif"):
        synthetic_kinds.write_folder_kind(tmp_path / "isbi", "vessels", 1)
    for kwargs, match in (({"kind": "em"}, "not a folder kind"), ({"kind": "cells"}, "kind 'cells' is unknown"),
                          ({"kind": "nuclei", "num_images": 0}, "num_images=0"),
                          ({"kind": "nuclei", "seed": -2}, "seed=-2")):
        with pytest.raises(UNetError, match=match):
            synthetic_kinds.write_folder_kind(tmp_path / "new", **kwargs)


# --------------------------------------------------------------------------- download_dataset --kind
def test_cli_kind_em_is_the_default_byte_for_byte(tmp_path, capsys):
    small = ["--num_slices", "2", "--size", "32", "--seed", "5"]
    assert dd.main(["--synthetic", "--data_dir", str(tmp_path / "a")] + small) == 0
    assert dd.main(["--synthetic", "--kind", "em", "--data_dir", str(tmp_path / "b")] + small) == 0
    for name in ("train-volume.tif", "train-labels.tif", "test-volume.tif"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert len(layouts.load_training_data(tmp_path / "b")) == 2


def test_cli_writes_a_folder_kind(tmp_path, capsys):
    assert dd.main(["--synthetic", "--kind", "nuclei", "--num_images", "2", "--data_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and all("2 PNG files written (synthetic nuclei, seed 0)" in line for line in out)
    assert len(layouts.load_training_data(tmp_path)) == 2


@pytest.mark.parametrize("argv,start", [
    (["--synthetic", "--kind", "cells"], "error: --kind cells: unknown kind; expected one of em, vessels, nuclei, lesions, ct, mr"),
    (["--kind", "vessels"], "error: --kind needs --synthetic"),
    (["--synthetic", "--kind", "vessels", "--size", "64"], "error: --size is for --kind em"),
    (["--synthetic", "--kind", "nuclei", "--num_slices", "3"], "error: --num_slices is for --kind em"),
    (["--synthetic", "--num_images", "3"], "error: --num_images is for --kind vessels, nuclei, lesions, ct, mr, mr_small or mr_faint"),
    (["--synthetic", "--kind", "nuclei", "--num_images", "0"], "error: num_images=0"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, argv, start):
    assert dd.main(argv + ["--data_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(start) and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.png"))
