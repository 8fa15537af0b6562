"""The run report: per-case scores and best/worst selection, the SVG curves and tables, the page as
headless Chromium renders it, the CV page, the CLI's errors, and the report a real tiny training run writes."""
from __future__ import annotations

import base64
import html.parser
import io
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from unet_medical.base.runlog import JSON_PREFIX
from unet_medical.base.errors import UNetError
from unet_medical.cli import main as cli_main
from unet_medical.cli import report, report_html
from unet_medical.evaluation.cases import best_and_worst, case_scores
from unet_medical.inference.outputs import comparison_panel, write_png

REPO = pathlib.Path(__file__).resolve().parents[1]
CHROMIUM = pathlib.Path("/usr/bin/chromium")
CLASSES = ("membrane", "interior")


# --- pure pieces -----------------------------------------------------------------------------------

def test_case_scores_are_per_class_dice_of_each_image():
    truth = [np.array([[0, 0], [1, 1]]), np.array([[0, 1], [1, 1]])]
    predicted = [np.array([[0, 0], [1, 1]]), np.array([[1, 1], [1, 1]])]  # perfect; membrane missed
    cases = case_scores(predicted, truth, CLASSES, ["a.png", "b.png"], [3, 9])
    assert [(c["index"], c["name"]) for c in cases] == [(3, "a.png"), (9, "b.png")]
    assert cases[0]["dice"] == {"membrane": 1.0, "interior": 1.0} and cases[0]["pixel_error"] == 0.0
    # b: membrane 2*0/(0+1) = 0; interior 2*3/(4+3) = 6/7; one pixel of four wrong.
    assert cases[1]["dice"] == pytest.approx({"membrane": 0.0, "interior": 6 / 7})
    assert cases[1]["mean_dice"] == pytest.approx(3 / 7) and cases[1]["pixel_error"] == 0.25
    with pytest.raises(UNetError, match="as many"):
        case_scores(predicted, truth[:1], CLASSES, ["a.png", "b.png"], [3, 9])


def test_best_and_worst_take_the_first_extreme():
    cases = [{"mean_dice": 0.5}, {"mean_dice": 0.9}, {"mean_dice": 0.2}, {"mean_dice": 0.9}, {"mean_dice": 0.2}]
    assert best_and_worst(cases) == (1, 2)
    assert best_and_worst([{"mean_dice": 0.7}]) == (0, 0)
    assert best_and_worst(cases, key="mean_dice") == (1, 2)
    with pytest.raises(UNetError, match="no cases"):
        best_and_worst([])
    with pytest.raises(UNetError, match="case 1 .* no numeric 'mean_dice'"):
        best_and_worst([{"mean_dice": 0.1}, {"name": "x.png"}])


def test_scale_points_maps_the_ranges_onto_the_box():
    box = (10.0, 20.0, 100.0, 50.0)  # left, top, width, height
    pixels = report_html.scale_points([(0, 0), (10, 1), (5, 0.5)], box, (0, 10), (0, 1))
    # x 0..10 -> 10..110; y 0..1 -> 70..20 (SVG y grows downwards)
    assert pixels == [(10.0, 70.0), (110.0, 20.0), (60.0, 45.0)]
    assert report_html.value_range([2.0, 2.0]) == (1.9, 2.1)  # a flat series still gets a span
    assert report_html.value_range([]) == (0.0, 1.0)
    assert report_html.ticks(10, 300) == [100.0, 200.0, 300.0]
    assert report_html.ticks(0, 1) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert report_html.ticks(0.335, 1.04) == pytest.approx([0.4, 0.6, 0.8, 1.0])


