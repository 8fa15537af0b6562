"""InstanceNormalization (unet_medical/model/layers.py) against a NumPy reference, and --instance_norm through
the spec, the flags, a 3-D run and the exports."""
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import unet_medical  # noqa: F401
import tensorflow as tf
import tf_keras as keras

import main
from unet_medical.base.errors import UNetError
from unet_medical.cli.config import parse_config
from unet_medical.data import synthetic_volumes as sv
from unet_medical.export.volume import export_volume_model
from unet_medical.model.layers import InstanceNormalization
from unet_medical.model.packing import load_packed, save_packed
from unet_medical.model.qat import quantize_model_qat
from unet_medical.model.quantization import quantize_unet
from unet_medical.model.quantizers import QuantizationConfig
from unet_medical.model.serialization import model_from_json
from unet_medical.model.unet import UNetSpec, build_unet


def numpy_instance_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, epsilon: float = 1e-5) -> np.ndarray:
    """Independent reference in float64: statistics per sample and channel over every axis but the first
    and the last."""
    x = x.astype(np.float64)
    axes = tuple(range(1, x.ndim - 1))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + epsilon) * gamma + beta


def layer_with(gamma: np.ndarray, beta: np.ndarray, shape: tuple[int, ...]) -> InstanceNormalization:
    layer = InstanceNormalization()
    layer.build(shape)
    layer.set_weights([gamma, beta])
    return layer


@settings(max_examples=20, deadline=None)
@given(spatial=st.lists(st.integers(1, 6), min_size=1, max_size=3), channels=st.integers(1, 4),
       batch=st.integers(1, 3), offset=st.floats(-50, 50), seed=st.integers(0, 2 ** 16))
def test_matches_the_numpy_reference_for_any_rank(spatial, channels, batch, offset, seed):
    rng = np.random.default_rng(seed)
    shape = (batch, *spatial, channels)
    x = (offset + rng.normal(scale=rng.uniform(0.1, 5), size=shape)).astype(np.float32)
    gamma, beta = rng.normal(size=channels).astype(np.float32), rng.normal(size=channels).astype(np.float32)
    out = layer_with(gamma, beta, shape)(x).numpy()
    assert out.dtype == np.float32 and out.shape == shape
    np.testing.assert_allclose(out, numpy_instance_norm(x, gamma, beta), rtol=1e-3, atol=2e-3)


def test_samples_do_not_see_each_other_and_training_changes_nothing():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 6, 4, 2)).astype(np.float32) * np.array([1, 10, 100], np.float32)[:, None, None, None, None]
    layer = layer_with(np.ones(2, np.float32), np.zeros(2, np.float32), x.shape)
    whole = layer(x, training=True).numpy()
    np.testing.assert_allclose(layer(x[1:2], training=False).numpy(), whole[1:2], rtol=1e-5, atol=1e-5)
    assert not layer.non_trainable_weights  # no moving statistics: inference is training's computation


def test_under_mixed_bfloat16_the_statistics_and_weights_stay_float32():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        rng = np.random.default_rng(1)
        # A large offset over many voxels: statistics reduced in bfloat16 (8 significant bits) would be off by
        # several units of the spread; the input itself is rounded to bfloat16 as a convolution would give it.
        x = tf.cast(tf.constant(300.0 + rng.normal(scale=2.0, size=(2, 16, 16, 16, 3)), tf.float32), tf.bfloat16)
        gamma, beta = np.array([1.0, 2.0, 0.5], np.float32), np.array([0.0, -1.0, 3.0], np.float32)
        layer = layer_with(gamma, beta, x.shape)
        out = layer(x)
        assert out.dtype == tf.bfloat16 and all(w.dtype == tf.float32 for w in layer.weights)
        reference = numpy_instance_norm(tf.cast(x, tf.float32).numpy(), gamma, beta)
        # bfloat16 keeps 8 significant bits of the result: |error| <= 2^-8 of its magnitude, plus rounding of x.
        np.testing.assert_allclose(tf.cast(out, tf.float32).numpy(), reference, rtol=2 ** -7, atol=0.05)
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("dims", [2, 3])
def test_the_unet_takes_it_in_place_of_batch_norm_and_round_trips(dims, tmp_path):
    spec = UNetSpec(padding="same", base_filters=4, depth=2, dropout=0.0, dims=dims, instance_norm=True)
    model = build_unet(spec)
    kinds = {type(layer).__name__ for layer in model.layers}
    assert "InstanceNormalization" in kinds and "BatchNormalization" not in kinds
    assert [layer.name for layer in model.layers if isinstance(layer, InstanceNormalization)][:2] == ["enc1_in1", "enc1_in2"]
    assert not model.get_layer("enc1_conv1").use_bias  # beta replaces the bias
    x = np.random.default_rng(2).random((2,) + (8,) * dims + (1,), np.float32)
    for w in model.weights:  # non-trivial gamma and beta, so a lost weight would show
        w.assign(w + np.float32(0.1))
    restored = model_from_json(model.to_json(), tmp_path / "model.json")
    restored.set_weights(model.get_weights())
    np.testing.assert_array_equal(restored(x).numpy(), model(x).numpy())
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())


