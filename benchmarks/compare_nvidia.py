"""Arithmetic of benchmarks/compare_nvidia.sh: read each side's throughput, take medians, print ratios.

    python benchmarks/compare_nvidia.py nvidia-throughput train|predict < runner_output
    python benchmarks/compare_nvidia.py ours-throughput MODEL_DIR/benchmark_results.json
    python benchmarks/compare_nvidia.py summarize RESULTS.tsv [--json OUT.json] [--runs_dir OUT]
        [--export_seconds S]

RESULTS.tsv has one line per run: `round<TAB>side<TAB>mode<TAB>img_per_s` with side nvidia|ours and
mode train|predict|predict_deploy (this project's inference through its default deploy file, compared with
NVIDIA's predict). The summary gives per side and mode the median over rounds, and the ratio
ours / NVIDIA of the medians (> 1: this project is faster), with the CPU (base.cpu.describe).
With --runs_dir (the script's OUT_DIR, holding ours_MODE_rK/benchmark_results.json) it adds, per mode of
this project, the medians of the achieved GFLOP/s, of the fraction of the peak of the unit that ran and of
the fraction of the same run's single-convolution ceiling, and the ratio deploy file / no-flag Keras
inference. --export_seconds is the wall time of the default export, printed against its 3-minute target.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import re
import statistics
import sys
from typing import Iterable

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from unet_medical.base.cpu import describe, read_cpu_info  # noqa: E402  (standard library and NumPy only)
from unet_medical.base.errors import UNetError  # noqa: E402

SIDES = ("nvidia", "ours")
MODES = ("train", "predict", "predict_deploy")
# NVIDIA has no deploy file: this project's deploy-file inference is compared with NVIDIA's inference.
BASELINE = {"train": "train", "predict": "predict", "predict_deploy": "predict"}
# NVIDIA's DLLogger names: throughput_train for training, throughput_test for inference.
NVIDIA_KEYS = {"train": "throughput_train", "predict": "throughput_test"}


def nvidia_throughput(text: str, mode: str) -> float:
    """img/s from NVIDIA's DLLogger stdout line ("... throughput_train : 0.12 images/s ..."); the last one."""
    key = NVIDIA_KEYS[mode]
    found = re.findall(rf"\b{key}\s*:\s*([0-9.eE+-]+)", text)
    if not found:
        raise UNetError(f"NVIDIA runner printed no '{key} : N' line for mode {mode} (output: {text.strip()[-300:]!r})")
    return float(found[-1])


