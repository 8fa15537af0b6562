"""--amp and --xla through the real training loop (main.main in-process, tiny net, real ISBI crops).

On a CPU, --amp means mixed_bfloat16: convolutions compute in bfloat16 while variables, the head's
logits and the loss stay float32 (utils.precision). These tests check correctness, not speed.
"""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import main
from unet_medical.cli import assemble

FLAGS = ["--exec_mode", "train", "--padding", "same", "--base_filters", "4", "--depth", "2",
         "--crop_size", "64", "--batch_size", "4", "--dropout", "0", "--no-augment", "--max_steps", "12",
         "--log_every", "1", "--checkpoint_every", "100", "--learning_rate", "1e-2", "--seed", "5"]


@pytest.fixture
def float32_policy_afterwards():
    """The Keras dtype policy is process-wide: leave it as the other tests expect it."""
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture
def built_models(monkeypatch) -> list[keras.Model]:
    """Every model run_training builds, so a test can inspect the network that was trained."""
    models: list[keras.Model] = []
    build = assemble.build_unet

    def recording_build(spec):
        models.append(build(spec))
        return models[-1]

    monkeypatch.setattr(assemble, "build_unet", recording_build)
    return models


def logged_losses(model_dir: pathlib.Path) -> list[float]:
    losses = []
    for line in (model_dir / "log.json").read_text().splitlines():
        record = json.loads(line.removeprefix("DLLL").strip())
        data = record.get("data", {})
        if isinstance(record.get("step"), int) and "loss" in data:
            losses.append(float(data["loss"]))
    return losses


@pytest.mark.parametrize("extra, compute_dtype", [
    (["--amp"], "bfloat16"),
    (["--precision", "fp32", "--xla"], "float32"),
    (["--amp", "--xla"], "bfloat16"),
])
@pytest.mark.slow
def test_training_runs_and_learns(isbi_data_dir, tmp_path, built_models, float32_policy_afterwards,
                                  extra, compute_dtype):
    assert main.main([*FLAGS, *extra, "--data_dir", str(isbi_data_dir), "--model_dir", str(tmp_path)]) == 0
    losses = logged_losses(tmp_path)
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < losses[0] - 0.02, losses

    model = built_models[0]
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D) and layer.name != "head"]
    assert convs and all(layer.compute_dtype == compute_dtype for layer in convs)
    assert model.get_layer("head").compute_dtype == "float32"  # logits and loss in float32
    assert all(v.dtype == tf.float32 for v in model.trainable_variables)  # master weights stay float32
    logits = model(tf.zeros((1, 64, 64, 1)), training=False)
    assert logits.dtype == tf.float32
    assert np.isfinite(logits.numpy()).all()


@pytest.mark.slow
def test_amp_applies_to_a_model_trained_in_float32(isbi_data_dir, tmp_path, float32_policy_afterwards):
    """--amp with --init_from (fine-tuning) and at inference must not silently keep float32 layers."""
    float_dir, amp_dir = tmp_path / "float", tmp_path / "amp"
    common = [*FLAGS, "--max_steps", "2", "--data_dir", str(isbi_data_dir)]
    assert main.main([*common, "--model_dir", str(float_dir)]) == 0
    keras.mixed_precision.set_global_policy("float32")
    assert main.main([*common, "--amp", "--init_from", str(float_dir), "--model_dir", str(amp_dir)]) == 0
    layers = json.loads(json.loads((amp_dir / "model.json").read_text())["architecture"])["config"]["layers"]
    policies = {layer["config"]["name"]: json.dumps(layer["config"].get("dtype")) for layer in layers}
    assert "mixed_bfloat16" in policies["enc1_conv1"] and "float32" in policies["head"]
    keras.mixed_precision.set_global_policy("float32")
    from unet_medical.cli.config import parse_config

    model, _, _ = assemble.restore_model(parse_config(["--exec_mode", "evaluate", "--model_dir", str(float_dir), "--amp"]))
    assert model.get_layer("enc1_conv1").compute_dtype == "bfloat16"
    assert model.get_layer("head").compute_dtype == "float32"
