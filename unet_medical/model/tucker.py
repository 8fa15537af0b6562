"""Post-training Tucker-2 compression of 2-D and 3-D convolutions: factorization, rank choice, report.

Each eligible convolution with kernel W (*k, cin, cout), k = (kh, kw) for Conv2D or (kd, kh, kw) for
Conv3D, is replaced by three standard layers of the same dimension

    1x1(x1) conv (cin -> r_in)  ->  k core conv (r_in -> r_out)  ->  1x1(x1) conv (r_out -> cout)

from a Tucker-2 decomposition of W over its two channel modes, W ~ core x_in U_in x_out U_out, i.e.
W_hat[..., i, o] = sum_ab core[..., a, b] U_in[i, a] U_out[o, b] (the spatial modes are not
factored). Because the channel projections are linear and act per pixel (voxel), the sequence
computes exactly a conv with W_hat (with the original stride, padding and dilation on the core, and
the bias and activation on the last 1x1). The code is the same for both dimensions: only the layer
classes (`_CONV_CLASSES`) and the number of leading spatial kernel modes differ.

Reference: "Post-Training Network Compression for 3D Medical Image Segmentation" (tucker-cnn,
PyTorch): Tucker-2 over the channel modes, ranks ceil(channels x factor) with a floor `rank_min`.
Unlike the reference, a layer is kept when the factorization would not reduce its MACs at the
given input size (that check can be switched off). The factorization of big kernels is slow (a
3x3x256x512 kernel at half rank took about 9 s here): it runs once per layer, with the BLAS pinned to
`FACTORIZATION_BLAS_THREADS` thread (see `blas_thread_limit`).

Usage::

    new_model, report = tucker_compress(model, rank_factor=0.5, input_hw=(512, 512))
    print(report_table(report))
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import fractions
import io
import math
import os
from typing import Iterator, Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras
from tensorly.decomposition import partial_tucker
from threadpoolctl import threadpool_limits

from unet_medical.model.complexity import LayerCost, layer_costs
from unet_medical.model.surgery import graph_nodes, replace_layers
from unet_medical.base.errors import UNetError
from unet_medical.base.fileio import atomic_write_text

# The factorizations are many small SVDs and products (a 3x3x3x128x128 kernel unfolds to 128 x 3456):
# too small to share between threads. On 2 vCPUs shared with other jobs OpenBLAS's default threads
# made one such kernel 7-40x slower (27 s instead of 0.7 s), and the 17 kernels of a trained 16-filter
# 3-D U-Net took 6.9 s instead of 0.65 s with the machine to themselves (README, Tucker compression).
FACTORIZATION_BLAS_THREADS = 1

# --------------------------------------------------------------------------------------------
# Pure math
# --------------------------------------------------------------------------------------------


def _partial_tucker_channels(kernel: np.ndarray, ranks: tuple[int, int]
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tucker-2 of a 4-D (2-D conv) or 5-D (3-D conv) kernel over its last two modes, the channels:
    (core, U_second_last, U_last), all float64.

    float64 so that a full-rank factorization reconstructs the float32 kernel to its own precision.
    """
    kernel = np.asarray(kernel)
    if kernel.ndim not in (4, 5):
        raise UNetError(f"kernel of shape {kernel.shape}: expected a 4-D (Conv2D) or 5-D (Conv3D) "
                        "conv kernel")
    modes = (kernel.ndim - 2, kernel.ndim - 1)
    for mode, rank in zip(modes, ranks):
        if not (isinstance(rank, (int, np.integer)) and 1 <= rank <= kernel.shape[mode]):
            raise UNetError(f"rank {rank!r} for kernel mode {mode} of size {kernel.shape[mode]} "
                            f"(kernel shape {kernel.shape}): expected an int in "
                            f"[1, {kernel.shape[mode]}]")
    (core, (u2, u3)), _ = partial_tucker(kernel.astype(np.float64),
                                         rank=tuple(int(r) for r in ranks), modes=modes,
                                         init="svd")
    return core, u2, u3