def test_one_normalization_per_block():
    with pytest.raises(UNetError, match="batch_norm and instance_norm"):
        UNetSpec(batch_norm=True, instance_norm=True)
    with pytest.raises(UNetError, match="instance_norm must be True or False"):
        UNetSpec(instance_norm=1)


def test_the_flag_replaces_the_recipes_batch_norm():
    cfg = parse_config(["--exec_mode", "train", "--batch_norm", "--instance_norm", "--model_dir", "/nonexistent/run"])
    assert cfg.instance_norm and not cfg.batch_norm
    assert parse_config(["--exec_mode", "train", "--batch_norm", "--model_dir", "/nonexistent/run"]).batch_norm


def test_volume_export_keeps_parity(tmp_path):
    model = build_unet(UNetSpec(n_classes=3, padding="same", base_filters=4, depth=2, dropout=0.0, dims=3,
                                instance_norm=True))
    patches = np.random.default_rng(3).uniform(size=(2, 8, 16, 8, 1)).astype(np.float32)
    entry = export_volume_model(model, tmp_path, "onnx", "fp32", patches)
    parity = entry["parity"]["patches"]
    assert parity["label_agreement"] == 1.0 and parity["max_abs_prob_diff"] < 1e-4


def test_quantized_networks_keep_it_in_float(tmp_path):
    model = build_unet(UNetSpec(padding="same", base_filters=4, depth=2, dropout=0.0, instance_norm=True))
    x = np.random.default_rng(4).random((2, 16, 16, 1), np.float32)
    config = QuantizationConfig("FIXED")
    fixed = quantize_unet(model, config)
    fixed(x, training=True)
    save_packed(fixed, config, tmp_path / "fixed.npz")
    np.testing.assert_array_equal(load_packed(tmp_path / "fixed.npz")(x).numpy(), fixed(x).numpy())
    qat = quantize_model_qat(model)  # TF-MOT does not know the layer: annotated to stay float
    assert np.isfinite(qat(x, training=True).numpy()).all()


@pytest.mark.slow
def test_a_3d_run_with_instance_norm_chooses_its_batch_trains_resumes_and_evaluates(tmp_path):
    data, run = tmp_path / "ct", tmp_path / "run"
    sv.write_volume_kind(data, "ct", 3, seed=0)
    flags = ["--exec_mode", "train_and_evaluate", "--data_dir", str(data), "--model_dir", str(run), "--dims", "3",
             "--base_filters", "4", "--depth", "2", "--batch_norm", "--instance_norm",
             "--patch_size", "32,32,16", "--num_folds", "3", "--learning_rate", "3e-3", "--no-saved_model",
             "--dropout", "0", "--checkpoint_every", "10", "--log_every", "10"]
    assert main.main([*flags, "--max_steps", "10"]) == 0
    spec = json.loads((run / "model.json").read_text())["spec"]
    assert spec["instance_norm"] is True and spec["batch_norm"] is False
    # No --batch_size: the 3-D recipe chose 2 patches, said so, and recorded it for the resume.
    recipe = [json.loads(line[5:])["data"] for line in (run / "log.json").read_text().splitlines() if '"RECIPE"' in line]
    assert {"flag": "batch_size", "value": 2} == {k: v for r in recipe if r["flag"] == "batch_size" for k, v in r.items()
                                                   if k != "reason"}
    assert "batch_size: 2" in (run / "config.yaml").read_text()
    # The recipe's --batch_norm typed again on a resume does not contradict the recorded network.
    assert main.main([*flags, "--max_steps", "30", "--resume_training"]) == 0
    results = json.loads((run / "eval_results.json").read_text())
    assert results["step"] == 30 and results["organ_dice"] > 0.3
    assert main.main(["--exec_mode", "evaluate", "--model_dir", str(run)]) == 0
