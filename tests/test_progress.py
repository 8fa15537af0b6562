"""utils.progress: k/N, rate and ETA arithmetic on a fake clock; DLLogger lines with eta off a
terminal, a tqdm bar on one; rank gating; and one tiny training run end to end (stdout shows an
ETA, TensorBoard holds validation Dice at integer steps, curves.png is written)."""
import io
import json
import re

import numpy as np
import pytest

from unet_medical.base import runlog
from unet_medical.base.runlog import JSONStreamBackend, Logger, StdOutBackend
from unet_medical.base.progress import Progress, eta_seconds, format_duration, format_rate, rate_per_s, write_line
from tests.recording import RecordingLogger


class FakeClock:
    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_rate_and_eta_formulas():
    assert rate_per_s(30, 12.0) == 2.5
    assert rate_per_s(0, 12.0) is None and rate_per_s(5, 0.0) is None
    assert eta_seconds(25, 600, 2.5) == 230.0  # 575 steps at 2.5 step/s
    assert eta_seconds(700, 600, 2.5) == 0.0   # past the end: nothing left, never negative
    assert eta_seconds(1, 10, None) is None
    assert format_duration(7 * 60 + 12) == "0:07:12"
    assert format_duration(3 * 3600 + 5) == "3:00:05"
    assert format_duration(26 * 3600) == "1d 2:00:00"
    assert format_duration(None) == "?"
    assert format_rate(2.5, "step") == "2.5 step/s"
    assert format_rate(1 / 312, "variant") == "312 s/variant"
    assert format_rate(None, "img") == "?"


def test_rate_excludes_the_first_item_and_eta_follows():
    clock = FakeClock()
    progress = Progress(100, "train", unit="step", bar=False, clock=clock, interval_s=None)
    clock.now += 30.0           # step 1: tracing, 30 s
    progress.update()
    assert progress.done == 1
    assert progress.rate() == pytest.approx(1 / 30)  # only one item: measured from the start
    for _ in range(10):         # then 0.5 s per step
        clock.now += 0.5
        progress.update()
    assert progress.done == 11
    assert progress.rate() == pytest.approx(2.0)      # 10 steps in 5 s, the slow first one excluded
    assert progress.eta() == pytest.approx(89 / 2.0)  # 89 steps left
    assert progress.fields() == {"progress": "11/100", "rate": "2 step/s", "eta": "0:00:44"}


def test_resumed_run_counts_from_its_initial_step():
    clock = FakeClock()
    progress = Progress(600, "train", unit="step", initial=400, bar=False, clock=clock, interval_s=None)
    for _ in range(3):
        clock.now += 2.0
        progress.update()
    # 2 steps after the first in 4 s: 0.5 step/s; 197 left.
    assert progress.fields() == {"progress": "403/600", "rate": "2 s/step", "eta": "0:06:34"}


def test_log_emits_a_record_with_progress_metrics_and_eta():
    clock, logger = FakeClock(), RecordingLogger()
    progress = Progress(600, "train", logger, unit="step", bar=False, clock=clock, interval_s=None,
                        integer_steps=True)
    for _ in range(25):
        clock.now += 1.0
        progress.update()
    progress.log(loss=0.5, img_per_s=8.0)
    assert logger.records == [(25, {"progress": "25/600", "loss": 0.5, "img_per_s": 8.0,
                                    "rate": "1 step/s", "eta": "0:09:35"})]


def test_interval_lines_at_most_every_interval_and_a_last_line(capsys):
    clock = FakeClock()
    with Logger([StdOutBackend()]) as logger:
        with Progress(10, "predict", logger, unit="img", bar=False, clock=clock, interval_s=10.0) as progress:
            for _ in range(10):
                clock.now += 3.0
                progress.update()
    lines = capsys.readouterr().out.splitlines()
    # Lines at 12 s (4 images), 24 s (8 images), then the closing line at 10/10.
    counts = [re.search(r"progress: (\d+)/10", line).group(1) for line in lines]
    assert counts == ["4", "8", "10"], lines
    assert all(re.search(r" - predict \| .*rate: [\d.]+ s/img \| eta: \d+:\d\d:\d\d$", line) for line in lines), lines
    assert lines[-1].endswith("eta: 0:00:00")


def test_a_short_loop_logs_nothing(capsys):
    clock = FakeClock()
    with Logger([StdOutBackend()]) as logger:
        with Progress(3, "evaluate", logger, unit="img", bar=False, clock=clock) as progress:
            for _ in range(3):
                clock.now += 1.0
                progress.update()
    assert capsys.readouterr().out == ""


