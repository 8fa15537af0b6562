"""Does an environment setting (thread pools, allocator, oneDNN knobs) speed up the product's benchmark?

    python benchmarks/env_ab.py --set NAME=VALUE [--set ...] [--unset NAME ...] [--rounds 2]
        --out DIR -- MAIN.PY BENCHMARK FLAGS (--exec_mode benchmark --benchmark_mode train ...)

Runs `main.py` with the given flags in fresh processes, A (the environment as it is) and B (with the
--set values and without the --unset names), alternated A B A B ... `rounds` times, so drift of a shared
machine hits both alike. Each run writes its own OUT/{A,B}_rK/benchmark_results.json; the summary gives per
side the img/s of every round, the median, and the ratio B / A of the medians (> 1: B is faster), with
the CPU and the load average before and after. Settings read at process start (TF_NUM_INTEROP_THREADS,
TF_CPU_ALLOCATOR_USE_BFC, ...) can only be compared this way.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
from typing import Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from unet_medical.base.cpu import describe, read_cpu_info  # noqa: E402  (standard library and NumPy only)
from unet_medical.base.errors import UNetError  # noqa: E402


def parse_assignments(items: Sequence[str]) -> dict[str, str]:
    """{'NAME': 'VALUE'} of --set NAME=VALUE items; UNetError naming an item without '='."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UNetError(f"--set {item!r}: expected NAME=VALUE")
        out[name] = value
    return out


def side_env(base: dict[str, str], set_: dict[str, str], unset: Sequence[str]) -> dict[str, str]:
    """The B environment: `base` with `set_` applied and `unset` removed."""
    env = {k: v for k, v in base.items() if k not in unset}
    env.update(set_)
    return env


def summarize(results: dict[str, list[float]]) -> dict[str, object]:
    """Medians of img/s per side and the ratio B / A of the medians."""
    medians = {side: statistics.median(values) for side, values in results.items()}
    return {"img_per_s": results, "median": medians, "ratio_b_over_a": medians["B"] / medians["A"]}


def load_average() -> str:
    return " ".join(pathlib.Path("/proc/loadavg").read_text().split()[:3])


def cpu_ticks(stat_text: str) -> dict[str, int]:
    """The aggregate 'cpu' line of /proc/stat as {user, nice, system, idle, iowait, irq, softirq, steal}."""
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    for line in stat_text.splitlines():
        if line.startswith("cpu "):
            return dict(zip(names, (int(v) for v in line.split()[1:9])))
    raise UNetError("/proc/stat has no aggregate 'cpu' line")


def other_work_share(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    """Shares of all CPU time between two /proc/stat readings: 'nice' is niced work of other processes (the
    runs themselves are not niced), 'steal' time the hypervisor gave to other machines. Either one large
    means the round was measured on a shared machine."""
    delta = {k: after[k] - before[k] for k in before}
    total = sum(delta.values()) or 1
    return {"nice": delta["nice"] / total, "steal": delta["steal"] / total, "idle": delta["idle"] / total}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", action="append", default=[], help="NAME=VALUE set on side B")
    parser.add_argument("--unset", action="append", default=[], help="NAME removed on side B")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", required=True, help="a new folder for the runs and summary.json")
    parser.add_argument("flags", nargs="+", help="main.py flags, after --")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        raise UNetError(f"--rounds {args.rounds}: must be >= 1")
    out = pathlib.Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise UNetError(f"--out {out}: not empty (the runs must not overwrite a record)")
    envs = {"A": dict(os.environ), "B": side_env(dict(os.environ), parse_assignments(args.set), args.unset)}
    results: dict[str, list[float]] = {"A": [], "B": []}
    contention: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    load_before = load_average()
    out.mkdir(parents=True, exist_ok=True)
    for k in range(args.rounds):
        for side in ("A", "B"):
            run_dir = out / f"{side}_r{k}"
            cmd = [sys.executable, str(REPO / "main.py"), *args.flags, "--model_dir", str(run_dir)]
            ticks = cpu_ticks(pathlib.Path("/proc/stat").read_text())
            with open(out / f"{side}_r{k}.log", "w") as log:
                code = subprocess.call(cmd, env=envs[side], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
            shares = other_work_share(ticks, cpu_ticks(pathlib.Path("/proc/stat").read_text()))
            contention[side].append(shares)
            if code != 0:
                raise UNetError(f"run {side} round {k} failed (exit {code}): see {out / f'{side}_r{k}.log'}")
            value = json.loads((run_dir / "benchmark_results.json").read_text())["img_per_s"]
            results[side].append(value)
            print(f"round {k} {side}: {value:.4f} img/s (CPU time to niced other work {100 * shares['nice']:.0f} %, "
                  f"steal {100 * shares['steal']:.0f} %, idle {100 * shares['idle']:.0f} %)", flush=True)
    summary = summarize(results)
    summary.update(contention=contention, cpu=describe(read_cpu_info()), load_before=load_before, load_after=load_average(),
                   set=args.set, unset=args.unset, flags=args.flags)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"A {summary['median']['A']:.4f} img/s, B ({' '.join(args.set + ['-' + u for u in args.unset])}) "
          f"{summary['median']['B']:.4f} img/s (medians of {args.rounds}); B / A = {summary['ratio_b_over_a']:.3f}; "
          f"{summary['cpu']}; load {load_before} before, {summary['load_after']} after")


if __name__ == "__main__":
    try:
        main()
    except UNetError as exc:
        sys.exit(f"env_ab: {exc}")
