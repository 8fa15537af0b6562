"""Custom Keras layers of the U-Net: crop-and-concatenate cropping, checkpointable dropout and instance
normalization.

The layers are registered under the package name "unet", so a model containing them round-trips
through `get_config`/`from_config`, SavedModel and `tf_keras.models.load_model` without
`custom_objects`.
"""
from __future__ import annotations

import random
from typing import Any

import tensorflow as tf
import tf_keras as keras

from unet_medical.base.errors import UNetError


@keras.saving.register_keras_serializable(package="unet")
class CenterCropToMatch(keras.layers.Layer):
    """Crop `x` (NHWC) around its centre to the height and width of a reference tensor.

    This is the "copy and crop" of Ronneberger et al. 2015 (arXiv:1505.04597, Fig. 1): with valid
    convolutions the encoder feature map is larger than the up-sampled decoder map it is
    concatenated with. Spatial sizes are read at run time, so the layer works for any input size.

    Call with `[x, reference]`: x (N, Hx, Wx, C) of any dtype, reference (N, Hr, Wr, *) with
    Hr <= Hx and Wr <= Wx. Returns (N, Hr, Wr, C), same dtype as x.

    Example:
        skip = CenterCropToMatch(name="dec1_crop")([encoder_map, upsampled])
    """

    def call(self, inputs: list[tf.Tensor]) -> tf.Tensor:
        x, reference = inputs
        x_hw = tf.shape(x)[1:3]
        ref_hw = tf.shape(reference)[1:3]
        # An odd difference leaves the extra row/column at the bottom/right (floor offset). In a
        # valid-size U-Net every difference is even, so this only matters for unusual inputs.
        offset = (x_hw - ref_hw) // 2
        begin = tf.concat([[0], offset, [0]], axis=0)
        size = tf.concat([[-1], ref_hw, [-1]], axis=0)
        cropped = tf.slice(x, begin, size)
        # tf.slice with run-time sizes loses static shape; restore what is known.
        cropped.set_shape([x.shape[0], reference.shape[1], reference.shape[2], x.shape[3]])
        return cropped

    def compute_output_shape(self, input_shape: list[tf.TensorShape]) -> tf.TensorShape:
        x_shape, ref_shape = (tf.TensorShape(s) for s in input_shape)
        return tf.TensorShape([x_shape[0], ref_shape[1], ref_shape[2], x_shape[3]])


