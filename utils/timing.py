"""The one timing helper: every latency and throughput figure in the project is measured here.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np



PERCENTILES = (50, 90, 95, 99)



def latency_stats(seconds: Sequence[float]) -> dict[str, float]:
    """Mean and p50/p90/p95/p99 of per-step wall times; input in seconds, output in milliseconds."""
    ms = np.asarray(seconds, np.float64) * 1e3
    if ms.size == 0:
        raise ValueError("no timed steps")
    stats = {"latency_ms_mean": float(ms.mean())}
    for p in PERCENTILES:
        stats[f"latency_ms_p{p}"] = float(np.percentile(ms, p))
    return stats



def throughput(images_per_step: int, seconds: Sequence[float]) -> dict[str, float]:
    """img_per_s: all images / all time; img_per_s_step_mean: mean over steps of images / step time."""
    s = np.asarray(seconds, np.float64)
    return {"img_per_s": float(images_per_step * s.size / s.sum()),
            "img_per_s_step_mean": float(np.mean(images_per_step / s))}



def time_steps(step: Callable[[int], Any], warmup: int, steps: int) -> list[float]:
    """Run step(i) for i in 0..warmup+steps-1; return the wall times (s) of the last `steps` calls.

    `step` must return only when its work is done (e.g. after copying a result to the host).
    """
    for i in range(warmup):
        step(i)
    times = []
    for i in range(warmup, warmup + steps):
        start = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - start)
    return times

