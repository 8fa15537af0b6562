"""Tests of unet_medical/model/complexity.py: MACs and parameters per layer, against the published U-Net figures
and against per-layer formulas evaluated on shapes measured by actually running small models."""
import numpy as np
import pytest

import unet_medical  # noqa: F401
import tf_keras as keras

from unet_medical.model.complexity import LayerCost, layer_costs, summary_table, total_macs, total_params
from unet_medical.model.unet import UNetSpec, build_unet, paper_unet_spec
from unet_medical.base.errors import UNetError


def reference_macs(model: keras.Model, x: np.ndarray) -> dict[str, int]:
    """MACs per layer from the brief's formulas, with shapes read from a real forward pass."""
    probe = keras.Model(model.inputs, {l.name: l.output for l in model.layers[1:]})
    outputs = {name: t.shape for name, t in probe(x, training=False).items()}
    outputs[model.layers[0].name] = x.shape
    macs = {}
    for layer in model.layers:
        inbound = layer.inbound_nodes[0].inbound_layers
        in_shape = outputs[inbound.name] if isinstance(inbound, keras.layers.Layer) else None
        out_shape = outputs[layer.name]
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw, cin, mult = layer.depthwise_kernel.shape
            macs[layer.name] = kh * kw * cin * mult * out_shape[1] * out_shape[2]
        elif isinstance(layer, keras.layers.Conv2DTranspose):
            kh, kw, cout, cin = layer.kernel.shape
            macs[layer.name] = kh * kw * cin * cout * in_shape[1] * in_shape[2]
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin_per_group, cout = layer.kernel.shape
            macs[layer.name] = kh * kw * cin_per_group * cout * out_shape[1] * out_shape[2]
        elif isinstance(layer, keras.layers.Dense):
            cin, cout = layer.kernel.shape
            macs[layer.name] = int(np.prod(out_shape[1:-1])) * cin * cout
        else:
            macs[layer.name] = 0
    return macs


# ------------------------------------------------------------------ published figures

@pytest.mark.slow
def test_paper_unet_300_9_gflop_at_572():
    model = build_unet(paper_unet_spec())
    costs = layer_costs(model, (572, 572))
    gflop = 2 * sum(c.macs for c in costs) / 1e9
    print(f"paper U-Net at 572x572: {gflop:.3f} GFLOP, {total_params(model):,} parameters")
    print(summary_table(costs))
    assert gflop == pytest.approx(300.9, rel=0.005)
    assert total_params(model) == sum(c.params for c in costs) == 31_030_658
    assert [c.name for c in costs] == [l.name for l in model.layers]


def test_same_padding_unet_384_8_gflop_at_512():
    model = build_unet(UNetSpec(padding="same", base_filters=64, depth=4, batch_norm=False))
    gflop = 2 * total_macs(model, (512, 512)) / 1e9
    print(f"same-padding U-Net at 512x512: {gflop:.3f} GFLOP")
    assert gflop == pytest.approx(384.8, rel=0.005)


# ------------------------------------------------------------------ against measured shapes

@pytest.mark.parametrize(
    "spec, hw",
    [
        (UNetSpec(base_filters=4, depth=2, n_classes=3), (44, 60)),
        (UNetSpec(base_filters=6, depth=3, padding="same", batch_norm=True), (24, 40)),
    ],
)
def test_unet_layer_macs_match_formulas_on_run_shapes(spec, hw):
    model = build_unet(spec)
    x = np.zeros((1, *hw, spec.in_channels), "float32")
    expected = reference_macs(model, x)
    costs = layer_costs(model, hw)
    assert {c.name: c.macs for c in costs} == expected
    assert sum(expected.values()) == total_macs(model, hw) > 0


