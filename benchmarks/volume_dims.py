"""2D, 2.5D and 3D on one volume set at the same time budget: the CPU recipe, unchanged but for --dims.

    .venv/bin/python benchmarks/volume_dims.py DATA_DIR RESULTS_DIR [--time_budget 3] [--dims 2 2.5 3]
                                               [-- extra main.py flags]

For each --dims, one after another (never in parallel: they would share the cores and time each other),
`bash examples/unet_CPU_TRAIN.sh DATA_DIR RESULTS_DIR/dims_D --dims D --time_budget B` trains on fold 0 and
scores its held-out cases (eval_results.json), then `main.py --exec_mode predict` writes the test cases'
label maps (the run's recorded dims is inherited). Prints one table: dims, Dice per class, mean Dice,
mean HD95 (mm), mean NSD, training seconds, prediction seconds per test case and the steps trained, with
the CPU (unet_medical.base.cpu). The same table goes to RESULTS_DIR/volume_dims.json. A dims whose run
folder already holds eval_results.json is read, not retrained (delete the folder to measure it again).

A synthetic set to run it on: `download_dataset.py --synthetic --kind mr_small` (1 mm isotropic) or
`--kind ct` (0.8 x 0.8 x 2.5 mm). Scores on synthetic data rehearse the comparison; they say nothing about
real scans.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from unet_medical.base.cpu import describe, read_cpu_info  # noqa: E402
from unet_medical.base.runlog.backends import read_log  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=pathlib.Path)
    parser.add_argument("results_dir", type=pathlib.Path)
    parser.add_argument("--time_budget", type=float, default=3.0, help="training minutes per dims (the same for all)")
    parser.add_argument("--dims", nargs="+", default=["2", "2.5", "3"])
    # argparse cannot hand flags after "--" to a positional once the positionals are filled: split them off first
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    args.extra = extra
    return args


def run_logged(command: list[str], log_file: pathlib.Path) -> float:
    """Run `command` with its output appended to log_file; wall seconds. Raises on a non-zero exit."""
    start = time.perf_counter()
    with open(log_file, "a", encoding="utf-8") as out:
        subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=True, cwd=REPO)
    return time.perf_counter() - start


def last_record(run: pathlib.Path, step: str, key: str) -> dict:
    """The data of the last log.json record of `step` holding `key` ({} when none)."""
    records = [r["data"] for r in read_log(run / "log.json") if r.get("step") == step and key in r["data"]]
    return records[-1] if records else {}


def measure(data_dir: pathlib.Path, run: pathlib.Path, dims: str, budget: float, extra: list[str]) -> dict:
    """Train + evaluate (the CPU recipe), then predict the test cases, of one dims; its table row."""
    run.mkdir(parents=True, exist_ok=True)
    log_file = run / "benchmark_output.txt"
    if not (run / "eval_results.json").is_file():
        run_logged(["bash", "examples/unet_CPU_TRAIN.sh", str(data_dir), str(run), "--dims", dims,
                    "--time_budget", f"{budget:g}", *extra], log_file)
    if not last_record(run, "PREDICT", "seconds_per_case"):
        run_logged([str(REPO / "scripts" / "python"), "main.py", "--exec_mode", "predict", "--data_dir",
                    str(data_dir), "--model_dir", str(run)], log_file)
    results = json.loads((run / "eval_results.json").read_text())
    training = last_record(run, "RECIPE", "training_s")
    labels = json.loads((data_dir / "dataset.json").read_text())["labels"]
    classes = [name for name, value in labels.items() if int(value) != 0]
    return {"dims": dims, **{f"{c}_dice": results[f"{c}_dice"] for c in classes},
            "mean_dice": results["mean_dice"], "mean_hd95_mm": results["mean_hd95"], "mean_nsd": results["mean_nsd"],
            "training_s": training.get("training_s"), "steps": training.get("steps"),
            "predict_s_per_case": last_record(run, "PREDICT", "seconds_per_case").get("seconds_per_case"),
            "num_cases": results.get("num_cases")}


def table(rows: list[dict]) -> str:
    """Markdown table of the rows (keys of the first row as columns, floats to 3 decimals)."""
    columns = list(rows[0])
    cell = (lambda v: f"{v:.3f}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data_dir, out = args.data_dir.resolve(), args.results_dir.resolve()
    cpu = describe(read_cpu_info())
    rows = []
    for dims in args.dims:  # one after another: parallel runs would share the cores
        rows.append(measure(data_dir, out / f"dims_{dims}", dims, args.time_budget, args.extra))
        print(f"dims {dims}: mean Dice {rows[-1]['mean_dice']:.3f}", flush=True)
    print(f"CPU: {cpu}; data {data_dir.name}; --time_budget {args.time_budget:g} min per dims; fold 0 of 5")
    print(table(rows))
    (out / "volume_dims.json").write_text(json.dumps({"cpu": cpu, "data_dir": str(data_dir),
                                                      "time_budget_min": args.time_budget, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
