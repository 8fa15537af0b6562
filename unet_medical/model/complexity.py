"""Parameters and multiply-accumulates (MACs) per layer of any Functional tf_keras model.

How shapes are found: the model's layer graph is replayed node by node (the same walk
`Functional.call` does) inside a `tf.function` traced on a `tf.TensorSpec` of shape (1, H, W, C) for
a 2-D model or (1, D, H, W, C) for a 3-D one, with `training` off. Nothing is computed and no weights
are created; each layer call is recorded with the static input and output shapes that graph tracing
infers at that size. This works for any input size the model accepts, for models built with unknown
spatial dimensions, for layers reused in several models (only this model's nodes are replayed) and
for models whose convolutions were later replaced by 1x1 -> kxk -> 1x1 sequences. It reads three
tf_keras internals (`_nodes_by_depth`, `_tensor_usage_count`, `Node.map_arguments`), which is why
tf_keras is pinned.

MACs per image, from the layer's kernel and the traced shapes, for 1-D, 2-D and 3-D layers alike
(k = the kernel's spatial extents, e.g. kd * kh * kw for Conv3D; "out"/"in" = output/input positions):
    Conv1D/2D/3D                prod(k) * (cin / groups) * cout * prod(out)
    Conv1D/2D/3DTranspose       prod(k) * cin * cout * prod(in)
    DepthwiseConv1D/2D          prod(k) * cin * multiplier * prod(out)
    Dense                       (product of the output's non-batch, non-channel dims) * cin * cout
Wrappers (e.g. TF-MOT QuantizeWrapper) are costed as the layer they wrap; a nested Functional model
as the sum of its own layers. Other layers (BatchNorm, ReLU, pooling, concatenation) count
parameters only: their arithmetic is small next to the convolutions. FLOPs = 2 * MACs.
"""
from __future__ import annotations

import dataclasses
import inspect

import numpy as np

import tensorflow as tf
import tf_keras as keras

from unet_medical.base.errors import UNetError


@dataclasses.dataclass(frozen=True)
class LayerCost:
    """Cost of one top-level layer of a model.

    name: the layer's name; kind: its class name; params: number of floating-point weights
    (trainable and not, e.g. BatchNorm moving statistics; integer state such as a dropout counter
    is not a parameter); macs: multiply-accumulates per image at the traced input size.
    """

    name: str
    kind: str
    params: int
    macs: int


def _dims(shape: tf.TensorShape, layer: keras.layers.Layer) -> list[int]:
    dims = shape.as_list() if shape.rank is not None else None
    if dims is None or any(d is None for d in dims):
        raise UNetError(
            f"cannot count MACs of layer {layer.name}: its shape {shape} is not static at a fixed "
            "input size"
        )
    return dims


# Layer families with the same MAC formula whatever their number of spatial dimensions.
TRANSPOSED_CONVS = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
                    keras.layers.Conv3DTranspose)
PLAIN_CONVS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)  # transposed ones too
DEPTHWISE_CONVS = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)


def layer_macs(
    layer: keras.layers.Layer, input_shape: tf.TensorShape, output_shape: tf.TensorShape
) -> int:
    """Multiply-accumulates of one call of `layer` on one image, given its static (1, ..., C) input and
    output shapes (formulas in the module docstring); 0 for layers without a matrix product."""
    while isinstance(layer, keras.layers.Wrapper):
        layer = layer.layer
    if isinstance(layer, DEPTHWISE_CONVS):
        *kernel, cin, multiplier = layer.depthwise_kernel.shape.as_list()
        return int(np.prod(kernel)) * cin * multiplier * _positions(output_shape, layer)
    if isinstance(layer, TRANSPOSED_CONVS):
        # Each input position scatters a full kernel: the cost follows the input, not the output.
        *kernel, cout, cin = layer.kernel.shape.as_list()
        return int(np.prod(kernel)) * cin * cout * _positions(input_shape, layer)
    if isinstance(layer, PLAIN_CONVS):
        # The kernel is (*k, cin / groups, cout), so grouped convs need no special case.
        *kernel, cin_per_group, cout = layer.kernel.shape.as_list()
        return int(np.prod(kernel)) * cin_per_group * cout * _positions(output_shape, layer)
    if isinstance(layer, keras.layers.Dense):
        cin, cout = layer.kernel.shape.as_list()
        return _positions(output_shape, layer) * cin * cout
    return 0