def ours_throughput(results_json: str | pathlib.Path) -> float:
    """img_per_s of this project's benchmark_results.json."""
    path = pathlib.Path(results_json)
    try:
        return float(json.loads(path.read_text())["img_per_s"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UNetError(f"{path}: no img_per_s ({exc})") from None


def read_rows(lines: Iterable[str]) -> list[tuple[int, str, str, float]]:
    """(round, side, mode, img/s) rows of a RESULTS.tsv; UNetError naming a malformed line."""
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.rstrip("\n").split("\t")
        try:
            rnd, side, mode, value = int(parts[0]), parts[1], parts[2], float(parts[3])
        except (IndexError, ValueError):
            raise UNetError(f"results line {number}: expected round<TAB>side<TAB>mode<TAB>img/s, "
                            f"got {line!r}") from None
        if side not in SIDES or mode not in MODES or not value > 0:
            raise UNetError(f"results line {number}: side must be {'|'.join(SIDES)}, mode {'|'.join(MODES)} and "
                            f"img/s > 0, got {line!r}")
        rows.append((rnd, side, mode, value))
    return rows


def summarize(rows: list[tuple[int, str, str, float]]) -> dict:
    """Medians per (side, mode) over rounds and the ratios ours / NVIDIA of those medians."""
    out: dict = {"rounds": sorted({r for r, *_ in rows}), "median_img_per_s": {}, "ratio_ours_over_nvidia": {}}
    for mode in MODES:
        medians = {}
        for side in SIDES:
            wanted = BASELINE[mode] if side == "nvidia" else mode
            values = [v for _, s, m, v in rows if s == side and m == wanted]
            if values:
                medians[side] = statistics.median(values)
                out["median_img_per_s"][f"{side}_{wanted}"] = medians[side]
        if len(medians) == 2:
            out["ratio_ours_over_nvidia"][mode] = medians["ours"] / medians["nvidia"]
    return out


# benchmark_results.json fields reported per mode (cli.benchmark); absent ones (no ceiling for a deploy file,
# no peak where the peak model refused) stay out of the medians.
DETAIL_FIELDS = ("achieved_gflops", "peak_gflops", "fraction_of_peak", "ceiling_gflops", "fraction_of_ceiling")
EXPORT_TARGET_S = 180.0


def details(runs_dir: str | pathlib.Path, rows: list[tuple[int, str, str, float]]) -> dict:
    """Per mode of this project: medians over rounds of DETAIL_FIELDS and the unit(s) that ran, read from
    RUNS_DIR/ours_MODE_rK/benchmark_results.json for every ours row; UNetError naming a missing file."""
    out: dict = {}
    for mode in MODES:
        results = []
        for rnd, side, row_mode, _ in rows:
            if side == "ours" and row_mode == mode:
                path = pathlib.Path(runs_dir) / f"ours_{mode}_r{rnd}" / "benchmark_results.json"
                try:
                    results.append(json.loads(path.read_text()))
                except (OSError, ValueError) as exc:
                    raise UNetError(f"{path}: cannot read ({exc})") from None
        if not results:
            continue
        entry: dict = {"units": sorted({str(r.get("unit")) for r in results if r.get("unit")})}
        for field in DETAIL_FIELDS:
            values = [float(r[field]) for r in results if isinstance(r.get(field), (int, float))]
            if values:
                entry[field] = statistics.median(values)
        out[mode] = entry
    return out


def report(summary: dict, cpu: str) -> str:
    lines = [f"CPU: {cpu}", f"rounds: {len(summary['rounds'])} (alternating NVIDIA, ours), batch 1, medians",
             "| mode | NVIDIA img/s | ours img/s | ours / NVIDIA |", "|---|---|---|---|"]
    for mode in MODES:
        med = summary["median_img_per_s"]
        if f"nvidia_{BASELINE[mode]}" in med and f"ours_{mode}" in med:
            lines.append(f"| {mode} | {med[f'nvidia_{BASELINE[mode]}']:.4g} | {med[f'ours_{mode}']:.4g} | "
                         f"{summary['ratio_ours_over_nvidia'][mode]:.3f} |")
    med = summary["median_img_per_s"]
    if "ours_predict" in med and "ours_predict_deploy" in med:
        lines.append(f"deploy file / no-flag Keras inference: {med['ours_predict_deploy'] / med['ours_predict']:.3f}")
    if summary.get("details"):
        lines += ["", "| ours, mode | GFLOP/s | unit | peak GFLOP/s | of peak | ceiling GFLOP/s | of ceiling |",
                  "|---|---|---|---|---|---|---|"]
        for mode, entry in summary["details"].items():
            cells = [_fmt(entry.get(k)) for k in ("achieved_gflops", "peak_gflops", "fraction_of_peak",
                                                    "ceiling_gflops", "fraction_of_ceiling")]
            lines.append(f"| {mode} | {cells[0]} | {', '.join(entry['units']) or '-'} | {cells[1]} | {cells[2]} | "
                         f"{cells[3]} | {cells[4]} |")
    if summary.get("export_seconds") is not None:
        seconds = summary["export_seconds"]
        lines.append(f"default export: {seconds:.0f} s (target < {EXPORT_TARGET_S:.0f} s: "
                     f"{'met' if seconds < EXPORT_TARGET_S else 'missed'})")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("nvidia-throughput")
    p.add_argument("mode", choices=MODES)
    p = sub.add_parser("ours-throughput")
    p.add_argument("results_json")
    p = sub.add_parser("summarize")
    p.add_argument("results_tsv")
    p.add_argument("--json", help="also write the summary (and the CPU) here")
    p.add_argument("--runs_dir", help="OUT_DIR of compare_nvidia.sh: adds GFLOP/s, peak and ceiling fractions")
    p.add_argument("--export_seconds", type=float, help="wall time of the default export, in seconds")
    args = parser.parse_args(argv)
    try:
        if args.command == "nvidia-throughput":
            print(nvidia_throughput(sys.stdin.read(), args.mode))
        elif args.command == "ours-throughput":
            print(ours_throughput(args.results_json))
        else:
            rows = read_rows(pathlib.Path(args.results_tsv).read_text().splitlines())
            summary = summarize(rows)
            if args.runs_dir:
                summary["details"] = details(args.runs_dir, rows)
            summary["export_seconds"] = args.export_seconds
            cpu = describe(read_cpu_info())
            print(report(summary, cpu))
            if args.json:
                pathlib.Path(args.json).write_text(json.dumps({**summary, "cpu": cpu}, indent=2))
    except UNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
