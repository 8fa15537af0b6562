"""unet_medical/base/profiling.py: oneDNN verbose lines and TF profiler XSpaces, aggregated with exact sums.

The inputs are written by hand in the formats oneDNN 3.7 (TF 2.21) and tf.profiler produce; no TensorFlow
import is needed (the XSpace message class is loaded from its file, as load_xspace does).
"""
import pathlib
import sys

import pytest

from unet_medical.base import profiling as prof
from unet_medical.base.errors import UNetError

CONV_RELU = ("onednn_verbose,v1,1000.5,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core_bf16,forward_training,"
             "src:bf16::blocked:acdb::f0 wei:bf16:ap:blocked:Adcb16a::f0 bia:bf16:a:blocked:a::f0 "
             "dst:bf16::blocked:acdb::f0,attr-scratchpad:user attr-post-ops:eltwise_relu,alg:convolution_direct,"
             "mb1_ic1oc8_ih92oh90kh3sh1dh0ph0_iw92ow90kw3sw1dw0pw0,0.25")
CONV_SUM_RELU = CONV_RELU.replace("1000.5", "1001").replace("attr-post-ops:eltwise_relu",
                                                           "attr-post-ops:sum+eltwise_relu:0").replace(",0.25", ",1.5")
CONV_PLAIN = ("onednn_verbose,v1,1002,primitive,exec,cpu,convolution,brgconv_1x1:avx512_core,forward_training,"
              "src:f32::blocked:acdb::f0 wei:f32::blocked:cdba::f0 bia:f32:a:blocked:a::f0 dst:f32::blocked:acdb::f0,"
              "attr-scratchpad:user,alg:convolution_direct,mb1_ic8oc2_ih52oh52kh1sh1dh0ph0_iw52ow52kw1sw1dw0pw0,0.125")
CONV_BWD = ("onednn_verbose,v1,1003,primitive,exec,cpu,convolution,jit_bf16:avx512_core_bf16,backward_weights,"
            "src:bf16::blocked:acdb::f0 wei:bf16:ap:blocked:Acdb16a::f0 bia:bf16::blocked:a::f0 "
            "dst:bf16::blocked:acdb::f0,,alg:convolution_direct,mb1_ic8oc8_ih54oh52kh3sh1dh0ph0_iw54ow52kw3sw1dw0pw0,2")
REORDER = ("onednn_verbose,v1,1004,primitive,exec,cpu,reorder,jit:uni,undef,"
           "src:bf16::blocked:cdba::f0 dst:bf16:p:blocked:Adcb16a::f0,,,8x1x3x3,0.5")
REORDER_CAST = ("onednn_verbose,v1,1005,primitive,exec,cpu,reorder,jit:uni,undef,"
                "src:f32::blocked:acdb::f0 dst:bf16::blocked:aBcd16b::f0,,,1x8x4x4,0.375")
INFO = ["onednn_verbose,v1,info,oneDNN v3.7.3 (commit N/A)",
        "onednn_verbose,v1,primitive,info,template:operation,engine,primitive,implementation,prop_kind,"
        "memory_descriptors,attributes,auxiliary,problem_desc,exec_time",
        "onednn_verbose,v1,graph,info,template:operation,engine,partition_id,partition_kind,op_names",
        "some program output, not oneDNN"]
LOG = INFO + [CONV_RELU, CONV_SUM_RELU, CONV_PLAIN, CONV_BWD, REORDER, REORDER_CAST]


def test_exec_line_fields():
    p = prof.parse_verbose_line(CONV_RELU)
    assert (p.kind, p.implementation, p.prop_kind) == ("convolution", "brg_conv_fwd:avx512_core_bf16", "forward_training")
    assert p.dtypes == (("src", "bf16"), ("wei", "bf16"), ("bia", "bf16"), ("dst", "bf16"))
    assert p.post_ops == ("eltwise_relu",) and p.ms == 0.25 and p.stamp_ms == 1000.5
    assert p.problem == "mb1_ic1oc8_ih92oh90kh3sh1dh0ph0_iw92ow90kw3sw1dw0pw0"
    assert prof.parse_verbose_line(CONV_SUM_RELU).post_ops == ("sum", "eltwise_relu")


