"""The compression study: which variant should I deploy? One command, one table, one plot.

    python -m unet_medical.cli.study --config examples/study_cpu.yaml --data_dir DATA --results_dir RESULTS

The YAML file has `base:` (main.py flags shared by every variant) and `variants:` (a list; each has a
`name` and the flags it changes: quantization grid, Tucker ranks, AMP, ...). `init_from: "@name"`
starts a variant from another variant's trained model, so "Tucker then INT8" is a variant of a
variant. Every variant is trained (or derived) by main.py itself on the same fold and seed, in its
own folder RESULTS/variants/NAME, and evaluated by the same code. Then one process loads every
variant and times them side by side (round-robin, so machine drift hits all alike) and writes
RESULTS/study.csv, study.md and pareto.png.

Resumable: a finished variant leaves RESULTS/variants/NAME/done.json and is skipped on a rerun; an
interrupted one continues from its last checkpoint (--resume_training). Each variant folder records what
the variant is made from (made_from.json: its flags, the variant it starts from, the data's files; see
cli.study_record): a rerun reuses or continues a variant only if that is unchanged, and otherwise stops
with one line naming the variant and the change, before anything runs. --rerun_changed trains the
changed variants again instead, keeping their old folders as variants/NAME.replaced-<hash>.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time
from typing import Any, Sequence

from unet_medical.base import runlog
from unet_medical.base.artifacts import EVAL_RESULTS, read_eval_results, write_json
from unet_medical.base.timing import latency_stats, time_alternating
from unet_medical.cli.config import Config, read_yaml_file
from unet_medical.model.config import QuantizationSettings
from unet_medical.base.errors import UNetError, run_cli
from unet_medical.base.fileio import atomic_write, atomic_write_folder, atomic_write_text, size_on_disk
from unet_medical.base.progress import Progress
from unet_medical.inference.artifact_formats import WriteRequest, format_of
from unet_medical.cli.study_record import (MadeFrom, data_files, differences, made_from_records, read_made_from,
                                           write_made_from)

# where the package lives: a child run imports it from there whether it is installed or a checkout
PACKAGE_ROOT = pathlib.Path(__file__).resolve().parents[2]
DONE = "done.json"
COLUMNS = ("name", "quantization", "fixed_scheme", "weight_bits", "rank_factor", "parameters", "gmac_per_tile",
           "stored_bytes", "stored_format",
           "latency_ms_p50", "latency_ms_p90", "score", "membrane_dice", "interior_dice", "mean_dice", "v_rand_thinned",
           "v_info_thinned", "pixel_error", "score_before_finetune", "train_seconds", "step")


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    flags: dict[str, Any]


def load_study(path: str | pathlib.Path) -> tuple[dict[str, Any], list[Variant]]:
    """Read and check a study YAML: every flag must be a main.py flag, names unique, references known."""
    path = pathlib.Path(path)
    raw = read_yaml_file(path)
    if not isinstance(raw, dict):
        raise UNetError(f"--config {path}: expected a mapping with 'base' and 'variants'")
    base = dict(raw.get("base") or {})
    entries = raw.get("variants")
    if not isinstance(entries, list) or not entries:
        raise UNetError(f"--config {path}: expected a non-empty list under 'variants'")
    known = {f.name for f in dataclasses.fields(Config)}
    variants: list[Variant] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry.get("name"):
            raise UNetError(f"--config {path}: variant {i} needs a 'name'")
        flags = {k.replace("-", "_"): v for k, v in entry.items() if k != "name"}
        for key in list(base) + list(flags):
            if key.replace("-", "_") not in known or key in ("model_dir", "data_dir"):
                raise UNetError(f"--config {path}: variant {entry['name']!r}: unknown or reserved flag {key!r}")
        ref = flags.get("init_from")
        if isinstance(ref, str) and ref.startswith("@") and ref[1:] not in {v.name for v in variants}:
            raise UNetError(f"--config {path}: variant {entry['name']!r}: init_from {ref} must name an "
                            "earlier variant")
        variants.append(Variant(str(entry["name"]), flags))
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise UNetError(f"--config {path}: variant names must be unique ({names})")
    return base, variants


def _flag_args(flags: dict[str, Any]) -> list[str]:
    args = []
    for key, value in flags.items():
        if isinstance(value, bool):
            args.append(f"--{key}" if value else f"--no-{key}")
        elif value is not None:
            args += [f"--{key}", str(value)]
    return args


def variant_dir(results_dir: pathlib.Path, name: str) -> pathlib.Path:
    return results_dir / "variants" / name


def run_variant(variant: Variant, base: dict[str, Any], data_dir: str, results_dir: pathlib.Path,
                made_from: MadeFrom) -> None:
    """Train/derive one variant with main.py in a child process (a clean TF state per variant); its folder
    records what it is made from before anything else is written there."""
    write_made_from(variant_dir(results_dir, variant.name), made_from)
    flags = {**base, **variant.flags}
    ref = flags.get("init_from")
    if isinstance(ref, str) and ref.startswith("@"):
        flags["init_from"] = str(variant_dir(results_dir, ref[1:]))
    flags.setdefault("exec_mode", "train_and_evaluate")
    out = variant_dir(results_dir, variant.name)
    args = [sys.executable, "-m", "unet_medical", "--data_dir", data_dir, "--model_dir", str(out),
            "--resume_training", *_flag_args(flags)]
    print(f"study: running {variant.name}: {' '.join(args[3:])}", flush=True)
    start = time.perf_counter()
    pythonpath = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))
    returncode = run_child(args, {**os.environ, "PYTHONPATH": pythonpath})
    if returncode != 0:
        raise UNetError(f"study: variant {variant.name!r} failed (exit {returncode}); its log is "
                        f"{out / 'log.json'}; rerun the study to continue")
    results = read_eval_results(out / EVAL_RESULTS)
    before = out / "eval_before_finetune.json"
    write_json(out / DONE, {"eval": results, "train_seconds": time.perf_counter() - start, "made_from": made_from.digest,
                            "eval_before_finetune": read_eval_results(before) if before.exists() else None})


def run_child(args: list[str], env: dict[str, str]) -> int:
    """Run a variant's main.py command; its exit status."""
    return subprocess.run(args, env=env).returncode


