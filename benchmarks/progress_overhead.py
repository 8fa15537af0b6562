"""Overhead of the progress machinery (utils.progress) on training.

    python benchmarks/progress_overhead.py --data_dir DATA [--steps 300] [--repeats 3]

1. Per call: Progress.update() without a bar (log files), with a tqdm bar (drawn to /dev/null), and
   Progress.log() through a stdout + JSON DLLogger (stdout sent to /dev/null), in microseconds.
2. End to end: the same short training run (tiny same-padding U-Net, --log_every 10) with the real
   Progress and with a stand-in that only forwards the loop's log records to the logger (what the
   loop did before utils.progress), interleaved A/B `repeats` times; the median training time of each.
The last line is machine-readable.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import unet_medical  # noqa: E402,F401

from unet_medical.base import runlog  # noqa: E402
from unet_medical.base.progress import Progress  # noqa: E402


class ForwardOnly:
    """The loop's logging without progress: log(**metrics) -> logger.log(step, metrics)."""

    def __init__(self, total, label, logger=None, *, initial=0, enabled=True, **_):
        self.done, self.logger, self.enabled = initial, logger, enabled

    def update(self, n=1, **_):
        self.done += n

    def log(self, **metrics):
        if self.enabled:
            self.logger.log(self.done, metrics)

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()


def per_call_us(calls: int, make, action) -> float:
    progress = make()
    start = time.perf_counter()
    for _ in range(calls):
        action(progress)
    elapsed = time.perf_counter() - start
    progress.close()
    return elapsed / calls * 1e6


def micro(tmp: pathlib.Path) -> dict[str, float]:
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        logger = runlog.Logger([runlog.StdOutBackend(), runlog.JSONStreamBackend(tmp / "micro.json")])
        n = 200_000
        results = {
            "update_no_bar_us": per_call_us(n, lambda: Progress(n, "x", logger, bar=False, interval_s=10.0),
                                            lambda p: p.update()),
            "update_bar_us": per_call_us(n, lambda: Progress(n, "x", logger, bar=True, stream=null),
                                         lambda p: p.update()),
            "log_us": per_call_us(2000, lambda: Progress(2000, "x", logger, bar=False, interval_s=None,
                                                         integer_steps=True),
                                  lambda p: (p.update(), p.log(loss=0.5, img_per_s=10.0, learning_rate=1e-4))),
            "log_forward_only_us": per_call_us(2000, lambda: ForwardOnly(2000, "x", logger),
                                               lambda p: (p.update(), p.log(loss=0.5, img_per_s=10.0,
                                                                            learning_rate=1e-4))),
        }
        logger.close()
    return results


def train_seconds(data_dir: str, model_dir: pathlib.Path, steps: int, progress_cls) -> float:
    import unet_medical.training.loop as loop
    from unet_medical.cli.assemble import make_logger
    from unet_medical.cli.config import parse_config
    from unet_medical.cli.modes import run_training
    from unet_medical.training import distributed

    cfg = parse_config(["--exec_mode", "train", "--data_dir", data_dir, "--model_dir", str(model_dir),
                        "--padding", "same", "--base_filters", "4", "--depth", "2", "--crop_size", "64",
                        "--batch_size", "2", "--max_steps", str(steps), "--log_every", "10",
                        "--checkpoint_every", str(steps), "--num_folds", "10"])
    original, loop.Progress = loop.Progress, progress_cls
    times = []
    real_train = loop.train

    def timed_train(*args, **kwargs):
        start = time.perf_counter()
        try:
            return real_train(*args, **kwargs)
        finally:
            times.append(time.perf_counter() - start)

    try:
        loop.train = timed_train
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            logger = make_logger(cfg, 0)
            run_training(cfg, logger, distributed.create())
            logger.close()
    finally:
        loop.Progress, loop.train = original, real_train
    return times[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        costs = micro(tmp)
        for key, value in costs.items():
            print(f"{key}: {value:.2f}")
        runs = {"progress": [], "forward_only": []}
        for r in range(args.repeats):
            for name, cls in (("progress", Progress), ("forward_only", ForwardOnly)):
                seconds = train_seconds(args.data_dir, tmp / f"{name}{r}", args.steps, cls)
                runs[name].append(seconds)
                print(f"repeat {r} {name}: {seconds:.2f} s for {args.steps} steps", flush=True)
    with_p, without = statistics.median(runs["progress"]), statistics.median(runs["forward_only"])
    print(f"steps={args.steps} train_s_progress={with_p:.3f} train_s_forward_only={without:.3f} "
          f"overhead_pct={(with_p - without) / without * 100:.2f} "
          + " ".join(f"{k}={v:.2f}" for k, v in costs.items()))


if __name__ == "__main__":
    main()
