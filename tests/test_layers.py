"""Tests of unet_medical/model/layers.py: CenterCropToMatch and SeededDropout (shapes, numerics, serialization,
reproducibility from a checkpoint, tf.distribute)."""
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import unet_medical  # noqa: F401
import tensorflow as tf
import tf_keras as keras

from unet_medical.model.layers import CenterCropToMatch, SeededDropout
from unet_medical.base.errors import UNetError

REPO = pathlib.Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ CenterCropToMatch

@pytest.mark.parametrize(
    "x_hw, ref_hw",
    [((9, 11), (5, 6)), ((8, 8), (4, 4)), ((7, 10), (7, 10)), ((6, 5), (1, 2))],
)
def test_center_crop_matches_numpy_slice(x_hw, ref_hw):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, *x_hw, 3)).astype("float32")
    ref = np.zeros((2, *ref_hw, 1), "float32")
    top, left = (x_hw[0] - ref_hw[0]) // 2, (x_hw[1] - ref_hw[1]) // 2
    expected = x[:, top : top + ref_hw[0], left : left + ref_hw[1], :]
    out = CenterCropToMatch()([x, ref]).numpy()
    np.testing.assert_array_equal(out, expected)


def test_center_crop_dynamic_shapes_in_functional_model():
    x_in = keras.Input((None, None, 3))
    ref_in = keras.Input((None, None, 1))
    out = CenterCropToMatch(name="crop")([x_in, ref_in])
    assert out.shape.as_list() == [None, None, None, 3]
    model = keras.Model([x_in, ref_in], out)
    for x_hw, ref_hw in [((10, 12), (6, 8)), ((20, 9), (2, 3))]:
        y = model([np.ones((1, *x_hw, 3), "float32"), np.ones((1, *ref_hw, 1), "float32")])
        assert y.shape == (1, *ref_hw, 3)


def test_center_crop_static_output_shape():
    out = CenterCropToMatch()([keras.Input((12, 14, 5)), keras.Input((8, 10, 2))])
    assert out.shape.as_list() == [None, 8, 10, 5]
    assert CenterCropToMatch().compute_output_shape([(None, 12, 14, 5), (None, 8, 10, 2)]) == (
        tf.TensorShape([None, 8, 10, 5])
    )


def test_center_crop_config_round_trip():
    layer = CenterCropToMatch(name="dec1_crop")
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(restored) is CenterCropToMatch
    assert restored.get_config() == layer.get_config()


# ------------------------------------------------------------------ SeededDropout

def _expected_dropout(x: np.ndarray, rate: float, seed: int, step: int) -> np.ndarray:
    """The documented contract: keep where stateless_uniform((seed, step)) >= rate, then scale
    by 1 / (1 - rate)."""
    uniform = tf.random.stateless_uniform(x.shape, seed=[seed, step], dtype=tf.float32).numpy()
    return np.where(uniform >= rate, x / (1.0 - rate), 0.0).astype(x.dtype)


def test_seeded_dropout_mask_is_function_of_seed_and_counter():
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 4)).astype("float32")
    layer = SeededDropout(0.3, seed=11)
    for step in range(3):
        out = layer(x, training=True).numpy()
        np.testing.assert_allclose(out, _expected_dropout(x, 0.3, 11, step), rtol=1e-6)
    assert int(layer.counter.numpy()) == 3


def test_seeded_dropout_masks_differ_between_steps_and_drop_the_rate():
    x = np.ones((1, 100, 100, 1), "float32")
    layer = SeededDropout(0.5, seed=3)
    first = layer(x, training=True).numpy()
    second = layer(x, training=True).numpy()
    assert not np.array_equal(first, second)
    assert set(np.unique(first)) <= {0.0, 2.0}
    assert abs(np.mean(first == 0) - 0.5) < 0.03  # 10,000 draws: std of the fraction is 0.005


@pytest.mark.parametrize("training", [False, None])
def test_seeded_dropout_is_identity_at_inference(training):
    x = np.random.default_rng(2).normal(size=(2, 5, 5, 3)).astype("float32")
    layer = SeededDropout(0.5, seed=1)
    np.testing.assert_array_equal(layer(x, training=training).numpy(), x)
    assert int(layer.counter.numpy()) == 0