def variants_to_run(results_dir: pathlib.Path, variants: Sequence[Variant], made_from: dict[str, MadeFrom],
                    rerun_changed: bool) -> list[int]:
    """Indices of the variants to train (not finished, or changed and --rerun_changed), in order.

    A started or finished variant made from other flags, data or parent than today's is refused in one
    line, before anything runs: training a variant costs minutes to hours and the old folder may be the one
    the user wants (an accidental edit, another data mount), so neither silently reusing it (a table of
    mixed experiments) nor silently retraining it (finished work thrown away) is right. --rerun_changed
    says "train it again"; the old folder is kept beside the new one."""
    pending = []
    for i, v in enumerate(variants):
        folder = variant_dir(results_dir, v.name)
        if not folder.is_dir() or not _started(folder):
            _remove_interrupted_writes(folder)
            pending.append(i)
            continue
        ref = v.flags.get("init_from")
        parent = ref[1:] if isinstance(ref, str) and ref.startswith("@") else None
        changed = differences(read_made_from(folder), made_from[v.name], parent)
        if changed and not rerun_changed:
            raise UNetError(f"study: variant {v.name!r} in {folder} was made from something else: {changed}; "
                            "pass --rerun_changed to train it again (its folder is kept aside), or use another "
                            "--results_dir (nothing was run)")
        if changed:
            aside = _free_name(folder.with_name(f"{v.name}.replaced-{_old_hash(folder)}"))
            folder.rename(aside)
            print(f"study: {v.name} changed ({changed}): training it again; the old one is now {aside}", flush=True)
        if changed or not (folder / DONE).exists():
            pending.append(i)
    return pending


def _interrupted_writes(folder: pathlib.Path) -> list[pathlib.Path]:
    """Temporary files of base.fileio.atomic_write that were never renamed (hidden ".NAME.*.tmp")."""
    return [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file()]


def _started(folder: pathlib.Path) -> bool:
    """Whether a variant's folder holds anything of a run. A study killed while run_variant wrote
    made_from.json leaves the folder with only that write's temporary file: nothing ran there."""
    return len(_interrupted_writes(folder)) < sum(1 for _ in folder.iterdir())


def _remove_interrupted_writes(folder: pathlib.Path) -> None:
    if folder.is_dir():
        for path in _interrupted_writes(folder):
            path.unlink()


