"""Tests for unet_medical/model/surgery.py: rebuilding Functional models with layers replaced."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from unet_medical.model.surgery import graph_nodes, replace_layers
from unet_medical.base.errors import UNetError

L = keras.layers


class CropTo(L.Layer):
    """Test-local two-input layer called as layer(x, ref): crops x to ref's spatial size."""

    def call(self, x, ref):
        h, w = tf.shape(ref)[1], tf.shape(ref)[2]
        return x[:, :h, :w, :]


def unet_like(name: str = "unet_like") -> keras.Model:
    """Two-level U-Net shape: skip connection, two-argument layer, Concatenate, TF-op layer."""
    image = keras.Input((None, None, 1), name="image")
    a = L.Conv2D(4, 3, padding="same", name="c1")(image)
    a = L.ReLU(name="r1")(a)
    b = L.MaxPooling2D(name="pool")(a)
    b = L.Conv2D(8, 3, padding="same", name="c2")(b)
    b = L.BatchNormalization(name="bn")(b)
    u = L.Conv2DTranspose(4, 2, strides=2, name="up")(b)
    u = CropTo(name="crop")(u, a)
    x = L.Concatenate(name="cat")([a, u])
    x = x * 0.5   # becomes a TFOpLambda layer
    out = L.Conv2D(2, 1, name="head")(x)
    return keras.Model(image, out, name=name)


def randomize_bn(model: keras.Model) -> None:
    """Non-trivial moving statistics, so a clone that forgot them would differ."""
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32")
                               for w in layer.get_weights()])


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(1)
    m = unet_like()
    randomize_bn(m)
    return m


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(2).random((2, 16, 16, 1), dtype=np.float32)


def test_graph_nodes_are_topological(model):
    names = [n.layer.name for n in graph_nodes(model)]
    assert "image" not in names
    for before, after in [("c1", "r1"), ("r1", "pool"), ("up", "crop"), ("crop", "cat"),
                          ("cat", "head")]:
        assert names.index(before) < names.index(after)


def test_identity_rebuild_is_equal_and_independent(model, image):
    new = replace_layers(model, lambda layer: None)
    np.testing.assert_array_equal(new(image).numpy(), model(image).numpy())
    assert [l.name for l in new.layers] == [l.name for l in model.layers]
    assert new.name == model.name and new.output_names == model.output_names
    for old_layer in model.layers[1:]:
        assert new.get_layer(old_layer.name) is not old_layer
    before = model(image).numpy()
    new.get_layer("c1").kernel.assign_add(tf.ones_like(new.get_layer("c1").kernel))
    np.testing.assert_array_equal(model(image).numpy(), before)
    assert not np.allclose(new(image).numpy(), before)


def test_clone_kept_false_reuses_layers(model, image):
    new = replace_layers(model, lambda layer: None, clone_kept=False)
    for old_layer in model.layers[1:]:
        assert new.get_layer(old_layer.name) is old_layer
    np.testing.assert_array_equal(new(image).numpy(), model(image).numpy())


def test_replacing_a_layer_with_two_consumers_rewires_both(model, image):
    # r1 feeds the pooling and, through the skip connection, both crop (as ref) and cat.
    new = replace_layers(model, lambda layer: [L.ReLU(name="r1_a"), L.Activation(
        "linear", name="r1_b")] if layer.name == "r1" else None)
    assert "r1" not in [l.name for l in new.layers]
    r1_b = new.get_layer("r1_b").output
    assert new.get_layer("pool").input is r1_b
    assert new.get_layer("cat").input[0] is r1_b
    assert new.get_layer("crop").inbound_nodes[0].call_args[1] is r1_b
    assert new.get_layer("r1_a").input is new.get_layer("c1").output
    np.testing.assert_allclose(new(image).numpy(), model(image).numpy(), rtol=0, atol=1e-6)


def test_replacement_changes_the_function():
    x = keras.Input((3,), name="x")
    y = L.Concatenate(name="cat")([x, L.Activation("linear", name="mid")(x)])
    model = keras.Model(x, y)
    new = replace_layers(model, lambda layer: [L.Rescaling(2.0, name="twice")]
                         if layer.name == "mid" else None)
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(new(data).numpy(), np.concatenate([data, 2 * data], axis=1))


def test_replaced_conv_with_copied_weights_matches(model, image):
    c2 = model.get_layer("c2")

    def replacement(layer):
        if layer.name != "c2":
            return None
        conv = L.Conv2D(8, 3, padding="same", name="c2_new")
        conv.build((None, None, None, 4))
        conv.set_weights(c2.get_weights())
        return [conv, L.Activation("linear", name="c2_identity")]

    new = replace_layers(model, replacement)
    assert new.get_layer("bn").input is new.get_layer("c2_identity").output
    np.testing.assert_allclose(new(image).numpy(), model(image).numpy(), rtol=0, atol=1e-6)