def tucker2_factors(kernel: np.ndarray, rank_in: int, rank_out: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tucker-2 factors of a Conv2D or Conv3D kernel over its input and output channel modes.

    Args:
        kernel: Conv2D kernel (kh, kw, cin, cout) or Conv3D kernel (kd, kh, kw, cin, cout).
        rank_in, rank_out: ranks of the input / output channel modes, 1 <= r <= channels.

    Returns:
        (U_in (cin, r_in), core (*k, r_in, r_out), U_out (cout, r_out)), float64, with
        orthonormal columns in U_in and U_out (HOOI from tensorly's `partial_tucker`, SVD init).
    """
    core, u_in, u_out = _partial_tucker_channels(kernel, (rank_in, rank_out))
    return u_in, core, u_out


def tucker2_factors_transposed(kernel: np.ndarray, rank_in: int, rank_out: int
                               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tucker-2 factors of a Conv2DTranspose / Conv3DTranspose kernel, whose channel modes are swapped.

    Args:
        kernel: transposed-conv kernel, shape (*k, cout, cin) with k = (kh, kw) or (kd, kh, kw).
        rank_in, rank_out: ranks of the input / output channel modes.

    Returns:
        (U_in (cin, r_in), core (*k, r_out, r_in), U_out (cout, r_out)), float64; the core is in
        transposed-conv layout, so it is the kernel of the transposed core layer as it stands.
    """
    core, u_out, u_in = _partial_tucker_channels(kernel, (rank_out, rank_in))
    return u_in, core, u_out


def tucker2_reconstruct(u_in: np.ndarray, core: np.ndarray, u_out: np.ndarray) -> np.ndarray:
    """W_hat (*k, cin, cout) = core x_in U_in x_out U_out for a conv-layout core (*k, r_in, r_out)."""
    return np.einsum("...ab,ia,ob->...io", core, u_in, u_out)


def relative_error(kernel: np.ndarray, approx: np.ndarray) -> float:
    """||W - W_hat||_F / ||W||_F (0 for an all-zero kernel reproduced exactly)."""
    kernel = np.asarray(kernel, np.float64)
    diff = float(np.linalg.norm(kernel - np.asarray(approx, np.float64)))
    norm = float(np.linalg.norm(kernel))
    return diff / norm if norm > 0 else diff


def select_ranks(cin: int, cout: int, *, rank_factor: Optional[float] = None,
                 rank: Optional[int | tuple[int, int]] = None,
                 rank_min: int = 1) -> tuple[int, int]:
    """Ranks (r_in, r_out) for a conv with cin input and cout output channels.

    Exactly one rule: `rank_factor` f gives ceil(channels * f) per mode (relative, as tucker-cnn);
    `rank` gives a fixed rank (one int for both modes, or a pair (r_in, r_out)). Then each rank is
    raised to at least `rank_min` and capped at its channel count.

    Raises:
        UNetError: neither or both rules given, f not in (0, 1], rank or rank_min below 1.
    """
    _check_rank_args(rank_factor, rank, rank_min)
    if rank_factor is not None:
        # The user means the decimal typed: ceil(10 * 0.7) is 7, not ceil(7.000000000000001) = 8.
        factor = fractions.Fraction(str(float(rank_factor)))
        wanted = (math.ceil(cin * factor), math.ceil(cout * factor))
    else:
        wanted = (rank, rank) if isinstance(rank, (int, np.integer)) else tuple(rank)
    return tuple(int(min(max(r, rank_min), c)) for r, c in zip(wanted, (cin, cout)))


def _check_rank_args(rank_factor, rank, rank_min) -> None:
    if (rank_factor is None) == (rank is None):
        raise UNetError(f"rank_factor={rank_factor!r}, rank={rank!r}: give exactly one of them "
                        "(relative rank factor in (0, 1] or fixed rank >= 1)")
    if rank_factor is not None and (isinstance(rank_factor, bool) or not (
            isinstance(rank_factor, (int, float, np.integer, np.floating))
            and 0 < float(rank_factor) <= 1)):
        raise UNetError(f"rank_factor={rank_factor!r}: expected a number in (0, 1]")
    if rank is not None:
        pair = isinstance(rank, (list, tuple)) and len(rank) == 2
        if not (_is_positive_int(rank) or pair and all(_is_positive_int(r) for r in rank)):
            raise UNetError(f"rank={rank!r}: expected an int >= 1 or a pair (rank_in, rank_out)")
    if not _is_positive_int(rank_min):
        raise UNetError(f"rank_min={rank_min!r}: expected an int >= 1")


def _is_positive_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


@contextlib.contextmanager
def blas_thread_limit(threads: Optional[int]) -> Iterator[None]:
    """Limit the BLAS libraries NumPy/SciPy loaded (OpenBLAS, MKL, BLIS) to `threads` threads inside
    the block and restore their settings after it; None leaves them alone (the library default).

    Raises:
        UNetError: `threads` is neither None nor an int >= 1.
    """
    if threads is None:
        yield
        return
    if not _is_positive_int(threads):
        raise UNetError(f"blas_threads={threads!r}: expected an int >= 1 or None (the BLAS default)")
    with threadpool_limits(limits=int(threads), user_api="blas"):
        yield


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


# Spatial dimensions -> (conv class, transposed conv class) the decomposition builds and accepts.
_CONV_CLASSES = {2: (keras.layers.Conv2D, keras.layers.Conv2DTranspose),
                 3: (keras.layers.Conv3D, keras.layers.Conv3DTranspose)}
_TRANSPOSED = tuple(transposed for _, transposed in _CONV_CLASSES.values())


def is_conv_like(layer: keras.layers.Layer) -> bool:
    """2-D and 3-D convolutions that appear in the report (decomposed or kept with a reason)."""
    return isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv3D,
                              keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D))


