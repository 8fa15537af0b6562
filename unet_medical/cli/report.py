"""`unet-medical report RUN_DIR [--output FILE]`: a training run (or a cross-validation folder) on one page.

Writes RUN_DIR/report.html, a self-contained HTML file (inline SVG curves, PNGs as data URIs, no
network) built only from the files the run left behind:

    log.json                  PARAMETER (settings, precision, CPU), FINGERPRINT, RECIPE, step, ("eval", step),
                              TRAINING and SAVED_MODEL records (the JSON lines of base.runlog)
    eval_results.json         pooled held-out scores and `per_case` (evaluation.cases)
    overlay_best.png, overlay_worst.png   input | prediction | truth of the best and worst case (cli/modes.py)
    dataset_fingerprint.json  the data fingerprint and the recipe, when log.json lacks them
    model.json                the network's spec and class names
    export/export.json        the exported files, their parity and latency (export mode)

A folder of fold_<k> runs (examples/unet_CPU_CV5.sh) gets the fold table of evaluation.cv instead,
with links to each fold's own report. Training writes the report at its end (cli/modes.py); this
command rewrites it, e.g. after an export. No TensorFlow: it runs in a second.
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
from typing import Any, Mapping, Sequence

from unet_medical.base.artifacts import (EVAL_RESULTS, EXPORT_JSON, FINGERPRINT, MODEL_JSON, OVERLAY_BEST,
                                         OVERLAY_WORST, REPORT, read_json_object, read_versioned_json)
from unet_medical.base.errors import UNetError, run_cli
from unet_medical.base.fileio import atomic_write_text
from unet_medical.base import runlog
from unet_medical.cli import report_html as h
from unet_medical.cli.curves import read_curves
from unet_medical.cli.lineage import TRAINING_MODES
from unet_medical.evaluation.cases import best_and_worst

LOG = "log.json"
# export/formats.py's EXPORT_DIR / inference/runtimes.py's EXPORT_JSON, spelled out here because
# importing those modules imports TensorFlow (tests/test_report.py checks they agree).
EXPORT_FILE = pathlib.Path("export") / "export.json"
# eval_results.json entries that are not scores of the model (evaluation.cv.BOOKKEEPING plus ours).
NOT_SCORES = frozenset({"fold", "num_folds", "step", "num_images", "tta", "per_case"})


# --- reading the run's files --------------------------------------------------------------------

# The run log's LOG records, read by the log format's own reader.
read_log_records = runlog.read_log
read_log_records_from_text = runlog.parse_log_lines


def named_records(records: Sequence[Mapping[str, Any]], name: str) -> list[dict[str, Any]]:
    """The data of every record whose step is `name` ("PARAMETER", "RECIPE", ...), in order."""
    return [dict(r["data"]) for r in records if r.get("step") == name]


def merged_parameters(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The PARAMETER records of the training sessions merged, a later one winning; all of them when
    no session trained. A session starts at a PARAMETER record with "exec_mode"; an evaluate or export
    session of the run must not pass its own batch size or precision off as the training's."""
    merged: dict[str, Any] = {}
    everything: dict[str, Any] = {}
    training = False
    for data in named_records(records, "PARAMETER"):
        if "exec_mode" in data:
            training = data["exec_mode"] in TRAINING_MODES
        everything.update(data)
        if training:
            merged.update(data)
    return merged or everything


