"""Two or more --loss choices on one data set at the same time budget: the CPU recipe, unchanged but for --loss.

    .venv/bin/python benchmarks/loss_ab.py [--kind vessels | --data_dir DIR] [--losses ce_dice ce_dice_cldice]
                                           [--time_budget 3] [--seeds 0 1] [--results_dir DIR]

For each seed, the losses run one after another, alternating (never in parallel: they would share the cores and
time each other): `bash examples/unet_CPU_TRAIN.sh DATA RUN --loss L --seed S --time_budget B --no-saved_model`
trains on fold 0 and scores its held-out block (eval_results.json). A loss that costs more per step trains fewer
steps in the same budget, which is the comparison a CPU user lives with. Prints one line per run (steps, every
Dice-like score of eval_results.json) and, per loss, the mean over seeds, with the CPU (unet_medical.base.cpu).
Without --data_dir a synthetic set of --kind is generated (download_dataset.py --synthetic): it rehearses the
comparison and says nothing about real images. A run folder that already holds eval_results.json is read, not
retrained (delete it to measure again).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from unet_medical.base.cpu import describe, read_cpu_info  # noqa: E402

# Scores worth comparing besides every "<class>_dice" (binary: a class's Dice is its F1).
SCORES = ("v_rand_thinned", "v_info_thinned")


def scores_of(results: dict) -> dict[str, float]:
    """Every Dice ("<class>_dice", "mean_dice") and SCORES entry of an eval_results.json."""
    return {k: float(v) for k, v in results.items()
            if (k.endswith("_dice") or k in SCORES) and isinstance(v, (int, float)) and not isinstance(v, bool)}


def steps_of(run: pathlib.Path) -> int | None:
    """The run's last logged training step (log.json DLLL records)."""
    steps = [json.loads(line[5:]).get("step") for line in (run / "log.json").read_text().splitlines()
             if line.startswith("DLLL ")]
    numbers = [s[0] if isinstance(s, list) else s for s in steps]
    return max((s for s in numbers if isinstance(s, int)), default=None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", default="vessels")
    parser.add_argument("--data_dir", type=pathlib.Path)
    parser.add_argument("--losses", nargs="+", default=["ce_dice", "ce_dice_cldice"])
    parser.add_argument("--time_budget", type=float, default=3.0)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--results_dir", type=pathlib.Path)
    args = parser.parse_args()
    print(f"CPU: {describe(read_cpu_info())}; load average {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        results_dir = args.results_dir or pathlib.Path(tmp)
        data = args.data_dir
        if data is None:
            data = results_dir / f"data_{args.kind}"
            if not data.exists():
                subprocess.run([sys.executable, str(REPO / "download_dataset.py"), "--synthetic", "--kind", args.kind,
                                "--data_dir", str(data)], check=True, capture_output=True)
        table: dict[str, list[dict[str, float]]] = {loss: [] for loss in args.losses}
        for seed in args.seeds:
            for loss in args.losses:
                run = results_dir / f"{loss}_seed{seed}"
                if not (run / "eval_results.json").exists():
                    subprocess.run(["bash", str(REPO / "examples" / "unet_CPU_TRAIN.sh"), str(data), str(run),
                                    "--loss", loss, "--seed", str(seed), "--time_budget", str(args.time_budget),
                                    "--no-saved_model"], check=True, capture_output=True,
                                   env={**os.environ, "PYTHONPATH": str(REPO)})
                scores = scores_of(json.loads((run / "eval_results.json").read_text()))
                table[loss].append(scores)
                print(f"seed {seed} {loss}: {steps_of(run)} steps; "
                      + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()), flush=True)
        for loss, rows in table.items():
            keys = rows[0].keys() if rows else ()
            print(f"mean over {len(rows)} seed(s), {loss}: "
                  + ", ".join(f"{k} {sum(r[k] for r in rows) / len(rows):.4f}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