@keras.saving.register_keras_serializable(package="unet")
class SeededDropout(keras.layers.Layer):
    """Inverted dropout whose mask is a pure function of (seed, a step counter stored as a weight).

    The mask of each training call is `stateless_uniform(shape, seed=(seed, counter)) >= rate`, and
    the int64 counter (a non-trainable weight) is then incremented. Because the counter is part of
    `model.weights`, a checkpoint restores the random stream: a run resumed from a checkpoint draws
    the same masks as an uninterrupted run, which Keras's stateful `Dropout` does not guarantee.
    Under tf.distribute each replica uses the stream position `counter * replicas + replica_id`, so
    replicas draw different masks while a single-replica run uses exactly (seed, counter).
    At inference (`training` false) the layer is the identity and the counter does not move.

    Args:
        rate: fraction of units to drop, in [0, 1). 0 makes the layer the identity.
        seed: the layer's stream seed (int). None (default) draws one from Python's `random`
            module at construction, so `tf_keras.utils.set_random_seed` makes it reproducible; the
            drawn value is kept and returned by `get_config`.

    Example:
        x = SeededDropout(0.5, name="bottleneck_dropout")(x)   # (N, H, W, C) -> (N, H, W, C)
    """

    def __init__(self, rate: float, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= float(rate) < 1.0:
            raise UNetError(f"SeededDropout rate must be in [0, 1), got {rate!r}")
        self.rate = float(rate)
        self.seed = int(seed) if seed is not None else random.randrange(2**31)
        self.supports_masking = True

    def build(self, input_shape: tf.TensorShape) -> None:
        # ON_WRITE + ONLY_FIRST_REPLICA: every replica increments, one increment is kept, and all
        # replicas see the same counter, so the stream position is the global step count.
        self.counter = self.add_weight(
            name="counter",
            shape=(),
            dtype=tf.int64,
            initializer="zeros",
            trainable=False,
            synchronization=tf.VariableSynchronization.ON_WRITE,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )
        super().build(input_shape)

    def call(self, inputs: tf.Tensor, training: bool | tf.Tensor | None = None) -> tf.Tensor:
        if self.rate == 0.0:
            return tf.identity(inputs)
        if training is None:
            training = keras.backend.learning_phase()
        if isinstance(training, (bool, int)):
            return self._drop(inputs) if training else tf.identity(inputs)
        return tf.cond(
            tf.cast(training, tf.bool), lambda: self._drop(inputs), lambda: tf.identity(inputs)
        )

    def _drop(self, inputs: tf.Tensor) -> tf.Tensor:
        step = self.counter.read_value()
        with tf.control_dependencies([step]):
            increment = self.counter.assign_add(1, read_value=False)
        position = step
        replica_ctx = tf.distribute.get_replica_context()
        if replica_ctx is not None and replica_ctx.num_replicas_in_sync > 1:
            replica_id = tf.cast(replica_ctx.replica_id_in_sync_group, tf.int64)
            position = step * replica_ctx.num_replicas_in_sync + replica_id
        seed = tf.stack([tf.constant(self.seed, tf.int64), position])
        mask = dropout_mask(tf.shape(inputs), self.rate, seed)
        with tf.control_dependencies([increment]):
            return inputs * tf.cast(mask, inputs.dtype) / tf.cast(1.0 - self.rate, inputs.dtype)

    def compute_output_shape(self, input_shape: tf.TensorShape) -> tf.TensorShape:
        return tf.TensorShape(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


def dropout_mask(shape: tf.Tensor, rate: float, seed: tf.Tensor) -> tf.Tensor:
    """Boolean keep-mask of `shape`: each entry is True with probability 1 - rate.

    A pure function of (shape, rate, seed); seed is an int32/int64 tensor of shape (2,).
    """
    uniform = tf.random.stateless_uniform(shape, seed=seed, dtype=tf.float32)
    return uniform >= rate


@keras.saving.register_keras_serializable(package="unet")
class InstanceNormalization(keras.layers.Layer):
    """Normalize each sample's channels over the spatial axes, then scale and shift per channel.

    x: (N, *spatial, C), any rank >= 3. Returns the same shape and dtype:
    y[n, ..., c] = (x[n, ..., c] - mean[n, c]) / sqrt(var[n, c] + epsilon) * gamma[c] + beta[c],
    mean and var (biased) over the spatial axes of sample n. Unlike BatchNormalization there are no
    moving statistics: training and inference compute the same thing, whatever the batch size (nnU-Net's
    choice for its 3-D networks, whose batches hold two patches).

    Why not tf_keras' GroupNormalization(groups=-1): it reduces in the compute dtype (bfloat16 under
    mixed precision, 8 significant bits for a mean over ~50,000 voxels) and multiplies the input by a mask
    of ones first. Here the statistics and the affine run in float32 and only the result is cast back.
    """

    def __init__(self, epsilon: float = 1e-5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not epsilon > 0:
            raise UNetError(f"InstanceNormalization: epsilon must be > 0, got {epsilon!r}")
        self.epsilon = float(epsilon)

    def build(self, input_shape: tf.TensorShape) -> None:
        channels = tf.TensorShape(input_shape)[-1]
        if channels is None or len(input_shape) < 3:
            raise UNetError(f"InstanceNormalization needs (N, *spatial, C) with a known C, got {input_shape}")
        self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="ones", dtype="float32",
                                     autocast=False)
        self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros", dtype="float32",
                                    autocast=False)
        super().build(input_shape)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        x = tf.cast(inputs, tf.float32)
        mean, variance = tf.nn.moments(x, axes=list(range(1, inputs.shape.rank - 1)), keepdims=True)
        # One multiply-add per element: scale = gamma / std, shift = beta - mean * scale.
        scale = tf.math.rsqrt(variance + self.epsilon) * self.gamma  # float32: autocast=False
        shift = self.beta - mean * scale
        return tf.cast(x * scale + shift, inputs.dtype)

    def compute_output_shape(self, input_shape: tf.TensorShape) -> tf.TensorShape:
        return tf.TensorShape(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "epsilon": self.epsilon}
