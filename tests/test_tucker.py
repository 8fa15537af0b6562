"""Tests for unet_medical/model/tucker.py: Tucker-2 factors, rank rules, decomposed layers, whole model."""
import csv
import math

import numpy as np
import pytest
import tf_keras as keras

from unet_medical.model.tucker import (REPORT_FIELDS, decompose_layer, read_report_csv,
                          report_table, select_ranks, tucker2_factors, tucker2_factors_transposed,
                          tucker_compress, write_report_csv)
from unet_medical.base.errors import UNetError

L = keras.layers
from tests.numeric import assert_close, random_kernel, rng, small_unet


def built(layer, channels, seed=0):
    """Build `layer` on `channels` input channels with random kernel and bias."""
    layer.build((None, None, None, channels))
    layer.set_weights([random_kernel(w.shape, seed + i) for i, w in enumerate(layer.weights)])
    return layer


def apply(layers, x):
    for layer in layers:
        x = layer(x)
    return x.numpy()


def hosvd_error(kernel, r_in, r_out):
    """Relative error of the truncated HOSVD over modes 2 and 3 (plain numpy SVDs)."""
    kh, kw, cin, cout = kernel.shape
    w = kernel.astype(np.float64)
    u_in = np.linalg.svd(np.moveaxis(w, 2, 0).reshape(cin, -1), full_matrices=False)[0][:, :r_in]
    u_out = np.linalg.svd(np.moveaxis(w, 3, 0).reshape(cout, -1), full_matrices=False)[0][:, :r_out]
    core = np.einsum("hwio,ia,ob->hwab", w, u_in, u_out)
    approx = np.einsum("hwab,ia,ob->hwio", core, u_in, u_out)
    return np.linalg.norm(w - approx) / np.linalg.norm(w)


# ---------------------------------------------------------------------------------------------
# Factors


def test_full_rank_factors_reconstruct_kernel():
    kernel = random_kernel((3, 3, 5, 7))
    u_in, core, u_out = tucker2_factors(kernel, 5, 7)
    assert (u_in.shape, core.shape, u_out.shape) == ((5, 5), (3, 3, 5, 7), (7, 7))
    np.testing.assert_allclose(np.einsum("hwab,ia,ob->hwio", core, u_in, u_out), kernel,
                               atol=1e-5)


def test_low_rank_factors_are_an_orthogonal_projection_at_least_as_good_as_hosvd():
    kernel = random_kernel((3, 3, 8, 12), seed=1)
    u_in, core, u_out = tucker2_factors(kernel, 3, 5)
    assert (u_in.shape, core.shape, u_out.shape) == ((8, 3), (3, 3, 3, 5), (12, 5))
    np.testing.assert_allclose(u_in.T @ u_in, np.eye(3), atol=1e-6)
    np.testing.assert_allclose(u_out.T @ u_out, np.eye(5), atol=1e-6)
    # The optimal core for orthonormal factors is the projection of W onto them.
    np.testing.assert_allclose(core, np.einsum("hwio,ia,ob->hwab", kernel, u_in, u_out),
                               atol=1e-5)
    approx = np.einsum("hwab,ia,ob->hwio", core, u_in, u_out)
    error = np.linalg.norm(kernel - approx) / np.linalg.norm(kernel)
    assert 0 < error <= hosvd_error(kernel, 3, 5) + 1e-6


def test_transposed_factors_use_swapped_channel_modes():
    kernel = random_kernel((2, 2, 6, 4), seed=2)   # (kh, kw, cout, cin)
    u_in, core, u_out = tucker2_factors_transposed(kernel, 4, 6)
    assert (u_in.shape, core.shape, u_out.shape) == ((4, 4), (2, 2, 6, 4), (6, 6))
    np.testing.assert_allclose(np.einsum("hwba,ia,ob->hwoi", core, u_in, u_out), kernel,
                               atol=1e-5)
    u_in, core, u_out = tucker2_factors_transposed(kernel, 2, 3)
    assert (u_in.shape, core.shape, u_out.shape) == ((4, 2), (2, 2, 3, 2), (6, 3))


@pytest.mark.parametrize("ranks", [(0, 2), (6, 2), (2, 8), (2.5, 2)])
def test_factor_ranks_out_of_range(ranks):
    with pytest.raises(UNetError, match="rank"):
        tucker2_factors(random_kernel((3, 3, 5, 7)), *ranks)


