"""A measured ceiling for the whole network: its own costliest convolution, timed alone.

The peak of base.cpu is what the silicon could do; no real convolution reaches it (memory traffic,
layouts, the kernel library's blocking). The rate of the network's largest convolution, in the same
framework, precision, batch and step kind (forward, or forward + backward for training), in the same
run, is what this network could reach if every layer ran as well as its best one: the whole-network
rate is then reported as a fraction of both.
"""
from __future__ import annotations

import math
from typing import Any

import tensorflow as tf
import tf_keras as keras

from unet_medical.base.timing import time_steps
from unet_medical.model.complexity import largest_layer_call

# forward + backward (gradients for the input and the kernel) cost about 3 forward passes
TRAIN_FORWARD_EQUIVALENTS = 3
# One convolution alone is a short call (0.08-0.25 s for the paper net on 2 cores): over the benchmark's 5
# steps one hiccup moved its rate by a third between rounds (333 then 223 GFLOP/s, Zen 4) while the whole
# network's moved by 4 %. At least this many seconds of steps are timed.
CEILING_MIN_SECONDS = 2.0


def layer_alone(layer: keras.layers.Layer, input_shape: tf.TensorShape, batch: int) -> keras.Model:
    """A model of one copy of `layer` (same config, so the same dtype policy) on (batch, h, w, c) inputs."""
    copy = type(layer).from_config(layer.get_config())
    inputs = keras.Input(batch_size=batch, shape=tuple(input_shape[1:]))
    return keras.Model(inputs, copy(inputs))


def ceiling_step(model: keras.Model, train: bool) -> Any:
    """A compiled step of `model` on its input: the forward pass, or with `train` its gradients as well."""
    @tf.function
    def forward(x: tf.Tensor) -> tf.Tensor:
        return model(x, training=False)

    @tf.function
    def forward_backward(x: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.cast(model(x, training=True), tf.float32)
            loss = tf.reduce_mean(y * y)
        grads = tape.gradient(loss, [x, *model.trainable_variables])
        return tf.add_n([tf.reduce_sum(tf.cast(g, tf.float32)) for g in grads])

    return forward_backward if train else forward


def conv_ceiling(model: keras.Model, input_hw: tuple[int, int], batch: int, train: bool,
                 warmup: int = 3, steps: int = 10, min_seconds: float = CEILING_MIN_SECONDS) -> dict[str, Any]:
    """GFLOP/s of `model`'s costliest layer call alone, timed like the benchmark (median-free: total FLOP over
    total time of the timed steps after `warmup`): `steps` steps, or more, so that they last about
    `min_seconds` (one extra step measures the step time). FLOP = 2 x MACs (x 3 for a training step)."""
    layer, in_shape, macs = largest_layer_call(model, input_hw)
    alone = layer_alone(layer, in_shape, batch)
    step = ceiling_step(alone, train)
    x = tf.random.stateless_uniform((batch, *in_shape[1:]), seed=(0, 1))
    run = lambda i: step(x).numpy()  # noqa: E731
    probe = time_steps(run, warmup, 1)[0]
    times = time_steps(run, 0, max(steps, math.ceil(min_seconds / max(probe, 1e-6))))
    flop = 2 * macs * batch * (TRAIN_FORWARD_EQUIVALENTS if train else 1)
    return {"ceiling_layer": layer.name, "ceiling_layer_kind": type(layer).__name__,
            "ceiling_input_shape": [batch, *in_shape[1:]], "ceiling_gflop_per_step": flop / 1e9,
            "ceiling_gflops": flop * len(times) / sum(times) / 1e9, "ceiling_steps": len(times)}