def test_line_without_timestamp_and_other_lines():
    no_stamp = CONV_RELU.replace("v1,1000.5,", "v1,")
    assert prof.parse_verbose_line(no_stamp).stamp_ms is None
    assert [prof.parse_verbose_line(line) for line in INFO] == [None] * len(INFO)
    with pytest.raises(ValueError, match="expected 9"):
        prof.parse_verbose_line("onednn_verbose,v1,primitive,exec,cpu,reorder,0.5")
    with pytest.raises(ValueError, match="time in ms"):
        prof.parse_verbose_line(REORDER.replace(",0.5", ",fast"))


def test_compute_dtype_and_fusion():
    execs = prof.parse_verbose(LOG)
    assert [p.compute_dtype for p in execs] == ["bf16", "bf16", "f32", "bf16", "bf16", "bf16"]
    assert [prof.conv_fusion(p) for p in execs[:4]] == ["relu", "sum+relu", "none", "backward"]


def test_verbose_summary_sums():
    s = prof.verbose_summary(prof.parse_verbose(LOG))
    assert s["count"] == 6 and s["total_ms"] == pytest.approx(4.75)
    assert s["by_kind"] == {"convolution": prof.Tally(4, 3.875), "reorder": prof.Tally(2, 0.875)}
    assert s["by_implementation"][("convolution", "brg_conv_fwd:avx512_core_bf16")] == prof.Tally(2, 1.75)
    assert s["by_dtype"] == {"bf16": prof.Tally(5, 4.625), "f32": prof.Tally(1, 0.125)}
    assert s["conv_by_fusion"] == {"relu": prof.Tally(1, 0.25), "sum+relu": prof.Tally(1, 1.5),
                                   "none": prof.Tally(1, 0.125), "backward": prof.Tally(1, 2.0)}
    assert s["reorder_by_dtypes"] == {"bf16->bf16": prof.Tally(1, 0.5), "f32->bf16": prof.Tally(1, 0.375)}
    assert s["reorder_share"] == pytest.approx(0.875 / 4.75)
    halved = prof.verbose_summary(prof.parse_verbose(LOG), steps=2)
    assert halved["total_ms"] == pytest.approx(2.375) and halved["count"] == 6
    assert halved["by_kind"] == {"convolution": prof.Tally(2, 1.9375), "reorder": prof.Tally(1, 0.4375)}
    assert halved["reorder_share"] == s["reorder_share"]


def test_execs_between_keeps_the_window_and_needs_stamps():
    execs = prof.parse_verbose(LOG)
    assert [p.ms for p in prof.execs_between(execs, 1001, 1003)] == [1.5, 0.125, 2.0]
    with pytest.raises(ValueError, match="ONEDNN_VERBOSE_TIMESTAMP"):
        prof.execs_between(prof.parse_verbose([CONV_RELU.replace("v1,1000.5,", "v1,")]), 0, 1)


# ------------------------------------------------------------------ XSpace

def xplane_module():
    return prof._xplane_module()