# ---------------------------------------------------------------------------------------------
# Rank selection


def test_select_ranks_relative():
    assert select_ranks(64, 128, rank_factor=0.5) == (32, 64)
    assert select_ranks(7, 9, rank_factor=0.5) == (math.ceil(3.5), math.ceil(4.5))
    assert select_ranks(10, 20, rank_factor=0.7) == (7, 14)   # not ceil(7.000000000000001) = 8
    assert select_ranks(3, 100, rank_factor=0.1) == (1, 10)
    assert select_ranks(3, 100, rank_factor=0.1, rank_min=4) == (3, 10)   # floor, then cap
    assert select_ranks(16, 16, rank_factor=1.0) == (16, 16)


def test_select_ranks_fixed():
    assert select_ranks(64, 128, rank=16) == (16, 16)
    assert select_ranks(8, 128, rank=16) == (8, 16)   # capped at the channels
    assert select_ranks(64, 128, rank=(4, 40)) == (4, 40)
    assert select_ranks(64, 128, rank=2, rank_min=5) == (5, 5)


@pytest.mark.parametrize("kwargs, match", [
    ({}, "exactly one"),
    ({"rank_factor": 0.5, "rank": 3}, "exactly one"),
    ({"rank_factor": 0.0}, "rank_factor"),
    ({"rank_factor": 1.5}, "rank_factor"),
    ({"rank_factor": "0.5"}, "rank_factor"),
    ({"rank": 0}, "rank="),
    ({"rank": (1, 2, 3)}, "rank="),
    ({"rank": 2.0}, "rank="),
    ({"rank": 2, "rank_min": 0}, "rank_min"),
])
def test_select_ranks_rejects_bad_arguments(kwargs, match):
    with pytest.raises(UNetError, match=match):
        select_ranks(8, 8, **kwargs)


# ---------------------------------------------------------------------------------------------
# One layer

LAYER_CASES = {
    "conv_same_bias_relu": lambda: L.Conv2D(6, 3, padding="same", activation="relu"),
    "conv_stride2_same": lambda: L.Conv2D(6, 3, strides=2, padding="same"),
    "conv_valid_no_bias": lambda: L.Conv2D(6, (3, 5), padding="valid", use_bias=False),
    "conv_dilation2": lambda: L.Conv2D(6, 3, dilation_rate=2, padding="same"),
    "conv_stride2_valid": lambda: L.Conv2D(6, 3, strides=2, padding="valid"),
    "convT_stride2_k2": lambda: L.Conv2DTranspose(6, 2, strides=2),
    "convT_stride2_k3_same": lambda: L.Conv2DTranspose(6, 3, strides=2, padding="same"),
    "convT_stride2_k3_valid_outpad": lambda: L.Conv2DTranspose(6, 3, strides=2, output_padding=1),
}


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_full_rank_layer_matches_original(case):
    layer = built(LAYER_CASES[case](), 5)
    x = rng(1).standard_normal((2, 11, 11, 5)).astype(np.float32)
    cin, cout = 5, 6
    new = decompose_layer(layer, (cin, cout))
    assert [l.name for l in new] == [f"{layer.name}_tucker_{p}" for p in ("in", "core", "out")]
    first, core, last = new
    assert first.kernel_size == last.kernel_size == (1, 1)
    assert not first.use_bias and not core.use_bias and last.use_bias == layer.use_bias
    assert type(core) is type(layer)
    for attr in ("kernel_size", "strides", "padding", "dilation_rate"):
        assert getattr(core, attr) == getattr(layer, attr)
    assert last.activation is layer.activation
    assert_close(apply(new, x), layer(x).numpy())


@pytest.mark.parametrize("case", ["conv_stride2_same", "conv_same_bias_relu", "convT_stride2_k2",
                                  "convT_stride2_k3_valid_outpad"])