def _positions(shape: tf.TensorShape, layer: keras.layers.Layer) -> int:
    """Spatial positions of a static (1, ..., C) shape: the product of the dims between batch and channels."""
    return int(np.prod(_dims(shape, layer)[1:-1]))


def _float_weight_count(weights: list[tf.Variable]) -> int:
    seen: dict[int, int] = {}
    for w in weights:
        if w.dtype.is_floating:
            seen[id(w)] = int(np.prod(w.shape.as_list()))
    return sum(seen.values())


def _is_positive_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0


def _check_input(model: keras.Model, input_hw: tuple[int, ...]) -> tf.TensorSpec:
    """The (1, *input_hw, C) spec to trace `model` on; UNetError if the model or size does not fit.

    input_hw has one entry per spatial dimension of the model's input: (H, W) for an image model,
    (D, H, W) for a volume model.
    """
    if not isinstance(model, keras.Model) or not hasattr(model, "_nodes_by_depth"):
        raise UNetError(
            f"complexity counting needs a Functional tf_keras model, got {type(model).__name__}"
        )
    if len(model.inputs) != 1:
        raise UNetError(
            f"complexity counting needs a model with one input; {model.name} has "
            f"{len(model.inputs)}"
        )
    model_input = model.inputs[0]
    spatial = (model_input.shape.rank or 0) - 2
    if (
        not isinstance(input_hw, (tuple, list))
        or len(input_hw) != spatial
        or not all(_is_positive_int(v) for v in input_hw)
    ):
        names = {1: "(W)", 2: "(H, W)", 3: "(D, H, W)"}.get(spatial, f"{spatial} sizes")
        raise UNetError(
            f"input size must be {spatial} positive integers {names} for model {model.name} "
            f"(input shape {model_input.shape}), got {input_hw!r}"
        )
    if not model_input.shape[1:-1].is_compatible_with(list(input_hw)):
        raise UNetError(
            f"input size {tuple(input_hw)} does not fit the input shape {model_input.shape} of "
            f"model {model.name}"
        )
    shape = [1, *(int(v) for v in input_hw), model_input.shape[-1]]
    return tf.TensorSpec(shape, model_input.dtype)


def isotropic_size(model: keras.Model, side: int) -> tuple[int, ...]:
    """(side,) once per spatial dimension of the model's input: (side, side) for an image model
    (B, H, W, C), (side, side, side) for a volume model (B, D, H, W, C); the `input_hw` of a square
    tile or cubic patch."""
    rank = model.inputs[0].shape.rank if getattr(model, "inputs", None) else None
    if rank is None or rank < 3:
        raise UNetError(f"model {getattr(model, 'name', model)!r}: its input has no spatial dimensions")
    return (side,) * (rank - 2)


def _traced_calls(
    model: keras.Model, spec: tf.TensorSpec
) -> list[tuple[keras.layers.Layer, tf.TensorShape, tf.TensorShape]]:
    """(layer, first input's shape, first output's shape) of every layer call of `model` on `spec`.

    Replays the model's nodes in the order `Functional._run_internal_graph` does, in a traced
    (never executed) graph.
    """
    calls = []

    def replay(image: tf.Tensor) -> tf.Tensor:
        usage = model._tensor_usage_count
        input_id = str(id(model.inputs[0]))
        tensors = {input_id: [image] * usage[input_id]}
        for depth in sorted(model._nodes_by_depth, reverse=True):
            for node in model._nodes_by_depth[depth]:
                if node.is_input or any(i not in tensors for i in node.flat_input_ids):
                    continue
                args, kwargs = node.map_arguments(tensors)
                if "training" in inspect.signature(node.layer.call).parameters:
                    kwargs = {**kwargs, "training": False}
                outputs = node.layer(*args, **kwargs)
                flat_in = [t for t in tf.nest.flatten(args) if tf.is_tensor(t)]
                flat_out = tf.nest.flatten(outputs)
                calls.append((node.layer, flat_in[0].shape, flat_out[0].shape))
                for output_id, tensor in zip(node.flat_output_ids, flat_out):
                    tensors[output_id] = [tensor] * usage[output_id]
        return tf.constant(0)

    tf.function(replay).get_concrete_function(spec)
    return calls


