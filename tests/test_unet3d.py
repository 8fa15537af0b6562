"""Tests of the 3D U-Net (UNetSpec(dims=3)): shapes, layer names and classes, parameter count,
get_config/from_config and a save/load through model.serialization's safe mode. Tiny nets (4 filters,
depth 2, 16-voxel cubes)."""
import numpy as np
import pytest

import unet_medical  # noqa: F401
import tf_keras as keras

from unet_medical.base.errors import UNetError
from unet_medical.model.serialization import model_from_json
from unet_medical.model.unet import UNetSpec, build_unet

SPEC = UNetSpec(base_filters=4, depth=2, padding="same", batch_norm=True, dims=3, n_classes=3, dropout=0.5)


def analytic_param_count_3d(spec: UNetSpec) -> int:
    """Parameters from the architecture alone: a k x k x k conv has k^3 * cin * cout weights."""
    def conv(k, cin, cout):
        return k**3 * cin * cout + (0 if spec.batch_norm else cout) + (4 * cout if spec.batch_norm else 0)

    f = [spec.base_filters * 2**i for i in range(spec.depth + 1)]
    total, cin = 0, spec.in_channels
    for level in range(spec.depth + 1):
        total += conv(3, cin, f[level]) + conv(3, f[level], f[level])
        cin = f[level]
    for level in reversed(range(spec.depth)):
        total += 2**3 * f[level + 1] * f[level] + f[level]
        total += conv(3, 2 * f[level], f[level]) + conv(3, f[level], f[level])
    return total + f[0] * spec.n_classes + spec.n_classes


@pytest.fixture(scope="module")
def model():
    return build_unet(SPEC)


def test_3d_shapes_layers_and_parameters(model):
    x = np.random.default_rng(0).random((2, 16, 8, 12, 1), "float32")
    assert tuple(model(x, training=False).shape) == (2, 16, 8, 12, 3)
    # Same names as the 2D network (surgery and TF-MOT find convs by name), 3D classes.
    assert isinstance(model.get_layer("enc1_conv1"), keras.layers.Conv3D)
    assert isinstance(model.get_layer("enc2_pool"), keras.layers.MaxPooling3D)
    assert isinstance(model.get_layer("dec1_upconv"), keras.layers.Conv3DTranspose)
    assert isinstance(model.get_layer("head"), keras.layers.Conv3D)
    assert model.get_layer("dec1_upconv").kernel_size == (2, 2, 2)
    assert model.get_layer("bottleneck_conv1").kernel_size == (3, 3, 3)
    weights = sum(int(np.prod(w.shape)) for w in model.weights if w.dtype.is_floating)
    assert weights == analytic_param_count_3d(SPEC)


def test_2d_default_unchanged():
    model = build_unet(UNetSpec(base_filters=4, depth=2, padding="same"))
    assert isinstance(model.get_layer("enc1_conv1"), keras.layers.Conv2D)
    assert not isinstance(model.get_layer("enc1_conv1"), keras.layers.Conv3D)
    assert model.input_shape == (None, None, None, 1)


@pytest.mark.parametrize("fields, match", [({"dims": 4}, "dims"), ({"dims": 2.0}, "dims"),
                                           ({"dims": 3, "padding": "valid"}, "padding")])
def test_spec_refuses_bad_dims(fields, match):
    with pytest.raises(UNetError, match=match):
        UNetSpec(**fields)


def test_3d_config_round_trip_and_safe_json_load(model, tmp_path):
    x = np.random.default_rng(1).random((1, 8, 16, 8, 1), "float32")
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(clone(x, training=False).numpy(), model(x, training=False).numpy())
    restored = model_from_json(model.to_json(), tmp_path / "model.json")
    restored.set_weights(model.get_weights())
    np.testing.assert_array_equal(restored(x, training=False).numpy(), model(x, training=False).numpy())
    path = tmp_path / "unet3d.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(loaded(x, training=False).numpy(), model(x, training=False).numpy())