def test_low_rank_layer_equals_conv_with_reconstructed_kernel(case):
    layer = built(LAYER_CASES[case](), 5, seed=3)
    r_in, r_out = 2, 3
    kernel, bias = layer.get_weights()[0], layer.get_weights()[1:]
    transposed = isinstance(layer, L.Conv2DTranspose)
    if transposed:
        u_in, core, u_out = tucker2_factors_transposed(kernel, r_in, r_out)
        w_hat = np.einsum("hwba,ia,ob->hwoi", core, u_in, u_out)
    else:
        u_in, core, u_out = tucker2_factors(kernel, r_in, r_out)
        w_hat = np.einsum("hwab,ia,ob->hwio", core, u_in, u_out)
    reference = layer.__class__.from_config(layer.get_config())
    reference.build((None, None, None, 5))
    reference.set_weights([w_hat.astype(np.float32)] + bias)

    new = decompose_layer(layer, (r_in, r_out))
    assert new[0].kernel.shape == (1, 1, 5, r_in) and new[2].kernel.shape == (1, 1, r_out, 6)
    x = rng(4).standard_normal((1, 9, 9, 5)).astype(np.float32)
    assert_close(apply(new, x), reference(x).numpy())
    assert not np.allclose(apply(new, x), layer(x).numpy(), atol=1e-3)


def test_unbuilt_layer_is_refused():
    with pytest.raises(UNetError, match="build it"):
        decompose_layer(L.Conv2D(4, 3, name="fresh"), (2, 2))


@pytest.mark.parametrize("layer, reason", [
    (L.Conv2D(4, 1), "1x1"),
    (L.Conv2D(4, 3, groups=2), "grouped"),
    (L.DepthwiseConv2D(3), "depthwise"),
    (L.SeparableConv2D(4, 3), "separable"),
])
def test_ineligible_layers_are_refused(layer, reason):
    layer.build((None, None, None, 4))
    with pytest.raises(UNetError, match=reason):
        decompose_layer(layer, (2, 2))


# ---------------------------------------------------------------------------------------------
# Whole model


def unet_like() -> keras.Model:
    """Small U-Net: two levels, skip connection, Conv2DTranspose up-sampling, Concatenate."""
    return small_unet(2, widths=(4, 4, 8, 4))


@pytest.fixture(scope="module")
def small_model():
    keras.utils.set_random_seed(7)
    return unet_like()


@pytest.fixture(scope="module")
def image():
    return rng(8).random((2, 16, 16, 1), dtype=np.float32)


@pytest.fixture(scope="module")
def compressed(small_model):
    """Half-rank compression of the small model, shared by the report and save/load tests."""
    return tucker_compress(small_model, rank_factor=0.5, input_hw=(16, 16))


def test_full_rank_compress_matches_original(small_model, image):
    new, report = tucker_compress(small_model, rank_factor=1.0, input_hw=(16, 16),
                                  require_mac_reduction=False)
    decomposed = {r.name for r in report if not r.kept}
    assert decomposed == {"enc_conv1", "enc_conv2", "mid_conv", "up", "dec_conv"}
    assert [r.name for r in report if r.kept] == ["head"]
    for name in decomposed:
        assert name not in [l.name for l in new.layers]
        assert new.get_layer(f"{name}_tucker_core")
    assert_close(new(image).numpy(), small_model(image).numpy())


def test_full_rank_is_kept_when_macs_would_grow(small_model):
    new, report = tucker_compress(small_model, rank_factor=1.0, input_hw=(16, 16))
    assert all(r.kept for r in report)
    assert all("would not reduce MACs" in r.reason for r in report if r.name != "head")
    assert [l.name for l in new.layers] == [l.name for l in small_model.layers]


def conv_macs_by_hand(layer, in_hw, out_hw):
    """kh*kw*cin*cout per output pixel (conv) or per input pixel (transposed conv)."""
    kh, kw, a, b = layer.kernel.shape
    hw = in_hw if isinstance(layer, L.Conv2DTranspose) else out_hw
    return kh * kw * a * b * hw[0] * hw[1]


