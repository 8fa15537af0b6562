"""The SavedModel of a 3-D run: raw volumes of any size -> probabilities and labels, all in the graph.

`VolumeServingModule.serve` (the signatures `serving_default` and `serving_<dtype>`) is `--exec_mode
predict` of a --dims 3 run inside one graph, so `tf.saved_model.load` alone segments a NIfTI volume:

    1. normalization as data.volume_slices.case_image_uint16 then data.normalize.normalize_image do it:
       per channel a window [lo, hi] (the run's CT window in HU, or the case's own 0.5 / 99.5 percentiles,
       NumPy's linear interpolation), values clipped to it, mapped to 0..65535 and rounded as the uint16
       training images were, then / 65535; computed in float64 like NumPy, so the result is the same;
    2. the sliding window of inference.sliding_window.sliding_window_predict: an axis shorter than the
       patch is zero-padded to it (centred, `centre_padding`), windows start where `axis_window_starts`
       puts them (the same function, run on tensors), one pencil of windows per iteration of a `tf.while_loop`
       (memory: the volume's accumulators plus one pencil's activations, which grow with the windows along K:
       9 for 300 slices and 64-voxel windows; peak 4.6 GB there, 3.7 GB in NumPy), each window's softmax weighted
       by `gaussian_importance` (NumPy's array, stored as the variable `gaussian_importance`) and summed,
       then divided by the summed weights and cropped back. One loop iteration runs the network on the
       windows of one pencil (one window's I and J extent, all of K) as a batch, sums them along K (a 0/1 matrix product) into a
       pencil-sized buffer, and adds that into the volume's sums with one scatter: a scatter per window
       copied the whole accumulator each time (108 ms per window on a 512x512x300 CT against 33 ms into a
       slab, Zen 4). Same terms as NumPy's running sum in another association: float32 results agree within
       about 1e-7;
    3. with the run's decision to mirror (`mirror`, cli.decide: chosen on the validation cases), each
       window's softmax is the mean over the flips of the run's mirror axes (`mirror_axes`, all three by
       default: 8 passes; tf.reverse, flipped back), summed in the order of
       inference.sliding_window.predict_mirrored, which predict --tta runs.

    4. with the run's target spacing (--target_spacing: its cases were resampled to it), step 1 runs on the
       volumes resampled from `spacing` to the target and steps 2-3 on that grid, and the probabilities are
       resampled back onto the input's own grid: data.volume_resample's splines and anisotropic rule, with
       weights built in the graph (data.volume_resample_graph), as --exec_mode predict does in NumPy.

Inputs: `volumes` (B, I, J, K, C) of one of SERVING_VOLUME_DTYPES and `spacing` (3,) float64, the voxel
spacing in mm along i, j, k shared by the batch (a NIfTI's: the lengths of its affine's first three columns;
checked positive, and read only by a resampled run's model). Outputs `probabilities` (B, I, J, K, n) float32
and `labels` (B, I, J, K) uint8 (the argmax: volumes have no threshold), on the input's grid.
`tile` (float32 patches -> probabilities) is export.volume.VolumeModule's, for the runtimes.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf

from unet_medical.base.errors import UNetError
from unet_medical.data.volume_resample import IMAGE_ORDER, PROBABILITY_ORDER
from unet_medical.data.volume_resample_graph import (out_of_plane_axis_graph, resample_volumes_graph,
                                                     resampled_shape_graph)
from unet_medical.data.volume_slices import PERCENTILES, Window
from unet_medical.export.formats import ONNX_OPSET
from unet_medical.export.serving import LABELS, SERVING_SIGNATURE, serving_signature_name
from unet_medical.export.volume import VolumeModule
from unet_medical.inference.runtimes import OPENVINO_HINTS, PROBABILITIES
from unet_medical.inference.sliding_window import (MIRROR_AXES, SIGMA_SCALE, axis_window_starts, centre_padding,
                                                   gaussian_importance, mirror_flips)

VOLUME_INPUT, SPACING_INPUT = "volumes", "spacing"
# NIfTI's common voxel types: a signature each, so a volume is served in the dtype it was stored in.
SERVING_VOLUME_DTYPES = tuple(np.dtype(d) for d in (np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64))
UINT16_MAX = 65535.0


class _GraphOps:
    """The five NumPy names axis_window_starts / centre_padding use, as TensorFlow ops (rint: half to even,
    as np.rint), so the graph computes window origins with the very function NumPy inference uses."""

    float64, int32 = tf.float64, tf.int32
    ceil, maximum, rint, arange = staticmethod(tf.math.ceil), staticmethod(tf.maximum), staticmethod(tf.math.rint), \
        staticmethod(tf.range)

    @staticmethod
    def asarray(x: Any, dtype: tf.DType) -> tf.Tensor:
        return tf.cast(x, dtype)


GRAPH_OPS = _GraphOps()


BISECTIONS_PER_CHECK = 8
"""Bisection steps between two checks of order_statistic's stopping rule (a check costs two passes over the
values, a step one): integer-valued CT and MR volumes are exact after about 12 steps."""
MAX_CHECKS = 140
"""8 x 140 bisections span any two float64 values (about 1075 halvings from the largest range to one ulp):
the loop ends even on NaN, where no count reaches k + 1."""


def count_at_most(values: tf.Tensor, t: tf.Tensor) -> tf.Tensor:
    """(B,) int64 count of each row of float64 (B, N) values at or below its threshold t (B,)."""
    return tf.reduce_sum(tf.cast(values <= t[:, None], tf.int64), axis=-1)


def next_above(values: tf.Tensor, a: tf.Tensor) -> tf.Tensor:
    """(B,) the smallest value of each row of float64 (B, N) values above its a (B,); +inf where none is."""
    return tf.reduce_min(tf.where(values > a[:, None], values, tf.constant(np.inf, tf.float64)), axis=-1)


def order_statistic(values: tf.Tensor, k: tf.Tensor) -> tf.Tensor:
    """The k-th smallest (0-based) of float64 (B, N) values per row, (B,) float64, by bisection on the value
    with counts, never a sort: OpenVINO runs TensorFlow's sort of a whole volume as a TopK of k = N, hundreds
    of times slower than the network (148 s for a 64^3 volume, Zen 4).

    Invariant: count(x <= a) <= k < count(x <= b), so the answer v lies in (a, b]. The smallest value above a
    is v as soon as it has k + 1 values at or below it (it is <= v as v > a, and >= v by the count); the loop
    halves (a, b] until that holds, which at the latest is when a and b are adjacent float64 numbers. Exact
    (bar values within 2.2e-308 of each other: TensorFlow's CPU kernels flush subnormal results to zero).
    """
    k = tf.cast(k, tf.int64)
    lowest = tf.reduce_min(values, axis=-1)
    below = lowest - tf.maximum(tf.abs(lowest), 1.0)  # count(x <= below) = 0 <= k
    highest = tf.reduce_max(values, axis=-1)

    def unresolved(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        return tf.reduce_any(count_at_most(values, next_above(values, a)) <= k)

    def bisect(a: tf.Tensor, b: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        for _ in range(BISECTIONS_PER_CHECK):
            middle = a + (b - a) / 2.0
            left = count_at_most(values, middle) <= k
            a, b = tf.where(left, middle, a), tf.where(left, b, middle)
        return a, b

    a, _ = tf.while_loop(unresolved, bisect, (below, highest), maximum_iterations=MAX_CHECKS)
    return next_above(values, a)


def percentiles_tf(values: tf.Tensor, quantiles: Sequence[float]) -> list[tf.Tensor]:
    """np.percentile(values, q, axis=-1) (method "linear") of float64 (B, N) values, one (B,) tensor per q,
    with NumPy's virtual index (N - 1) * q / 100 and its two-sided interpolation (numpy _lerp); the two order
    statistics around the index come from order_statistic."""
    n = tf.cast(tf.shape(values)[-1], tf.int64)
    out = []
    for q in quantiles:
        index = tf.cast(n - 1, tf.float64) * (q / 100.0)
        below = tf.floor(index)
        gamma = index - below
        lower = order_statistic(values, tf.cast(below, tf.int64))
        # The next order statistic is lower again while lower has more than below + 1 copies at or under it.
        repeats = count_at_most(values, lower) > tf.cast(below, tf.int64) + 1
        upper = tf.where(repeats | (tf.cast(below, tf.int64) + 1 >= n), lower, next_above(values, lower))
        diff = upper - lower
        out.append(tf.where(gamma >= 0.5, upper - diff * (1.0 - gamma), lower + diff * gamma))
    return out


def window_to_unit(values: tf.Tensor, lo: tf.Tensor, hi: tf.Tensor) -> tf.Tensor:
    """float64 values -> float32 in [0, 1] as to_uint16 (clip, map [lo, hi] to 0..65535, round half to even;
    a flat window gives 0) followed by normalize_image's uint16 / 65535. lo, hi broadcast against values."""
    scale = UINT16_MAX / tf.where(hi > lo, hi - lo, 1.0)
    levels = tf.where(hi > lo, tf.math.rint((tf.clip_by_value(values, lo, hi) - lo) * scale), 0.0)
    return tf.cast(levels, tf.float32) / tf.constant(UINT16_MAX, tf.float32)


class VolumeServingModule(VolumeModule):
    """A 3-D U-Net with its run's normalization and sliding window (module docstring).

    Args:
        model: tf_keras model (B, D, H, W, C) float32 in [0, 1] -> (B, D, H, W, n) logits.
        patch: (P0, P1, P2) sliding window in voxels (the run's training patch).
        windows: per channel, the CT window (lo, hi) in the image's units, or None for the case's own
            0.5 / 99.5 percentiles (data.volume_training.windows_from_record).
        image_dtype: dtype of `serving_default` (the training volumes'; float32 if not a NIfTI type here).
        overlap: fraction of a window shared with its neighbour per axis (predict's 0.5).
        class_names: stored as the string variable `class_names`.
        mirror: average each window over the flips of its spatial axes `mirror_axes` (step 3 of the module
            docstring); `tile` stays the plain network.
        mirror_axes: the spatial axes (0 = I) mirroring flips (model.json's volume record names them).
        target_spacing: (3,) mm the run's cases were resampled to (step 4), stored as the variable
            `target_spacing_mm`; None: the network runs on each input's own grid.
    """

    def __init__(self, model: Any, patch: Sequence[int], windows: Sequence[Window | None], *,
                 image_dtype: Any = np.float32, overlap: float = 0.5, class_names: Sequence[str] | None = None,
                 mirror: bool = False, mirror_axes: Sequence[int] = MIRROR_AXES,
                 target_spacing: Sequence[float] | None = None):
        super().__init__(model)
        self.mirror = bool(mirror)
        self.mirror_axes = tuple(sorted(int(a) for a in mirror_axes))
        if not set(self.mirror_axes) <= set(MIRROR_AXES):
            raise UNetError(f"mirror axes {mirror_axes!r}: expected some of 0, 1, 2")
        self.target_spacing = None if target_spacing is None else tuple(float(s) for s in target_spacing)
        if self.target_spacing is not None:
            if len(self.target_spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in self.target_spacing):
                raise UNetError(f"target spacing {target_spacing!r}: expected three positive spacings in mm")
            self.target_spacing_mm = tf.Variable(self.target_spacing, dtype=tf.float64, trainable=False,
                                                 name="target_spacing_mm")
        self.patch = tuple(int(p) for p in patch)
        if len(self.patch) != 3 or min(self.patch) < 1:
            raise UNetError(f"patch {patch!r}: expected three positive voxel counts")
        if len(windows) != self.channels:
            raise UNetError(f"{len(windows)} intensity windows for a model of {self.channels} channel(s)")
        if not 0.0 <= overlap < 1.0:
            raise UNetError(f"overlap must be in [0, 1), got {overlap!r}")
        self.windows, self.overlap = tuple(windows), float(overlap)
        dtype = np.dtype(image_dtype)
        self.image_dtype = dtype if dtype in SERVING_VOLUME_DTYPES else np.dtype(np.float32)
        self.n_classes = int(model.outputs[0].shape[-1])
        self._label_dtype = tf.uint8 if self.n_classes <= 256 else tf.int32
        self.gaussian_importance = tf.Variable(gaussian_importance(self.patch, SIGMA_SCALE), trainable=False,
                                               name="gaussian_importance")
        if class_names is not None:
            self.class_names = tf.Variable(list(class_names), trainable=False, name="class_names")
        # One traced sliding-window graph, called by every dtype's signature (nested functions are saved once).
        self.windowed = tf.function(self.sliding_window_probabilities, input_signature=[
            tf.TensorSpec((None, None, None, None, self.channels), tf.float32, name=VOLUME_INPUT)])
        self.serve = tf.function(self._serve)

    def normalize(self, volumes: tf.Tensor) -> tf.Tensor:
        """(B, I, J, K, C) raw volumes -> float32 in [0, 1] per channel by the run's windows (module docstring)."""
        x = tf.cast(volumes, tf.float64)
        channels = []
        for c, window in enumerate(self.windows):
            values = x[..., c]
            if window is None:  # this case's own percentiles, per volume of the batch
                lo, hi = percentiles_tf(tf.reshape(values, [tf.shape(values)[0], -1]), PERCENTILES)
                lo, hi = lo[:, None, None, None], hi[:, None, None, None]
            else:
                lo, hi = tf.constant(window[0], tf.float64), tf.constant(window[1], tf.float64)
            channels.append(window_to_unit(values, lo, hi))
        return tf.stack(channels, axis=-1)

    def sliding_window_probabilities(self, x: tf.Tensor) -> tf.Tensor:
        """(B, I, J, K, n) float32 probabilities of normalized (B, I, J, K, C) float32 volumes (step 2)."""
        shape = tf.shape(x)
        pads = [centre_padding(shape[1 + a], self.patch[a], GRAPH_OPS) for a in range(3)]
        padded = tf.pad(x, [[0, 0], *[[before, after] for before, after in pads], [0, 0]])
        size, batch = tf.shape(padded)[1:4], tf.shape(padded)[0]
        starts = [axis_window_starts(size[a], self.patch[a], self.overlap, GRAPH_OPS) for a in range(3)]
        p0, p1, p2 = self.patch
        along_k = starts[2][:, None] + tf.range(p2)[None, :]  # (n2, P2): the K index of each window's voxels
        n2, n1 = tf.shape(starts[2])[0], tf.shape(starts[1])[0]
        # (K, n2 P2): 1 where window voxel (w, t) lies on slice k. Overlapping windows share slices, so their sum
        # along K is a product with this matrix, not a scatter: tf2onnx writes tensor_scatter_nd_add as ScatterND
        # with reduction add, and onnxruntime loses updates to one index from several threads (probabilities up
        # to 13 on a 192x192x96 volume, different slices each run).
        onto_k = tf.cast(tf.equal(tf.range(size[2])[:, None], tf.reshape(along_k, [1, -1])), tf.float32)
        weights = tf.convert_to_tensor(self.gaussian_importance)  # (P0, P1, P2)
        # the summed Gaussian weights of a pencil, (P0, P1, K): the same for every pencil
        pencil_weight = tf.transpose(tf.tensordot(onto_k, tf.reshape(tf.broadcast_to(
            tf.transpose(weights, [2, 0, 1])[None], tf.stack([n2, p2, p0, p1])), tf.stack([-1, p0, p1])), 1), [1, 2, 0])
        grid = np.stack(np.meshgrid(np.arange(p0), np.arange(p1), indexing="ij"), axis=-1).astype(np.int32)

        def add_pencil(i: tf.Tensor, total: tf.Tensor, weight_sum: tf.Tensor) -> tuple[tf.Tensor, ...]:
            s0, s1 = starts[0][i // n1], starts[1][i % n1]
            rows = tf.slice(padded, tf.stack([0, s0, s1, 0, 0]), [-1, p0, p1, -1, self.channels])  # (B, P0, P1, K, C)
            cut = tf.transpose(tf.gather(rows, along_k, axis=3), [3, 0, 1, 2, 4, 5])  # (n2, B, P0, P1, P2, C)
            windows = tf.reshape(cut, tf.concat([[-1], self.patch, [self.channels]], 0))
            probs = self.window_probabilities(windows) * weights[None, ..., None]  # (n2 B, P0, P1, P2, n)
            probs = tf.reshape(probs, tf.stack([n2, batch, p0, p1, p2, self.n_classes]))
            pencil = tf.tensordot(onto_k, tf.reshape(  # (K, B, P0, P1, n): the windows along K summed
                tf.transpose(probs, [0, 4, 1, 2, 3, 5]), tf.stack([-1, batch, p0, p1, self.n_classes])), 1)
            at = tf.constant(grid) + tf.stack([s0, s1])  # (P0, P1, 2): the pencil's place in the volume
            return (i + 1, tf.tensor_scatter_nd_add(total, at, tf.transpose(pencil, [2, 3, 0, 1, 4])),
                    tf.tensor_scatter_nd_add(weight_sum, at, pencil_weight))

        total = tf.zeros(tf.concat([size, [batch, self.n_classes]], 0), tf.float32)  # (I, J, K, B, n)
        weight_sum = tf.zeros(size, tf.float32)
        _, total, weight_sum = tf.while_loop(lambda i, *_: i < tf.shape(starts[0])[0] * n1, add_pencil,
                                             (tf.constant(0), total, weight_sum), parallel_iterations=1)
        result = tf.transpose(total / weight_sum[..., None, None], [3, 0, 1, 2, 4])
        result = result[:, pads[0][0]:pads[0][0] + shape[1], pads[1][0]:pads[1][0] + shape[2],
                        pads[2][0]:pads[2][0] + shape[3]]
        return tf.ensure_shape(result, [None, None, None, None, self.n_classes])

    def window_probabilities(self, window: tf.Tensor) -> tf.Tensor:
        """(B, P0, P1, P2, C) windows -> (B, P0, P1, P2, n) softmax: the network, or with `mirror` the mean
        over the flips of `mirror_axes` (predict_mirrored's order, so the float32 sums match NumPy's)."""
        flips = mirror_flips(self.mirror_axes) if self.mirror else [()]
        total = None
        for axes in flips:
            probs = self.tile(tf.reverse(window, list(axes)) if axes else window)[PROBABILITIES]
            probs = tf.reverse(probs, list(axes)) if axes else probs
            total = probs if total is None else total + probs
        return total if len(flips) == 1 else total / float(len(flips))

    def _serve(self, volumes: tf.Tensor, spacing: tf.Tensor) -> dict[str, tf.Tensor]:
        spacing = tf.ensure_shape(tf.cast(spacing, tf.float64), [3])
        checks = [tf.debugging.assert_positive(spacing, message="spacing: three voxel spacings in mm, each > 0"),
                  tf.debugging.assert_all_finite(spacing, message="spacing: three finite voxel spacings in mm")]
        with tf.control_dependencies(checks):
            volumes = tf.identity(volumes)
        if self.target_spacing is None:
            probs = self.windowed(self.normalize(volumes))
        else:
            probs = self.resampled_probabilities(volumes, spacing)
        return {PROBABILITIES: probs, LABELS: tf.cast(tf.argmax(probs, axis=-1), self._label_dtype)}

    def resampled_probabilities(self, volumes: tf.Tensor, spacing: tf.Tensor) -> tf.Tensor:
        """Step 4 of the module docstring: (B, I, J, K, n) probabilities on the input's grid of raw volumes at
        `spacing` mm, predicted on the target grid. A volume whose resampled shape is its own is not
        resampled at all (data.volume_training.resample_case), so its values reach step 1 as read."""
        shape = tf.shape(volumes)[1:4]
        new_shape = resampled_shape_graph(shape, spacing, self.target_spacing)
        slice_axis = out_of_plane_axis_graph(spacing, self.target_spacing)
        unchanged = tf.reduce_all(tf.equal(shape, new_shape))
        resampled = tf.cond(unchanged, lambda: tf.cast(volumes, tf.float64), lambda: tf.cast(resample_volumes_graph(
            tf.cast(volumes, tf.float32), new_shape, IMAGE_ORDER, slice_axis), tf.float64))
        probs = self.windowed(self.normalize(resampled))
        back = tf.cond(unchanged, lambda: probs,
                       lambda: resample_volumes_graph(probs, shape, PROBABILITY_ORDER, slice_axis))
        return tf.ensure_shape(back, [None, None, None, None, self.n_classes])

    def serving_function(self, dtype: Any) -> Any:
        """Concrete `serve` for (None, None, None, None, C) volumes of `dtype` and their (3,) spacing."""
        spec = tf.TensorSpec((None, None, None, None, self.channels), tf.as_dtype(np.dtype(dtype)), name=VOLUME_INPUT)
        return self.serve.get_concrete_function(spec, tf.TensorSpec((3,), tf.float64, name=SPACING_INPUT))

    def write_onnx(self, path: str | os.PathLike) -> None:
        """The serving computation for `image_dtype` volumes as one ONNX graph (tf2onnx, opset ONNX_OPSET): inputs
        `volumes` and `spacing`, outputs `probabilities` and `labels`, as `serve`. Every op of it converts: the
        resampling weights avoid a linear solve, scatters of duplicates and OneHot (data.volume_resample_graph)."""
        import tf2onnx

        spec = [tf.TensorSpec((None, None, None, None, self.channels), tf.as_dtype(self.image_dtype), name=VOLUME_INPUT),
                tf.TensorSpec((3,), tf.float64, name=SPACING_INPUT)]
        try:
            tf2onnx.convert.from_function(self.serve, input_signature=spec, opset=ONNX_OPSET, output_path=str(path))
        except Exception as exc:  # tf2onnx raises bare exceptions for unsupported graphs
            raise UNetError(f"tf2onnx could not convert the whole-volume model to ONNX ({type(exc).__name__}: {exc})"
                            ) from exc

    def write_openvino(self, path: str | os.PathLike) -> None:
        """The serving computation for `image_dtype` volumes as one OpenVINO IR (`path` .xml and its .bin, float32
        weights), converted by OpenVINO's TensorFlow frontend from the concrete serving function: inputs `volumes`
        and `spacing`, outputs `probabilities` and `labels`, as `serve`. (Its ONNX frontend refuses tf2onnx's Loop.)"""
        import openvino as ov

        try:
            graph = ov.convert_model(self.serving_function(self.image_dtype))
        except Exception as exc:  # the frontend raises its own exception types for unsupported graphs
            raise UNetError(f"OpenVINO could not convert the whole-volume model ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
        ov.save_model(graph, str(path), compress_to_fp16=False)  # the default would halve the weights

    def write_volume(self, export_format: str, path: str | os.PathLike) -> None:
        """write_onnx or write_openvino, by `export_format`."""
        {"onnx": self.write_onnx, "openvino": self.write_openvino}[export_format](path)

    def volume_server(self, export_format: str, path: str | os.PathLike,
                      precision: str = "fp32") -> Callable[[np.ndarray, Sequence[float]], np.ndarray]:
        """onnx_server or openvino_server of a file write_volume wrote."""
        if export_format == "onnx":
            return self.onnx_server(path)
        return self.openvino_server(path, precision)

    def openvino_server(self, path: str | os.PathLike,
                        precision: str = "fp32") -> Callable[[np.ndarray, Sequence[float]], np.ndarray]:
        """f(raw (I, J, K, C) volume, spacing mm) -> (I, J, K, n) probabilities of write_openvino's file on
        OpenVINO's CPU plugin, at the inference precision inference.runtimes.OPENVINO_HINTS gives `precision`
        (fp32 is asked for explicitly: on a CPU with bfloat16 the plugin's default is bf16)."""
        import openvino as ov

        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": OPENVINO_HINTS[precision]})
        output = compiled.output(PROBABILITIES)

        def serve(raw: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
            feeds = {VOLUME_INPUT: np.asarray(raw, self.image_dtype)[None], SPACING_INPUT: np.asarray(spacing, np.float64)}
            return np.asarray(compiled(feeds)[output][0])
        return serve

    def onnx_server(self, path: str | os.PathLike) -> Callable[[np.ndarray, Sequence[float]], np.ndarray]:
        """f(raw (I, J, K, C) volume, spacing mm) -> (I, J, K, n) probabilities of write_onnx's file, on
        onnxruntime's CPU provider; the volume is given in `image_dtype`, the graph's only input type."""
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def serve(raw: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
            feeds = {VOLUME_INPUT: np.asarray(raw, self.image_dtype)[None],
                     SPACING_INPUT: np.asarray(spacing, np.float64)}
            return session.run([PROBABILITIES], feeds)[0][0]
        return serve

    def signatures(self) -> dict[str, Any]:
        """serving_default (the training volumes' dtype), serving_<dtype> for each NIfTI dtype, and tile."""
        functions = {serving_signature_name(d): self.serving_function(d) for d in SERVING_VOLUME_DTYPES}
        return {SERVING_SIGNATURE: functions[serving_signature_name(self.image_dtype)], **functions,
                "tile": self.tile.get_concrete_function()}
