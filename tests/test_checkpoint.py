"""Checkpoints: atomic single files, exact round trip, clear errors on mismatch or corruption."""

import numpy as np
import pytest
import tf_keras as keras

from unet_medical.training import checkpoint as ckpt
from unet_medical.base.errors import UNetError


def small_model(width=3):
    inputs = keras.Input((4,))
    x = keras.layers.Dense(width)(inputs)
    x = keras.layers.BatchNormalization()(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x))


def test_round_trip_with_optimizer(tmp_path):
    model = small_model()
    opt = keras.optimizers.Adam(1e-2)
    x = np.random.default_rng(0).random((8, 4), np.float32)
    model.compile(opt, "mse")
    model.fit(x, np.ones((8, 2)), epochs=2, verbose=0)
    path = ckpt.save_checkpoint(tmp_path / "last.npz", model, opt, step=17, meta={"best_score": 0.5})
    clone, opt2 = small_model(), keras.optimizers.Adam(1e-2)
    opt2.build(clone.trainable_variables)
    info = ckpt.load_checkpoint(path, clone, opt2)
    assert info.step == 17 and info.meta["best_score"] == 0.5
    for a, b in zip(model.weights + list(opt.variables), clone.weights + list(opt2.variables)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert ckpt.read_header(path).step == 17


def test_mismatched_model_is_a_clear_error(tmp_path):
    path = ckpt.save_checkpoint(tmp_path / "a.npz", small_model(3), step=1)
    with pytest.raises(UNetError, match="does not match the model"):
        ckpt.load_checkpoint(path, small_model(5))


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(UNetError, match="bad.npz"):
        ckpt.load_checkpoint(bad, small_model())
    with pytest.raises(UNetError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "none.npz", small_model())


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = small_model()
    path = ckpt.save_checkpoint(tmp_path / "last.npz", model, step=1)
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(path, model, step=2)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.npz"]  # no temporary file left behind
