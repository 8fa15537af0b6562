"""The SavedModel serving computation: raw images of any size -> per-class probabilities, in the graph.

`UNetServingModule` is what every exported format is built from (utils.export.formats):

- `tile` (float32 tiles (B, T, T, C) in [0, 1] -> {"probabilities": (B, O, O, K) float32}): the
  network plus softmax, i.e. a `unet_medical.inference.tiling.Predictor`. ONNX, TFLite and TF-TRT are
  converted from it.
- `serve` (the SavedModel's `serving_default` and `serving_<dtype>` signatures): images (B, H, W, C)
  uint8, uint16 or float32 of any H, W -> {"probabilities": (B, H, W, K) float32, "labels": (B, H, W)
  class ids}. It is `--exec_mode predict` inside one graph:
    1. normalization, the rule of `unet_medical.data.normalize.normalize_image`: uint8 / 255, uint16 / 65535,
       float32 passed through unchanged (it must already be in [0, 1]; anything else, NaN included,
       fails an assertion, as `unet_medical.data.layouts` rejects such float images for predict);
    2. the tile plan of `unet_medical.inference.tiling.plan_tiles` (the smallest valid tile covering the
       image plus margin + context pixels per side, capped at max_tile_size, or the fixed tile_size);
    3. the overlap-tile loop of `unet_medical.inference.tiling.tiled_predict`: mirror padding by margin +
       context (plus up to one core at the bottom/right for images smaller than a core), tiles at the
       starts of `tile_starts` (the last one aligned to the image end), one forward pass per tile
       position (all B images at once) in a `tf.while_loop` with parallel_iterations=1, so at most one
       tile's activations are alive: memory is bounded by the tile, not the image;
    4. stitching with the same overwrite order (a pixel covered by two tiles takes the later tile's
       value in row-major order), so the result equals tiled_predict's, not an average of overlaps;
    5. with the run's input scale s != 1, steps 2-4 run on the images resampled to s times their size
       and the probabilities are resampled back to H x W, with predict's op and rounding (data.resample);
    6. the run's decision (inference.decision, chosen on its validation fold): with `tta`, each tile's
       probabilities are the mean over its 8 flips/rotations (inference.tiling.predict_tiles); with a
       `threshold`, "labels" are background where 1 - p(background) <= threshold, else the most probable
       other class (inference.decision.decide_labels); otherwise the argmax.

A batch must hold images of one size (a tensor); every image gets the plan of that size.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

import tensorflow as tf

from unet_medical.model.blocks import POOL_SIZE
from unet_medical.model.unet import UNetSpec, margin as model_margin, smallest_valid_input
from unet_medical.data.normalize import normalize_images_tf
from unet_medical.data.resample import resize_tf
from unet_medical.base.errors import UNetError
from unet_medical.inference.outputs import background_class
from unet_medical.inference.runtimes import PROBABILITIES
from unet_medical.inference.tiling import plan_tiles

SERVING_SIGNATURE = "serving_default"
TILE_INPUT = "tiles"
SERVING_INPUT = "images"
LABELS = "labels"
# The dtypes `serve` accepts, each also saved as its own signature "serving_<dtype>".
SERVING_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))

# The largest value of each integer image dtype: normalize_image's one rule per dtype.
_IMAGE_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}
_HUGE_IMAGE = (1 << 30, 1 << 30)  # an image no tile covers: plan_tiles then returns the capped tile
FLOAT_RANGE_MESSAGE = "float images must hold values in [0, 1] (pass 8-bit images as uint8, or divide by 255)"


def serving_signature_name(dtype: Any) -> str:
    """"serving_uint8", "serving_uint16" or "serving_float32"."""
    return f"serving_{np.dtype(dtype).name}"


# ----------------------------------------------------------------------------- in-graph geometry
def valid_size_progression(spec: UNetSpec) -> tuple[int, int]:
    """(first, step): the valid input sizes of `spec` are exactly first + k * step, k >= 0.

    Every pooling halves the map, so a valid input is fixed by its bottleneck size and grows by
    POOL_SIZE ** depth per bottleneck pixel; `first` is the smallest input with a non-empty output.
    """
    return smallest_valid_input(spec, 1), POOL_SIZE ** spec.depth


def normalize_images(images: tf.Tensor) -> tf.Tensor:
    """(B, H, W, C) uint8 / 255, uint16 / 65535, float32 unchanged (asserted in [0, 1]) -> float32.

    The in-graph twin of utils.data.normalize.normalize_image.
    """
    dtype = np.dtype(images.dtype.as_numpy_dtype)
    if dtype == np.float32:
        inside = tf.reduce_all((images >= 0.0) & (images <= 1.0))  # False for NaN too
        with tf.control_dependencies([tf.debugging.Assert(inside, [FLOAT_RANGE_MESSAGE])]):
            return tf.identity(images)
    scale = _IMAGE_SCALE.get(dtype)
    if scale is None:
        raise UNetError(f"serving images must be uint8, uint16 or float32, got {dtype.name}")
    return tf.cast(images, tf.float32) / tf.constant(scale, tf.float32)


def reflect_indices(length: tf.Tensor, before: tf.Tensor, after: tf.Tensor) -> tf.Tensor:
    """Source index of every position of a mirror-padded axis, as np.pad(mode="reflect") builds it.

    Reflection without repeating the edge is periodic with period 2 * (length - 1); unlike
    tf.pad(mode="REFLECT") this allows pads larger than the axis (small images, big margins).
    Returns int32 (length + before + after,).
    """
    positions = tf.range(-before, length + after)
    period = tf.maximum(2 * (length - 1), 1)
    folded = tf.math.floormod(positions, period)
    return tf.where(folded >= length, period - folded, folded)


def mirror_pad(images: tf.Tensor, top: tf.Tensor, bottom: tf.Tensor, left: tf.Tensor,
               right: tf.Tensor) -> tf.Tensor:
    """Mirror-pad (B, H, W, C) images by the given pixel counts (np.pad "reflect" semantics)."""
    shape = tf.shape(images)
    rows = reflect_indices(shape[1], top, bottom)
    cols = reflect_indices(shape[2], left, right)
    return tf.gather(tf.gather(images, rows, axis=1), cols, axis=2)


def axis_tiles(length: tf.Tensor, core: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(starts, kept) int32 (n,) of one axis: the in-graph twin of utils.inference.tiling.tile_starts.

    starts: [0, core, 2 core, ..., length - core] (just [0] if length <= core).
    kept: how many output pixels each tile keeps from its start: up to the next start, since the
    later tile overwrites an overlap in tiled_predict, and length - start for the last tile.
    """
    count = 1 + tf.math.floordiv(tf.maximum(length - core, 0) + core - 1, core)  # 1 + ceil((length - core) / core)
    starts = tf.minimum(tf.range(count) * core, tf.maximum(length - core, 0))
    ends = tf.concat([starts[1:], tf.reshape(length, [1])], axis=0)
    return starts, ends - starts


