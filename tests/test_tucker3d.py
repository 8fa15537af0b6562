"""Tucker-2 of Conv3D / Conv3DTranspose (unet_medical/model/tucker.py): factors against a NumPy HOOI
reference, decomposed layers against the original, a small 3-D U-Net compressed, reported, fine-tuned."""
import numpy as np
import pytest
import tf_keras as keras

from unet_medical.base.errors import UNetError
from unet_medical.model.tucker import (decompose_layer, report_table, select_ranks, tucker2_factors,
                                       tucker2_factors_transposed, tucker_compress)

L = keras.layers
from tests.numeric import assert_close, random_kernel, rng, small_unet


def numpy_hooi(kernel, r_in, r_out, iterations=50):
    """Tucker-2 over the two channel modes of a (kd, kh, kw, cin, cout) kernel by plain NumPy SVDs:
    HOSVD start, then higher-order orthogonal iterations. Returns (U_in, core, U_out)."""
    w = kernel.astype(np.float64)
    cin, cout = w.shape[-2:]

    def leading(matrix, rank):
        return np.linalg.svd(matrix, full_matrices=False)[0][:, :rank]

    u_in = leading(np.moveaxis(w, 3, 0).reshape(cin, -1), r_in)
    u_out = leading(np.moveaxis(w, 4, 0).reshape(cout, -1), r_out)
    for _ in range(iterations):
        u_in = leading(np.moveaxis(np.einsum("dhwio,ob->dhwib", w, u_out), 3, 0).reshape(cin, -1), r_in)
        u_out = leading(np.moveaxis(np.einsum("dhwio,ia->dhwao", w, u_in), 4, 0).reshape(cout, -1), r_out)
    return u_in, np.einsum("dhwio,ia,ob->dhwab", w, u_in, u_out), u_out


def rebuild(u_in, core, u_out):
    return np.einsum("dhwab,ia,ob->dhwio", core, u_in, u_out)


def rel_error(kernel, approx):
    return np.linalg.norm(kernel - approx) / np.linalg.norm(kernel)


def built(layer, channels, seed=0):
    """Build a 3-D `layer` on `channels` input channels with random kernel and bias."""
    layer.build((None, None, None, None, channels))
    layer.set_weights([random_kernel(w.shape, seed + i) for i, w in enumerate(layer.weights)])
    return layer


def apply(layers, x):
    for layer in layers:
        x = layer(x)
    return x.numpy()


# ---------------------------------------------------------------------------------------------
# Factors


def test_full_rank_conv3d_factors_reconstruct_kernel():
    kernel = random_kernel((3, 3, 3, 5, 7))
    u_in, core, u_out = tucker2_factors(kernel, 5, 7)
    assert (u_in.shape, core.shape, u_out.shape) == ((5, 5), (3, 3, 3, 5, 7), (7, 7))
    np.testing.assert_allclose(rebuild(u_in, core, u_out), kernel, atol=1e-5)


def test_low_rank_conv3d_factors_match_numpy_hooi():
    kernel = random_kernel((3, 3, 3, 8, 12), seed=1)
    u_in, core, u_out = tucker2_factors(kernel, 3, 5)
    assert (u_in.shape, core.shape, u_out.shape) == ((8, 3), (3, 3, 3, 3, 5), (12, 5))
    np.testing.assert_allclose(u_in.T @ u_in, np.eye(3), atol=1e-6)
    np.testing.assert_allclose(u_out.T @ u_out, np.eye(5), atol=1e-6)
    # The optimal core for orthonormal factors is the projection of W onto them.
    np.testing.assert_allclose(core, np.einsum("dhwio,ia,ob->dhwab", kernel, u_in, u_out), atol=1e-5)
    ref_in, ref_core, ref_out = numpy_hooi(kernel, 3, 5)
    error = rel_error(kernel, rebuild(u_in, core, u_out))
    assert 0 < error == pytest.approx(rel_error(kernel, rebuild(ref_in, ref_core, ref_out)), rel=1e-4)