def _mixed_model() -> keras.Model:
    """Dense, depthwise, grouped and transposed convs, a strided conv and a Tucker-style
    1x1 -> 3x3 -> 1x1 replacement of a conv."""
    x = inputs = keras.Input((None, None, 4))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="strided")(x)
    x = keras.layers.Conv2D(8, 3, groups=2, padding="same", name="grouped")(x)
    x = keras.layers.DepthwiseConv2D(5, depth_multiplier=2, padding="valid", name="depthwise")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Conv2D(3, 1, use_bias=False, name="tucker_in")(x)
    x = keras.layers.Conv2D(5, 3, use_bias=False, padding="same", name="tucker_core")(x)
    x = keras.layers.Conv2D(16, 1, name="tucker_out")(x)
    x = keras.layers.Conv2DTranspose(6, 3, strides=2, name="upconv")(x)
    x = keras.layers.Dense(7, name="dense")(x)
    return keras.Model(inputs, x, name="mixed")


def test_mixed_layers_match_formulas_on_run_shapes():
    model = _mixed_model()
    hw = (20, 26)
    expected = reference_macs(model, np.zeros((1, *hw, 4), "float32"))
    costs = {c.name: c for c in layer_costs(model, hw)}
    assert {name: c.macs for name, c in costs.items()} == expected
    # Spot-check one by hand: 10x13 map, 5x5 depthwise valid -> 6x9, 8 channels x multiplier 2.
    assert costs["depthwise"].macs == 5 * 5 * 8 * 2 * 6 * 9
    assert costs["grouped"].macs == 3 * 3 * 4 * 8 * 10 * 13
    assert costs["bn"] == LayerCost("bn", "BatchNormalization", 4 * 16, 0)
    assert costs["dense"].kind == "Dense"


def test_params_count_floats_only():
    model = build_unet(UNetSpec(base_filters=4, depth=1, batch_norm=True))
    expected = sum(int(np.prod(w.shape)) for w in model.weights if w.dtype.is_floating)
    assert total_params(model) == expected
    # The dropout counter is a weight but not a parameter; BN moving statistics are parameters.
    assert model.count_params() == expected + 1
    costs = {c.name: c for c in layer_costs(model, (24, 24))}
    assert costs["bottleneck_dropout"].params == 0
    assert costs["enc1_bn1"].params == 16


# ------------------------------------------------------------------ table and errors

def test_summary_table_is_aligned_and_complete():
    model = build_unet(UNetSpec(base_filters=4, depth=2))
    costs = layer_costs(model, (44, 44))
    table = summary_table(costs)
    lines = table.splitlines()
    assert len({len(line) for line in lines}) == 1  # right-aligned numeric columns
    counted = [c for c in costs if c.params or c.macs]
    assert len(lines) == len(counted) + 4  # header, two rules, total
    for cost, line in zip(counted, lines[2:]):
        assert line.split()[:3] == [cost.name, cost.kind, f"{cost.params:,}"]
    assert lines[-1].startswith("total")
    assert f"{sum(c.params for c in costs):,}" in lines[-1]
    assert "relu" not in table


@pytest.mark.parametrize("hw", [(0, 10), (10,), "572", (5.5, 8)])
def test_bad_input_size_rejected(hw):
    with pytest.raises(UNetError, match="input size"):
        layer_costs(build_unet(UNetSpec(base_filters=4, depth=1)), hw)


def test_size_not_fitting_a_fixed_input_rejected():
    inputs = keras.Input((16, 16, 1))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3)(inputs))
    assert total_macs(model, (16, 16)) == 3 * 3 * 1 * 2 * 14 * 14
    with pytest.raises(UNetError, match="does not fit"):
        total_macs(model, (32, 32))


# ------------------------------------------------------------------ transformed models

def test_nested_and_shared_layers():
    inner = _mixed_model()
    hw = (20, 26)
    inputs = keras.Input((None, None, 4))
    outer = keras.Model(inputs, inner(inputs), name="outer")
    nested = next(c for c in layer_costs(outer, hw) if c.name == "mixed")
    assert nested.kind == "Functional"
    assert nested.macs == total_macs(inner, hw)
    # Reusing a layer in another graph gives it a second inbound node; only this model's count.
    before = total_macs(inner, hw)
    other_in = keras.Input((None, None, 4))
    keras.Model(other_in, inner.get_layer("strided")(other_in))
    assert total_macs(inner, hw) == before