def test_shared_layer_gets_one_replacement_used_at_every_call():
    x = keras.Input((None, None, 2), name="x")
    shared = L.Conv2D(2, 3, padding="same", name="shared")
    y = shared(L.ReLU(name="relu")(shared(x)))
    model = keras.Model(x, y)
    calls = []

    def replacement(layer):
        if layer.name != "shared":
            return None
        calls.append(layer.name)
        conv = L.Conv2D(2, 3, padding="same", name="shared_new")
        conv.build((None, None, None, 2))
        conv.set_weights(layer.get_weights())
        return [conv]

    new = replace_layers(model, replacement)
    assert calls == ["shared"]
    assert [l.name for l in new.layers] == ["x", "shared_new", "relu"]
    assert len(new.get_layer("shared_new").inbound_nodes) == 2
    data = np.random.default_rng(3).random((1, 5, 5, 2), dtype=np.float32)
    np.testing.assert_allclose(new(data).numpy(), model(data).numpy(), rtol=0, atol=1e-6)


def test_nested_model_and_dict_outputs():
    inner_in = keras.Input((None, None, 2))
    inner = keras.Model(inner_in, L.Conv2D(2, 3, padding="same", name="inner_conv")(inner_in),
                        name="block")
    x = keras.Input((None, None, 2), name="x")
    features = inner(x)
    seg = L.Conv2D(1, 1, name="seg")(features)
    aux = L.Conv2D(3, 1, name="aux")(features)
    model = keras.Model(x, {"seg": seg, "aux": aux})
    new = replace_layers(model, lambda layer: [L.Conv2D(3, 1, name="aux_new")]
                         if layer.name == "aux" else None)
    data = np.random.default_rng(4).random((1, 6, 6, 2), dtype=np.float32)
    out_old, out_new = model(data), new(data)
    assert set(out_new) == {"seg", "aux"}
    np.testing.assert_array_equal(out_new["seg"].numpy(), out_old["seg"].numpy())
    assert out_new["aux"].shape == out_old["aux"].shape
    assert new.get_layer("block") is not inner
    assert "seg" in new.output_names and "aux_new" in new.output_names


def test_multi_input_layer_cannot_be_replaced(model):
    with pytest.raises(UNetError, match="'cat'.*2 input tensors"):
        replace_layers(model, lambda layer: [L.Activation("linear", name="x")]
                       if layer.name == "cat" else None)
    with pytest.raises(UNetError, match="'crop'"):
        replace_layers(model, lambda layer: [L.Activation("linear", name="x")]
                       if layer.name == "crop" else None)


def test_name_collision_is_reported(model):
    with pytest.raises(UNetError, match="'head'.*twice"):
        replace_layers(model, lambda layer: [L.Activation("linear", name="head")]
                       if layer.name == "r1" else None)


def test_bad_replacement_value(model):
    with pytest.raises(TypeError, match="'r1'"):
        replace_layers(model, lambda layer: L.ReLU() if layer.name == "r1" else None)
    with pytest.raises(TypeError, match="'r1'"):
        replace_layers(model, lambda layer: [] if layer.name == "r1" else None)


def test_subclassed_model_is_rejected():
    class Net(keras.Model):
        def __init__(self):
            super().__init__(name="net")
            self.conv = L.Conv2D(2, 3)

        def call(self, x):
            return self.conv(x)

    net = Net()
    net(np.zeros((1, 4, 4, 1), np.float32))
    with pytest.raises(UNetError, match="subclassed.*Functional"):
        replace_layers(net, lambda layer: None)
    with pytest.raises(UNetError, match="expected a tf_keras Functional model"):
        replace_layers("not a model", lambda layer: None)


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_identity_rebuild_of_project_unet(padding):
    from unet_medical.model.unet import UNetSpec, build_unet, smallest_valid_input

    spec = UNetSpec(base_filters=4, depth=2, padding=padding, dropout=0.5)
    model = build_unet(spec)
    size = smallest_valid_input(spec, 8)
    data = np.random.default_rng(5).random((1, size, size, 1), dtype=np.float32)
    new = replace_layers(model, lambda layer: None)
    np.testing.assert_array_equal(new(data).numpy(), model(data).numpy())
    assert [type(l) for l in new.layers] == [type(l) for l in model.layers]


def test_sequential_model_is_rebuilt_as_functional():
    model = keras.Sequential([keras.Input((4,)), L.Dense(3, name="d1"), L.ReLU(name="r"),
                              L.Dense(2, name="d2")], name="seq")
    new = replace_layers(model, lambda layer: [L.ReLU(name="r_new"), L.Activation("linear",
                                                                                    name="lin")]
                         if layer.name == "r" else None)
    data = np.random.default_rng(6).random((2, 4), dtype=np.float32)
    np.testing.assert_allclose(new(data).numpy(), model(data).numpy(), rtol=0, atol=1e-6)
    assert [l.name for l in new.layers][-3:] == ["r_new", "lin", "d2"]


def test_layer_without_complete_config_cannot_be_cloned():
    class Scale(L.Layer):
        """No get_config, and an array argument tf_keras cannot capture automatically."""

        def __init__(self, factor, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def call(self, x):
            return x * self.factor

    x = keras.Input((2,), name="x")
    model = keras.Model(x, Scale(np.array([3.0, 3.0], np.float32), name="scale")(x))
    with pytest.raises(UNetError, match="'scale'.*clone_kept=False"):
        replace_layers(model, lambda layer: None)
    new = replace_layers(model, lambda layer: None, clone_kept=False)
    np.testing.assert_array_equal(new(np.ones((1, 2), np.float32)).numpy(), [[3.0, 3.0]])