def layer_costs(model: keras.Model, input_hw: tuple[int, ...]) -> list[LayerCost]:
    """Parameters and MACs per image of every top-level layer of `model`, in `unet_medical.model.layers` order.

    input_hw: (H, W) in pixels, or (D, H, W) in voxels for a 3-D model; must be a size the model
    accepts (for a valid-padding U-Net see
    `unet_medical.model.unet.is_valid_input_size`). A layer called several times sums its calls.
    Raises UNetError for a bad size or a model that is not a one-input Functional model.
    """
    spec = _check_input(model, input_hw)
    macs = {id(layer): 0 for layer in model.layers}
    for layer, in_shape, out_shape in _traced_calls(model, spec):
        if isinstance(layer, keras.Model) and hasattr(layer, "_nodes_by_depth"):
            cost = total_macs(layer, tuple(_dims(in_shape, layer)[1:-1]))
        else:
            cost = layer_macs(layer, in_shape, out_shape)
        macs[id(layer)] += cost
    return [
        LayerCost(
            name=layer.name,
            kind=type(layer).__name__,
            params=_float_weight_count(layer.weights),
            macs=macs[id(layer)],
        )
        for layer in model.layers
    ]


def largest_layer_call(model: keras.Model, input_hw: tuple[int, ...]) -> tuple[keras.layers.Layer, tf.TensorShape, int]:
    """(layer, its (1, h, w, c) input shape, MACs per image) of the costliest single layer call of `model`
    at `input_hw`: the convolution a benchmark times alone as the network's speed ceiling."""
    spec = _check_input(model, input_hw)
    calls = [(layer, in_shape, layer_macs(layer, in_shape, out_shape))
             for layer, in_shape, out_shape in _traced_calls(model, spec)]
    return max(calls, key=lambda call: call[2])


def total_params(model: keras.Model) -> int:
    """Floating-point weights of `model` (trainable and non-trainable, each counted once)."""
    return _float_weight_count(model.weights)


def total_macs(model: keras.Model, input_hw: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on one (H, W) image or (D, H, W) volume. FLOPs = 2 * MACs."""
    return sum(cost.macs for cost in layer_costs(model, input_hw))


def summary_table(costs: list[LayerCost]) -> str:
    """Aligned text table of `costs` (params, MMACs, share of MACs) with a total line, for logs.

    Layers with neither parameters nor MACs (ReLU, pooling, concatenation, ...) are left out.
    """
    rows = [c for c in costs if c.params or c.macs]
    all_macs = sum(c.macs for c in costs)
    all_params = sum(c.params for c in costs)
    header = ("layer", "kind", "params", "MMACs", "MACs %")

    def cells(name: str, kind: str, params: int, macs: int) -> tuple[str, ...]:
        share = 100.0 * macs / all_macs if all_macs else 0.0
        return (name, kind, f"{params:,}", f"{macs / 1e6:,.1f}", f"{share:.1f}")

    body = [cells(c.name, c.kind, c.params, c.macs) for c in rows]
    total = cells("total", f"GFLOPs {2 * all_macs / 1e9:,.2f}", all_params, all_macs)
    widths = [max(len(r[i]) for r in [header, *body, total]) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        left = [row[i].ljust(widths[i]) for i in range(2)]
        right = [row[i].rjust(widths[i]) for i in range(2, len(row))]
        return "  ".join(left + right).rstrip()

    rule = "-" * len(line(header))
    return "\n".join([line(header), rule, *(line(r) for r in body), rule, line(total)])
