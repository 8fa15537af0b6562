"""Cross-validation: the summary (utils.score.cv, checked against the statistics module) and the
one-command 5-fold recipe examples/unet_CPU_CV5.sh at toy size (skip finished folds, resume
interrupted ones, extra flags pass through, --num_folds stays 5)."""
from __future__ import annotations

import json
import os
import pathlib
import statistics
import subprocess

import pytest

from unet_medical.data.synthetic import write_isbi_layout
from unet_medical.base.errors import UNetError
from unet_medical.evaluation import cv
from unet_medical.base.artifacts import read_run_config

REPO = pathlib.Path(__file__).resolve().parents[1]
CV5 = REPO / "examples" / "unet_CPU_CV5.sh"
TRAIN = REPO / "examples" / "unet_CPU_TRAIN.sh"
# No SavedModel per fold: the folds' skip, resume and summary are checked here, and six SavedModels cost
# half a minute of CI.
TOY = ["--time_budget", "0", "--padding", "same", "--base_filters", "4", "--depth", "2", "--crop_size", "32", "--batch_size", "2",
       "--max_steps", "2", "--no-saved_model"]


def write_fold(root, k, **values):
    folder = root / f"fold_{k}"
    folder.mkdir(parents=True)
    (folder / "eval_results.json").write_text(json.dumps({"fold": k, **values}))


def test_summary_json_and_markdown(tmp_path):
    dice, v_rand = [0.81, 0.84, 0.79, 0.88, 0.80], [0.90, 0.93, 0.91, 0.95, 0.89]
    for k in range(5):
        write_fold(tmp_path, k, membrane_dice=dice[k], v_rand=v_rand[k], num_folds=5, step=600, num_images=6,
                   tta=False)
    assert cv.main([str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "cv_summary.json").read_text())
    assert [f["fold"] for f in summary["folds"]] == [0, 1, 2, 3, 4] and summary["n"] == 5
    assert summary["folds"][3]["v_rand"] == 0.95  # the folds' own results, unchanged
    assert summary["mean"]["membrane_dice"] == pytest.approx(statistics.fmean(dice))
    assert summary["sd"]["membrane_dice"] == pytest.approx(statistics.stdev(dice))  # sample sd
    assert summary["sd"]["v_rand"] == pytest.approx(statistics.stdev(v_rand))
    assert set(summary["mean"]) == {"membrane_dice", "v_rand"}  # step, num_images, tta are bookkeeping
    md = (tmp_path / "cv_summary.md").read_text()
    assert "n - 1" in md and "sample standard deviation" in md and "step 600" in md
    assert f"| membrane_dice | 0.8100 | 0.8400 | 0.7900 | 0.8800 | 0.8000 | {statistics.fmean(dice):.4f} |" in md
    assert not (tmp_path / "folds_summary.json").exists()


def test_markdown_names_each_folds_step_in_fold_order(tmp_path):
    for k, step in enumerate([1773, 1481, 2039]):  # a time budget: every fold its own count
        write_fold(tmp_path, k, membrane_dice=0.8, num_folds=3, step=step)
    assert cv.main([str(tmp_path)]) == 0
    md = (tmp_path / "cv_summary.md").read_text()
    assert "at steps 1773 (fold 0), 1481 (fold 1), 2039 (fold 2)." in md


def test_one_fold_has_no_sample_sd(tmp_path):
    write_fold(tmp_path, 0, membrane_dice=0.8)
    assert cv.summarize(cv.read_fold_results(tmp_path))["membrane_dice"] == {"mean": 0.8, "sd": None, "n": 1}


def test_incomplete_or_mixed_folds_are_refused(tmp_path):
    for k in (0, 1, 3):
        write_fold(tmp_path / "a", k, membrane_dice=0.8, num_folds=4)
    with pytest.raises(UNetError, match="fold.s. 2 missing"):
        cv.read_fold_results(tmp_path / "a")
    write_fold(tmp_path / "b", 0, membrane_dice=0.8, num_folds=2)
    write_fold(tmp_path / "b", 1, membrane_dice=0.8, num_folds=3)
    with pytest.raises(UNetError, match="split differently"):
        cv.read_fold_results(tmp_path / "b")
    (tmp_path / "c" / "fold_1").mkdir(parents=True)
    (tmp_path / "c" / "fold_1" / "eval_results.json").write_text(json.dumps({"fold": 0, "membrane_dice": 0.8}))
    with pytest.raises(UNetError, match="fold 0, not of fold 1"):
        cv.read_fold_results(tmp_path / "c")


def run_script(path, *args):
    return subprocess.run(["bash", str(path), *map(str, args)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


@pytest.mark.parametrize("flag", [["--num_folds", "3"], ["--num_folds=5"], ["--fold", "1"]])
def test_cv5_refuses_fold_flags(tmp_path, flag):
    done = run_script(CV5, tmp_path / "data", tmp_path / "results", *flag)
    assert done.returncode == 2 and flag[0].split("=")[0] in done.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_cv5_toy_run_skips_finished_and_resumes_interrupted_folds(tmp_path):
    data, results = tmp_path / "data", tmp_path / "results"
    write_isbi_layout(data, num_slices=10, size=64, seed=0)  # 5 folds of 2 slices
    # Fold 3 was interrupted: a checkpoint at step 1 of 2.
    assert run_script(TRAIN, data, results / "fold_3", *TOY, "--fold", "3", "--max_steps", "1").returncode == 0

    first = run_script(CV5, data, results, *TOY)
    assert first.returncode == 0, first.stderr[-2000:]
    for k in range(5):
        used = read_run_config(results / f"fold_{k}")
        assert (used["fold"], used["num_folds"], used["max_steps"], used["base_filters"]) == (k, 5, 2, 4)
        assert used["lr_schedule"] == "cosine" and used["batch_norm"] and used["batch_size"] == 2  # the recipe's
        evaluation = json.loads((results / f"fold_{k}" / "eval_results.json").read_text())
        assert (evaluation["fold"], evaluation["step"]) == (k, 2)
        log = (results / f"fold_{k}" / "log.json").read_text()
        assert ('"resumed_step": 1' in log) == (k == 3)
    summary = json.loads((results / "cv_summary.json").read_text())
    assert len(summary["folds"]) == 5
    dice = [f["membrane_dice"] for f in summary["folds"]]
    assert summary["mean"]["membrane_dice"] == pytest.approx(statistics.fmean(dice))
    assert summary["sd"]["membrane_dice"] == pytest.approx(statistics.stdev(dice))
    assert (results / "cv_summary.md").is_file()
    page = (results / "report.html").read_text()  # the fold table, linking each fold's own report
    assert all(f'href="fold_{k}/report.html"' in page and (results / f"fold_{k}" / "report.html").is_file()
               for k in range(5))

    # Rerun after fold 1 lost its evaluation (a crash after its last checkpoint): the other folds are
    # skipped untouched, fold 1 resumes at step 2 and is evaluated without training.
    (results / "fold_1" / "eval_results.json").unlink()
    logs = {k: (results / f"fold_{k}" / "log.json").read_bytes() for k in range(5)}
    second = run_script(CV5, data, results, *TOY)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.count("skipped (--skip_finished)") == 4
    for k in (0, 2, 3, 4):
        assert (results / f"fold_{k}" / "log.json").read_bytes() == logs[k]
    log = (results / "fold_1" / "log.json").read_text()
    assert "nothing to train" in log
    assert json.loads((results / "fold_1" / "eval_results.json").read_text())["step"] == 2
