"""How well a --time_budget run spends its budget: (training + decision) seconds / budget, for the CPU recipe.

    python benchmarks/time_budget.py [--minutes 2] [--kind vessels | --data_dir DIR] [--runs 1]

Generates a synthetic data set (download_dataset.py --synthetic --kind KIND), or takes DIR as it is, runs
examples/unet_CPU_TRAIN.sh on it with `--time_budget MINUTES` (the recipe's evaluations, checkpoints and
the decision on validation are inside the budget), reads the run's RECIPE records (the step time measured
after warm-up, the steps chosen, the training seconds, training and decision together) and prints one line
per run: the ratio budget_spent_s / budget, the whole command's wall time (loading, SavedModel and report
included: the CPU recipe's runs must end under 20 minutes), and what each candidate of the run's decision
(threshold, test-time flips: cli.decide) scored on validation. The target is 1.0 +- 0.1 on an idle machine;
read /proc/cpuinfo and the load average beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from unet_medical.base.cpu import describe, read_cpu_info  # noqa: E402


def recipe_records(log: pathlib.Path) -> list[dict]:
    """The RECIPE records of a run's log.json (JSON lines after the DLLL prefix)."""
    records = [json.loads(line[5:]) for line in log.read_text().splitlines() if line.startswith("DLLL ")]
    return [r["data"] for r in records if r.get("step") == "RECIPE"]


def describe_decision(run: pathlib.Path) -> str:
    """What each choice of the run's decision (model.json, cli.decide) scored on its validation fold."""
    decision = json.loads((run / "model.json").read_text()).get("decision")
    if not decision:
        return "no decision recorded"
    parts = []
    for name, value in decision["scores"].items():
        if isinstance(value, dict):
            parts.append(f"{name} {value.get('threshold')}: {value['dice']:.4f}")
        else:
            parts.append(f"{name}: {value:.4f}")
    return (f"validation foreground Dice {'; '.join(parts)} -> chosen {decision['chosen']} "
            f"(gain {decision['gain']:+.4f}, {decision.get('seconds', '?')} s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--kind", default="vessels")
    parser.add_argument("--data_dir", help="an images/ + masks/ (or volume) folder to run on instead of --kind")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    print(f"CPU: {describe(read_cpu_info())}; load average {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = pathlib.Path(args.data_dir) if args.data_dir else pathlib.Path(tmp) / "data"
        if not args.data_dir:
            subprocess.run([sys.executable, str(REPO / "download_dataset.py"), "--synthetic", "--kind", args.kind,
                            "--data_dir", str(data)], check=True, capture_output=True)
        ratios = []
        for k in range(args.runs):
            run = pathlib.Path(tmp) / f"run{k}"
            started = time.perf_counter()
            subprocess.run(["bash", str(REPO / "examples" / "unet_CPU_TRAIN.sh"), str(data), str(run),
                            "--time_budget", str(args.minutes)], check=True,
                           capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})
            wall_s = time.perf_counter() - started
            records = recipe_records(run / "log.json")
            fixed = next(r for r in records if r.get("flag") == "max_steps")
            end = next(r for r in records if "training_s" in r)
            spent = next(r for r in records if "budget_spent_s" in r)["budget_spent_s"]
            ratio = spent / (args.minutes * 60.0)
            ratios.append(ratio)
            print(f"run {k}: {fixed.get('s_per_step', float('nan')):.3f} s/step after warm-up, {fixed['value']} "
                  f"steps, trained {end['training_s']:.1f} s, with the decision {spent:.1f} s of "
                  f"{args.minutes * 60:.0f} s: ratio {ratio:.3f}; whole command {wall_s:.0f} s; "
                  f"load average {os.getloadavg()[0]:.1f}", flush=True)
            print(f"run {k}: {describe_decision(run)}", flush=True)
        print(f"budget_spent_s / budget: median {sorted(ratios)[len(ratios) // 2]:.3f} over {len(ratios)} run(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
