"""Overlap-tile inference: tiles must reassemble exactly what a whole-image pass would give."""
import numpy as np
import pytest

from unet_medical.model.unet import UNetSpec
from unet_medical.base.errors import UNetError
from unet_medical.inference.tiling import TilePlan, plan_tiles, predict_tiles, tile_starts, tiled_predict


def pointwise_probs(x: np.ndarray) -> np.ndarray:
    """A 'network' whose output at a pixel depends only on that pixel: (..., C) -> (..., 2)."""
    p = 1.0 / (1.0 + np.exp(-(x.sum(-1) * 3.0 - 1.0)))
    return np.stack([1 - p, p], -1).astype(np.float32)


def valid_predictor(margin: int):
    """Pointwise 'network' that, like a valid-padding U-Net, loses `margin` pixels per side."""
    def predict(tiles: np.ndarray) -> np.ndarray:
        t = tiles.shape[1]
        return pointwise_probs(tiles[:, margin:t - margin, margin:t - margin])
    return predict


@pytest.mark.parametrize("hw", [(37, 37), (64, 50), (10, 90), (5, 5)])
@pytest.mark.parametrize("tile,margin,context", [(24, 4, 0), (32, 0, 4), (20, 2, 3), (16, 0, 0)])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_tiles_reassemble_whole_image(hw, tile, margin, context, batch_size):
    rng = np.random.default_rng(0)
    image = rng.random((*hw, 2), dtype=np.float32)
    plan = TilePlan(tile_size=tile, margin=margin, context=context)
    out = tiled_predict(valid_predictor(margin), image, plan, batch_size=batch_size)
    assert out.shape == (*hw, 2) and out.dtype == np.float32
    np.testing.assert_array_equal(out, pointwise_probs(image))


def test_tile_starts_cover_and_end_aligned():
    for length in range(1, 60):
        for core in range(1, 20):
            starts = tile_starts(length, core)
            covered = np.zeros(length, bool)
            for s in starts:
                assert 0 <= s and (s + core <= length or length <= core)
                covered[s:s + core] = True
            assert covered.all()


def test_tta_is_exact_for_an_equivariant_model():
    rng = np.random.default_rng(1)
    tiles = rng.random((2, 12, 12, 1), dtype=np.float32)
    np.testing.assert_allclose(predict_tiles(pointwise_probs, tiles, tta=True), pointwise_probs(tiles), rtol=1e-6)


def test_tta_averages_a_non_equivariant_model():
    ramp = lambda t: np.stack([np.broadcast_to(np.linspace(0, 1, t.shape[2], dtype=np.float32),
                                               t.shape[:3])] * 2, -1)
    tiles = np.zeros((1, 8, 8, 1), np.float32)
    averaged = predict_tiles(ramp, tiles, tta=True)
    # Over all 8 flips/rotations a left-to-right ramp averages to a constant.
    np.testing.assert_allclose(averaged, np.full_like(averaged, averaged.mean()), atol=1e-6)


def test_plan_paper_net_covers_isbi_slice_in_one_tile():
    plan = plan_tiles(UNetSpec(), (512, 512))
    assert plan.margin == 92 and plan.context == 0
    assert plan.core >= 512 and plan.tile_size == 700


def test_plan_caps_tile_size_and_keeps_it_valid():
    spec = UNetSpec(padding="same", base_filters=4, depth=4)
    plan = plan_tiles(spec, (4096, 4096), max_tile_size=1000)
    assert plan.tile_size == 992 and plan.context == 16 and plan.core == 960


def test_plan_rejects_invalid_tile_with_nearest_sizes():
    with pytest.raises(UNetError, match="nearest valid: 556 or 572"):
        plan_tiles(UNetSpec(), (512, 512), tile_size=570)
