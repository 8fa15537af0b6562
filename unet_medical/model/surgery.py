"""Layer surgery on Functional tf_keras models: rebuild a graph with some layers replaced.

`replace_layers` walks a Functional model's graph in topological order and calls each layer on the
rebuilt tensors, substituting a sequence of new layers wherever a replacement rule asks for it.
Skip connections, multi-input layers (Concatenate, custom `layer(x, ref)` layers), TF-op layers and
nested models are re-wired exactly as in the original graph.

Example (replace every ReLU layer by a LeakyReLU)::

    new_model = replace_layers(
        model,
        lambda layer: [keras.layers.LeakyReLU(name=layer.name + "_leaky")]
        if isinstance(layer, keras.layers.ReLU) else None)
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import tensorflow as tf
import tf_keras as keras

from unet_medical.base.errors import UNetError

Replacement = Callable[[keras.layers.Layer], Optional[Sequence[keras.layers.Layer]]]


def check_functional(model: Any, what: str = "model") -> None:
    """Raise UNetError unless `model` is a Functional (graph) tf_keras model.

    Subclassed models have no inspectable graph, and Keras 3 models are a different class hierarchy
    that tf_keras (and TF-MOT) cannot rewrite.
    """
    if not isinstance(model, keras.Model):
        raise UNetError(
            f"{what} {getattr(model, 'name', model)!r} is a {type(model).__module__}."
            f"{type(model).__name__}; expected a tf_keras Functional model "
            "(build it with `import tf_keras as keras`)")
    if not getattr(model, "_is_graph_network", False):
        raise UNetError(
            f"{what} {model.name!r} is a subclassed tf_keras model ({type(model).__name__}); "
            "expected a Functional model built from keras.Input (its layer graph must be visible)")


def graph_nodes(model: keras.Model) -> list:
    """The model's own layer-call nodes (input nodes excluded) in topological order.

    Each node is one call of one layer inside this model; a layer called twice has two nodes.
    tf_keras exposes the graph only through the private `_nodes_by_depth` (depth 0 = outputs);
    the same structure drives `Functional.call`, so the order is the one Keras itself executes.
    """
    check_functional(model)
    nodes = []
    for depth in sorted(model._nodes_by_depth, reverse=True):
        nodes.extend(n for n in model._nodes_by_depth[depth] if not n.is_input)
    return nodes


def clone_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
    """A fresh, unbuilt layer with the same config (weights are copied after its first call).

    Nested models go through `keras.models.clone_model` so their inner graph is cloned too.
    """
    try:
        if isinstance(layer, keras.Model):
            return keras.models.clone_model(layer)
        return layer.__class__.from_config(layer.get_config())
    except (NotImplementedError, TypeError, ValueError) as err:
        # tf_keras's message is a multi-paragraph tutorial; its first paragraph says what failed.
        gist = " ".join(str(err).strip().split("\n\n")[0].split())
        raise UNetError(
            f"layer {layer.name!r} ({type(layer).__name__}) cannot be cloned from its "
            f"get_config(): {gist} Make its get_config() return every constructor argument, or "
            "call replace_layers(..., clone_kept=False) to reuse the original layer objects"
        ) from err


def replace_layers(model: keras.Model, replacement: Replacement, *,
                   clone_kept: bool = True) -> keras.Model:
    """Rebuild a Functional model, replacing layers by sequences of new layers.

    The graph is walked in topological order. For every layer, `replacement(layer)` is called once
    (a layer shared by several calls gets one replacement, used at every call site, so sharing is
    preserved):
      - a non-empty list of new layers: they are applied in sequence to the layer's single input
        tensor, in place of the layer (non-tensor call kwargs of the original call are dropped);
      - None: the layer is kept.

    Kept layers are, with `clone_kept=True` (default), clones built from `get_config()` whose
    weights are copied from the original (including non-trainable state such as BatchNorm moving
    statistics), so training the new model never changes the original one. With
    `clone_kept=False` the same layer objects are reused and the two models share those weights.

    Inputs are fresh `keras.Input`s with the original names, shapes and dtypes; the output
    structure (single tensor, list or dict) is preserved, and so are output names whenever the
    output layer is kept (a replaced output layer is named after the last of its replacements).

    Args:
        model: Functional tf_keras model (Sequential models with a known input also work).
        replacement: layer -> list of new, not yet called layers, or None to keep the layer.
        clone_kept: clone kept layers (True) or reuse the original objects (False).

    Returns:
        A new Functional model with the same inputs and outputs and the model's name.

    Raises:
        UNetError: model not Functional; a layer to replace takes several tensors or returns
            several outputs; a new layer's name collides with another layer's; a kept layer cannot
            be cloned.
        TypeError: `replacement` returned something other than None or a list of Layers.
    """
    check_functional(model)
    # id(original KerasTensor) -> rebuilt tensor, the same keying tf_keras uses internally.
    rebuilt: dict[int, tf.Tensor] = {}
    new_inputs = tf.nest.map_structure(lambda t: _fresh_input(t, rebuilt), model.input)

    substitutes: dict[int, Any] = {}   # id(layer) -> list of new layers, or the kept layer
    copy_weights_from: dict[int, keras.layers.Layer] = {}   # id(clone) -> original, until copied
    for node in graph_nodes(model):
        layer = node.layer
        if id(layer) not in substitutes:
            new_layers = replacement(layer)
            if new_layers is not None:
                substitutes[id(layer)] = _checked_replacement(layer, new_layers)
            elif clone_kept:
                substitutes[id(layer)] = clone_layer(layer)
                copy_weights_from[id(substitutes[id(layer)])] = layer
            else:
                substitutes[id(layer)] = layer
        substitute = substitutes[id(layer)]

        args, kwargs = tf.nest.map_structure(
            lambda a: rebuilt[id(a)] if _is_keras_tensor(a) else a,
            (node.call_args, node.call_kwargs))
        if isinstance(substitute, list):
            outputs = _apply_sequence(layer, node, substitute, args, kwargs)
        else:
            outputs = substitute(*args, **kwargs)
            # A clone has weights only once built by its first call: copy them then.
            if id(substitute) in copy_weights_from:
                substitute.set_weights(copy_weights_from.pop(id(substitute)).get_weights())
        for old, new in zip(tf.nest.flatten(node.outputs), tf.nest.flatten(outputs)):
            rebuilt[id(old)] = new

    new_outputs = tf.nest.map_structure(lambda t: rebuilt[id(t)], model.output)
    _check_unique_names(tf.nest.flatten(new_inputs), substitutes.values())
    return keras.Model(new_inputs, new_outputs, name=model.name)


def _is_keras_tensor(value: Any) -> bool:
    # keras.backend.is_keras_tensor raises on non-tensors (call args may hold floats, None, ...).
    return tf.is_tensor(value) and keras.backend.is_keras_tensor(value)


def _fresh_input(tensor: Any, rebuilt: dict) -> tf.Tensor:
    """A new keras.Input matching one of the model's input tensors."""
    input_layer = tensor._keras_history.layer
    new = keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype, name=input_layer.name,
                      sparse=getattr(input_layer, "sparse", False),
                      ragged=getattr(input_layer, "ragged", False))
    rebuilt[id(tensor)] = new
    return new