def test_conv3d_factors_recover_planted_channel_subspaces():
    # A kernel of exact multilinear rank (3, 5) in its channel modes plus a little noise: the
    # subspaces are well separated, so tensorly and the NumPy reference must find the same ones
    # (the factors themselves are unique only up to a rotation within them).
    planted = rebuild(np.linalg.qr(rng(3).standard_normal((8, 3)))[0], random_kernel((3, 3, 3, 3, 5), 4),
                      np.linalg.qr(rng(5).standard_normal((12, 5)))[0])
    kernel = (planted + 1e-3 * random_kernel(planted.shape, 6)).astype(np.float32)
    u_in, core, u_out = tucker2_factors(kernel, 3, 5)
    ref_in, _, ref_out = numpy_hooi(kernel, 3, 5)
    np.testing.assert_allclose(u_in @ u_in.T, ref_in @ ref_in.T, atol=1e-4)
    np.testing.assert_allclose(u_out @ u_out.T, ref_out @ ref_out.T, atol=1e-4)
    assert rel_error(kernel, rebuild(u_in, core, u_out)) < 1e-2


def test_conv3d_transposed_factors_use_swapped_channel_modes():
    kernel = random_kernel((2, 2, 2, 6, 4), seed=2)   # (kd, kh, kw, cout, cin)
    u_in, core, u_out = tucker2_factors_transposed(kernel, 4, 6)
    assert (u_in.shape, core.shape, u_out.shape) == ((4, 4), (2, 2, 2, 6, 4), (6, 6))
    np.testing.assert_allclose(np.einsum("dhwba,ia,ob->dhwoi", core, u_in, u_out), kernel, atol=1e-5)
    u_in, core, u_out = tucker2_factors_transposed(kernel, 2, 3)
    assert (u_in.shape, core.shape, u_out.shape) == ((4, 2), (2, 2, 2, 3, 2), (6, 3))


def test_kernel_of_wrong_rank_is_refused():
    with pytest.raises(UNetError, match="5-D"):
        tucker2_factors(random_kernel((3, 5, 7)), 2, 2)


# ---------------------------------------------------------------------------------------------
# One layer

LAYER_CASES = {
    "conv_same_bias_relu": lambda: L.Conv3D(6, 3, padding="same", activation="relu"),
    "conv_stride2_same": lambda: L.Conv3D(6, 3, strides=2, padding="same"),
    "conv_valid_no_bias_anisotropic": lambda: L.Conv3D(6, (1, 3, 3), padding="valid", use_bias=False),
    "conv_dilation2": lambda: L.Conv3D(6, 3, dilation_rate=2, padding="same"),
    "convT_stride2_k2": lambda: L.Conv3DTranspose(6, 2, strides=2),
    "convT_stride2_k3_same": lambda: L.Conv3DTranspose(6, 3, strides=2, padding="same"),
    "convT_stride2_k3_valid_outpad": lambda: L.Conv3DTranspose(6, 3, strides=2, output_padding=1),
}


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_full_rank_conv3d_layer_matches_original(case):
    layer = built(LAYER_CASES[case](), 5)
    x = rng(1).standard_normal((1, 7, 9, 9, 5)).astype(np.float32)
    new = decompose_layer(layer, (5, 6))
    first, core, last = new
    assert [type(l) for l in (first, last)] == [L.Conv3D, L.Conv3D]
    assert first.kernel_size == last.kernel_size == (1, 1, 1)
    assert first.kernel.shape == (1, 1, 1, 5, 5) and last.kernel.shape == (1, 1, 1, 6, 6)
    assert type(core) is type(layer) and not first.use_bias and last.use_bias == layer.use_bias
    for attr in ("kernel_size", "strides", "padding", "dilation_rate"):
        assert getattr(core, attr) == getattr(layer, attr)
    assert_close(apply(new, x), layer(x).numpy())