def build_space():
    """Two threads; times in ps from each line's timestamp_ns. Step window 0: [1000 ns, 11000 ns)."""
    xp = xplane_module()
    space = xp.XSpace()
    space.planes.add(name="Task Environment")
    plane = space.planes.add(name=prof.HOST_PLANE)
    names = {1: "unet/enc1_conv1/Relu:_MklNativeFusedConv2D", 2: "gradient_tape/unet/enc1_relu1/ReluGrad:ReluGrad",
             3: "Adam/mul:Mul", 4: "unet/enc1_conv1/Conv2D/Cast:Cast", 5: "ThreadpoolListener::Record",
             6: " __inference_train_step_3065", 7: prof.STEP_EVENT, 8: "unet/dec1_concat:ConcatV2"}
    for key, name in names.items():
        plane.event_metadata[key].id = key
        plane.event_metadata[key].name = name
    python = plane.lines.add(name="python", timestamp_ns=1)  # 1 ns = 1000 ps base
    python.events.add(metadata_id=7, offset_ps=0, duration_ps=10_000_000)       # step [1000, 10_001_000) ps
    python.events.add(metadata_id=6, offset_ps=0, duration_ps=9_000_000)
    worker = plane.lines.add(name="tf_Compute/1", timestamp_ns=2)  # base 2000 ps
    worker.events.add(metadata_id=1, offset_ps=0, duration_ps=4_000_000)        # [2000, 4_002_000)
    worker.events.add(metadata_id=2, offset_ps=5_000_000, duration_ps=1_000_000)  # [5_002_000, 6_002_000)
    worker.events.add(metadata_id=5, offset_ps=6_000_000, duration_ps=500_000)  # runtime event, not an op
    other = plane.lines.add(name="tf_Compute/2", timestamp_ns=3)  # base 3000 ps
    other.events.add(metadata_id=4, offset_ps=1_000_000, duration_ps=2_000_000)  # [1_003_000, 3_003_000): overlaps
    other.events.add(metadata_id=3, offset_ps=7_000_000, duration_ps=1_000_000)  # [7_003_000, 8_003_000)
    other.events.add(metadata_id=8, offset_ps=20_000_000, duration_ps=1_000_000)  # after the step window
    return space


def test_split_op_fullname():
    assert prof.split_op_fullname("unet/enc1_conv1/Relu:_MklNativeFusedConv2D") == (
        "unet/enc1_conv1/Relu", "_MklNativeFusedConv2D")
    for not_an_op in ("ThreadpoolListener::Record", " __inference_train_step_3065", "EagerExecute",
                      "EagerLocalExecute: Mul", "name:lowercase"):
        assert prof.split_op_fullname(not_an_op) is None, not_an_op


def test_op_events_from_a_proto_round_trip(tmp_path):
    path = tmp_path / "host.xplane.pb"
    path.write_bytes(build_space().SerializeToString())
    events = prof.op_events(prof.load_xspace(path))
    assert [(e.op_type, e.start_ps, e.duration_ps, e.thread) for e in events] == [
        ("_MklNativeFusedConv2D", 2000, 4_000_000, "tf_Compute/1"),
        ("Cast", 1_003_000, 2_000_000, "tf_Compute/2"),
        ("ReluGrad", 5_002_000, 1_000_000, "tf_Compute/1"),
        ("Mul", 7_003_000, 1_000_000, "tf_Compute/2"),
        ("ConcatV2", 20_003_000, 1_000_000, "tf_Compute/2"),
    ]


def test_step_windows_and_host_gaps():
    space = build_space()
    windows = prof.step_windows(space)
    assert windows == [(1000, 10_001_000)]
    events = [e for e in prof.op_events(space) if e.start_ps < windows[0][1]]
    # busy: [2000, 4_002_000) + [5_002_000, 6_002_000) + [7_003_000, 8_003_000) = 6_000_000 ps (the Cast overlaps)
    assert prof.host_gaps(events, windows) == [{"wall_ms": 0.01, "op_ms": 0.006, "host_ms": 0.004}]


def test_covered_ps_clips_and_merges():
    assert prof.covered_ps([(0, 10), (5, 15), (20, 30), (40, 50)], (8, 25)) == 12  # 8..15 and 20..25
    assert prof.covered_ps([], (0, 10)) == 0


def test_op_summary_per_kind_phase_and_type():
    events = [e for e in prof.op_events(build_space()) if e.op_type != "ConcatV2"]
    s = prof.op_summary(events, steps=1)
    assert s["total_ms"] == pytest.approx(0.008)
    assert s["by_kind"] == {"convolution": prof.Tally(1, 0.004), "cast": prof.Tally(1, 0.002),
                            "element-wise": prof.Tally(2, 0.002)}
    assert s["by_phase_kind"][("backward", "element-wise")] == prof.Tally(1, 0.001)
    assert s["by_phase_kind"][("optimizer", "element-wise")] == prof.Tally(1, 0.001)
    assert s["by_phase_kind"][("forward", "cast")] == prof.Tally(1, 0.002)
    halved = prof.op_summary(events, steps=2)
    assert halved["total_ms"] == pytest.approx(0.004) and halved["by_type"]["Cast"].ms == pytest.approx(0.001)