def test_low_rank_report_counts_and_errors(small_model, compressed):
    new, report = compressed
    assert [r.name for r in report] == ["enc_conv1", "enc_conv2", "mid_conv", "up", "dec_conv",
                                        "head"]
    sizes = {"enc_conv1": ((16, 16),) * 2, "enc_conv2": ((16, 16),) * 2,
             "mid_conv": ((8, 8),) * 2, "up": ((8, 8), (16, 16)), "dec_conv": ((16, 16),) * 2,
             "head": ((16, 16),) * 2}
    for r in report:
        layer = small_model.get_layer(r.name)
        assert r.kind == type(layer).__name__
        assert r.params_before == layer.count_params()
        assert r.macs_before == conv_macs_by_hand(layer, *sizes[r.name])
        if r.kept:
            assert (r.params_after, r.macs_after, r.rel_error) == (
                r.params_before, r.macs_before, 0.0)
            continue
        cin, cout = (layer.kernel.shape[3], layer.kernel.shape[2]) if r.kind == (
            "Conv2DTranspose") else (layer.kernel.shape[2], layer.kernel.shape[3])
        assert (r.rank_in, r.rank_out) == select_ranks(cin, cout, rank_factor=0.5)
        parts = [new.get_layer(f"{r.name}_tucker_{p}") for p in ("in", "core", "out")]
        assert r.params_after == sum(p.count_params() for p in parts)
        (hi, wi), (ho, wo) = sizes[r.name]
        kh, kw = layer.kernel_size
        core_hw = hi * wi if r.kind == "Conv2DTranspose" else ho * wo
        assert r.macs_after == (cin * r.rank_in * hi * wi + kh * kw * r.rank_in * r.rank_out
                                * core_hw + r.rank_out * cout * ho * wo)
        assert r.macs_after < r.macs_before
        # rel_error against W_hat rebuilt from the new model's own weights.
        u_in = parts[0].kernel.numpy()[0, 0]
        u_out = parts[2].kernel.numpy()[0, 0].T
        core = parts[1].kernel.numpy()
        if r.kind == "Conv2DTranspose":
            w_hat = np.einsum("hwba,ia,ob->hwoi", core, u_in, u_out)
        else:
            w_hat = np.einsum("hwab,ia,ob->hwio", core, u_in, u_out)
        w = layer.kernel.numpy()
        np.testing.assert_allclose(r.rel_error, np.linalg.norm(w - w_hat) / np.linalg.norm(w),
                                   rtol=1e-4)
        assert 0 < r.rel_error < 1
    assert sum(r.macs_after for r in report) < sum(r.macs_before for r in report)


def test_report_csv_round_trip_and_table(compressed, tmp_path):
    _, report = compressed
    path = tmp_path / "tucker.csv"
    write_report_csv(report, path)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == REPORT_FIELDS
    assert [row["name"] for row in rows] == [r.name for r in report]
    assert rows[-1]["rank_in"] == "" and rows[-1]["kept"] == "True"
    assert read_report_csv(path) == report
    table = report_table(report)
    for r in report:
        assert r.name in table
    assert "1x1 kernel" in table and "5/6 decomposed" in table.splitlines()[-1]
    with pytest.raises(UNetError, match="does not exist"):
        write_report_csv(report, tmp_path / "missing" / "tucker.csv")


def test_ineligible_layers_are_kept_with_reasons():
    x = keras.Input((8, 8, 4), name="x")
    y = L.Conv2D(4, 1, name="pointwise")(x)
    y = L.Conv2D(4, 3, groups=2, padding="same", name="grouped")(y)
    y = L.DepthwiseConv2D(3, padding="same", name="depthwise")(y)
    y = L.SeparableConv2D(4, 3, padding="same", name="separable")(y)
    y = L.Conv2D(16, 3, padding="same", name="plain")(y)
    model = keras.Model(x, y)
    new, report = tucker_compress(model, rank_factor=0.25, input_hw=(8, 8))
    reasons = {r.name: r.reason for r in report}
    assert [r.name for r in report] == ["pointwise", "grouped", "depthwise", "separable", "plain"]
    assert "1x1" in reasons["pointwise"] and "groups=2" in reasons["grouped"]
    assert "depthwise" in reasons["depthwise"] and "separable" in reasons["separable"]
    assert reasons["plain"] == "decomposed"
    assert all(r.rank_in is None for r in report if r.kept)
    data = rng(9).random((1, 8, 8, 4), dtype=np.float32)
    np.testing.assert_array_equal(new.get_layer("grouped")(model.get_layer("pointwise")(data)),
                                  model.get_layer("grouped")(model.get_layer("pointwise")(data)))


