"""Where the time of a step goes: oneDNN's verbose log and TensorFlow profiler traces, aggregated.

Pure parsing and counting (no TensorFlow import), so it is tested against hand-made inputs;
benchmarks/profile_network.py runs the project's benchmark step and feeds these functions.

oneDNN (`ONEDNN_VERBOSE=1`) prints one line per executed primitive to stdout:
    onednn_verbose,[timestamp,]v1,primitive,exec,cpu,KIND,IMPLEMENTATION,PROP_KIND,MEMORY_DESCRIPTORS,
        ATTRIBUTES,AUXILIARY,PROBLEM,MS
(the header line `primitive,info,template:...` names the fields). Memory descriptors are
`arg:dtype:...` tokens (`src:bf16::blocked:acdb::f0`); fused post-operations are in the attributes
(`attr-post-ops:eltwise_relu`, several joined by `+`). The time is the primitive's wall time in ms.

The TF profiler (`tf.profiler.experimental.start/stop`) writes an XSpace (`*.xplane.pb`). On CPU its
plane "/host:CPU" has one line per thread; a TensorFlow op executed inside a tf.function is an event
whose metadata name is `op_name:OpType` (the name/type rule of TF's own tf_op_utils), timed in
picoseconds from the line's `timestamp_ns`. Ops of different threads overlap, so op time is CPU
time, not wall time; the wall time a step spent with no op running anywhere is host work (Python,
NumPy tiling and normalization, copies, dispatch).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import re
from typing import Any, Iterable, Iterator, Mapping, Sequence

from unet_medical.base.errors import UNetError

HOST_PLANE = "/host:CPU"
STEP_EVENT = "profile_step"
"""Name of the TraceMe annotation (tf.profiler.experimental.Trace) around each profiled step."""

# TF's tsl/profiler/utils/tf_op_utils.cc: an op's full name is "name:type" with these shapes.
_OP_NAME = re.compile(r"[A-Za-z0-9.][A-Za-z0-9_.\-/>]*")
_OP_TYPE = re.compile(r"[A-Z_][A-Za-z0-9_]*")

# ------------------------------------------------------------------ oneDNN verbose


@dataclasses.dataclass(frozen=True)
class PrimitiveExec:
    """One executed oneDNN primitive: kind (convolution, reorder, ...), implementation
    (brg_conv_fwd:avx512_core_bf16), propagation kind, data types by argument, post-ops, problem, ms."""

    kind: str
    implementation: str
    prop_kind: str
    dtypes: tuple[tuple[str, str], ...]
    post_ops: tuple[str, ...]
    problem: str
    ms: float
    stamp_ms: float | None = None  # wall clock (ms since the epoch) with ONEDNN_VERBOSE_TIMESTAMP=1

    def dtype(self, arg: str) -> str | None:
        """The data type of argument `arg` (src, wei, dst, ...), or None if the line has none."""
        return dict(self.dtypes).get(arg)

    @property
    def compute_dtype(self) -> str:
        """The type the primitive computes in: its source's (a reorder's destination's: what it makes)."""
        order = ("dst", "src") if self.kind == "reorder" else ("src", "diff_dst", "dst")
        for arg in order:
            if self.dtype(arg) not in (None, "undef"):
                return str(self.dtype(arg))
        return "undef"


def _memory_dtypes(field: str) -> tuple[tuple[str, str], ...]:
    """(arg, dtype) pairs of a memory-descriptor field: 'src:bf16::blocked:acdb::f0 wei:...'."""
    pairs = []
    for token in field.split():
        parts = token.split(":")
        if len(parts) >= 2 and parts[0]:
            pairs.append((parts[0], parts[1]))
    return tuple(pairs)


def _post_ops(field: str) -> tuple[str, ...]:
    """Post-ops of an attributes field: 'attr-scratchpad:user attr-post-ops:sum+eltwise_relu' -> (sum, eltwise_relu)."""
    for token in field.split():
        if token.startswith("attr-post-ops:"):
            # an op may carry its own arguments after a colon (eltwise_relu:0.1); the name is enough here
            return tuple(op.split(":")[0] for op in token[len("attr-post-ops:"):].split("+") if op)
    return ()


