"""The official ISBI 2012 thinned V_rand / V_info (utils/score) against hand-made cases and against
tests/isbi_reference.py, a literal slow port of Fiji's Java.

Run the slow real-data comparison with ``-m slow`` (or everything but it with ``-m "not slow"``).
"""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from unet_medical.base.errors import UNetError
from unet_medical.evaluation.isbi import java_thresholds, score_stack, thin_proposal

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import isbi_reference as ref  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
TOL = 1e-6
JSON_KEYS = ("v_rand_thinned", "v_rand_thinned_threshold", "v_info_thinned", "v_info_thinned_threshold", "slices")


def venv_python() -> str:
    candidate = REPO / ".venv" / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([venv_python(), "-m", "unet_medical.evaluation", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Same dams (label 0) and the same segments up to renumbering."""
    if not np.array_equal(a == 0, b == 0):
        return False
    m = a != 0
    pairs = np.unique(np.stack([a[m], b[m]]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def assert_matches_reference(labels: np.ndarray, probs: np.ndarray) -> None:
    fast = score_stack(labels, probs)
    probs32 = probs.astype(np.float32) / np.float32(255) if probs.dtype == np.uint8 else probs.astype(np.float32)
    slow = ref.reference_scores(labels, probs32)
    for metric, per in (("v_rand", fast.v_rand_per_threshold), ("v_info", fast.v_info_per_threshold)):
        np.testing.assert_allclose(per, slow[metric]["per_threshold"], rtol=0, atol=TOL, equal_nan=True)
    assert fast.v_rand == pytest.approx(slow["v_rand"]["value"], abs=TOL)
    assert fast.v_info == pytest.approx(slow["v_info"]["value"], abs=TOL)
    assert fast.v_rand_threshold == slow["v_rand"]["threshold"]
    assert fast.v_info_threshold == slow["v_info"]["threshold"]


def two_cells(h: int, w: int, x0: int, thickness: int, horizontal: bool = False) -> np.ndarray:
    """Interior mask (H, W) of two cells separated by a straight membrane band."""
    interior = np.ones((h, w), dtype=bool)
    if horizontal:
        interior[x0:x0 + thickness, :] = False
    else:
        interior[:, x0:x0 + thickness] = False
    return interior


def as_labels(interior: np.ndarray) -> np.ndarray:
    return np.where(interior, 255, 0).astype(np.uint8)


def as_probs(interior: np.ndarray) -> np.ndarray:
    return interior.astype(np.float32)


def smooth_map(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    f = ndimage.gaussian_filter(rng.random(shape), (0,) + (sigma,) * (len(shape) - 1))
    f = (f - f.min()) / max(f.max() - f.min(), 1e-12)
    return f.astype(np.float32)


# --- Thresholds -----------------------------------------------------------------------------------


def test_thresholds_accumulate_like_java():
    ths = java_thresholds()
    assert len(ths) == 11
    assert ths[0] == 0.0
    assert ths[3] == 0.30000000000000004
    assert ths[-1] == 0.9999999999999999
    assert ths == ref.java_thresholds(0.0, 1.0, 0.1)
    assert score_stack(np.zeros((4, 4)), np.zeros((4, 4), np.float32)).thresholds == ths


# --- Hand-made cases ------------------------------------------------------------------------------


@pytest.mark.parametrize("thickness", [3, 4, 5])
@pytest.mark.parametrize("horizontal", [False, True])
def test_thick_wall_thins_to_one_pixel_dam_and_scores_one(thickness, horizontal):
    h, w, x0 = 20, 24, 9
    interior = two_cells(h, w, x0, thickness, horizontal)
    thinned = thin_proposal(interior)
    dams = thinned == 0
    along = dams.sum(axis=0 if horizontal else 1)  # dam pixels per line across the wall
    assert np.all(along == 1)
    # the dam is where the two fronts meet: the middle, or the second-from-far pixel of an even band
    expected = x0 + thickness // 2
    assert np.all((np.flatnonzero(dams.any(axis=1)) if horizontal else np.flatnonzero(dams.any(axis=0))) == expected)
    assert len(np.unique(thinned[~dams])) == 2
    gt = two_cells(h, w, expected, 1, horizontal)  # 1-pixel ground-truth membrane
    scores = score_stack(as_labels(gt), as_probs(interior))
    assert scores.v_rand == 1.0
    assert scores.v_info == pytest.approx(1.0, abs=1e-12)
    assert scores.v_rand_threshold == 0.0 and scores.v_info_threshold == 0.0
    assert_matches_reference(as_labels(gt), as_probs(interior))


def test_dangling_spur_and_islands_disappear():
    h, w = 24, 30
    gt = two_cells(h, w, 14, 1)
    proposal = gt.copy()
    proposal[8:10, 5:14] = False  # a 2-px spur from the wall into the left cell
    proposal[18, 20:23] = False  # an isolated membrane speck inside the right cell
    thinned = thin_proposal(proposal)
    assert np.array_equal(thinned == 0, ~gt)  # only the wall remains as dam
    assert len(np.unique(thinned[gt])) == 2
    scores = score_stack(as_labels(gt), as_probs(proposal))
    assert scores.v_rand == 1.0
    assert scores.v_info == pytest.approx(1.0, abs=1e-12)
    assert_matches_reference(as_labels(gt), as_probs(proposal))


def voronoi_cells(rng: np.random.Generator, h: int, w: int, n: int, width: int = 1) -> np.ndarray:
    """Interior mask of a random cell tiling with membranes ``width`` pixels wide."""
    seeds = np.stack([rng.integers(0, h, n), rng.integers(0, w, n)], axis=1)
    yy, xx = np.mgrid[:h, :w]
    owner = np.argmin((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2, axis=-1)
    edge = np.zeros((h, w), dtype=bool)
    edge[:, 1:] |= owner[:, 1:] != owner[:, :-1]
    edge[1:, :] |= owner[1:, :] != owner[:-1, :]
    if width > 1:
        edge = ndimage.binary_dilation(edge, iterations=width - 1)
    return ~edge


@pytest.mark.parametrize("membrane_width", [1, 3])
def test_identical_scores_one(membrane_width):
    rng = np.random.default_rng(7)
    cells = np.stack([voronoi_cells(rng, 40, 48, 12, membrane_width) for _ in range(2)])
    scores = score_stack(as_labels(cells), as_probs(cells))
    assert scores.v_rand_per_threshold == [1.0] * 11
    np.testing.assert_allclose(scores.v_info_per_threshold, 1.0, atol=1e-12)
    assert scores.v_rand == 1.0 and scores.v_rand_threshold == 0.0


def test_merge_lowers_the_score():
    h, w = 20, 36
    gt = two_cells(h, w, 11, 1) & two_cells(h, w, 23, 1)  # three cells
    proposal = two_cells(h, w, 23, 1)  # the first wall is missing: cells 1 and 2 merged
    scores = score_stack(as_labels(gt), as_probs(proposal))
    assert 0.0 < scores.v_rand < 0.99
    assert 0.0 < scores.v_info < 0.99
    assert_matches_reference(as_labels(gt), as_probs(proposal))


def test_split_lowers_the_score():
    h, w = 20, 36
    gt = two_cells(h, w, 17, 1)
    proposal = gt & two_cells(h, w, 6, 2)  # an extra wall splits the left cell
    scores = score_stack(as_labels(gt), as_probs(proposal))
    assert 0.0 < scores.v_rand < 0.99
    assert 0.0 < scores.v_info < 0.99
    assert_matches_reference(as_labels(gt), as_probs(proposal))


def test_interior_is_strictly_above_the_threshold_in_float32():
    # float32(0.1) = 0.10000000149 > 0.1 (Java compares the float pixel as a double), and 0.5 is not > 0.5
    gt = two_cells(10, 12, 5, 1)
    probs = np.where(gt, np.float32(0.1), np.float32(0.0)).astype(np.float32)
    scores = score_stack(as_labels(gt), probs)
    assert scores.v_rand_per_threshold[:2] == [1.0, 1.0]  # th = 0 and th = 0.1 still see two cells
    assert scores.v_rand_per_threshold[2] < 1.0  # th = 0.2: no interior, one segment
    assert_matches_reference(as_labels(gt), probs)


# --- Fast implementation == literal port ----------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 12), st.integers(1, 12))))
def test_thinning_matches_the_java_watershed(interior):
    assert same_partition(thin_proposal(interior), ref.reference_thinning(interior))


def test_thinning_matches_on_smooth_maps():
    rng = np.random.default_rng(3)
    for _ in range(12):
        h, w = rng.integers(20, 48, size=2)
        f = smooth_map(rng, (1, h, w), rng.uniform(1.0, 3.0))[0]
        interior = f > np.quantile(f, rng.uniform(0.3, 0.7))
        assert same_partition(thin_proposal(interior), ref.reference_thinning(interior))


@pytest.mark.parametrize("shape,seed", [((1, 24, 31), 0), ((2, 37, 20), 1), ((3, 16, 16), 2), ((1, 44, 40), 3)])
def test_scores_match_reference_on_random_smooth_maps(shape, seed):
    rng = np.random.default_rng(seed)
    labels = as_labels(smooth_map(rng, shape, 2.5) > 0.45)
    probs = smooth_map(rng, shape, 1.5)
    assert_matches_reference(labels, probs)


@pytest.mark.parametrize("case", ["empty_interior", "all_interior", "empty_gt", "full_gt", "uint8", "noise"])
def test_scores_match_reference_on_edge_cases(case):
    rng = np.random.default_rng(11)
    shape = (2, 18, 22)
    labels = as_labels(smooth_map(rng, shape, 2.5) > 0.5)
    probs = smooth_map(rng, shape, 1.5)
    if case == "empty_interior":
        probs = np.zeros(shape, np.float32)
    elif case == "all_interior":
        probs = np.ones(shape, np.float32)
    elif case == "empty_gt":
        labels = np.zeros(shape, np.uint8)
    elif case == "full_gt":
        labels = np.full(shape, 255, np.uint8)
    elif case == "uint8":
        probs = np.round(probs * 255).astype(np.uint8)
    elif case == "noise":
        probs = rng.random(shape).astype(np.float32)
    assert_matches_reference(labels, probs)


def test_bad_arrays_raise_unet_errors():
    with pytest.raises(UNetError, match="does not match"):
        score_stack(np.zeros((2, 8, 8)), np.zeros((1, 8, 8), np.float32))
    with pytest.raises(UNetError, match=r"\[0, 1\]"):
        score_stack(np.zeros((8, 8)), np.full((8, 8), 255.0, np.float32))
    with pytest.raises(UNetError, match="2-D image"):
        score_stack(np.zeros((1, 1, 8, 8)), np.zeros((1, 1, 8, 8), np.float32))
    with pytest.raises(UNetError, match="dtype"):
        score_stack(np.zeros((8, 8)), np.zeros((8, 8), np.int32))


# --- Real ISBI labels -----------------------------------------------------------------------------


def degraded(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """A plausible probability map: blurred labels with noise, float32 in [0, 1]."""
    rng = np.random.default_rng(seed)
    p = ndimage.gaussian_filter(labels.astype(np.float32) / 255, (0, 2, 2)) + rng.normal(0, 0.1, labels.shape)
    return np.clip(p, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def real_labels(isbi_data_dir):
    return tifffile.imread(str(isbi_data_dir / "train-labels.tif"))[[0, 17]]


def test_real_labels_against_themselves_score_one(real_labels):
    scores = score_stack(real_labels, real_labels)  # uint8 0/255 probabilities
    assert scores.v_rand_per_threshold == [1.0] * 11
    np.testing.assert_allclose(scores.v_info_per_threshold, 1.0, atol=1e-12)


@pytest.mark.slow
def test_real_labels_match_reference(real_labels):
    assert_matches_reference(real_labels, degraded(real_labels))


@pytest.mark.slow  # seconds of setup or a subprocess: the fast subset stays under 2 minutes
def test_cli_prints_one_json_object(real_labels, tmp_path):
    labels_path, probs_path = tmp_path / "labels.tif", tmp_path / "probs.tif"
    tifffile.imwrite(labels_path, real_labels)
    probs = degraded(real_labels)
    tifffile.imwrite(probs_path, probs)
    proc = run_cli(str(labels_path), str(probs_path))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert isinstance(out, dict) and all(k in out for k in JSON_KEYS)
    assert out["slices"] == 2
    assert 0.5 < out["v_rand_thinned"] <= 1.0 and 0.5 < out["v_info_thinned"] <= 1.0
    assert out["v_rand_thinned_threshold"] in java_thresholds()
    expected = score_stack(real_labels, probs)
    assert out["v_rand_thinned"] == pytest.approx(expected.v_rand, abs=1e-12)
    assert out["v_info_thinned"] == pytest.approx(expected.v_info, abs=1e-12)


# --- CLI errors -----------------------------------------------------------------------------------


def assert_one_line_error(proc: subprocess.CompletedProcess, path: str) -> None:
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"score: {path}: ")
    assert "Traceback" not in proc.stderr


def test_cli_missing_file(tmp_path):
    probs = tmp_path / "probs.tif"
    tifffile.imwrite(probs, np.zeros((8, 8), np.float32))
    missing = str(tmp_path / "nope.tif")
    assert_one_line_error(run_cli(missing, str(probs)), missing)


def test_cli_shape_mismatch_and_wrong_dims(tmp_path):
    labels, probs, four_d = tmp_path / "labels.tif", tmp_path / "probs.tif", tmp_path / "4d.tif"
    tifffile.imwrite(labels, np.zeros((2, 8, 8), np.uint8))
    tifffile.imwrite(probs, np.zeros((8, 9), np.float32))
    tifffile.imwrite(four_d, np.zeros((2, 2, 8, 8), np.float32))
    assert_one_line_error(run_cli(str(labels), str(probs)), str(probs))
    assert_one_line_error(run_cli(str(labels), str(four_d)), str(four_d))
    not_tiff = tmp_path / "x.tif"
    not_tiff.write_text("hello")
    assert_one_line_error(run_cli(str(not_tiff), str(probs)), str(not_tiff))