def test_mac_rule_keeps_only_the_layers_that_would_grow():
    # up: 2x2 transposed conv 8 -> 4 at 8x8. Per input pixel: before 2*2*8*4 = 128 MACs.
    # rank_factor 0.75 -> ranks (6, 3): 8*6 + 2*2*6*3 + 4 output pixels * 3*4 = 168 >= 128: kept.
    # conv: 3x3 16 -> 16 at 8x8: ranks (12, 12): 16*12 + 9*144 + 12*16 = 1680 < 2304: decomposed.
    x = keras.Input((8, 8, 16), name="x")
    y = L.Conv2D(8, 3, padding="same", name="conv")(x)
    y = L.Conv2DTranspose(4, 2, strides=2, name="up")(y)
    model = keras.Model(x, y)
    _, report = tucker_compress(model, rank_factor=0.75, input_hw=(8, 8))
    by_name = {r.name: r for r in report}
    assert not by_name["conv"].kept
    up = by_name["up"]
    assert up.kept and (up.rank_in, up.rank_out) == (6, 3)
    assert f"({168 * 64} >= {128 * 64})" in up.reason


def test_compress_argument_errors(small_model):
    with pytest.raises(UNetError, match="exactly one"):
        tucker_compress(small_model, input_hw=(16, 16))
    with pytest.raises(UNetError, match="input"):
        tucker_compress(small_model, rank_factor=0.5, input_hw=(16,))
    fixed = keras.Model(*(lambda x: (x, L.Conv2D(2, 3, name="c")(x)))(keras.Input((8, 8, 1))))
    with pytest.raises(UNetError, match=r"\(16, 16\)"):
        tucker_compress(fixed, rank_factor=0.5, input_hw=(16, 16))


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
@pytest.mark.slow  # seconds of setup or a subprocess: the fast subset stays under 2 minutes
def test_saved_and_loaded_model_gives_identical_outputs(compressed, image, tmp_path):
    new, _ = compressed
    expected = new(image).numpy()
    for path in (tmp_path / "tucker.h5", tmp_path / "tucker_savedmodel"):
        new.save(path, save_format="h5" if path.suffix == ".h5" else "tf")
        loaded = keras.models.load_model(path, compile=False)
        assert [l.name for l in loaded.layers] == [l.name for l in new.layers]
        np.testing.assert_array_equal(loaded(image).numpy(), expected)


@pytest.mark.slow  # seconds of setup or a subprocess: the fast subset stays under 2 minutes
def test_decomposed_model_trains(small_model, image):
    new, _ = tucker_compress(small_model, rank_factor=0.5, input_hw=(16, 16))
    labels = (image > 0.5).astype(np.int32)[..., 0]
    new.compile(optimizer=keras.optimizers.Adam(1e-2),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    core = new.get_layer("mid_conv_tucker_core")
    before = core.kernel.numpy().copy()
    history = new.fit(image, labels, batch_size=1, epochs=3, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert not np.allclose(core.kernel.numpy(), before)


@pytest.mark.parametrize("padding, dropout", [("same", 0.5), ("valid", 0.5)])
def test_project_unet_full_rank_matches(padding, dropout):
    from unet_medical.model.unet import UNetSpec, build_unet, is_valid_input_size, smallest_valid_input

    spec = UNetSpec(base_filters=4, depth=2, padding=padding, dropout=dropout)
    keras.utils.set_random_seed(11)
    model = build_unet(spec)
    size = smallest_valid_input(spec, 8)
    new, report = tucker_compress(model, rank_factor=1.0, input_hw=(size, size),
                                  require_mac_reduction=False)
    assert sum(not r.kept for r in report) == sum(
        isinstance(l, L.Conv2D) and l.kernel_size != (1, 1) for l in model.layers)
    data = rng(12).random((1, size, size, 1), dtype=np.float32)
    assert_close(new(data, training=False).numpy(), model(data, training=False).numpy())
    if padding == "valid":
        too_small = 6   # level-2 maps would be empty
        assert not is_valid_input_size(spec, too_small)
        with pytest.raises(UNetError, match=r"input_hw=\(6, 6\).*enc2_conv1"):
            tucker_compress(model, rank_factor=0.5, input_hw=(too_small, too_small))


def test_mixed_precision_policy_is_kept():
    from unet_medical.model.unet import UNetSpec, build_unet

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_unet(UNetSpec(base_filters=4, depth=1, padding="same", batch_norm=True))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    new, _ = tucker_compress(model, rank_factor=0.5, input_hw=(8, 8))
    for part in ("in", "core", "out"):
        layer = new.get_layer(f"enc1_conv1_tucker_{part}")
        assert layer.dtype_policy.name == "mixed_bfloat16" and layer.kernel.dtype == "float32"
    assert new(rng(13).random((1, 8, 8, 1), dtype=np.float32)).dtype == "float32"