def _checked_replacement(layer: keras.layers.Layer, new_layers: Any) -> list:
    if (not isinstance(new_layers, (list, tuple)) or not new_layers
            or not all(isinstance(l, keras.layers.Layer) for l in new_layers)):
        raise TypeError(f"replacement for layer {layer.name!r} must be None or a non-empty list of "
                        f"tf_keras layers, got {new_layers!r}")
    return list(new_layers)


def _apply_sequence(layer: keras.layers.Layer, node: Any, new_layers: list, args: Any,
                    kwargs: dict) -> tf.Tensor:
    """Apply the replacement layers in sequence to the original call's single input tensor."""
    tensors = [a for a in tf.nest.flatten((args, kwargs)) if _is_keras_tensor(a)]
    if len(tensors) != 1 or len(tf.nest.flatten(node.outputs)) != 1:
        raise UNetError(
            f"layer {layer.name!r} ({type(layer).__name__}) takes {len(tensors)} input tensors and "
            f"returns {len(tf.nest.flatten(node.outputs))}; only layers with one input and one "
            "output can be replaced by a sequence of layers")
    x = tensors[0]
    for new_layer in new_layers:
        x = new_layer(x)
    return x


def _check_unique_names(inputs: list, substitutes: Any) -> None:
    """Keras would reject duplicate names with a bare ValueError; name the culprit instead."""
    seen = {t._keras_history.layer.name for t in inputs}
    for sub in substitutes:
        for layer in sub if isinstance(sub, list) else [sub]:
            if layer.name in seen:
                raise UNetError(
                    f"layer name {layer.name!r} occurs twice in the rebuilt model; "
                    "replacement layers need names unique within the model")
            seen.add(layer.name)