def ineligibility(layer: keras.layers.Layer) -> Optional[str]:
    """Why a layer cannot be Tucker-decomposed, or None if it can (MAC gain not considered)."""
    kind = type(layer).__name__
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return "depthwise convolution: no channel mixing to factor"
    if isinstance(layer, keras.layers.SeparableConv2D):
        return "separable convolution: already factored"
    if not any(type(layer) in classes for classes in _CONV_CLASSES.values()):
        return (f"{kind} is not a plain Conv2D/Conv3D or their transposed form "
                "(its call may differ)")
    if layer.data_format != "channels_last":
        return f"data_format={layer.data_format!r}: only channels_last is supported"
    if getattr(layer, "groups", 1) != 1:
        return f"grouped convolution (groups={layer.groups})"
    if all(k == 1 for k in layer.kernel_size):
        return f"{'x'.join(map(str, layer.kernel_size))} kernel: nothing to factor"
    return None


def _channels(layer: keras.layers.Layer) -> tuple[int, int]:
    """(cin, cout) of a conv or transposed conv (2-D or 3-D) from its kernel (*k, cin, cout)."""
    a, b = (int(d) for d in layer.kernel.shape[-2:])
    return (b, a) if isinstance(layer, _TRANSPOSED) else (a, b)


@dataclasses.dataclass(frozen=True)
class _Factors:
    """Tucker-2 factors of one layer's kernel, ready to be turned into layers."""
    ranks: tuple[int, int]
    u_in: np.ndarray    # (cin, r_in)
    core: np.ndarray    # (*k, r_in, r_out); (*k, r_out, r_in) for a transposed conv
    u_out: np.ndarray   # (cout, r_out)
    rel_error: float    # ||W - W_hat||_F / ||W||_F


def _factorize(layer: keras.layers.Layer, ranks: tuple[int, int]) -> _Factors:
    reason = ineligibility(layer)
    if reason is not None:
        raise UNetError(f"layer {layer.name!r} ({type(layer).__name__}) cannot be "
                        f"Tucker-decomposed: {reason}")
    if not layer.built:
        raise UNetError(f"layer {layer.name!r} has no weights yet: build it (or the model) first")
    r_in, r_out = (int(r) for r in ranks)
    kernel = layer.get_weights()[0]
    if isinstance(layer, _TRANSPOSED):
        u_in, core, u_out = tucker2_factors_transposed(kernel, r_in, r_out)
        swap = (*range(kernel.ndim - 2), kernel.ndim - 1, kernel.ndim - 2)  # transposed <-> conv layout
        approx = np.transpose(tucker2_reconstruct(u_in, np.transpose(core, swap), u_out), swap)
    else:
        u_in, core, u_out = tucker2_factors(kernel, r_in, r_out)
        approx = tucker2_reconstruct(u_in, core, u_out)
    return _Factors((r_in, r_out), u_in, core, u_out, relative_error(kernel, approx))