def dihedral_tf(x: tf.Tensor, k: int) -> tf.Tensor:
    """The k-th of the 8 flips/rotations of (B, H, W, C) square tiles: inference.tiling's, in the graph."""
    x = tf.image.rot90(x, k % 4)
    return tf.reverse(x, axis=[2]) if k >= 4 else x


def dihedral_inverse_tf(x: tf.Tensor, k: int) -> tf.Tensor:
    x = tf.reverse(x, axis=[2]) if k >= 4 else x
    return tf.image.rot90(x, -(k % 4) % 4)


class UNetServingModule(tf.Module):
    """The exported computation: a Keras U-Net returning logits, wrapped to return probabilities.

    Args:
        model: tf_keras model (N, H, W, C) float32 -> (N, O, O, K) logits.
        spec: its UNetSpec (for the size arithmetic of the tile plan).
        context: pixels per side a same-padding tile throws away (None: plan_tiles' default).
        image_dtype: dtype of the `serving_default` signature's images (the training data's).
        tile_size, max_tile_size: the tile plan, as --tile_size and --max_tile_size give it to predict.
        class_names: stored in the SavedModel as the string variable `class_names` (if given).
        normalization: the run's utils.data.normalize mode; "per_image" computes its percentiles in the graph.
        input_scale: the run's input scale (RunRecord.input_scale): images are resampled by it before the
            tile loop and the probabilities back to the images' size.
        threshold, tta: the run's decision (step 6 of the module docstring); `tile` stays the plain network.

    Only the model's variables are tracked (not the Keras object), so saving does not trace every
    Keras layer and works for variants Keras cannot save itself (facts.md: QAT transposed convs).
    """

    def __init__(self, model: Any, spec: UNetSpec, context: int | None = None, image_dtype: Any = np.uint8, *,
                 tile_size: int | None = None, max_tile_size: int = 1024,
                 class_names: Sequence[str] | None = None, normalization: str = "global",
                 input_scale: float = 1.0, threshold: float | None = None, tta: bool = False):
        super().__init__(name="unet_serving")
        if threshold is not None and not 0 < threshold < 1:
            raise UNetError(f"threshold must be in (0, 1), got {threshold!r}")
        self.threshold, self.tta = threshold, bool(tta)
        self._background = background_class(tuple(class_names or ()))
        self.normalization = normalization
        if not 0 < input_scale <= 1:
            raise UNetError(f"input_scale must be in (0, 1], got {input_scale!r}")
        self.input_scale = float(input_scale)
        self.model_variables = list(model.variables)
        self._forward = lambda x: model(x, training=False)  # a plain callable: not tracked
        if class_names is not None:
            self.class_names = tf.Variable(list(class_names), trainable=False, name="class_names")
        # The capped (or fixed) plan, checked here so a bad tile fails at export, not when serving.
        capped = plan_tiles(spec, _HUGE_IMAGE, tile_size=tile_size, max_tile_size=max_tile_size, context=context)
        self.spec, self.tile_size, self.max_tile_size = spec, tile_size, max_tile_size
        self.context = capped.context
        self._pad = model_margin(spec) + capped.context
        self._cap = capped.tile_size
        self._first, self._step = valid_size_progression(spec)
        self.image_dtype = np.dtype(image_dtype)
        if self.image_dtype not in SERVING_DTYPES:
            raise UNetError(f"serving images must be one of {', '.join(d.name for d in SERVING_DTYPES)}, "
                            f"got {self.image_dtype.name}")
        self._label_dtype = tf.uint8 if spec.n_classes <= 256 else tf.int32
        channels = spec.in_channels
        self.tile = tf.function(self._tile, input_signature=[
            tf.TensorSpec((None, None, None, channels), tf.float32, name=TILE_INPUT)])
        # One traced graph of the tile loop and one of the network, called by every dtype's `serve`
        # (nested tf.functions are saved once): a third of the tracing time and SavedModel size.
        self.tiled = tf.function(self.tiled_probabilities, input_signature=[
            tf.TensorSpec((None, None, None, channels), tf.float32, name=SERVING_INPUT)])
        self.serve = tf.function(self._serve)

    def _probabilities(self, tiles: tf.Tensor) -> tf.Tensor:
        return tf.nn.softmax(tf.cast(self._forward(tiles), tf.float32), axis=-1)

    def _tile(self, tiles: tf.Tensor) -> dict[str, tf.Tensor]:
        return {PROBABILITIES: self._probabilities(tiles)}

    def fixed_tile_function(self, tile_size: int) -> Any:
        """Concrete `tile` function for (None, tile_size, tile_size, C) inputs (TFLite needs static H, W)."""
        spec = tf.TensorSpec((None, tile_size, tile_size, self.spec.in_channels), tf.float32, name=TILE_INPUT)
        return tf.function(self._tile).get_concrete_function(spec)

    def serving_function(self, dtype: Any) -> Any:
        """Concrete `serve` function for (None, None, None, C) images of `dtype`."""
        spec = tf.TensorSpec((None, None, None, self.spec.in_channels), tf.as_dtype(np.dtype(dtype)),
                             name=SERVING_INPUT)
        return self.serve.get_concrete_function(spec)

    def signatures(self) -> dict[str, Any]:
        """Every signature of the SavedModel: serving_default, serving_<dtype> for each dtype, tile."""
        functions = {serving_signature_name(d): self.serving_function(d) for d in SERVING_DTYPES}
        return {SERVING_SIGNATURE: functions[serving_signature_name(self.image_dtype)], **functions,
                "tile": self.tile.get_concrete_function()}

    def _tile_size(self, h: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
        """plan_tiles(...).tile_size for an H x W image, as int32 scalar."""
        if self.tile_size is not None:
            return tf.constant(self._cap, tf.int32)
        needed = tf.maximum(h, w) + 2 * self._pad
        steps = tf.maximum(0, -((self._first - needed) // self._step))  # ceil((needed - first) / step)
        return tf.minimum(self._first + steps * self._step, self._cap)

    def tiled_probabilities(self, x: tf.Tensor) -> tf.Tensor:
        """(B, H, W, K) float32 probabilities of normalized (B, H, W, C) float32 images: tiled_predict."""
        h, w = tf.shape(x)[1], tf.shape(x)[2]
        tile = self._tile_size(h, w)
        core = tile - 2 * self._pad
        padded = mirror_pad(x, self._pad, self._pad + tf.maximum(0, core - h),
                            self._pad, self._pad + tf.maximum(0, core - w))
        ys, rows_kept = axis_tiles(h, core)
        xs, cols_kept = axis_tiles(w, core)
        c = self.context

        def row(i: tf.Tensor, strips: tf.TensorArray) -> tuple[tf.Tensor, tf.TensorArray]:
            def column(j: tf.Tensor, pieces: tf.TensorArray) -> tuple[tf.Tensor, tf.TensorArray]:
                window = padded[:, ys[i]:ys[i] + tile, xs[j]:xs[j] + tile]
                probs = self._window_probabilities(window)[:, c:c + rows_kept[i], c:c + cols_kept[j]]
                # Width first so TensorArray.concat (axis 0) joins the pieces of a row.
                return j + 1, pieces.write(j, tf.transpose(probs, [2, 0, 1, 3]))  # (w_j, B, h_i, K)

            pieces = tf.TensorArray(tf.float32, size=tf.size(xs), infer_shape=False)
            _, pieces = tf.while_loop(lambda j, _: j < tf.size(xs), column, (0, pieces), parallel_iterations=1)
            return i + 1, strips.write(i, tf.transpose(pieces.concat(), [2, 1, 0, 3]))  # (h_i, B, W, K)

        strips = tf.TensorArray(tf.float32, size=tf.size(ys), infer_shape=False)
        _, strips = tf.while_loop(lambda i, _: i < tf.size(ys), row, (0, strips), parallel_iterations=1)
        probs = tf.transpose(strips.concat(), [1, 0, 2, 3])  # (H, B, W, K) -> (B, H, W, K)
        return tf.ensure_shape(probs, [None, None, None, self.spec.n_classes])

    def _window_probabilities(self, window: tf.Tensor) -> tf.Tensor:
        """(B, T, T, C) square tiles -> (B, O, O, K): the network, or with tta the mean over the 8 transforms."""
        if not self.tta:
            return self.tile(window)[PROBABILITIES]
        total = 0.0
        for k in range(8):
            total += dihedral_inverse_tf(self.tile(dihedral_tf(window, k))[PROBABILITIES], k)
        return total / 8.0

    def _labels(self, probs: tf.Tensor) -> tf.Tensor:
        """(B, H, W, K) -> (B, H, W) class ids: inference.decision.decide_labels in the graph."""
        if self.threshold is None:
            return tf.argmax(probs, axis=-1)
        k = self.spec.n_classes
        others = [c for c in range(k) if c != self._background]
        best_other = tf.gather(tf.constant(others, tf.int64), tf.argmax(tf.gather(probs, others, axis=-1), axis=-1))
        score = 1.0 - probs[..., self._background]
        return tf.where(score > self.threshold, best_other, tf.constant(self._background, tf.int64))

    def scaled_probabilities(self, x: tf.Tensor) -> tf.Tensor:
        """`tiled` on (B, H, W, C) images resampled to scaled_side(H) x scaled_side(W), then (B, H, W, K)."""
        hw = tf.shape(x)[1:3]
        # floor(side * scale + 0.5), at least 1: data.recipe.scaled_side, the rounding predict uses.
        scaled = tf.maximum(1, tf.cast(tf.floor(tf.cast(hw, tf.float64) * self.input_scale + 0.5), tf.int32))
        return resize_tf(self.tiled(resize_tf(x, scaled)), hw)

    def _serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        if self.normalization == "per_image":  # scale-free: any finite range of any dtype is fine
            normalized = normalize_images_tf(images, "per_image")
        else:
            normalized = normalize_images(images)
        probs = self.tiled(normalized) if self.input_scale == 1 else self.scaled_probabilities(normalized)
        return {PROBABILITIES: probs, LABELS: tf.cast(self._labels(probs), self._label_dtype)}