def test_training_records_keep_integer_steps_in_the_json_log(tmp_path):
    path = tmp_path / "log.json"
    with Logger([JSONStreamBackend(path)]) as logger:
        with Progress(4, "train", logger, unit="step", bar=False, interval_s=None, integer_steps=True) as progress:
            for _ in range(4):
                progress.update()
                progress.log(loss=1.0)
    records = [json.loads(line[len(runlog.JSON_PREFIX):]) for line in path.read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[-1]["data"]["progress"] == "4/4" and records[-1]["data"]["loss"] == 1.0


def test_other_ranks_and_disabled_progress_show_nothing(capsys, tmp_path):
    stream = io.StringIO()
    with Logger([StdOutBackend()], rank=1) as logger:
        with Progress(5, "train", logger, bar=True, stream=stream, interval_s=0.0) as progress:
            progress.update()
            progress.log(loss=1.0)
    with Progress(5, "train", RecordingLogger(), bar=True, stream=stream, enabled=False) as progress:
        progress.update()
        progress.log(loss=1.0)
    assert stream.getvalue() == "" and capsys.readouterr().out == ""


def test_bar_shows_k_of_n_and_log_lines_go_above_it(capsys):
    stream = io.StringIO()
    with Logger([StdOutBackend()]) as logger:
        with Progress(10, "train", logger, unit="step", bar=True, stream=stream, interval_s=None) as progress:
            for _ in range(3):
                progress.update()
            progress.log(loss=0.25)
            write_line("between")
    drawn = stream.getvalue()
    assert "train" in drawn and "3/10" in drawn and "loss=0.25" in drawn
    out = capsys.readouterr().out
    assert re.search(r"progress: 3/10 \| loss: 0.25 \| rate: .* \| eta: ", out) and "between" in out


def test_track_counts_items_as_they_are_consumed():
    progress = Progress(4, "calibrate", bar=False)
    seen = []
    for item in progress.track(range(4)):
        seen.append((item, progress.done))  # counted when the next item is asked for
    assert seen == [(0, 0), (1, 1), (2, 2), (3, 3)] and progress.done == 4


@pytest.mark.slow
def test_tiny_training_run_shows_eta_tensorboard_dice_and_curves(tmp_path, isbi_data_dir, capsys):
    import tensorflow as tf
    from PIL import Image
    from tensorboard.backend.event_processing import event_accumulator

    import main

    args = ["--exec_mode", "train_and_evaluate", "--data_dir", str(isbi_data_dir), "--model_dir", str(tmp_path),
            "--padding", "same", "--base_filters", "4", "--depth", "2", "--crop_size", "32", "--batch_size", "2",
            "--max_steps", "4", "--evaluate_every", "2", "--log_every", "1", "--num_folds", "10"]
    assert main.main(args) == 0
    out = capsys.readouterr().out
    # Not a terminal under pytest: DLLogger lines with k/N and an ETA.
    assert re.search(r"- step 4 \| progress: 4/4 \| loss: [\d.]+ \| .* \| eta: 0:00:00", out), out
    assert len(re.findall(r"progress: \d/4 .*eta: \d+:\d\d:\d\d", out)) == 4

    acc = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    tags = acc.Tags()["tensors"]
    dice = {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors("eval/membrane_dice")}
    assert sorted(dice) == [2, 4] and all(0.0 <= d <= 1.0 for d in dice.values())
    eval_results = json.loads((tmp_path / "eval_results.json").read_text())
    # The argmax's last evaluation is what the decision (cli.decide) started from; eval_results.json
    # scores the chosen rule, re-scored as its own series when that is not the argmax.
    assert dice[4] == pytest.approx(eval_results["decision"]["scores"]["argmax"], abs=1e-4)
    decided = {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors("eval_decided/membrane_dice")} \
        if "eval_decided/membrane_dice" in tags else {4: dice[4]}
    assert decided[4] == pytest.approx(eval_results["membrane_dice"])
    assert [e.step for e in acc.Tensors("learning_rate")] == [1, 2, 3, 4]
    overlays = [t for t in tags if t.startswith("eval/input_prediction_truth_")]
    assert len(overlays) == 3 and [e.step for e in acc.Tensors(overlays[0])] == [2, 4]
    assert "_hparams_/session_start_info" in tags and "config" in tags

    curves = tmp_path / "curves.png"
    assert curves.stat().st_size > 0
    with Image.open(curves) as image:
        assert image.format == "PNG" and min(image.size) > 100
        assert np.asarray(image.convert("L")).std() > 0  # something is drawn