def _build_sequence(layer: keras.layers.Layer, factors: _Factors) -> list[keras.layers.Layer]:
    """Fresh, built 1x1 -> core -> 1x1 layers carrying `factors` (see `decompose_layer`)."""
    r_in, r_out = factors.ranks
    cin, cout = _channels(layer)
    spatial = len(layer.kernel_size)
    conv, transposed = _CONV_CLASSES[spatial]
    # Same dtype policy (mixed precision) and trainability as the layer being replaced.
    common = dict(dtype=layer.dtype_policy, trainable=layer.trainable, data_format="channels_last")
    first = conv(r_in, 1, use_bias=False, name=f"{layer.name}_tucker_in", **common)
    core_args = dict(kernel_size=layer.kernel_size, strides=layer.strides, padding=layer.padding,
                     dilation_rate=layer.dilation_rate, use_bias=False,
                     name=f"{layer.name}_tucker_core", **common)
    if isinstance(layer, _TRANSPOSED):
        core = transposed(r_out, output_padding=layer.output_padding, **core_args)
    else:
        core = conv(r_out, **core_args)
    last = conv(cout, 1, use_bias=layer.use_bias, activation=layer.activation,
                name=f"{layer.name}_tucker_out", **common)

    dtype = layer.kernel.dtype.as_numpy_dtype
    pointwise = (None,) * spatial   # a (c_in, c_out) matrix as a 1x1 (2-D) or 1x1x1 (3-D) kernel
    last_weights = [factors.u_out.T[pointwise].astype(dtype)]
    if layer.use_bias:
        last_weights.append(layer.get_weights()[1])
    for new_layer, channels_in, weights in ((first, cin, [factors.u_in[pointwise].astype(dtype)]),
                                            (core, r_in, [factors.core.astype(dtype)]),
                                            (last, r_out, last_weights)):
        new_layer.build((None, *pointwise, channels_in))
        new_layer.set_weights(weights)
    return [first, core, last]


def decompose_layer(layer: keras.layers.Layer, ranks: tuple[int, int]) -> list[keras.layers.Layer]:
    """Three built layers, weights set, that replace a Conv2D/3D or Conv2D/3DTranspose.

    Conv 1x1(x1) (cin -> r_in, no bias) -> core (the original kernel size, r_in -> r_out, the
    original strides, padding and dilation, no bias; a transposed core, with the original output
    padding, for a transposed conv) -> Conv 1x1(x1) (r_out -> cout, the original bias and
    activation), all of the original's dimension (Conv2D layers for a 2-D conv, Conv3D for 3-D).
    Named f"{name}_tucker_in", f"{name}_tucker_core", f"{name}_tucker_out". Kernel regularizers
    and constraints of the original are not carried over. At full rank (cin, cout) the sequence
    computes the original layer's function up to float rounding.

    Args:
        layer: a built, plain Conv2D, Conv3D, Conv2DTranspose or Conv3DTranspose with channels_last
            data, groups=1, kernel larger than 1x1(x1).
        ranks: (r_in, r_out), each in [1, channels].

    Raises:
        UNetError: the layer is not eligible (see `ineligibility`) or a rank is out of range.
    """
    return _build_sequence(layer, _factorize(layer, ranks))


# --------------------------------------------------------------------------------------------
# Whole model
# --------------------------------------------------------------------------------------------

_SEQUENCE_SUFFIXES = ("_tucker_in", "_tucker_core", "_tucker_out")


@dataclasses.dataclass(frozen=True)
class LayerReport:
    """What happened to one 2-D or 3-D convolution of the model.

    rank_in/rank_out: the ranks used (decomposed) or considered (kept because the MACs would not
    drop); None when the layer is structurally ineligible. params (floating-point weights) and
    MACs (multiply-accumulates per image or volume at the report's input size, counted by
    `unet_medical.model.complexity.layer_costs`) before and after; equal for kept layers. rel_error is
    ||W - W_hat||_F / ||W||_F of the kernel (0 for kept layers).
    """
    name: str
    kind: str
    kept: bool
    reason: str
    rank_in: Optional[int]
    rank_out: Optional[int]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    rel_error: float


def _costs_by_name(model: keras.Model, input_hw: tuple[int, ...]) -> dict[str, LayerCost]:
    try:
        return {cost.name: cost for cost in layer_costs(model, input_hw)}
    except (ValueError, tf.errors.InvalidArgumentError) as err:
        # A size the model cannot run at (e.g. odd maps before pooling in a valid-padding U-Net).
        raise UNetError(f"input_hw={tuple(input_hw)} is not a valid input size for model "
                        f"{model.name!r}: {_error_summary(err)}") from err


