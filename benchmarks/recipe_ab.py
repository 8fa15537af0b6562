"""Variants of the CPU recipe on one data set at the same time budget: the recipe, unchanged but for a few flags.

    .venv/bin/python benchmarks/recipe_ab.py [--kind vessels | --data_dir DIR] [--time_budget 3] [--seeds 0 1]
        [--results_dir DIR] [--arm NAME="FLAGS" ...]
    e.g. --arm ce_dice="--loss ce_dice" --arm ce_dice_cldice="--loss ce_dice_cldice" (the default arms)

For each seed, the arms run one after another, alternating (never in parallel: they would share the cores and
time each other): `bash examples/unet_CPU_TRAIN.sh DATA RUN FLAGS --seed S --time_budget B --no-saved_model`
trains on fold 0 and scores its held-out block (eval_results.json). An arm that costs more per step trains fewer
steps in the same budget, which is the comparison a CPU user lives with. Prints one line per run (steps, every
Dice-like score of eval_results.json) and, per arm, the mean over seeds, with the CPU (unet_medical.base.cpu).
Without --data_dir a synthetic set of --kind is generated (download_dataset.py --synthetic): it rehearses the
comparison and says nothing about real images. A run folder that already holds eval_results.json is read, not
retrained (delete it to measure again).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shlex
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from unet_medical.base.cpu import describe, read_cpu_info  # noqa: E402
from unet_medical.base.runlog.backends import read_log  # noqa: E402

# Scores worth comparing besides every "<class>_dice" (binary: a class's Dice is its F1).
SCORES = ("v_rand_thinned", "v_info_thinned")


def scores_of(results: dict) -> dict[str, float]:
    """Every Dice ("<class>_dice", "mean_dice") and SCORES entry of an eval_results.json."""
    return {k: float(v) for k, v in results.items()
            if (k.endswith("_dice") or k in SCORES) and isinstance(v, (int, float)) and not isinstance(v, bool)}


def steps_of(run: pathlib.Path) -> int | None:
    """The steps a run trained: its budget's RECIPE line, else (a --max_steps run) its last logged training step;
    None when the log has neither."""
    log = read_log(run / "log.json")
    budget = [r["data"]["steps"] for r in log if r.get("step") == "RECIPE" and "steps" in r["data"]]
    if budget:
        return budget[-1]
    steps = [r["step"] for r in log if isinstance(r.get("step"), int) and not isinstance(r.get("step"), bool)]
    return max(steps, default=None)


DEFAULT_ARMS = (("ce_dice", ["--loss", "ce_dice"]), ("ce_dice_cldice", ["--loss", "ce_dice_cldice"]))


def parse_arm(text: str) -> tuple[str, list[str]]:
    """'NAME=--flag value ...' -> (NAME, ["--flag", "value", ...]); NAME names the run folders."""
    name, sep, flags = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"--arm {text!r}: expected NAME=\"FLAGS\" with NAME a plain word")
    return name, shlex.split(flags)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", default="vessels")
    parser.add_argument("--data_dir", type=pathlib.Path)
    parser.add_argument("--arm", action="append", type=parse_arm, dest="arms",
                        help='NAME="main.py flags"; repeat for each arm (default: the two losses)')
    parser.add_argument("--time_budget", type=float, default=3.0)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--results_dir", type=pathlib.Path)
    args = parser.parse_args()
    arms = dict(args.arms or DEFAULT_ARMS)
    print(f"CPU: {describe(read_cpu_info())}; load average {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        results_dir = args.results_dir or pathlib.Path(tmp)
        data = args.data_dir
        if data is None:
            data = results_dir / f"data_{args.kind}"
            if not data.exists():
                subprocess.run([sys.executable, str(REPO / "download_dataset.py"), "--synthetic", "--kind", args.kind,
                                "--data_dir", str(data)], check=True, capture_output=True)
        table: dict[str, list[dict[str, float]]] = {name: [] for name in arms}
        for seed in args.seeds:
            for name, flags in arms.items():
                run = results_dir / f"{name}_seed{seed}"
                if not (run / "eval_results.json").exists():
                    subprocess.run(["bash", str(REPO / "examples" / "unet_CPU_TRAIN.sh"), str(data), str(run),
                                    *flags, "--seed", str(seed), "--time_budget", str(args.time_budget),
                                    "--no-saved_model"], check=True, capture_output=True,
                                   env={**os.environ, "PYTHONPATH": str(REPO)})
                scores = scores_of(json.loads((run / "eval_results.json").read_text()))
                table[name].append(scores)
                print(f"seed {seed} {name} ({' '.join(flags)}): {steps_of(run)} steps; "
                      + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()), flush=True)
        for name, rows in table.items():
            keys = rows[0].keys() if rows else ()
            print(f"mean over {len(rows)} seed(s), {name}: "
                  + ", ".join(f"{k} {sum(r[k] for r in rows) / len(rows):.4f}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