@pytest.mark.parametrize("op_type, kind", [
    ("_MklNativeFusedConv2D", "convolution"), ("_MklNativeConv2DBackpropFilterWithBias", "convolution"),
    ("_MklNativeFusedBatchNormV3", "batch_norm"), ("FusedBatchNormGradV3", "batch_norm"), ("Cast", "cast"),
    ("Transpose", "layout"), ("_MklToTf", "layout"), ("_MklNativeMaxPoolGrad", "pooling"), ("ConcatV2", "copy"),
    ("ReadVariableOp", "variables"), ("BiasAddGrad", "reduction"), ("ReluGrad", "element-wise"),
    ("_MklSoftmax", "element-wise"), ("SomethingNew", "other"),
])
def test_op_kind(op_type, kind):
    assert prof.op_kind(op_type) == kind


def test_missing_host_plane_and_trace_are_named(tmp_path):
    space = xplane_module().XSpace()
    space.planes.add(name="/device:GPU:0")
    with pytest.raises(UNetError, match="/host:CPU"):
        prof.op_events(space)
    with pytest.raises(UNetError, match=str(tmp_path)):
        prof.find_xplane(tmp_path)


def test_tables():
    rows = prof.share_rows({"a": prof.Tally(1, 1.0), ("b", "c"): prof.Tally(2, 3.0)}, 4.0)
    assert rows == [["b / c", "2", "3.0", "75.0"], ["a", "1", "1.0", "25.0"]]
    assert prof.format_table(["k", "n"], [["ab", "1"]]).splitlines() == ["k   n", "--  -", "ab  1"]


def test_parsers_do_not_import_tensorflow():
    """In a fresh interpreter (a pytest worker may have imported TensorFlow already): importing the module
    and loading the XPlane proto module must not pull TensorFlow in."""
    import subprocess

    code = ("import sys; from unet_medical.base import profiling as p; p._xplane_module(); "
            "print('tensorflow' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=pathlib.Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "False"


# ------------------------------------------------------------------ benchmarks/env_ab.py (A/B of a setting)

def env_ab():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "env_ab.py"
    spec = importlib.util.spec_from_file_location("env_ab", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_env_ab_sides_and_summary():
    ab = env_ab()
    assert ab.parse_assignments(["TF_NUM_INTEROP_THREADS=1", "X=a=b"]) == {"TF_NUM_INTEROP_THREADS": "1", "X": "a=b"}
    with pytest.raises(UNetError, match="'NOVALUE'"):
        ab.parse_assignments(["NOVALUE"])
    assert ab.side_env({"A": "1", "B": "2"}, {"C": "3", "A": "9"}, ["B"]) == {"A": "9", "C": "3"}
    summary = ab.summarize({"A": [1.0, 3.0, 2.0], "B": [2.0, 3.0]})
    assert summary["median"] == {"A": 2.0, "B": 2.5} and summary["ratio_b_over_a"] == 1.25


def test_env_ab_contention_shares():
    ab = env_ab()
    before = ab.cpu_ticks("cpu  100 10 20 70 0 0 0 0 0 0\ncpu0 50 5 10 35 0 0 0 0 0 0\n")
    after = ab.cpu_ticks("cpu  160 40 30 80 0 0 0 10 0 0\n")
    assert before == {"user": 100, "nice": 10, "system": 20, "idle": 70, "iowait": 0, "irq": 0, "softirq": 0,
                      "steal": 0}
    assert ab.other_work_share(before, after) == {"nice": 0.25, "steal": 10 / 120, "idle": 10 / 120}
    with pytest.raises(UNetError, match="/proc/stat"):
        ab.cpu_ticks("intr 1 2 3\n")