def _error_summary(err: Exception) -> str:
    """The gist of a TF tracing error: tf.function wraps it in "in user code:" and a traceback."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "Exception encountered when calling layer" in line:
            return " ".join(lines[i:i + 2])[:400]
    return lines[-1][:400] if lines else type(err).__name__


def tucker_compress(model: keras.Model, *, rank_factor: Optional[float] = None,
                    rank: Optional[int | tuple[int, int]] = None, rank_min: int = 1,
                    input_hw: tuple[int, ...] = (512, 512),
                    require_mac_reduction: bool = True,
                    blas_threads: Optional[int] = FACTORIZATION_BLAS_THREADS
                    ) -> tuple[keras.Model, list[LayerReport]]:
    """Replace every eligible conv of a Functional model by its Tucker-2 three-layer sequence.

    Eligible: plain Conv2D / Conv2DTranspose / Conv3D / Conv3DTranspose, channels_last, groups=1,
    kernel larger than 1x1(x1), and (if `require_mac_reduction`) fewer MACs after than before at
    `input_hw`. Ineligible convs are kept and reported with the reason. Layers inside nested sub-models are neither decomposed
    nor reported. Kept layers are clones with the original weights (see
    `unet_medical.model.surgery.replace_layers`), so the original model is left untouched.

    MACs come from `unet_medical.model.complexity.layer_costs` on the original and on the decomposed model (the
    decomposed layers' costs at their actual spatial sizes); a layer whose sequence costs at least
    as much is put back and the model rebuilt once more.

    Args:
        model: Functional tf_keras model with one image input (batch, H, W, C) or volume input
            (batch, D, H, W, C).
        rank_factor: relative rank, ceil(channels * rank_factor), in (0, 1].
        rank: fixed rank (int, or (r_in, r_out)); exactly one of rank_factor / rank.
        rank_min: lower bound for every rank (ranks are also capped at the channel counts).
        input_hw: (height, width) in pixels, or (depth, height, width) in voxels for a 3-D
            model, at which MACs are counted; must be a valid input size for the model (and fit
            its static size, if it has one).
        require_mac_reduction: keep layers whose decomposition would not reduce MACs (True), or
            decompose every eligible layer regardless (False; e.g. full-rank checks).
        blas_threads: BLAS threads during the factorizations (`blas_thread_limit`); None keeps the
            BLAS library's own setting (OPENBLAS_NUM_THREADS or one per core).

    Returns:
        (new Functional model of standard layers, one LayerReport per conv in graph order).
        The new model saves/loads with tf_keras.models.load_model (h5 and SavedModel) and trains
        like any other.

    Raises:
        UNetError: invalid rank arguments or input_hw, or a model that is not Functional.
    """
    _check_rank_args(rank_factor, rank, rank_min)
    layers = list({id(n.layer): n.layer for n in graph_nodes(model)
                   if is_conv_like(n.layer)}.values())
    before = _costs_by_name(model, input_hw)

    plan: dict[str, _Factors] = {}
    with blas_thread_limit(blas_threads):
        for layer in layers:
            if ineligibility(layer) is None:
                ranks = select_ranks(*_channels(layer), rank_factor=rank_factor, rank=rank,
                                     rank_min=rank_min)
                plan[layer.name] = _factorize(layer, ranks)

    def rebuild() -> tuple[keras.Model, dict[str, LayerCost]]:
        new = replace_layers(model, lambda layer: _build_sequence(layer, plan[layer.name])
                             if layer.name in plan else None)
        return new, _costs_by_name(new, input_hw)

    def cost_after(name: str, costs: dict[str, LayerCost]) -> tuple[int, int]:
        parts = [costs[name + suffix] for suffix in _SEQUENCE_SUFFIXES]
        return sum(c.params for c in parts), sum(c.macs for c in parts)

    new_model, after = rebuild()
    macs_of = {name: cost_after(name, after)[1] for name in plan}
    no_gain = {name: macs for name, macs in macs_of.items()
               if require_mac_reduction and macs >= before[name].macs}
    considered = {name: plan.pop(name).ranks for name in no_gain}
    if no_gain:
        new_model, after = rebuild()

    report = []
    for layer in layers:
        cost = before[layer.name]
        common = dict(name=layer.name, kind=type(layer).__name__, params_before=cost.params,
                      macs_before=cost.macs)
        if layer.name in plan:
            factors = plan[layer.name]
            params_after, macs_after = cost_after(layer.name, after)
            report.append(LayerReport(
                kept=False, reason="decomposed", rank_in=factors.ranks[0],
                rank_out=factors.ranks[1], params_after=params_after, macs_after=macs_after,
                rel_error=factors.rel_error, **common))
            continue
        if layer.name in no_gain:
            reason = (f"decomposition would not reduce MACs "
                      f"({no_gain[layer.name]} >= {cost.macs})")
            ranks = considered[layer.name]
        else:
            reason, ranks = ineligibility(layer), (None, None)
        report.append(LayerReport(kept=True, reason=reason, rank_in=ranks[0], rank_out=ranks[1],
                                  params_after=cost.params, macs_after=cost.macs, rel_error=0.0,
                                  **common))
    return new_model, report


# --------------------------------------------------------------------------------------------
# Report output
# --------------------------------------------------------------------------------------------

REPORT_FIELDS = tuple(f.name for f in dataclasses.fields(LayerReport))


def report_table(report: Sequence[LayerReport]) -> str:
    """Aligned text table of the report with a totals row (MACs in millions per image or volume)."""
    header = ("layer", "kind", "action", "ranks", "params", "params_new", "MMACs", "MMACs_new",
              "rel_error", "reason")
    rows = [header]
    for r in report:
        ranks = "" if r.rank_in is None else f"{r.rank_in}/{r.rank_out}"
        rows.append((r.name, r.kind, "kept" if r.kept else "decomposed", ranks,
                     str(r.params_before), str(r.params_after), f"{r.macs_before / 1e6:.3f}",
                     f"{r.macs_after / 1e6:.3f}", f"{r.rel_error:.4f}",
                     "" if not r.kept else r.reason))
    n_done = sum(not r.kept for r in report)
    rows.append(("total", "", f"{n_done}/{len(report)} decomposed", "",
                 str(sum(r.params_before for r in report)),
                 str(sum(r.params_after for r in report)),
                 f"{sum(r.macs_before for r in report) / 1e6:.3f}",
                 f"{sum(r.macs_after for r in report) / 1e6:.3f}", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in rows)


def write_report_csv(report: Sequence[LayerReport], path: str | os.PathLike) -> None:
    """Write the report as CSV, one row per layer, columns = LayerReport fields (None -> "")."""
    directory = os.path.dirname(os.fspath(path)) or "."
    if not os.path.isdir(directory):
        raise UNetError(f"report CSV path {os.fspath(path)!r}: directory {directory!r} does not "
                        "exist")
    with io.StringIO(newline="") as f:  # built in memory, then written atomically: no half-written report
        writer = csv.DictWriter(f, fieldnames=REPORT_FIELDS)
        writer.writeheader()
        for r in report:
            row = dataclasses.asdict(r)
            row["rel_error"] = repr(float(r.rel_error))   # repr round-trips exactly
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
        atomic_write_text(path, f.getvalue())


def read_report_csv(path: str | os.PathLike) -> list[LayerReport]:
    """Parse a CSV written by `write_report_csv` back into LayerReports."""
    def optional_int(text: str) -> Optional[int]:
        return None if text == "" else int(text)

    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as err:
        raise UNetError(f"report CSV {os.fspath(path)!r}: cannot read ({err.strerror})") from err
    if rows and set(rows[0]) != set(REPORT_FIELDS):
        raise UNetError(f"report CSV {os.fspath(path)!r}: columns {sorted(rows[0])}, expected "
                        f"{list(REPORT_FIELDS)}")
    return [LayerReport(name=r["name"], kind=r["kind"], kept=r["kept"] == "True",
                        reason=r["reason"], rank_in=optional_int(r["rank_in"]),
                        rank_out=optional_int(r["rank_out"]),
                        params_before=int(r["params_before"]), params_after=int(r["params_after"]),
                        macs_before=int(r["macs_before"]), macs_after=int(r["macs_after"]),
                        rel_error=float(r["rel_error"])) for r in rows]
