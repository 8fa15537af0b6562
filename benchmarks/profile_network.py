"""Where a training step and an inference step spend their time: oneDNN's verbose log and a TF profiler trace.

    python benchmarks/profile_network.py [--mode train predict] [--precision auto] [--size 572]
        [--batch_size 1] [--warmup 2] [--steps 3] [--bench_input synthetic|real] [--data_dir DIR]
        [--out DIR] [-- more main.py flags, e.g. --base_filters 16 --depth 3]

Runs the project's own benchmark step (unet_medical.cli.benchmark.benchmark_step: the paper U-Net by
default, the precision --precision auto picks) in two child processes per mode, so neither probe
disturbs the other: one with ONEDNN_VERBOSE=1 (oneDNN reads it once at start-up, and timing every
primitive slows the step), one under tf.profiler.experimental. Warm-up steps (tracing, autotuning,
primitive creation) run first and are left out of both. Prints, per mode: oneDNN time by primitive kind
and implementation, convolutions by fused post-ops, reorders and data types; TF op time by kind and by
phase (forward, backward, optimizer), the top op types, and host time (no TF op running) per step
against its wall time. Everything also goes to OUT/profile.json; the raw log and trace stay in OUT.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import unet_medical  # noqa: E402,F401
from unet_medical.base import profiling as prof  # noqa: E402
from unet_medical.base.errors import UNetError  # noqa: E402

MODES = ("train", "predict")
PROBES = ("onednn", "trace")


def child_argv(args: argparse.Namespace, mode: str, model_dir: pathlib.Path) -> list[str]:
    """main.py flags of the benchmark the child runs (the size sets the training crop or the tile)."""
    argv = ["--exec_mode", "benchmark", "--benchmark_mode", mode, "--batch_size", str(args.batch_size),
            "--precision", args.precision, "--bench_warmup_steps", str(args.warmup),
            "--bench_steps", str(args.steps), "--bench_input", args.bench_input, "--model_dir", str(model_dir)]
    if args.size:
        argv += ["--crop_size" if mode == "train" else "--tile_size", str(args.size)]
    if args.data_dir:
        argv += ["--data_dir", args.data_dir]
    return argv + list(args.extra)


def run_child(probe: str, argv: Sequence[str], out: pathlib.Path) -> None:
    """In this process: build the benchmark step, warm up, then run the timed steps under `probe`.
    Writes out/window.json (epoch ms of the timed steps and each step's seconds); the trace goes to out/trace."""
    from unet_medical.cli.config import parse_config
    from unet_medical.cli.benchmark import benchmark_step
    from unet_medical.training import distributed
    import tensorflow as tf

    cfg = parse_config(list(argv))
    step, info = benchmark_step(cfg, distributed.create("single"))
    for i in range(cfg.bench_warmup_steps):
        step(i)
    if probe == "trace":
        tf.profiler.experimental.start(str(out / "trace"))
    seconds = []
    usage = resource.getrusage(resource.RUSAGE_SELF)
    start_ms = time.time() * 1e3
    for i in range(cfg.bench_warmup_steps, cfg.bench_warmup_steps + cfg.bench_steps):
        begin = time.perf_counter()
        with tf.profiler.experimental.Trace(prof.STEP_EVENT, step_num=i):
            step(i)
        seconds.append(time.perf_counter() - begin)
    stop_ms = time.time() * 1e3
    rusage = per_step_rusage(usage, resource.getrusage(resource.RUSAGE_SELF), cfg.bench_steps)
    if probe == "trace":
        tf.profiler.experimental.stop()
    sys.stdout.flush()
    info = {k: v for k, v in info.items() if isinstance(v, (int, float, str))}
    (out / "window.json").write_text(json.dumps({"start_ms": start_ms, "stop_ms": stop_ms, "seconds": seconds,
                                                 "rusage": rusage, "info": info}))


def per_step_rusage(before: Any, after: Any, steps: int) -> dict[str, float]:
    """CPU seconds (user, system) and minor page faults per step between two getrusage readings: the
    allocator's cost shows as page faults (fresh pages for each step's large tensors) and system time."""
    return {"user_s": (after.ru_utime - before.ru_utime) / steps, "sys_s": (after.ru_stime - before.ru_stime) / steps,
            "minor_faults": (after.ru_minflt - before.ru_minflt) / steps}


def spawn(probe: str, mode: str, args: argparse.Namespace, out: pathlib.Path) -> dict[str, Any]:
    """Run one probe of one mode in a child process; returns its window.json. The oneDNN log goes to
    out/onednn.log (oneDNN prints to stdout), the child's stderr to out/stderr.log."""
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if probe == "onednn":
        env.update(ONEDNN_VERBOSE="1", ONEDNN_VERBOSE_TIMESTAMP="1")
    with tempfile.TemporaryDirectory() as run_dir:  # the product refuses to reuse a run folder
        cmd = [sys.executable, __file__, "--child", probe, "--out", str(out), "--",
               *child_argv(args, mode, pathlib.Path(run_dir) / "run")]
        with open(out / "onednn.log" if probe == "onednn" else os.devnull, "w") as stdout, \
                open(out / "stderr.log", "w") as stderr:
            code = subprocess.call(cmd, stdout=stdout, stderr=stderr, env=env)
    if code != 0:
        raise UNetError(f"profile child ({probe}, {mode}) failed with exit code {code}: see {out / 'stderr.log'}")
    return json.loads((out / "window.json").read_text())


def onednn_report(out: pathlib.Path, window: dict[str, Any], steps: int) -> dict[str, Any]:
    with open(out / "onednn.log") as lines:
        execs = prof.execs_between(prof.parse_verbose(lines), window["start_ms"], window["stop_ms"])
    summary = prof.verbose_summary(execs, steps)
    summary["step_wall_ms"] = 1e3 * statistics.median(window["seconds"])
    return summary


def trace_report(out: pathlib.Path, window: dict[str, Any], steps: int) -> dict[str, Any]:
    space = prof.load_xspace(prof.find_xplane(out / "trace"))
    events = prof.op_events(space)
    windows = prof.step_windows(space)
    inside = [e for e in events if any(a <= e.start_ps < b for a, b in windows)]
    summary = prof.op_summary(inside, steps=len(windows) or steps)
    summary["steps"] = prof.host_gaps(inside, windows)
    seconds = sorted(window["seconds"])
    summary["step_ms"] = {"mean": 1e3 * statistics.fmean(seconds), "p50": 1e3 * statistics.median(seconds)}
    summary["rusage"] = window["rusage"]
    return summary


def print_report(mode: str, info: dict[str, Any], onednn: dict[str, Any], trace: dict[str, Any], top: int) -> None:
    total = onednn["total_ms"]
    print(f"\n=== {mode}: {info.get('precision')} input {info.get('input_size')} "
          f"({onednn['count']} oneDNN primitives over the timed steps) ===")
    print(f"oneDNN: {total:.1f} ms of primitives per step (step wall {onednn['step_wall_ms']:.1f} ms "
          f"with verbose on); reorders {100 * onednn['reorder_share']:.1f} % of primitive time")
    print(prof.format_table(["primitive kind", "n/step", "ms/step", "%"], prof.share_rows(onednn["by_kind"], total)))
    print(prof.format_table(["kind / implementation", "n/step", "ms/step", "%"],
                            prof.share_rows(onednn["by_implementation"], total, top)))
    print(prof.format_table(["convolution: fused post-ops", "n/step", "ms/step", "%"],
                            prof.share_rows(onednn["conv_by_fusion"], total)))
    print(prof.format_table(["reorder src->dst dtype", "n/step", "ms/step", "%"],
                            prof.share_rows(onednn["reorder_by_dtypes"], total)))
    print(prof.format_table(["compute dtype", "n/step", "ms/step", "%"], prof.share_rows(onednn["by_dtype"], total)))
    ops = trace["total_ms"]
    print(f"TF ops: {ops:.1f} ms of op time per step (both threads); step mean {trace['step_ms']['mean']:.1f} ms, "
          f"p50 {trace['step_ms']['p50']:.1f} ms under the profiler")
    print(prof.format_table(["op kind", "n/step", "ms/step", "%"], prof.share_rows(trace["by_kind"], ops)))
    print(prof.format_table(["phase / kind", "n/step", "ms/step", "%"],
                            prof.share_rows(trace["by_phase_kind"], ops, top)))
    print(prof.format_table(["op type", "n/step", "ms/step", "%"], prof.share_rows(trace["by_type"], ops, top)))
    use = trace["rusage"]
    print(f"per step under the profiler: {use['user_s']:.2f} s user CPU, {use['sys_s']:.3f} s system CPU, "
          f"{use['minor_faults']:.0f} minor page faults")
    rows = [[str(i), f"{s['wall_ms']:.1f}", f"{s['op_ms']:.1f}", f"{s['host_ms']:.1f}",
             f"{100 * s['host_ms'] / s['wall_ms']:.1f}"] for i, s in enumerate(trace["steps"])]
    print(prof.format_table(["step", "wall ms", "some op running", "no op (host)", "host %"], rows))


def jsonable(value: Any) -> Any:
    """Tallies and tuple keys as JSON: {"kind / impl": {"count": n, "ms": t}}."""
    if isinstance(value, prof.Tally):
        return {"count": value.count, "ms": value.ms}
    if isinstance(value, dict):
        return {(" / ".join(k) if isinstance(k, tuple) else str(k)): jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--precision", default="auto", help="main.py --precision (auto: the product's choice)")
    parser.add_argument("--size", type=int, help="training crop / inference tile in pixels (default: the product's, "
                                                 "572 for the paper net)")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before the profiled ones")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps")
    parser.add_argument("--bench_input", choices=("synthetic", "real"), default="synthetic")
    parser.add_argument("--data_dir")
    parser.add_argument("--out", help="where logs, traces and profile.json go (default: a new temporary folder)")
    parser.add_argument("--top", type=int, default=10, help="rows of the per-implementation and per-op tables")
    parser.add_argument("--child", choices=PROBES, help=argparse.SUPPRESS)
    parser.add_argument("extra", nargs="*", help="more main.py flags, after --")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1:
        raise UNetError(f"--steps {args.steps} / --warmup {args.warmup}: both must be >= 1 (the first step traces)")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        run_child(args.child, args.extra, pathlib.Path(args.out))
        return
    out = pathlib.Path(args.out or tempfile.mkdtemp(prefix="profile_network_"))
    report: dict[str, Any] = {"cpu": cpu_name(), "loadavg": load_average(), "argv": sys.argv[1:]}
    for mode in args.mode:
        windows = {probe: spawn(probe, mode, args, out / mode / probe) for probe in PROBES}
        onednn = onednn_report(out / mode / "onednn", windows["onednn"], args.steps)
        trace = trace_report(out / mode / "trace", windows["trace"], args.steps)
        info = windows["trace"]["info"]
        print_report(mode, info, onednn, trace, args.top)
        report[mode] = {"info": info, "onednn": jsonable(onednn), "tf_ops": jsonable(trace)}
    report["loadavg_after"] = load_average()
    (out / "profile.json").write_text(json.dumps(report, indent=1))
    print(f"\n{report['cpu']}; load {report['loadavg']} before, {report['loadavg_after']} after; written: "
          f"{out / 'profile.json'}")


def cpu_name() -> str:
    from unet_medical.base.cpu import describe, read_cpu_info

    return describe(read_cpu_info())


def load_average() -> str:
    try:
        return " ".join(pathlib.Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


if __name__ == "__main__":
    try:
        main()
    except UNetError as exc:
        sys.exit(f"profile_network: {exc}")