@pytest.mark.parametrize("case", ["conv_stride2_same", "convT_stride2_k3_valid_outpad"])
def test_low_rank_conv3d_layer_equals_conv_with_reconstructed_kernel(case):
    layer = built(LAYER_CASES[case](), 5, seed=3)
    kernel, bias = layer.get_weights()[0], layer.get_weights()[1:]
    if isinstance(layer, L.Conv3DTranspose):
        u_in, core, u_out = tucker2_factors_transposed(kernel, 2, 3)
        w_hat = np.einsum("dhwba,ia,ob->dhwoi", core, u_in, u_out)
    else:
        u_in, core, u_out = tucker2_factors(kernel, 2, 3)
        w_hat = rebuild(u_in, core, u_out)
    reference = layer.__class__.from_config(layer.get_config())
    reference.build((None, None, None, None, 5))
    reference.set_weights([w_hat.astype(np.float32)] + bias)
    new = decompose_layer(layer, (2, 3))
    x = rng(4).standard_normal((1, 6, 8, 8, 5)).astype(np.float32)
    assert_close(apply(new, x), reference(x).numpy())
    assert not np.allclose(apply(new, x), layer(x).numpy(), atol=1e-3)


@pytest.mark.parametrize("layer, reason", [
    (L.Conv3D(4, 1), "1x1x1 kernel"),
    (L.Conv3D(4, 3, groups=2), "grouped"),
])
def test_ineligible_conv3d_layers_are_refused(layer, reason):
    layer.build((None, None, None, None, 4))
    with pytest.raises(UNetError, match=reason):
        decompose_layer(layer, (2, 2))


# ---------------------------------------------------------------------------------------------
# Whole model


def unet3d_like() -> keras.Model:
    """Small 3-D U-Net: two levels, skip connection, Conv3DTranspose up-sampling, 1x1x1 head."""
    return small_unet(3, widths=(4, 8, 16, 8))


@pytest.fixture(scope="module")
def small_model():
    keras.utils.set_random_seed(7)
    return unet3d_like()


@pytest.fixture(scope="module")
def volume():
    return rng(8).random((1, 8, 8, 8, 1), dtype=np.float32)


def test_full_rank_compress_3d_matches_original(small_model, volume):
    new, report = tucker_compress(small_model, rank_factor=1.0, input_hw=(8, 8, 8),
                                  require_mac_reduction=False)
    assert {r.name for r in report if not r.kept} == {"enc_conv1", "enc_conv2", "mid_conv", "up",
                                                      "dec_conv"}
    assert [r.reason for r in report if r.kept] == ["1x1x1 kernel: nothing to factor"]
    assert isinstance(new.get_layer("mid_conv_tucker_in"), L.Conv3D)
    assert_close(new(volume).numpy(), small_model(volume).numpy())


def test_half_rank_report_counts_3d_macs_and_fine_tunes(small_model, volume):
    new, report = tucker_compress(small_model, rank_factor=0.5, input_hw=(8, 8, 8))
    by_name = {r.name: r for r in report}
    # By hand: positions 8^3 (4^3 at the bottom), 27-voxel kernels.
    assert by_name["enc_conv2"].macs_before == 27 * 4 * 8 * 8 ** 3
    assert by_name["up"].macs_before == 8 * 16 * 8 * 4 ** 3   # transposed: input positions
    r = by_name["dec_conv"]
    assert (r.rank_in, r.rank_out) == select_ranks(16, 8, rank_factor=0.5) == (8, 4)
    assert r.macs_after == (16 * 8 + 27 * 8 * 4 + 4 * 8) * 8 ** 3 < r.macs_before
    assert r.params_after == 16 * 8 + 27 * 8 * 4 + 4 * 8 + 8
    assert not by_name["mid_conv"].kept and 0 < by_name["mid_conv"].rel_error < 1
    assert "decomposed" in report_table(report).splitlines()[-1]
    # The compressed model trains like any other (what --exec_mode compress does next).
    new.compile(keras.optimizers.Adam(1e-3),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    labels = (volume[..., 0] > 0.5).astype(np.int32)
    history = new.fit(volume, labels, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def test_3d_model_needs_a_3d_input_size(small_model):
    with pytest.raises(UNetError, match=r"\(D, H, W\)"):
        tucker_compress(small_model, rank_factor=0.5, input_hw=(8, 8))