def parse_verbose_line(line: str) -> PrimitiveExec | None:
    """The primitive a oneDNN verbose `exec` line describes, or None for any other line (info,
    create, graph, program output). A malformed exec line raises ValueError naming it."""
    if not line.startswith("onednn_verbose,") and not line.startswith("dnnl_verbose,"):
        return None
    fields = line.rstrip("\n").split(",")
    try:
        at = fields.index("primitive")
    except ValueError:
        return None
    if at + 1 >= len(fields) or fields[at + 1] != "exec":
        return None
    rest = fields[at + 2:]
    if len(rest) < 9:
        raise ValueError(f"oneDNN verbose exec line with {len(rest)} fields after 'exec' (expected 9): {line!r}")
    _engine, kind, implementation, prop_kind, memory, attributes, _aux = rest[:7]
    problem, ms = ",".join(rest[7:-1]), rest[-1]  # the problem is the one field that may hold commas
    try:
        time_ms = float(ms)
    except ValueError:
        raise ValueError(f"oneDNN verbose exec line without a time in ms: {line!r}") from None
    return PrimitiveExec(kind, implementation, prop_kind, _memory_dtypes(memory), _post_ops(attributes),
                         problem, time_ms, _stamp(fields[1:at]))


def _stamp(fields: Sequence[str]) -> float | None:
    """The timestamp among the fields before 'primitive' ('v1', '1796579603315.71'), if there is one."""
    for field in fields:
        try:
            return float(field)
        except ValueError:
            continue
    return None


def execs_between(execs: Iterable[PrimitiveExec], start_ms: float, stop_ms: float) -> list[PrimitiveExec]:
    """The primitives stamped within [start_ms, stop_ms] (epoch ms): the timed steps, without warm-up.
    Lines without a stamp raise ValueError (run with ONEDNN_VERBOSE_TIMESTAMP=1)."""
    out = []
    for p in execs:
        if p.stamp_ms is None:
            raise ValueError(f"oneDNN verbose line without a timestamp ({p.kind} {p.problem}): "
                             "set ONEDNN_VERBOSE_TIMESTAMP=1")
        if start_ms <= p.stamp_ms <= stop_ms:
            out.append(p)
    return out


def parse_verbose(lines: Iterable[str]) -> list[PrimitiveExec]:
    """Every executed primitive in `lines`, in order."""
    return [p for p in (parse_verbose_line(line) for line in lines) if p is not None]


@dataclasses.dataclass(frozen=True)
class Tally:
    """Count and total time (ms) of a group of events."""

    count: int = 0
    ms: float = 0.0

    def add(self, ms: float) -> "Tally":
        return Tally(self.count + 1, self.ms + ms)


def tally(items: Iterable[tuple[Any, float]]) -> dict[Any, Tally]:
    """{key: Tally} of (key, ms) pairs, keys in order of first appearance."""
    out: dict[Any, Tally] = {}
    for key, ms in items:
        out[key] = out.get(key, Tally()).add(ms)
    return out


def conv_fusion(p: PrimitiveExec) -> str:
    """How a convolution's output is finished: 'relu', 'sum', 'sum+relu' (fused post-ops), 'none'
    (forward with nothing fused: a separate op follows), or 'backward' (gradients have no post-ops)."""
    if not p.prop_kind.startswith("forward"):
        return "backward"
    names = ["relu" if op == "eltwise_relu" else op for op in p.post_ops]
    return "+".join(names) if names else "none"


def per_step(table: Mapping[Any, Tally], steps: int) -> dict[Any, Tally]:
    """A table over `steps` steps as one step's: counts divided and rounded, times (ms) divided."""
    steps = max(1, steps)
    return {k: Tally(round(v.count / steps), v.ms / steps) for k, v in table.items()}


def verbose_summary(execs: Sequence[PrimitiveExec], steps: int = 1) -> dict[str, Any]:
    """Per step of `steps`: time (ms) and count per kind, per (kind, implementation), per compute dtype, of
    convolutions by fusion and by propagation kind, of reorders by (source, destination) dtype; the total
    ms per step, the number of primitives over all steps, and the reorders' share of primitive time."""
    total = sum(p.ms for p in execs)
    reorders = [p for p in execs if p.kind == "reorder"]
    convs = [p for p in execs if p.kind == "convolution"]
    return {
        "total_ms": total / max(1, steps),
        "count": len(execs),
        "by_kind": per_step(tally((p.kind, p.ms) for p in execs), steps),
        "by_implementation": per_step(tally(((p.kind, p.implementation), p.ms) for p in execs), steps),
        "by_dtype": per_step(tally((p.compute_dtype, p.ms) for p in execs), steps),
        "conv_by_fusion": per_step(tally((conv_fusion(p), p.ms) for p in convs), steps),
        "conv_by_prop_kind": per_step(tally((p.prop_kind, p.ms) for p in convs), steps),
        "reorder_by_dtypes": per_step(tally((f"{p.dtype('src')}->{p.dtype('dst')}", p.ms) for p in reorders), steps),
        "reorder_share": (sum(p.ms for p in reorders) / total) if total else 0.0,
    }