@pytest.mark.slow  # seconds of setup or a subprocess: the fast subset stays under 2 minutes
def test_quantized_model_costs_as_the_float_model():
    import tensorflow_model_optimization as tfmot

    spec = UNetSpec(base_filters=4, depth=2, padding="same", batch_norm=True, dropout=0.0)
    model = build_unet(spec)
    quantized = tfmot.quantization.keras.quantize_model(model)
    float_costs = {c.name: c.macs for c in layer_costs(model, (32, 32))}
    matched = 0
    for cost in layer_costs(quantized, (32, 32)):
        if cost.name.startswith("quant_") and cost.name[len("quant_"):] in float_costs:
            assert cost.macs == float_costs[cost.name[len("quant_"):]], cost.name
            matched += cost.macs > 0
    assert matched == 2 * 5 + 2 + 1  # every conv, up-conv and the head is a wrapped layer
    assert total_macs(quantized, (32, 32)) == sum(float_costs.values())


# ------------------------------------------------------------------ 3-D volumes

def _volume_model() -> keras.Model:
    """Conv3D (strided, grouped, Tucker-style 1x1x1 -> 3x3x3 -> 1x1x1), Conv3DTranspose, pooling."""
    x = inputs = keras.Input((None, None, None, 2))
    x = keras.layers.Conv3D(8, 3, strides=2, padding="same", name="strided")(x)
    x = keras.layers.Conv3D(8, (3, 1, 3), groups=2, padding="valid", name="grouped")(x)
    x = keras.layers.MaxPooling3D(name="pool")(x)
    x = keras.layers.Conv3D(3, 1, use_bias=False, name="tucker_in")(x)
    x = keras.layers.Conv3D(5, 3, use_bias=False, padding="same", name="tucker_core")(x)
    x = keras.layers.Conv3D(16, 1, name="tucker_out")(x)
    x = keras.layers.Conv3DTranspose(6, 2, strides=2, name="upconv")(x)
    return keras.Model(inputs, x, name="volume")


def test_conv3d_layers_match_formulas_on_run_shapes():
    model = _volume_model()
    size = (12, 16, 20)
    shapes = {layer.name: keras.Model(model.inputs, layer.output)(np.zeros((1, *size, 2), "float32")).shape
              for layer in model.layers[1:]}
    # By hand, from the shapes a real forward pass gives (kernel volume x cin x cout x positions).
    assert shapes["strided"] == (1, 6, 8, 10, 8) and shapes["upconv"] == (1, 4, 8, 8, 6)
    expected = {"strided": 27 * 2 * 8 * 6 * 8 * 10, "grouped": 9 * 4 * 8 * 4 * 8 * 8,
                "tucker_in": 8 * 3 * 2 * 4 * 4, "tucker_core": 27 * 3 * 5 * 2 * 4 * 4,
                "tucker_out": 5 * 16 * 2 * 4 * 4,
                "upconv": 8 * 16 * 6 * 2 * 4 * 4}  # transposed: input positions
    costs = {c.name: c for c in layer_costs(model, size)}
    assert {name: c.macs for name, c in costs.items() if c.macs} == expected
    assert costs["strided"].params == 27 * 2 * 8 + 8 and costs["pool"].macs == 0
    assert total_macs(model, size) == sum(expected.values())


def test_volume_model_needs_three_sizes():
    with pytest.raises(UNetError, match=r"3 positive integers \(D, H, W\)"):
        layer_costs(_volume_model(), (16, 16))


def test_isotropic_size_follows_the_input_rank():
    from unet_medical.model.complexity import isotropic_size

    assert isotropic_size(_volume_model(), 16) == (16, 16, 16)
    assert isotropic_size(_mixed_model(), 16) == (16, 16)
