"""The one timing helper: every latency and throughput figure in the project is measured here.

Wall time of whole calls (time.perf_counter); a call must return only when its work is done (e.g. after
copying a result to the host). Several candidates are timed alternating (A B C A B C ...), so a
machine whose speed drifts (shared cores, turbo) affects them alike and their ratios hold.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

PERCENTILES = (50, 90, 95, 99)


def time_steps(step: Callable[[int], Any], warmup: int, steps: int) -> list[float]:
    """Run step(i) for i in 0..warmup+steps-1; return the wall times (s) of the last `steps` calls."""
    for i in range(warmup):
        step(i)
    times = []
    for i in range(warmup, warmup + steps):
        start = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - start)
    return times


def time_alternating(calls: Mapping[Any, Callable[[], Any]], warmup: int, rounds: int) -> dict[Any, list[float]]:
    """Wall times (s) of every call in `calls`, alternated A B C A B C ... over `rounds` rounds, after
    `warmup` untimed rounds (tracing, allocation and caches are not latency). {name: [s per round]}."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[Any, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            times[name] += time_steps(lambda _, call=call: call(), 0, 1)
    return times


def latency_stats(seconds: Sequence[float]) -> dict[str, float]:
    """Mean and p50/p90/p95/p99 of per-call wall times; input in seconds, output in milliseconds."""
    ms = np.asarray(seconds, np.float64) * 1e3
    if ms.size == 0:
        raise ValueError("no timed steps")
    stats = {"latency_ms_mean": float(ms.mean())}
    for p in PERCENTILES:
        stats[f"latency_ms_p{p}"] = float(np.percentile(ms, p))
    return stats


def latency_summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """Median, p90 and max in milliseconds of per-call wall times in seconds, and how many there were."""
    ms = np.asarray(seconds, np.float64) * 1e3
    if ms.size == 0:
        raise ValueError("no timed calls")
    return {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)), "max_ms": float(ms.max()),
            "runs": int(ms.size)}


def throughput(images_per_step: int, seconds: Sequence[float]) -> dict[str, float]:
    """img_per_s: all images / all time; img_per_s_step_mean: mean over steps of images / step time."""
    s = np.asarray(seconds, np.float64)
    return {"img_per_s": float(images_per_step * s.size / s.sum()),
            "img_per_s_step_mean": float(np.mean(images_per_step / s))}
