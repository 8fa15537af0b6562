"""The one timing helper: every latency and throughput figure in the project is measured here.

Wall time of whole calls (time.perf_counter); a call must return only when its work is done (e.g. after
copying a result to the host). Several candidates are timed round-robin (A B C A B C ...), so a
machine whose speed drifts (shared cores, turbo) affects them alike and their ratios hold.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np

PERCENTILES = (50, 90, 95, 99)


def time_steps(step: Callable[[int], Any], warmup: int, steps: int) -> list[float]:
    """Run step(i) for i in 0..warmup+steps-1; return the wall times (s) of the last `steps` calls."""
    return time_round_robin([step], warmup, steps)[0]


def time_round_robin(calls: Sequence[Callable[[int], Any]], warmup: int, runs: int) -> list[list[float]]:
    """Time several calls alternating A B ... A B ...; per call, the wall times (s) of `runs` timed rounds.

    Every call is made `warmup` times first (tracing, allocation and caches are not latency); call(i)
    gets the running round index i.
    """
    for i in range(warmup):
        for call in calls:
            call(i)
    times: list[list[float]] = [[] for _ in calls]
    for i in range(warmup, warmup + runs):
        for call, samples in zip(calls, times):
            start = time.perf_counter()
            call(i)
            samples.append(time.perf_counter() - start)
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


def median_latency(seconds: Sequence[float]) -> dict[str, float]:
    """{"median_ms", "max_ms", "runs"} of per-call wall times given in seconds."""
    ms = np.asarray(seconds, np.float64) * 1e3
    return {"median_ms": float(np.median(ms)), "max_ms": float(ms.max()), "runs": int(ms.size)}


def throughput(images_per_step: int, seconds: Sequence[float]) -> dict[str, float]:
    """img_per_s: all images / all time; img_per_s_step_mean: mean over steps of images / step time."""
    s = np.asarray(seconds, np.float64)
    return {"img_per_s": float(images_per_step * s.size / s.sum()),
            "img_per_s_step_mean": float(np.mean(images_per_step / s))}
