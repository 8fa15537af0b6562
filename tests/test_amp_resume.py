"""Exact resume under mixed_float16: the checkpoint holds the dynamic loss scale and its good-step
counter (tf_keras LossScaleOptimizer keeps them outside `optimizer.variables`).

mixed_float16 is forced on the CPU with --precision fp16, so these tests exercise the GPU code path
(loss scaling) without a GPU.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import main
from unet_medical.training import checkpoint as ckpt
from unet_medical.training import loop

FLAGS = ["--exec_mode", "train", "--padding", "same", "--base_filters", "4", "--depth", "2",
         "--crop_size", "64", "--batch_size", "2", "--dropout", "0", "--no-augment", "--log_every", "1",
         "--checkpoint_every", "100", "--learning_rate", "1e-2", "--seed", "3"]


@pytest.fixture
def float32_policy_afterwards():
    """The Keras dtype policy is process-wide: leave it as the other tests expect it."""
    yield
    keras.mixed_precision.set_global_policy("float32")


def dense_model() -> keras.Model:
    inputs = keras.Input((3,))
    return keras.Model(inputs, keras.layers.Dense(2)(inputs))


def scaled_step(model: keras.Model, opt: keras.mixed_precision.LossScaleOptimizer, factor: float) -> None:
    """One loss-scaled step; a huge `factor` makes the scaled gradients overflow to inf."""
    x = tf.ones((4, 3))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x)) * factor
        scaled = opt.get_scaled_loss(loss)
    grads = opt.get_unscaled_gradients(tape.gradient(scaled, model.trainable_variables))
    opt.apply_gradients(zip(grads, model.trainable_variables))


def lso(model: keras.Model) -> keras.mixed_precision.LossScaleOptimizer:
    opt = keras.mixed_precision.LossScaleOptimizer(keras.optimizers.Adam(1e-2))
    opt.build(model.trainable_variables)
    return opt


def scale_state(opt) -> tuple[float, int]:
    return float(opt.loss_scale), int(opt.dynamic_counter)


def test_loss_scale_state_round_trips(tmp_path):
    model = dense_model()
    opt = lso(model)
    for factor in (1.0, 1.0, 1e38, 1.0, 1.0, 1.0):  # the overflow halves the scale and resets the counter
        scaled_step(model, opt, factor)
    assert scale_state(opt) == (2.0 ** 14, 3)  # 2**15 halved once; three good steps since
    path = ckpt.save_checkpoint(tmp_path / "last.npz", model, opt, step=6)

    clone = dense_model()
    restored = lso(clone)
    assert scale_state(restored) == (2.0 ** 15, 0)
    info = ckpt.load_checkpoint(path, clone, restored)
    assert info.missing == ()
    assert scale_state(restored) == (2.0 ** 14, 3)
    for a, b in zip(list(opt.variables), list(restored.variables)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # The restored state keeps evolving as the original's: one more overflow halves it again.
    scaled_step(clone, restored, 1e38)
    assert scale_state(restored) == (2.0 ** 13, 0)


def test_checkpoint_without_loss_scale_still_loads(tmp_path):
    """A checkpoint from before the loss_scale group (or from a float32 run) loads into a float16 run's
    optimizer: the scale restarts at its initial value and the loader says so."""
    model = dense_model()
    plain = keras.optimizers.Adam(1e-2)
    plain.build(model.trainable_variables)
    path = ckpt.save_checkpoint(tmp_path / "old.npz", model, plain, step=2)
    with np.load(path) as data:
        assert not any(k.startswith("loss_scale/") for k in data.files)
    opt = lso(dense_model())
    info = ckpt.load_checkpoint(path, dense_model(), opt)
    assert info.missing == ("loss_scale",) and scale_state(opt) == (2.0 ** 15, 0)

    # ... and a float16 run's checkpoint loads into a plain optimizer (its loss-scale group is unused).
    opt = lso(model)
    scaled_step(model, opt, 1e38)
    path = ckpt.save_checkpoint(tmp_path / "new.npz", model, opt, step=1)
    other = keras.optimizers.Adam(1e-2)
    other.build(model.trainable_variables)
    assert ckpt.load_checkpoint(path, dense_model(), other).missing == ()


GROWTH_STEPS = 3


@pytest.fixture
def float16_runs(monkeypatch, float32_policy_afterwards):
    """Record every optimizer the loop makes (the runs force mixed_float16 with --precision fp16).

    The loop's LossScaleOptimizer doubles its scale after 2000 good steps; the recorded one after
    GROWTH_STEPS, so that a 16-step run moves the scale (up, and down again on an overflow) and a
    resume that forgot it would scale the float16 gradients differently.
    """
    optimizers = []
    make = loop.make_optimizer

    def recording(cfg, world_size=1):
        assert isinstance(make(cfg, world_size), keras.mixed_precision.LossScaleOptimizer)
        policy = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy("float32")  # make_optimizer then returns the bare Adam
        try:
            inner = make(cfg, world_size)
        finally:
            keras.mixed_precision.set_global_policy(policy)
        optimizers.append(keras.mixed_precision.LossScaleOptimizer(inner, dynamic_growth_steps=GROWTH_STEPS))
        return optimizers[-1]

    monkeypatch.setattr(loop, "make_optimizer", recording)
    return optimizers


def model_arrays(path) -> list[np.ndarray]:
    with np.load(path) as data:
        return [data[k] for k in sorted(data.files) if k.startswith(("model/", "optimizer/"))]


@pytest.mark.slow
def test_float16_resume_matches_uninterrupted_run(isbi_data_dir, tmp_path, float16_runs):
    k = 8
    common = [*FLAGS, "--precision", "fp16", "--data_dir", str(isbi_data_dir)]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main.main([*common, "--max_steps", str(2 * k), "--model_dir", str(straight)]) == 0
    assert main.main([*common, "--max_steps", str(k), "--model_dir", str(split)]) == 0
    assert main.main([*common, "--max_steps", str(2 * k), "--resume_training", "--model_dir", str(split)]) == 0
    assert len(float16_runs) == 3
    assert all(isinstance(o, keras.mixed_precision.LossScaleOptimizer) for o in float16_runs)
    precisions = [json.loads(line.removeprefix("DLLL").strip()).get("data", {}).get("precision")
                  for line in (split / "log.json").read_text().splitlines()]
    assert "mixed_float16" in precisions

    uninterrupted, _, resumed = (scale_state(o) for o in float16_runs)
    # The scale must have moved during the second half, else the comparison proves little.
    assert uninterrupted[0] != 2.0 ** 15
    assert resumed == uninterrupted
    last = "checkpoints/" + ckpt.LAST
    with np.load(split / last) as data:
        saved = (float(data["loss_scale/00000"]), int(data["loss_scale/00001"]))
    assert saved == uninterrupted
    for a, b in zip(model_arrays(straight / last), model_arrays(split / last), strict=True):
        np.testing.assert_array_equal(a, b)