def _old_hash(folder: pathlib.Path) -> str:
    stored = read_made_from(folder)
    return stored["hash"][:8] if stored else "unrecorded"


def _free_name(path: pathlib.Path) -> pathlib.Path:
    """`path`, or `path`-2, -3, ... if that exists already."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def deployable(model: Any, info: Any, out_dir: pathlib.Path, tile: int) -> tuple[pathlib.Path, str, Any]:
    """Write the file a deployment would ship and return (path, format, predictor that runs it):
    an int8 TFLite model for QAT_INT8 (run by TFLite: its latency is the int8 kernels'; a 3-D network: the
    OpenVINO IR of the QAT graph, since TFLite cannot pool in 3-D), bit-packed
    weights for fixed-point/INT/BNN/ternary (rebuilt with dequantized float weights, as a deployment
    without integer kernels would run them), float32 weights otherwise (Keras). The first two are
    written and loaded by their registered export formats (the exporter's writers and runtimes)."""
    from unet_medical.inference.tiling import keras_predictor

    export = out_dir / "export"
    export.mkdir(exist_ok=True)
    if info.variant == "qat" and info.spec.get("dims") == 3:
        # TFLite has no builtin MaxPool3D; OpenVINO reads the QAT graph's fake-quant nodes as int8 FakeQuantize.
        path = export_file(model, info, export, "openvino", "fp32", tile)
        return path, "openvino int8 (QAT)", format_of("openvino").loader()(path, {"precision": "fp32"})
    if info.variant in ("qat", "packed"):
        name, precision = ("tflite", "int8") if info.variant == "qat" else ("packed", info.quantization_config["quantization"])
        path = export_file(model, info, export, name, precision, tile)
        label = "tflite int8" if name == "tflite" else "bit-packed"
        return path, label, format_of(name).loader()(path, {"precision": precision, "spec": info.spec})
    from unet_medical.model.packing import save_float32

    path = export / "model_fp32.npz"
    save_float32(model, path)  # the same container as the packed file, all weights float32
    return path, "float32 npz", keras_predictor(model)


def export_file(model: Any, info: Any, export_dir: pathlib.Path, export_format: str, precision: str,
                tile: int) -> pathlib.Path:
    """Write one artefact with its registered format's writer (no calibration: QAT and packed need none)."""
    from unet_medical.export.serving import UNetServingModule
    from unet_medical.export.volume import VolumeModule
    from unet_medical.model.unet import UNetSpec

    fmt = format_of(export_format)
    spec = UNetSpec(**info.spec)
    module = VolumeModule(model) if spec.dims == 3 else UNetServingModule(model, spec)

    def write(tmp: str) -> None:  # into a temporary name: a crash never leaves a truncated model to time
        fmt.writer()(WriteRequest(model=model, module=module, spec=spec, path=pathlib.Path(tmp),
                                  precision=precision, tile_size=tile, quantization=info.quantization_config))

    # OpenVINO writes a folder (model.xml + model.bin), the others one file
    atomic = atomic_write_folder if export_format == "openvino" else atomic_write
    return atomic(export_dir / fmt.file_name(precision), write)


def timing_input(spec: Any, info: Any, image_hw: tuple[int, int], name: str) -> tuple[tuple[int, ...], int]:
    """(spatial shape of the one input a variant is timed on, the fixed tile side of its exported file): the
    tile predict plans for an image of image_hw, or for a --dims 3 run its training patch (the window its
    sliding window runs)."""
    from unet_medical.inference.tiling import plan_tiles

    if spec.dims != 3:
        tile = plan_tiles(spec, image_hw).tile_size
        return (tile, tile), tile
    patch = tuple(int(p) for p in (info.volume or {}).get("patch_size", ()))
    if len(patch) != 3:
        raise UNetError(f"study: variant {name!r} is a 3-D run without a recorded patch size (model.json volume)")
    return patch, patch[0]


def measure(results_dir: pathlib.Path, variants: Sequence[Variant], image_hw: tuple[int, int],
            rounds: int) -> dict[str, dict[str, Any]]:
    """Load every variant in this one process; time one tile (a 3-D run: one patch) round-robin; sizes."""
    import numpy as np

    from unet_medical.model.complexity import total_macs, total_params
    from unet_medical.cli.assemble import load_trained

    loaded = {}
    for v in variants:
        model, spec, info, step = load_trained(variant_dir(results_dir, v.name), "last")
        shape, tile_side = timing_input(spec, info, image_hw, v.name)
        tile = np.random.default_rng(0).random((1, *shape, spec.in_channels), dtype=np.float32)
        path, fmt, predictor = deployable(model, info, variant_dir(results_dir, v.name), tile_side)
        loaded[v.name] = {"predictor": predictor, "tile": tile, "stored_bytes": size_on_disk(path),
                          "stored_format": fmt, "parameters": total_params(model), "step": step,
                          "gmac_per_tile": total_macs(model, shape) / 1e9}
    # warm-up 2: tracing and first-call allocation are not latency
    times = time_alternating({name: (lambda e=e: e["predictor"](e["tile"])) for name, e in loaded.items()}, 2, rounds)
    return {name: {**{k: v for k, v in latency_stats(times[name]).items() if k in ("latency_ms_p50", "latency_ms_p90")},
                   **{k: e[k] for k in ("stored_bytes", "stored_format", "parameters", "step", "gmac_per_tile")}}
            for name, e in loaded.items()}


def summarize(results_dir: pathlib.Path, base: dict[str, Any], variants: Sequence[Variant],
              measured: dict[str, dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    rows = []
    for v in variants:
        done = json.loads((variant_dir(results_dir, v.name) / DONE).read_text())
        flags = {**base, **v.flags}
        ev = done["eval"]
        key = metric if metric in ev else "mean_dice"
        before = done.get("eval_before_finetune") or {}
        rows.append({"name": v.name, "quantization": flags.get("quantization", "NONE"),
                     "fixed_scheme": _fixed_scheme(flags), "weight_bits": _weight_bits(flags),
                     "rank_factor": flags.get("rank_factor"),
                     **measured[v.name], "score": ev.get(key), "score_name": key,
                     **{k: ev.get(k) for k in ("membrane_dice", "interior_dice", "mean_dice", "v_rand_thinned", "v_info_thinned",
                                                "pixel_error")},
                     "score_before_finetune": before.get(key), "train_seconds": done["train_seconds"]})
    return rows


def _fixed_scheme(flags: dict[str, Any]) -> str | None:
    return flags.get("fixed_scheme", Config.fixed_scheme) if flags.get("quantization") == "FIXED" else None


def _weight_bits(flags: dict[str, Any]) -> int:
    q = flags.get("quantization", "NONE")
    if q == "FIXED":  # bits per stored code: i + f for twos_complement; paper: sign + magnitude (+ carry)
        from unet_medical.model.quantizers import QuantizationConfig

        settings = QuantizationSettings.from_values({**flags, "fixed_scheme": _fixed_scheme(flags)})
        return QuantizationConfig.from_mapping(settings.to_dict()).weight_spec().storage_bits
    return {"INT": int(flags.get("weight_bits", 8)), "QAT_INT8": 8, "BNN": 1, "TERNARY": 2}.get(q, 32)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which (cost, score) points no other point beats on both (lower cost, higher score)."""
    return [not any((c2 <= c and s2 >= s) and (c2 < c or s2 > s) for c2, s2 in points) for c, s in points]


def write_outputs(results_dir: pathlib.Path, rows: list[dict[str, Any]], metric: str) -> None:
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k) for k in COLUMNS})
    atomic_write_text(results_dir / "study.csv", buf.getvalue())
    fmt = lambda x, spec: "" if x is None else format(x, spec)  # noqa: E731
    lines = [f"| variant | weights | bits/weight | parameters | GMAC/tile | stored | latency p50 (ms) | {metric} | "
             f"V_rand | V_info | {metric} before fine-tune |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        scheme = f" ({r['fixed_scheme']})" if r.get("fixed_scheme") else ""
        tucker = f" tucker {r['rank_factor']}" if r['rank_factor'] else ""
        lines.append(f"| {r['name']} | {r['quantization']}{scheme}{tucker}"
                     f" | {r['weight_bits']} | {r['parameters']:,} | {r['gmac_per_tile']:.2f}"
                     f" | {r['stored_bytes'] / 1e6:.3f} MB ({r['stored_format']}) | "
                     f"{r['latency_ms_p50']:.1f} | {fmt(r['score'], '.4f')} | {fmt(r['v_rand_thinned'], '.4f')} | "
                     f"{fmt(r['v_info_thinned'], '.4f')} | {fmt(r['score_before_finetune'], '.4f')} |")
    atomic_write_text(results_dir / "study.md", "\n".join(lines) + "\n")
    plot_pareto(results_dir / "pareto.png", rows, metric)


def plot_pareto(path: pathlib.Path, rows: list[dict[str, Any]], metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, cost_key, label, log in ((axes[0], "stored_bytes", "stored size (MB, log scale)", True),
                                     (axes[1], "latency_ms_p50", "latency per tile, p50 (ms)", False)):
        costs = [r[cost_key] / (1e6 if cost_key == "stored_bytes" else 1) for r in rows]
        scores = [r["score"] for r in rows]
        front = pareto_front(list(zip(costs, scores)))
        for i, (c, s, r, on) in enumerate(zip(costs, scores, rows, front)):
            ax.scatter(c, s, s=60, c="tab:red" if on else "tab:gray", zorder=3)
            # Alternate label offsets: variants often sit close together.
            ax.annotate(r["name"], (c, s), textcoords="offset points", xytext=(5, 4 - 12 * (i % 3)), fontsize=7)
        pts = sorted((c, s) for c, s, on in zip(costs, scores, front) if on)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "--", c="tab:red", lw=1, label="Pareto front")
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(f"{metric} (held-out fold)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    axes[0].set_title("accuracy vs stored bytes")
    axes[1].set_title("accuracy vs CPU latency of the deployable file (one process, round-robin)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="study YAML (base + variants)")
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--results_dir", required=True)
    parser.add_argument("--metric", default="membrane_dice", help="eval_results.json key on the y axis")
    parser.add_argument("--latency_image", type=int, default=512, help="latency input: an N x N image")
    parser.add_argument("--latency_rounds", type=int, default=10)
    parser.add_argument("--rerun_changed", action="store_true",
                        help="train again the variants whose flags, data or init_from variant changed since they "
                             "ran (their old folders are kept as variants/NAME.replaced-<hash>); without it such "
                             "a variant stops the study")
    args = parser.parse_args(argv)
    return run_cli(lambda: run_study(args))


def run_study(args: argparse.Namespace) -> None:
    base, variants = load_study(args.config)
    results_dir = pathlib.Path(args.results_dir)
    # What every variant is made from today; checked against the folders before anything runs.
    made_from = made_from_records(base, variants, data_files(args.data_dir, exclude=[results_dir]))
    pending = variants_to_run(results_dir, variants, made_from, args.rerun_changed)
    results_dir.mkdir(parents=True, exist_ok=True)
    for i, v in enumerate(variants):
        if i not in pending:
            print(f"study: skipping {v.name} (done)", flush=True)
    # One line before each variant: "variant i/N name", variants done, time per variant, ETA. No bar:
    # the variants' own training output (their bars) shares the terminal.
    logger = runlog.Logger([runlog.StdOutBackend()])
    with Progress(len(variants), "study", logger, unit="variant", initial=len(variants) - len(pending),
                  interval_s=None, bar=False) as progress:
        for i in pending:
            progress.log(variant=f"{i + 1}/{len(variants)} {variants[i].name}")
            run_variant(variants[i], base, args.data_dir, results_dir, made_from[variants[i].name])
            progress.update()
        if pending:
            progress.log(variant="all trained, measuring")
    report_study(results_dir, base, variants, args)


def report_study(results_dir: pathlib.Path, base: dict[str, Any], variants: Sequence[Variant],
                 args: argparse.Namespace) -> None:
    """Time every finished variant side by side and write study.csv, study.md and pareto.png."""
    measured = measure(results_dir, variants, (args.latency_image,) * 2, args.latency_rounds)
    rows = summarize(results_dir, base, variants, measured, args.metric)
    # the score the table shows: --metric, or mean_dice where the runs have no such key (volumes: no membrane)
    names = {r["score_name"] for r in rows}
    write_outputs(results_dir, rows, names.pop() if len(names) == 1 else args.metric)
    print((results_dir / "study.md").read_text())


if __name__ == "__main__":
    sys.exit(main())