def test_parameters_come_from_the_training_sessions():
    records = report.read_log_records_from_text(
        log_line("PARAMETER", {"exec_mode": "train_and_evaluate", "batch_size": 8})
        + log_line("PARAMETER", {"precision": "mixed_bfloat16"})
        + log_line("PARAMETER", {"exec_mode": "export", "batch_size": 1})
        + log_line("PARAMETER", {"precision": "float32"}))
    assert report.merged_parameters(records) == {"exec_mode": "train_and_evaluate", "batch_size": 8,
                                                 "precision": "mixed_bfloat16"}
    assert report.session_modes(records) == ["train_and_evaluate", "export"]


def polyline_points(svg: str) -> list[list[tuple[float, float]]]:
    """The points of every polyline of an SVG string."""
    out = []
    for chunk in svg.split("<polyline")[1:]:
        coords = chunk.split('points="', 1)[1].split('"', 1)[0]
        out.append([tuple(float(v) for v in pair.split(",")) for pair in coords.split()])
    return out


def test_svg_chart_draws_known_points_at_the_box_corners():
    svg = report_html.svg_line_chart({"loss": {1: 1.0, 3: 0.0, 2: 0.5}, "empty": {}}, "loss", "loss",
                                     width=300, height=200, chart_id="c")
    # The plot box is (74, 28, 300 - 74 - 16, 200 - 28 - 40) = (74, 28, 210, 132); steps sorted.
    assert polyline_points(svg) == [[(74.0, 28.0), (179.0, 94.0), (284.0, 160.0)]]
    assert 'id="c"' in svg and 'data-name="loss"' in svg and "empty" not in svg
    assert 'height="215"' in svg  # one legend row added under the plot
    assert "not logged" in report_html.svg_line_chart({"x": {}}, "t", "y")


def test_tables_escape_text_and_mark_best_and_worst_rows():
    cases = [{"index": 0, "name": "<a>.png", "dice": {"membrane": 0.2, "interior": 0.8}, "mean_dice": 0.5,
              "pixel_error": 0.1},
             {"index": 5, "name": "b.png", "dice": {"membrane": 0.6, "interior": 0.9}, "mean_dice": 0.75,
              "pixel_error": 0.05},
             {"index": 7, "name": "c.png", "dice": {"membrane": 0.4, "interior": 0.8}, "mean_dice": 0.6,
              "pixel_error": 0.07}]
    header, rows, classes = report.case_table(cases, CLASSES)
    assert header == ["index", "image", "Dice membrane", "Dice interior", "mean Dice", "pixel error", ""]
    assert rows[1] == [5, "b.png", 0.6, 0.9, 0.75, 0.05, "best"] and classes == ["worst", "best", ""]
    table = report_html.html_table(header, rows, classes, table_id="t")
    assert "&lt;a&gt;.png" in table and "<a>" not in table
    assert '<tr class="best"><td class="num">5</td><td>b.png</td><td class="num">0.6000</td>' in table
    results = {"membrane_dice": 0.3, "membrane_iou": 0.2, "interior_dice": 0.9, "interior_iou": 0.8,
               "mean_dice": 0.6, "pixel_error": 0.1, "step": 4, "fold": 0, "tta": False, "per_case": cases}
    assert report.class_rows(results, CLASSES) == [("membrane", 0.3, 0.2), ("interior", 0.9, 0.8)]
    assert report.other_score_rows(results, CLASSES) == [("mean_dice", 0.6), ("pixel_error", 0.1)]


def test_export_rows_read_export_json():
    doc = {"selection": {"chosen": "model_int8.tflite"},
           "artifacts": {"model_int8.tflite": {"format": "tflite", "precision": "int8", "size_bytes": 2_500_000,
                                               "parity": {"a": {"label_agreement": 0.999}, "b": {"label_agreement": 0.995}},
                                               "latency": {"median_ms": 12.5, "p90_ms": 14.0},
                                               "parity_tile_size": 256},
                         "model.onnx": {"format": "onnx", "precision": "fp32"}}}
    assert report.export_rows(doc) == [
        ["model.onnx", "onnx", "fp32", None, None, None, None, None, ""],
        ["model_int8.tflite", "tflite", "int8", 2.5, 99.5, 12.5, 14.0, 256, "yes"]]