def session_modes(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The exec mode of each session logged, in order (train_and_evaluate, export, ...)."""
    return [str(d["exec_mode"]) for d in named_records(records, "PARAMETER") if "exec_mode" in d]


def recipe_choices(records: Sequence[Mapping[str, Any]], fingerprint_doc: Mapping[str, Any]
                   ) -> list[dict[str, Any]]:
    """(flag, value, reason) of each recipe choice: the log's RECIPE records (the latest per flag),
    else dataset_fingerprint.json's "choices"."""
    by_flag: dict[str, dict[str, Any]] = {}
    for data in named_records(records, "RECIPE"):
        by_flag[str(data.get("flag"))] = data
    return list(by_flag.values()) or [dict(c) for c in fingerprint_doc.get("choices", [])]


def fingerprint_rows(records: Sequence[Mapping[str, Any]], fingerprint_doc: Mapping[str, Any]
                     ) -> list[tuple[str, Any]]:
    """(what, value) rows of the data fingerprint: the log's FINGERPRINT record (the latest), else the
    scalars and class fractions of dataset_fingerprint.json."""
    logged = named_records(records, "FINGERPRINT")
    if logged:
        return list(logged[-1].items())
    doc = fingerprint_doc.get("fingerprint", {})
    rows: list[tuple[str, Any]] = [(k, v) for k, v in doc.items() if isinstance(v, (int, float, str))]
    rows += [(f"fraction_{k}", v) for k, v in doc.get("class_fraction", {}).items()]
    return rows


def timing_rows(records: Sequence[Mapping[str, Any]], parameters: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(what, value) rows: training time, steps, throughput, model cost, CPU and precision.

    Training seconds add up the TRAINING record of each session (train() wall time, evaluations
    included); img/s is the median over the --log_every windows (the first window also pays for
    tracing the step function, which the median ignores).
    """
    sessions = named_records(records, "TRAINING")
    steps = [r["step"] for r in records if isinstance(r.get("step"), int) and not isinstance(r.get("step"), bool)]
    rates = [float(r["data"]["img_per_s"]) for r in records if isinstance(r.get("step"), int)
             and isinstance(r["data"].get("img_per_s"), (int, float))]
    seconds = sum(float(s.get("seconds", 0.0)) for s in sessions)
    rows: list[tuple[str, Any]] = [
        ("training seconds (train() wall time, evaluations included)",
         round(seconds, 1) if sessions else "not recorded"),
        ("training sessions (1 + resumes)", len(sessions) or "not recorded"),
        ("last step", max(steps) if steps else "none logged"),
        ("images/s (median of logged windows)", round(statistics.median(rates), 2) if rates else "none logged"),
        ("batch size", parameters.get("batch_size")),
        ("parameters", parameters.get("parameters")),
        ("GFLOP per training crop (forward)", parameters.get("gflop_per_image")),
        ("CPU", parameters.get("cpu") or "not recorded (the run predates it)"),
        ("precision", parameters.get("precision")),
        ("why this precision", parameters.get("precision_reason")),
    ]
    return [(k, v) for k, v in rows if v is not None]


def read_json(path: pathlib.Path, kind: str | None = None) -> dict[str, Any]:
    """A run file's JSON object ({} when absent); a corrupt file is the user's problem, named. A versioned
    file (`kind`: MODEL_JSON, EVAL_RESULTS, EXPORT_JSON) is read by base.artifacts, which migrates it."""
    if not path.is_file():
        return {}
    return read_versioned_json(path, kind) if kind is not None else read_json_object(path)


# --- table rows (pure) ----------------------------------------------------------------------------

def class_rows(results: Mapping[str, Any], class_names: Sequence[str]) -> list[tuple[str, Any, Any]]:
    """(class, Dice, IoU) per class from eval_results.json's pooled "{class}_dice" / "{class}_iou"."""
    return [(c, results.get(f"{c}_dice"), results.get(f"{c}_iou")) for c in class_names
            if f"{c}_dice" in results]


def other_score_rows(results: Mapping[str, Any], class_names: Sequence[str]) -> list[tuple[str, Any]]:
    """(metric, value) of every numeric score that is not a per-class Dice/IoU or bookkeeping."""
    per_class = {f"{c}_{m}" for c in class_names for m in ("dice", "iou")}
    return [(k, v) for k, v in sorted(results.items()) if k not in NOT_SCORES and k not in per_class
            and isinstance(v, (int, float)) and not isinstance(v, bool)]


def case_table(cases: Sequence[Mapping[str, Any]], class_names: Sequence[str]
               ) -> tuple[list[str], list[list[Any]], list[str]]:
    """(header, rows, row classes) of the per-case table: one row per case in data-set order, the
    best case's row marked "best" and the worst's "worst" (evaluation.cases.best_and_worst)."""
    header = ["index", "image", *(f"Dice {c}" for c in class_names), "mean Dice", "pixel error", ""]
    best, worst = best_and_worst(cases)
    rows, classes = [], []
    for i, case in enumerate(cases):
        mark = "best" if i == best else "worst" if i == worst else ""
        rows.append([case.get("index"), case.get("name"), *(case.get("dice", {}).get(c) for c in class_names),
                     case.get("mean_dice"), case.get("pixel_error"), mark])
        classes.append(mark)
    return header, rows, classes


def export_rows(export_doc: Mapping[str, Any]) -> list[list[Any]]:
    """Rows of the export table from export/export.json: file, format, precision, size (MB), lowest
    label agreement with Keras over the parity checks (%), latency median and p90 (ms) of one batch-1
    tile, the tile's side (px), kept as the deploy file."""
    chosen = (export_doc.get("selection") or {}).get("chosen")
    rows = []
    for name, entry in sorted((export_doc.get("artifacts") or {}).items()):
        parity = entry.get("parity") or {}
        agreement = min((p.get("label_agreement", 1.0) for p in parity.values()), default=None)
        latency = entry.get("latency") or {}
        rows.append([name, entry.get("format"), entry.get("precision"),
                     None if "size_bytes" not in entry else round(entry["size_bytes"] / 1e6, 3),
                     None if agreement is None else round(100.0 * agreement, 3),
                     latency.get("median_ms"), latency.get("p90_ms"),
                     entry.get("parity_tile_size") or entry.get("tile_size"), "yes" if name == chosen else ""])
    return rows


# --- sections -------------------------------------------------------------------------------------

def curve_section(records: Sequence[Mapping[str, Any]], log_path: pathlib.Path) -> str:
    """Loss, validation scores and learning rate as three inline SVG charts."""
    eval_keys = sorted({k for r in records if isinstance(r.get("step"), list) and r["step"][:1] == ["eval"]
                        for k, v in r["data"].items()
                        if isinstance(v, (int, float)) and (k.endswith("_dice") or k in ("v_rand_thinned",
                                                                                        "v_info_thinned"))})
    curves = read_curves(log_path, eval_keys)
    return ('<div class="charts">'
            + h.svg_line_chart({"training loss": curves.loss}, "training loss per logged step", "loss",
                               chart_id="curve-loss")
            + h.svg_line_chart({f"validation {k}": v for k, v in curves.scores.items()},
                               "validation scores per evaluation", "score", chart_id="curve-validation")
            + h.svg_line_chart({"learning rate": curves.learning_rate}, "learning rate", "learning rate",
                               chart_id="curve-lr")
            + "</div>")


def overlay_section(run_dir: pathlib.Path, cases: Sequence[Mapping[str, Any]]) -> str:
    """The best and worst validation case as embedded input | prediction | truth PNGs."""
    if not cases:
        return '<p class="note">No per-case scores in eval_results.json (evaluate the run again).</p>'
    best, worst = best_and_worst(cases)
    parts = []
    for label, position, file in (("best", best, OVERLAY_BEST), ("worst", worst, OVERLAY_WORST)):
        path = run_dir / file
        case = cases[position]
        caption = (f"{label} case: {case.get('name')} (index {case.get('index')}), mean Dice "
                   f"{h.format_value(case.get('mean_dice'))} - input | prediction | truth")
        if path.is_file():
            parts.append(h.figure(h.png_data_uri(path.read_bytes()), caption, f"{label} case overlay",
                                  img_id=f"overlay-{label}"))
        else:
            parts.append(f'<p class="note">{h.escape(file)} missing: {h.escape(caption)}</p>')
    return "".join(parts)


def validation_section(run_dir: pathlib.Path, results: Mapping[str, Any], class_names: Sequence[str]) -> str:
    if not results:
        return '<p class="note">No evaluation yet (eval_results.json missing).</p>'
    cases = results.get("per_case") or []
    volume_cases = isinstance(cases, Mapping)  # a volume run's {case: {class: scores}}: no 2D overlays
    intro = (f'<p>Held-out fold {results.get("fold")} of {results.get("num_folds")}, step {results.get("step")}, '
             f'{results.get("num_images")} images at native resolution, TTA {results.get("tta")}.</p>')
    parts = [intro, h.html_table(("class", "Dice", "IoU"), class_rows(results, class_names), table_id="class-scores"),
             h.html_table(("metric", "value"), other_score_rows(results, class_names), table_id="other-scores"),
             f'<p class="note">Dice, HD95 and NSD of each of the {len(cases)} volume cases are in '
             f'eval_results.json (per_case).</p>' if volume_cases else overlay_section(run_dir, cases)]
    if cases and not volume_cases:
        header, rows, classes = case_table(cases, class_names)
        parts.append("<h3>Scores per case</h3>" + h.html_table(header, rows, classes, table_id="case-scores"))
    return "".join(parts)


def export_section(run_dir: pathlib.Path, records: Sequence[Mapping[str, Any]]) -> str | None:
    """The exported files (export/export.json) and the SavedModel written after training; None if neither."""
    export_doc = read_json(run_dir / EXPORT_FILE, EXPORT_JSON)
    saved = named_records(records, "SAVED_MODEL")
    if not export_doc.get("artifacts") and not saved:
        return None
    parts = []
    if saved:
        s = saved[-1]
        parts.append(f'<p>SavedModel written after training: {h.escape(s.get("path"))} '
                     f'({h.format_value((s.get("size_bytes") or 0) / 1e6, 3)} MB, checkpoint {h.escape(s.get("checkpoint"))}, '
                     f'step {h.escape(s.get("step"))}).</p>')
    if export_doc.get("artifacts"):
        parts.append(h.html_table(("file", "format", "precision", "size (MB)", "label agreement with Keras (%)",
                                   "latency median (ms)", "latency p90 (ms)", "tile (px)", "deploy file"),
                                  export_rows(export_doc), table_id="exports"))
    return "".join(parts)


# --- pages ----------------------------------------------------------------------------------------

def run_page(run_dir: pathlib.Path) -> str:
    """The HTML of one training run's report."""
    records = read_log_records(run_dir / LOG)
    parameters = merged_parameters(records)
    fingerprint_doc = read_json(run_dir / FINGERPRINT)
    results = read_json(run_dir / EVAL_RESULTS, EVAL_RESULTS)
    model = read_json(run_dir / MODEL_JSON, MODEL_JSON)
    # model.json names the classes; a run killed before writing it still logged them in PARAMETER.
    class_names = list(model.get("class_names") or [c for c in str(parameters.get("classes", "")).split(",") if c])
    spec = model.get("spec", {})
    recipe = recipe_choices(records, fingerprint_doc)
    sections = [
        ("Data fingerprint", h.definition_table(fingerprint_rows(records, fingerprint_doc))),
        ("Recipe", h.html_table(("flag", "value", "reason"),
                                [(c.get("flag"), c.get("value"), c.get("reason")) for c in recipe], table_id="recipe")
         if recipe else '<p class="note">No recipe recorded.</p>'),
        ("Curves", curve_section(records, run_dir / LOG)),
        ("Validation", validation_section(run_dir, results, class_names)),
        ("Time, CPU and precision", h.definition_table(timing_rows(records, parameters))),
    ]
    exports = export_section(run_dir, records)
    if exports:
        sections.append(("Exports", exports))
    network = ", ".join(f"{k} {spec[k]}" for k in ("padding", "base_filters", "depth", "batch_norm", "instance_norm", "dropout")
                        if k in spec)
    subtitle = (f"data {parameters.get('data_dir', '?')}; classes {', '.join(class_names) or '?'}; "
                f"U-Net {network or '?'}; sessions: {', '.join(session_modes(records)) or '?'}")
    return h.page(f"Run report: {run_dir.name}", subtitle, sections)


def cv_page(root: pathlib.Path) -> str:
    """The HTML of a cross-validation folder: evaluation.cv's fold table, links to the fold reports."""
    from unet_medical.evaluation.cv import SD_DEFINITION, read_fold_results, summarize, table_rows

    results = read_fold_results(root)
    rows = table_rows(results, summarize(results))
    links = "".join(f'<li><a href="fold_{k}/{REPORT}">fold {k}</a></li>' for k in sorted(results)
                    if (root / f"fold_{k}" / REPORT).is_file())
    steps = ", ".join(sorted({str(r.get("step", "?")) for r in results.values()}))
    body = (f"<p>{len(results)} folds, each evaluated on its held-out block at step {h.escape(steps)}; "
            f"sd = {h.escape(SD_DEFINITION)}.</p>" + h.html_table(rows[0], rows[1:], table_id="folds")
            + (f"<ul>{links}</ul>" if links else ""))
    return h.page(f"Cross-validation report: {root.name}", str(root), [("Folds", body)])


def is_cv_folder(path: pathlib.Path) -> bool:
    """A folder of fold_<k> runs rather than a run: fold folders and no log of its own."""
    return not (path / LOG).is_file() and any(p.is_dir() for p in path.glob("fold_*"))


def write_report(run_dir: str | pathlib.Path, output: str | pathlib.Path | None = None) -> pathlib.Path:
    """Write the report of `run_dir` (a run, or a folder of fold_<k> runs) to `output`
    (default RUN_DIR/report.html), atomically; returns its path.

    Raises UNetError when run_dir is missing or holds neither a run's files nor fold folders.
    """
    run_dir = pathlib.Path(run_dir)
    if not run_dir.is_dir():
        raise UNetError(f"{run_dir}: no such folder (give the --model_dir of a run)")
    if is_cv_folder(run_dir):
        text = cv_page(run_dir)
    elif any((run_dir / name).is_file() for name in (LOG, EVAL_RESULTS, MODEL_JSON)):
        text = run_page(run_dir)
    else:
        raise UNetError(f"{run_dir}: not a run folder (no {LOG}, {EVAL_RESULTS} or {MODEL_JSON}, "
                        "and no fold_<k> subfolders)")
    return atomic_write_text(pathlib.Path(output) if output else run_dir / REPORT, text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="unet-medical report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run's --model_dir, or a folder of fold_<k> runs")
    parser.add_argument("--output", default=None, help="where to write the page (default RUN_DIR/report.html)")
    args = parser.parse_args(argv)

    def report() -> None:
        print(f"written: {write_report(args.run_dir, args.output)}", flush=True)

    return run_cli(report)