def test_seeded_dropout_tensor_training_flag_in_tf_function():
    x = np.ones((1, 6, 6, 2), "float32")
    layer = SeededDropout(0.5, seed=5)
    call = tf.function(lambda v, t: layer(v, training=t))
    np.testing.assert_array_equal(call(x, tf.constant(False)).numpy(), x)
    assert int(layer.counter.numpy()) == 0
    out = call(x, tf.constant(True)).numpy()
    np.testing.assert_allclose(out, _expected_dropout(x, 0.5, 5, 0))
    assert int(layer.counter.numpy()) == 1


def test_seeded_dropout_rate_zero_is_identity_and_bad_rate_rejected():
    x = np.ones((1, 3, 3, 1), "float32")
    np.testing.assert_array_equal(SeededDropout(0.0)(x, training=True).numpy(), x)
    for rate in (-0.1, 1.0, 1.5):
        with pytest.raises(UNetError, match="rate"):
            SeededDropout(rate)


def test_seeded_dropout_counter_is_a_non_trainable_int64_weight():
    layer = SeededDropout(0.5, seed=0)
    layer.build(tf.TensorShape([None, 4]))
    assert layer.weights == [layer.counter]
    assert layer.trainable_weights == []
    assert layer.counter.dtype == tf.int64


def test_seeded_dropout_config_round_trip():
    layer = SeededDropout(0.25, seed=123, name="bottleneck_dropout")
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(restored) is SeededDropout
    assert restored.get_config() == layer.get_config()
    assert (restored.rate, restored.seed) == (0.25, 123)
    # A seed drawn at construction is kept in the config, so a rebuilt layer draws the same masks.
    drawn = SeededDropout(0.5)
    assert SeededDropout.from_config(drawn.get_config()).seed == drawn.seed


def _dropout_model(seed: int) -> keras.Model:
    inputs = keras.Input((4, 4, 2))
    return keras.Model(inputs, SeededDropout(0.5, seed=seed, name="drop")(inputs))


def test_seeded_dropout_resumed_from_checkpoint_reproduces_uninterrupted_run(tmp_path):
    x = np.random.default_rng(4).normal(size=(3, 4, 4, 2)).astype("float32")
    uninterrupted = _dropout_model(seed=9)
    outputs = [uninterrupted(x, training=True).numpy() for _ in range(4)]

    interrupted = _dropout_model(seed=9)
    for _ in range(2):
        interrupted(x, training=True)
    path = tf.train.Checkpoint(model=interrupted).save(str(tmp_path / "ckpt"))

    resumed = _dropout_model(seed=9)
    tf.train.Checkpoint(model=resumed).restore(path).assert_consumed()
    assert int(resumed.get_layer("drop").counter.numpy()) == 2
    for expected in outputs[2:]:
        np.testing.assert_array_equal(resumed(x, training=True).numpy(), expected)

    # Restoring with set_weights (Keras weight files) does the same.
    again = _dropout_model(seed=9)
    again.set_weights(interrupted.get_weights())
    np.testing.assert_array_equal(again(x, training=True).numpy(), outputs[2])


@pytest.mark.slow
def test_seeded_dropout_under_mirrored_strategy():
    """Two logical CPU replicas: one counter increment per step, different masks per replica.

    Runs in a subprocess because logical devices must be configured before TensorFlow starts.
    """
    script = textwrap.dedent(
        """
        import unet_medical, numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        two = [tf.config.LogicalDeviceConfiguration()] * 2
        tf.config.set_logical_device_configuration(cpu, two)
        from unet_medical.model.layers import SeededDropout
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            layer = SeededDropout(0.5, seed=7)
            layer.build(tf.TensorShape([None, 256]))
        step = tf.function(lambda v: strategy.run(lambda t: layer(t, training=True), args=(v,)))
        data = tf.data.Dataset.from_tensors(tf.ones([2, 256])).repeat(2).unbatch().batch(2)
        for i, batch in enumerate(strategy.experimental_distribute_dataset(data), start=1):
            first, second = [t.numpy() for t in strategy.experimental_local_results(step(batch))]
            assert [int(v.numpy()) for v in layer.counter.values] == [i, i], layer.counter
            assert not np.array_equal(first, second)
        print("OK")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