def log_line(step, data, elapsed=0.0) -> str:
    return JSON_PREFIX + json.dumps({"type": "LOG", "step": step, "data": data, "elapsedtime": elapsed}) + "\n"


def test_timing_rows_add_up_sessions_and_take_the_median_rate():
    records = report.read_log_records_from_text(
        log_line("PARAMETER", {"batch_size": 2, "cpu": "Some CPU (x86)", "precision": "float32",
                               "precision_reason": "forced"})
        + log_line(5, {"img_per_s": 1.0}) + log_line(10, {"img_per_s": 40.0}) + log_line(15, {"img_per_s": 50.0})
        + log_line("TRAINING", {"step": 15, "seconds": 3.0}) + 'DLLL {"type": "LOG", "st'  # killed mid-write
        + "\n" + log_line("TRAINING", {"step": 20, "seconds": 1.5}))
    rows = dict(report.timing_rows(records, report.merged_parameters(records)))
    assert rows["training seconds (train() wall time, evaluations included)"] == 4.5
    assert rows["training sessions (1 + resumes)"] == 2 and rows["last step"] == 15
    assert rows["images/s (median of logged windows)"] == 40.0
    assert rows["CPU"] == "Some CPU (x86)" and rows["precision"] == "float32"


# --- a run folder built without TensorFlow ---------------------------------------------------------

def fake_run(root: pathlib.Path) -> pathlib.Path:
    """The files a 4-step run with two evaluations, 3 validation images and one export leaves."""
    run = root / "run"
    run.mkdir(parents=True)
    log = (log_line("PARAMETER", {"exec_mode": "train_and_evaluate", "data_dir": "/data", "batch_size": 2})
           + log_line("FINGERPRINT", {"images": 12, "channels": 1, "size_median": "32x32"})
           + log_line("RECIPE", {"flag": "normalization", "value": "global", "reason": "one intensity scale"})
           + log_line("RECIPE", {"flag": "crop_size", "value": 32, "reason": "given on the command line"})
           + log_line("PARAMETER", {"precision": "float32", "precision_reason": "no BF16", "cpu": "Test CPU",
                                    "parameters": 1234, "gflop_per_image": 0.01, "classes": "membrane,interior"}))
    for step, loss in ((1, 1.2), (2, 1.0), (3, 0.9), (4, 0.7)):
        log += log_line(step, {"loss": loss, "learning_rate": 0.001 / step, "img_per_s": 10.0 + step})
        if step % 2 == 0:
            log += log_line(["eval", step], {"membrane_dice": 0.3 * step, "mean_dice": 0.2 * step, "step": step})
    log += log_line("TRAINING", {"step": 4, "seconds": 2.5})
    (run / "log.json").write_text(log)
    rng = np.random.default_rng(0)
    images = [rng.random((32, 32, 1), dtype=np.float32) for _ in range(3)]
    truth = [(im[..., 0] > 0.3).astype(np.uint8) for im in images]
    predicted = [t.copy() for t in truth]
    predicted[1][:16] = 1 - predicted[1][:16]  # image 1 half wrong: the worst case
    cases = case_scores(predicted, truth, CLASSES, [f"stack.tif[{i}]" for i in (8, 9, 10)], [8, 9, 10])
    results = {"membrane_dice": 0.6, "membrane_iou": 0.4, "interior_dice": 0.9, "interior_iou": 0.8,
               "mean_dice": 0.75, "pixel_error": 0.1, "fold": 2, "num_folds": 3, "step": 4, "num_images": 3,
               "tta": False, "per_case": cases}
    (run / "eval_results.json").write_text(json.dumps(results))
    best, worst = best_and_worst(cases)
    for position, name in ((best, "overlay_best.png"), (worst, "overlay_worst.png")):
        write_png(run / name, comparison_panel(images[position], predicted[position], truth[position], skip_class=1))
    (run / "model.json").write_text(json.dumps({"spec": {"padding": "same", "depth": 2}, "class_names": list(CLASSES)}))
    (run / "export").mkdir()
    (run / "export" / "export.json").write_text(json.dumps({"artifacts": {"model.onnx": {
        "format": "onnx", "precision": "fp32", "size_bytes": 1000, "latency": {"median_ms": 3.0, "p90_ms": 4.0}}}}))
    return run


