"""Tests of unet_medical/model/unet.py and unet_medical/model/blocks.py: the paper network, the same-padding variant, size
arithmetic, serialization, mixed precision and TF-MOT compatibility. Small nets (4-8 filters) except
where the paper's numbers are the point."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import unet_medical  # noqa: F401
import tensorflow as tf
import tf_keras as keras

from unet_medical.model.layers import CenterCropToMatch, SeededDropout
from unet_medical.model.unet import (
    UNetSpec,
    build_unet,
    is_valid_input_size,
    margin,
    output_size,
    paper_unet_spec,
    smallest_valid_input,
)
from unet_medical.base.errors import UNetError


def analytic_param_count(spec: UNetSpec) -> int:
    """Parameters from the architecture description alone (conv: k*k*cin*cout [+ cout bias]).

    BatchNormalization adds gamma, beta and the two moving statistics per channel and replaces the
    conv bias.
    """
    def conv(k, cin, cout):
        bias = 0 if spec.batch_norm else cout
        bn = 4 * cout if spec.batch_norm else 0
        return k * k * cin * cout + bias + bn

    f = [spec.base_filters * 2**i for i in range(spec.depth + 1)]
    total, cin = 0, spec.in_channels
    for level in range(spec.depth + 1):  # encoder levels and bottleneck
        total += conv(3, cin, f[level]) + conv(3, f[level], f[level])
        cin = f[level]
    for level in reversed(range(spec.depth)):  # decoder: up-conv (with bias), then two convs
        total += 2 * 2 * f[level + 1] * f[level] + f[level]
        total += conv(3, 2 * f[level], f[level]) + conv(3, f[level], f[level])
    return total + f[0] * spec.n_classes + spec.n_classes


def float_param_count(model: keras.Model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.weights if w.dtype.is_floating)


@pytest.fixture(scope="module")
def paper_model():
    return build_unet(paper_unet_spec())


# ------------------------------------------------------------------ the paper network

def test_paper_net_572_to_388_and_parameter_count(paper_model):
    spec = paper_unet_spec()
    assert output_size(spec, 572) == 388
    assert paper_model.compute_output_shape((1, 572, 572, 1)) == (1, 388, 388, 2)
    params = float_param_count(paper_model)
    print(f"paper U-Net parameters (2 classes): {params:,}")
    assert params == analytic_param_count(spec)
    assert 30.95e6 < params < 31.05e6  # the published "31.0M"
    assert margin(spec) == 92
    assert smallest_valid_input(spec, 388) == 572


def test_paper_net_layers(paper_model):
    names = [layer.name for layer in paper_model.layers]
    for expected in (
        "enc1_conv1", "enc1_relu1", "enc1_conv2", "enc2_pool", "enc4_conv2", "bottleneck_pool",
        "bottleneck_conv2", "bottleneck_dropout", "dec4_upconv", "dec1_upconv", "dec1_crop",
        "dec1_concat", "dec1_conv2", "head",
    ):
        assert expected in names
    # Dropout sits after the bottleneck's two convolutions, before the first up-convolution.
    position = names.index
    assert position("bottleneck_relu2") < position("bottleneck_dropout") < position("dec4_upconv")
    dropout = paper_model.get_layer("bottleneck_dropout")
    assert isinstance(dropout, SeededDropout) and dropout.rate == 0.5
    convs = [l for l in paper_model.layers if isinstance(l, keras.layers.Conv2D)]
    assert len(convs) == 2 * 9 + 4 + 1  # two per level, four up-convolutions, the head
    for layer in convs:
        assert layer.get_config()["activation"] == "linear"  # ReLU is its own layer; head = logits
        assert layer.get_config()["kernel_initializer"]["class_name"] == "HeNormal"
    assert paper_model.get_layer("dec2_upconv").filters == 128
    assert paper_model.get_layer("dec2_upconv").kernel_size == (2, 2)
    assert paper_model.get_layer("dec2_upconv").strides == (2, 2)


# ------------------------------------------------------------------ spec validation

@pytest.mark.parametrize(
    "field, value",
    [
        ("padding", "reflect"), ("depth", 0), ("depth", 2.0), ("base_filters", 0), ("n_classes", 0),
        ("in_channels", -1), ("dropout", 1.0), ("dropout", -0.1), ("dropout", "0.5"),
        ("batch_norm", 1), ("n_classes", True),
    ],
)
def test_spec_rejects_bad_fields(field, value):
    with pytest.raises(UNetError, match=field):
        UNetSpec(**{field: value})


def test_build_unet_rejects_non_spec():
    with pytest.raises(UNetError, match="UNetSpec"):
        build_unet({"depth": 2})


# ------------------------------------------------------------------ size arithmetic

def _run_shape(model: keras.Model, size: int, channels: int = 1) -> tuple:
    return tuple(model(np.zeros((1, size, size, channels), "float32"), training=False).shape)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_valid_net_output_shapes_match_output_size(depth):
    spec = UNetSpec(base_filters=4, depth=depth, n_classes=3, in_channels=2)
    model = build_unet(spec)
    first = smallest_valid_input(spec, 1)
    for size in (first, first + 2**depth, first + 3 * 2**depth):
        assert is_valid_input_size(spec, size)
        out = output_size(spec, size)
        assert _run_shape(model, size, channels=2) == (1, out, out, 3)
        assert (size - out) // 2 == margin(spec)


@pytest.mark.parametrize("depth", [1, 3])
def test_same_net_keeps_size(depth):
    spec = UNetSpec(base_filters=4, depth=depth, padding="same")
    model = build_unet(spec)
    for size in (2**depth, 3 * 2**depth, 40):
        assert output_size(spec, size) == size
        assert _run_shape(model, size) == (1, size, size, 2)
    assert margin(spec) == 0
    assert not any(isinstance(l, CenterCropToMatch) for l in model.layers)


@pytest.mark.parametrize(
    "spec, size",
    [
        (paper_unet_spec(), 571),
        (paper_unet_spec(), 574),
        (paper_unet_spec(), 100),  # too small: a map would be empty
        (paper_unet_spec(), 0),
        (paper_unet_spec(), -4),
        (paper_unet_spec(), 572.0),
        (UNetSpec(padding="same", depth=3), 36),
    ],
)
def test_invalid_sizes_rejected(spec, size):
    assert not is_valid_input_size(spec, size)
    with pytest.raises(UNetError, match=f"input size {size!r}"):
        output_size(spec, size)


def test_invalid_size_message_suggests_nearest_valid_sizes():
    with pytest.raises(UNetError, match="556 or 572"):
        output_size(paper_unet_spec(), 571)


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_smallest_valid_input_rejects_bad_minimum(bad):
    with pytest.raises(UNetError, match="minimum output"):
        smallest_valid_input(paper_unet_spec(), bad)


def _simulate(depth: int, padding: str, size: int) -> int | None:
    """Independent reference: follow the feature map through conv/pool/upconv layer by layer."""
    conv = (lambda s: s - 2) if padding == "valid" else (lambda s: s)
    skips = []
    for _ in range(depth):
        size = conv(conv(size))
        if size < 1 or size % 2:
            return None
        skips.append(size)
        size //= 2
    size = conv(conv(size))
    for skip in reversed(skips):
        size *= 2
        if size < 1 or size > skip:
            return None
        size = conv(conv(size))
    return size if size >= 1 else None


@settings(max_examples=150, deadline=None)
@given(
    depth=st.integers(1, 5),
    padding=st.sampled_from(["valid", "same"]),
    size=st.integers(1, 1200),
)
def test_size_arithmetic_matches_layer_by_layer_simulation(depth, padding, size):
    spec = UNetSpec(depth=depth, padding=padding)
    expected = _simulate(depth, padding, size)
    assert is_valid_input_size(spec, size) == (expected is not None)
    if expected is not None:
        assert output_size(spec, size) == expected


@settings(max_examples=60, deadline=None)
@given(
    depth=st.integers(1, 4),
    padding=st.sampled_from(["valid", "same"]),
    min_out=st.integers(1, 400),
)
def test_smallest_valid_input_is_minimal(depth, padding, min_out):
    spec = UNetSpec(depth=depth, padding=padding)
    found = smallest_valid_input(spec, min_out)
    assert _simulate(depth, padding, found) >= min_out
    for smaller in range(1, found):
        out = _simulate(depth, padding, smaller)
        assert out is None or out < min_out


# ------------------------------------------------------------------ options

def test_batch_norm_variant():
    spec = UNetSpec(base_filters=4, depth=2, padding="same", batch_norm=True)
    model = build_unet(spec)
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert len(bns) == 2 * (2 * spec.depth + 1)
    names = [l.name for l in model.layers]
    # Conv -> BatchNorm -> ReLU, and the conv bias is dropped (BN's beta replaces it).
    assert names.index("enc1_conv1") < names.index("enc1_bn1") < names.index("enc1_relu1")
    assert not model.get_layer("enc1_conv1").use_bias
    assert float_param_count(model) == analytic_param_count(spec)
    assert _run_shape(model, 16) == (1, 16, 16, 2)


def test_dropout_zero_removes_the_layer():
    model = build_unet(UNetSpec(base_filters=4, depth=1, dropout=0.0))
    assert not any(isinstance(l, SeededDropout) for l in model.layers)
    model = build_unet(UNetSpec(base_filters=4, depth=1, dropout=0.2))
    assert model.get_layer("bottleneck_dropout").rate == pytest.approx(0.2)


@pytest.mark.parametrize("base_filters, depth", [(4, 1), (8, 2), (5, 3)])
def test_parameter_count_matches_formula(base_filters, depth):
    spec = UNetSpec(base_filters=base_filters, depth=depth, n_classes=3)
    assert float_param_count(build_unet(spec)) == analytic_param_count(spec)


def test_output_is_float32_logits_under_mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_unet(UNetSpec(base_filters=4, depth=2, batch_norm=True))
        assert model.get_layer("enc1_conv1").compute_dtype == "bfloat16"
        assert model.get_layer("head").compute_dtype == "float32"
        out = model(np.random.default_rng(0).random((1, 44, 44, 1), "float32"), training=True)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert out.dtype == tf.float32
    assert out.shape == (1, 4, 4, 2)
    # Logits, not probabilities: nothing forces the class scores to sum to one.
    assert not np.allclose(tf.reduce_sum(out, axis=-1).numpy(), 1.0)


# ------------------------------------------------------------------ serialization

def _same_outputs(a: keras.Model, b: keras.Model, x: np.ndarray) -> None:
    np.testing.assert_array_equal(a(x, training=False).numpy(), b(x, training=False).numpy())


@pytest.mark.parametrize(
    "spec",
    [
        UNetSpec(base_filters=4, depth=2),
        UNetSpec(base_filters=4, depth=2, padding="same", batch_norm=True),
    ],
)
def test_get_config_from_config_round_trip(spec):
    model = build_unet(spec, name="round_trip")
    clone = keras.Model.from_config(model.get_config())
    assert [l.get_config() for l in clone.layers] == [l.get_config() for l in model.layers]
    clone.set_weights(model.get_weights())
    size = smallest_valid_input(spec, 8)
    _same_outputs(model, clone, np.random.default_rng(1).random((2, size, size, 1), "float32"))


@pytest.mark.slow  # seconds of setup or a subprocess: the fast subset stays under 2 minutes
def test_savedmodel_round_trip(tmp_path):
    spec = UNetSpec(base_filters=4, depth=2, n_classes=3)
    model = build_unet(spec)
    x = np.random.default_rng(2).random((2, 44, 44, 1), "float32")
    model(x, training=True)  # advance the dropout counter so the restored value is checked
    model.save(str(tmp_path / "unet"), save_format="tf")
    loaded = keras.models.load_model(str(tmp_path / "unet"))
    assert isinstance(loaded.get_layer("dec1_crop"), CenterCropToMatch)
    dropout = loaded.get_layer("bottleneck_dropout")
    assert isinstance(dropout, SeededDropout)
    assert dropout.seed == model.get_layer("bottleneck_dropout").seed
    assert int(dropout.counter.numpy()) == 1
    _same_outputs(model, loaded, x)
    # Same random stream after loading: the next training step drops the same units.
    np.testing.assert_allclose(
        loaded(x, training=True).numpy(), model(x, training=True).numpy(), rtol=1e-6
    )


# ------------------------------------------------------------------ TF-MOT

@pytest.mark.slow  # seconds of TensorFlow work: the fast subset stays under 2 minutes
def test_tfmot_quantize_model_accepts_same_bn_variant():
    import tensorflow_model_optimization as tfmot

    spec = UNetSpec(base_filters=4, depth=2, padding="same", batch_norm=True, dropout=0.0)
    model = build_unet(spec)
    quantized = tfmot.quantization.keras.quantize_model(model)
    out = quantized(np.random.default_rng(3).random((1, 16, 16, 1), "float32"), training=False)
    assert out.shape == (1, 16, 16, 2) and out.dtype == tf.float32
    wrapped = {l.layer.name for l in quantized.layers if hasattr(l, "layer")}
    assert {"enc1_conv1", "dec1_upconv", "head"} <= wrapped
