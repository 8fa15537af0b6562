"""Which axes a volume set may mirror (data.mirror_axes): measured from the order of its labelled classes."""
import json

import numpy as np
import pytest
from scipy import ndimage

from unet_medical.base.errors import UNetError
from unet_medical.data import mirror_axes as ma

NAMES = ("background", "head", "tail")


def two_part_case(rng: np.random.Generator, flip_j: bool = False) -> np.ndarray:
    """(20, 24, 16) labels: a bar along J, its first part class 1 and the rest class 2, placed at random in
    I and K (so no order there); `flip_j` mirrors the case along J."""
    labels = np.zeros((20, 24, 16), np.uint8)
    i, k = rng.integers(3, 15), rng.integers(3, 11)
    cut = rng.integers(9, 14)
    labels[i - 2:i + 2, 4:cut, k - 2:k + 2] = 1
    labels[i - 2:i + 2, cut:20, k - 2:k + 2] = 2
    if rng.random() < 0.5:  # the tail bends to a random side in I: no order along I
        labels[i + 2:i + 4, 16:20, k - 2:k + 2] = 2
    else:
        labels[i - 4:i - 2, 16:20, k - 2:k + 2] = 2
    return labels[:, ::-1] if flip_j else labels


def test_centroids_match_scipy_center_of_mass():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (9, 7, 5)).astype(np.uint8)
    found = ma.class_centroids(labels, [1, 2])
    for cls in (1, 2):
        np.testing.assert_allclose(found[cls], ndimage.center_of_mass(labels == cls), atol=1e-9)
    assert ma.class_centroids(np.zeros((3, 3, 3), np.uint8), [1]) == {}


def test_an_axis_with_a_fixed_class_order_is_not_mirrored():
    rng = np.random.default_rng(1)
    cases = [two_part_case(rng) for _ in range(30)]
    agreement = ma.axis_order_agreement(cases, [1, 2])
    assert agreement[1]["agreement"] == 1.0 and agreement[1]["pair"] == (1, 2) and agreement[1]["cases"] == 30
    assert agreement[1]["offset_voxels"] > 5  # the tail after the head
    assert agreement[0]["agreement"] < ma.ORDER_AGREEMENT and agreement[2]["agreement"] < ma.ORDER_AGREEMENT
    axes, reason = ma.choose_mirror_axes(agreement, NAMES)
    assert axes == (0, 2)
    assert reason.startswith("J: tail lies") and "after head in 100% of 30 cases" in reason and "flip only I, K" in reason


@pytest.mark.parametrize("cases_of", [
    lambda rng: [two_part_case(rng, flip_j=bool(i % 2)) for i in range(30)],  # mixed orientations
    lambda rng: [two_part_case(rng) for _ in range(ma.MIN_CASES - 1)],  # too few cases to say
    lambda rng: [np.minimum(two_part_case(rng), 1) for _ in range(30)],  # one foreground class
])
def test_every_axis_is_mirrored_without_a_consistent_order(cases_of):
    cases = cases_of(np.random.default_rng(2))
    axes, reason = ma.choose_mirror_axes(ma.axis_order_agreement(cases, [1, 2]), NAMES)
    assert axes == (0, 1, 2) and "every axis is mirrored" in reason


def test_mirror_axes_flag_parses_and_refuses_in_one_line():
    assert ma.parse_mirror_axes(None) is None and ma.parse_mirror_axes("auto") is None
    assert ma.parse_mirror_axes("none") == ()
    assert ma.parse_mirror_axes("2,0") == (0, 2)
    assert ma.format_mirror_axes((2, 0)) == "0,2" and ma.format_mirror_axes(()) == "none"
    for bad in ("3", "x", "", "0,,1"):
        with pytest.raises(UNetError, match="--mirror_axes"):
            ma.parse_mirror_axes(bad)


# ---- the recipe's choice on a set whose head always lies before its tail along J -------------------------

@pytest.fixture(scope="module")
def ordered_set(tmp_path_factory):
    """14 synthetic mr_small cases: head before tail along J in every case, random in I and K."""
    from unet_medical.data import synthetic_volumes as sv

    root = tmp_path_factory.mktemp("ordered")
    sv.write_volume_kind(root, "mr_small", 14, seed=0)
    return root


@pytest.mark.parametrize("dims", ["3", "2"])
def test_the_recipe_keeps_the_ordered_axis_for_3d_and_for_slices(ordered_set, tmp_path, dims):
    from unet_medical.cli.config import Config
    from unet_medical.cli.recipe import resolve_recipe, resolve_volume_recipe
    from unet_medical.data.volume_training import load_volume_slices, split_items
    from tests.recording import RecordingLogger

    data = load_volume_slices(ordered_set, dims=dims, num_folds=7)
    train_idx, _ = split_items(data, 7, 0)
    cfg, logger = Config(model_dir=str(tmp_path), padding="same", dims=dims), RecordingLogger()
    if dims == "3":
        cfg = resolve_volume_recipe(cfg, data, train_idx, None, logger, True)
    else:
        cfg = resolve_recipe(cfg.replace(normalization="global"), data, train_idx, "same", None, logger, True)
    line = next(d for step, d in logger.records if step == "RECIPE" and d["flag"] == "mirror_axes")
    assert cfg.mirror_axes == line["value"] == "0,2"
    assert line["reason"].startswith("J: tail lies") and "in 100% of 12 cases" in line["reason"]
    assert ("training flips slices only along I, without quarter turns" in line["reason"]) is (dims == "2")
    recorded = json.loads((tmp_path / "dataset_fingerprint.json").read_text())
    assert recorded["fingerprint"]["class_order"][1]["agreement"] == 1.0  # a resume reads the choice back
    assert {"flag": "mirror_axes", "value": "0,2", "reason": line["reason"]} in recorded["choices"]
    # A typed --mirror_axes wins: no measurement, no RECIPE line.
    typed = Config(model_dir=str(tmp_path / "typed"), padding="same", dims=dims, mirror_axes="none")
    (tmp_path / "typed").mkdir()
    logger = RecordingLogger()
    if dims == "3":
        typed = resolve_volume_recipe(typed, data, train_idx, None, logger, True)
    else:
        typed = resolve_recipe(typed.replace(normalization="global"), data, train_idx, "same", None, logger, True)
    assert typed.mirror_axes == "none" and not any(d.get("flag") == "mirror_axes" for _, d in logger.records)


def test_slices_flip_only_along_their_mirror_axes():
    from unet_medical.data.augment import AugmentConfig

    base = AugmentConfig()
    kept = base.flipping_only((0, 2))  # J ordered: no left-right flip (columns are J), no quarter turns
    assert (kept.flip_v_prob, kept.flip_h_prob, kept.rot90_prob) == (base.flip_v_prob, 0.0, 0.0)
    assert kept.rotate_prob == base.rotate_prob  # a turn under 90 degrees keeps the order's sign
    assert base.flipping_only((0, 1, 2)) == base
    free_plane = base.flipping_only((0, 1))
    assert free_plane.rot90_prob == base.rot90_prob and free_plane.flip_h_prob == base.flip_h_prob