# ------------------------------------------------------------------ TF profiler (XSpace)


@dataclasses.dataclass(frozen=True)
class OpEvent:
    """One TensorFlow op execution on a host thread: name, type, start and duration in picoseconds."""

    name: str
    op_type: str
    start_ps: int
    duration_ps: int
    thread: str

    @property
    def end_ps(self) -> int:
        return self.start_ps + self.duration_ps


def split_op_fullname(fullname: str) -> tuple[str, str] | None:
    """('unet/enc1_conv1/Relu', '_MklNativeFusedConv2D') from 'unet/enc1_conv1/Relu:_MklNativeFusedConv2D';
    None for an event that is not a TF op (runtime TraceMe such as 'ThreadpoolListener::Record')."""
    name, sep, op_type = fullname.rpartition(":")
    if not sep or not _OP_NAME.fullmatch(name) or not _OP_TYPE.fullmatch(op_type):
        return None
    return name, op_type


def host_plane(space: Any) -> Any:
    """The "/host:CPU" plane of an XSpace; UNetError if the trace has none."""
    for plane in space.planes:
        if plane.name == HOST_PLANE:
            return plane
    raise UNetError(f"profiler trace has no {HOST_PLANE!r} plane (planes: {[p.name for p in space.planes]})")


def _events(plane: Any) -> Iterator[tuple[str, str, int, int, Any]]:
    """(line name, event name, start ps, duration ps, event) of every event of a plane."""
    for line in plane.lines:
        base = int(line.timestamp_ns) * 1000
        for event in line.events:
            name = plane.event_metadata[event.metadata_id].name
            yield line.name, name, base + int(event.offset_ps), int(event.duration_ps), event


def op_events(space: Any) -> list[OpEvent]:
    """Every TF op execution on the host plane, sorted by start time."""
    out = []
    for thread, fullname, start, duration, _ in _events(host_plane(space)):
        parsed = split_op_fullname(fullname)
        if parsed is not None:
            out.append(OpEvent(parsed[0], parsed[1], start, duration, thread))
    return sorted(out, key=lambda e: e.start_ps)


def step_windows(space: Any, marker: str = STEP_EVENT) -> list[tuple[int, int]]:
    """(start ps, end ps) of every `marker` annotation on the host plane, in time order."""
    return sorted((start, start + duration) for _, name, start, duration, _ in _events(host_plane(space))
                  if name == marker)


def covered_ps(intervals: Iterable[tuple[int, int]], window: tuple[int, int]) -> int:
    """Picoseconds of `window` covered by the union of `intervals` (overlaps counted once)."""
    lo, hi = window
    clipped = sorted((max(a, lo), min(b, hi)) for a, b in intervals if b > lo and a < hi)
    total, end = 0, lo
    for a, b in clipped:
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def host_gaps(events: Sequence[OpEvent], windows: Sequence[tuple[int, int]]) -> list[dict[str, float]]:
    """Per step window: wall ms, ms with at least one TF op running, and ms with none (host work)."""
    intervals = [(e.start_ps, e.end_ps) for e in events]
    out = []
    for window in windows:
        wall = window[1] - window[0]
        busy = covered_ps(intervals, window)
        out.append({"wall_ms": wall / 1e9, "op_ms": busy / 1e9, "host_ms": (wall - busy) / 1e9})
    return out


def base_op_type(op_type: str) -> str:
    """The op a oneDNN-rewritten kernel implements: '_MklNativeFusedConv2D' -> 'FusedConv2D',
    '_MklSoftmax' -> 'Softmax', '_FusedConv2D' -> 'FusedConv2D'."""
    for prefix in ("_MklNative", "_Mkl", "_"):
        if op_type.startswith(prefix):
            return op_type[len(prefix):]
    return op_type


# What each kind of op costs: arithmetic (convolution), normalisation, dtype and layout changes, data
# movement and the memory-bound element-wise tail. The first matching rule wins; unknown types are "other".
_KIND_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("convolution", ("Conv2D", "Conv3D", "FusedConv2D", "FusedConv3D", "DepthwiseConv", "MatMul", "BatchMatMul",
                     "FusedMatMul")),
    ("batch_norm", ("FusedBatchNorm",)),
    ("cast", ("Cast",)),
    ("layout", ("Transpose", "ConjugateTranspose", "ToTf", "InputConversion")),
    ("pooling", ("MaxPool", "AvgPool")),
    ("copy", ("ConcatV2", "Concat", "Slice", "StridedSlice", "Pad", "MirrorPad", "Tile", "Pack", "Unpack",
              "Split", "Gather", "Identity", "OneHot")),
    ("variables", ("ReadVariableOp", "AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp",
                   "ResourceApply")),
    ("reduction", ("Sum", "Mean", "Max", "Min", "Prod", "AddN", "BiasAddGrad")),
    ("element-wise", ("Relu", "BiasAdd", "Mul", "Sub", "Add", "RealDiv", "Div", "Sqrt", "Rsqrt", "Square",
                      "Pow", "Exp", "Log", "Neg", "Minimum", "Maximum", "Greater", "Less", "Equal", "Select",
                      "Softmax", "LogSoftmax", "Sigmoid", "Tanh", "Elu", "Abs", "Sign", "Reciprocal",
                      "StatelessRandom", "RandomUniform", "ClipByValue")),
)
KINDS = tuple(kind for kind, _ in _KIND_RULES) + ("other",)