class DomIndex(html.parser.HTMLParser):
    """Elements of a page by id, tag counts, every src/href value and the text of each table by id."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, dict[str, str]] = {}
        self.tags: dict[str, int] = {}
        self.links: list[str] = []
        self.table_rows: dict[str, int] = {}
        self._table: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if "id" in a:
            self.by_id[a["id"]] = {"tag": tag, **a}
        self.links += [a[k] for k in ("src", "href") if k in a]
        if tag == "table":
            self._table = a.get("id")
        if tag == "tr" and self._table:
            self.table_rows[self._table] = self.table_rows.get(self._table, 0) + 1

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None


def index_dom(text: str) -> DomIndex:
    dom = DomIndex()
    dom.feed(text)
    return dom


def decoded_png(data_uri: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert data_uri.startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(data_uri[len(prefix):])))
    image.load()
    assert image.format == "PNG"
    return image


def check_report_dom(dom: DomIndex, cases: int) -> None:
    """The curves, both overlays (valid PNGs) and the score tables are on the page; nothing is fetched."""
    for chart in ("curve-loss", "curve-validation", "curve-lr"):
        assert dom.by_id[chart]["tag"] == "svg", chart
    assert dom.tags.get("polyline", 0) >= 3
    for label in ("best", "worst"):
        image = decoded_png(dom.by_id[f"overlay-{label}"]["src"])
        assert image.width > 2 * image.height  # input | prediction | truth side by side
    assert dom.table_rows["case-scores"] == cases + 1 and dom.table_rows["class-scores"] == 3
    assert all(link.startswith(("data:", "fold_")) for link in dom.links), dom.links  # self-contained


def test_write_report_of_a_run(tmp_path):
    run = fake_run(tmp_path)
    path = report.write_report(run)
    assert path == run / "report.html"
    text = path.read_text()
    dom = index_dom(text)
    check_report_dom(dom, cases=3)
    assert dom.table_rows["recipe"] == 3 and dom.table_rows["exports"] == 2
    assert "Test CPU" in text and "one intensity scale" in text and "size_median" in text
    # the worst row is image 1 (index 9), as the case scores rank it
    assert '<tr class="worst"><td class="num">9</td>' in text
    assert report.write_report(run, tmp_path / "elsewhere.html") == tmp_path / "elsewhere.html"


def test_cv_folder_gets_the_fold_table(tmp_path):
    for k, dice in enumerate((0.6, 0.8)):
        fold = tmp_path / "cv" / f"fold_{k}"
        fold.mkdir(parents=True)
        (fold / "eval_results.json").write_text(json.dumps({"fold": k, "num_folds": 2, "step": 4,
                                                            "membrane_dice": dice, "per_case": []}))
    (tmp_path / "cv" / "fold_1" / "report.html").write_text("<html></html>")
    text = report.write_report(tmp_path / "cv").read_text()
    dom = index_dom(text)
    assert dom.table_rows["folds"] == 2  # header + membrane_dice
    assert "0.7000" in text and "0.1414" in text  # mean and sample sd of 0.6, 0.8
    assert dom.links == ["fold_1/report.html"]


def test_missing_and_non_run_folders_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(UNetError, match="no such folder"):
        report.write_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UNetError, match="not a run folder"):
        report.write_report(tmp_path / "empty")
    assert cli_main.main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and "empty: not a run folder" in err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "eval_results.json").write_text("{")
    assert cli_main.main(["report", str(tmp_path / "bad")]) == 2
    assert "eval_results.json: not readable JSON" in capsys.readouterr().err


def test_report_command_is_registered(tmp_path, capsys):
    run = fake_run(tmp_path)
    assert cli_main.main(["report", str(run), "--output", str(tmp_path / "r.html")]) == 0
    assert capsys.readouterr().out.strip() == f"written: {tmp_path / 'r.html'}"


# --- the page in a browser ---------------------------------------------------------------------------

def chromium() -> pathlib.Path:
    """/usr/bin/chromium, or skip (fail under CI=true: scripts/install_chromium.sh installs it)."""
    if CHROMIUM.is_file():
        return CHROMIUM
    message = f"{CHROMIUM} missing (bash scripts/install_chromium.sh)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def run_chromium(page: pathlib.Path, profile: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
    # Every flag that could reach a network or an update server is off: the page must load offline.
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}"]
    return subprocess.run([str(chromium()), *flags, *args, page.as_uri()], capture_output=True, text=True,
                          timeout=120, check=True)


def test_page_renders_in_headless_chromium(tmp_path):
    chromium()
    page = report.write_report(fake_run(tmp_path))
    shot = tmp_path / "shot.png"
    run_chromium(page, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,2400")
    with Image.open(shot) as image:
        assert image.format == "PNG" and image.size == (1200, 2400)
        grey = np.asarray(image.convert("L"), np.float32)
    assert grey.std() > 10 and (grey < 200).mean() > 0.01  # text, charts and images, not a blank page
    dom = run_chromium(page, tmp_path / "profile", "--dump-dom").stdout
    check_report_dom(index_dom(dom), cases=3)


# --- a real tiny training run ---------------------------------------------------------------------

@pytest.mark.slow
def test_training_writes_the_report(tmp_path):
    data = tmp_path / "data"
    subprocess.run([sys.executable, str(REPO / "download_dataset.py"), "--synthetic", "--data_dir", str(data),
                    "--size", "64", "--num_slices", "10"], check=True, capture_output=True)
    run = tmp_path / "run"
    assert cli_main.main(["train", "--data_dir", str(data), "--model_dir", str(run), "--padding", "same",
                          "--base_filters", "4", "--depth", "2", "--crop_size", "32", "--batch_size", "1",
                          "--max_steps", "2", "--log_every", "1", "--no-saved_model", "--precision", "fp32"]) == 0
    results = json.loads((run / "eval_results.json").read_text())
    assert {"membrane_dice", "mean_dice", "pixel_error", "step", "num_images"} <= set(results)
    assert len(results["per_case"]) == results["num_images"] == 2
    mean = np.mean([c["mean_dice"] for c in results["per_case"]])
    assert 0.0 <= mean <= 1.0
    dom = index_dom((run / "report.html").read_text())
    check_report_dom(dom, cases=2)
    records = report.read_log_records(run / "log.json")
    assert report.named_records(records, "REPORT") == [{"path": str(run / "report.html")}]
    assert report.named_records(records, "TRAINING")[0]["step"] == 2
    # report.py spells out the export file's place to stay free of TensorFlow: it must agree.
    from unet_medical.export.formats import EXPORT_DIR
    from unet_medical.inference.runtimes import EXPORT_JSON

    assert report.EXPORT_FILE == pathlib.Path(EXPORT_DIR) / EXPORT_JSON


def test_a_report_failure_costs_one_warning_not_the_run(tmp_path, monkeypatch, capsys):
    from unet_medical.base import runlog
    from unet_medical.cli import modes

    def broken(run_dir, output=None):
        raise OSError("disk full")

    monkeypatch.setattr(report, "write_report", broken)
    logger = runlog.Logger([runlog.StdOutBackend()])
    assert modes.write_run_report(str(tmp_path), logger) is None
    lines = [line for line in capsys.readouterr().out.splitlines() if "WARNING" in line]
    assert len(lines) == 1 and "report.html not written (OSError: disk full)" in lines[0]