def op_kind(op_type: str) -> str:
    """The kind (one of KINDS) of a TF op type, by its name after the oneDNN prefix is removed."""
    base = base_op_type(op_type)
    for kind, prefixes in _KIND_RULES:
        if any(base == p or base.startswith(p) for p in prefixes):
            return kind
    return "other"


def op_phase(name: str, model_scope: str = "unet") -> str:
    """Which part of a step an op belongs to, from its name: 'forward' (the model's scope), 'backward'
    (the gradient tape), 'optimizer' (a scope named after a Keras optimizer class) or 'other' (loss,
    input conversion, softmax of the predictor)."""
    top = name.split("/", 1)[0]
    if top == model_scope:
        return "forward"
    if top == "gradient_tape":
        return "backward"
    if top in ("Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "Nadam", "Adamax", "Ftrl", "Lion"):
        return "optimizer"
    return "other"


def op_summary(events: Sequence[OpEvent], steps: int = 1) -> dict[str, Any]:
    """Op time per kind, per (phase, kind) and per op type, each as a Tally in ms per step, and the total."""
    return {
        "total_ms": sum(e.duration_ps for e in events) / 1e9 / max(1, steps),
        "by_kind": per_step(tally((op_kind(e.op_type), e.duration_ps / 1e9) for e in events), steps),
        "by_phase_kind": per_step(tally(((op_phase(e.name), op_kind(e.op_type)), e.duration_ps / 1e9)
                                        for e in events), steps),
        "by_type": per_step(tally((e.op_type, e.duration_ps / 1e9) for e in events), steps),
    }


def load_xspace(path: str | pathlib.Path) -> Any:
    """Read an `*.xplane.pb` file into an XSpace message.

    The message class is TensorFlow's generated `tsl/profiler/protobuf/xplane_pb2.py`, which needs only
    protobuf: loaded from its file when TensorFlow is not imported yet, so reading a trace does not pay
    for the TensorFlow import (seconds).
    """
    xplane = _xplane_module()
    space = xplane.XSpace()
    try:
        space.ParseFromString(pathlib.Path(path).read_bytes())
    except OSError as exc:
        raise UNetError(f"profiler trace {path}: cannot read it ({exc})") from None
    return space


def _xplane_module() -> Any:
    """TensorFlow's xplane_pb2 module, imported without importing tensorflow if possible."""
    import sys

    name = "tensorflow.tsl.profiler.protobuf.xplane_pb2"
    if name in sys.modules or "tensorflow" in sys.modules:
        return importlib.import_module(name)
    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations:
        raise UNetError("reading a profiler trace needs TensorFlow's xplane_pb2 (tensorflow is not installed)")
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "tsl" / "profiler" / "protobuf" / "xplane_pb2.py"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None or not path.is_file():
        raise UNetError(f"reading a profiler trace needs {path}, which this TensorFlow does not have")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


def find_xplane(logdir: str | pathlib.Path) -> pathlib.Path:
    """The newest `*.xplane.pb` under a profiler log directory; UNetError naming it if there is none."""
    found = sorted(pathlib.Path(logdir).glob("plugins/profile/*/*.xplane.pb"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UNetError(f"{logdir}: no plugins/profile/*/*.xplane.pb (did the profiler run?)")
    return found[-1]


# ------------------------------------------------------------------ tables


def share_rows(table: Mapping[Any, Tally], total_ms: float, top: int | None = None) -> list[list[str]]:
    """Rows [key, count, ms, share %] sorted by time, for format_table; `top` keeps the largest."""
    ordered = sorted(table.items(), key=lambda kv: -kv[1].ms)[:top]
    return [[" / ".join(k) if isinstance(k, tuple) else str(k), str(v.count), f"{v.ms:.1f}",
             f"{100 * v.ms / total_ms:.1f}" if total_ms else "-"] for k, v in ordered]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    cells = [list(headers)] + [list(r) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
