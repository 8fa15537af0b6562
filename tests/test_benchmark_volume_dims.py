"""benchmarks/volume_dims.py without training: a finished run folder is read, not retrained, into one row
of the table (Dice per class from dataset.json's labels, training time and steps from the RECIPE line,
prediction time from the PREDICT line)."""
from __future__ import annotations

import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import volume_dims  # noqa: E402
from unet_medical.base.runlog import JSONStreamBackend, Logger  # noqa: E402


def test_a_finished_run_becomes_one_row_of_the_table(tmp_path):
    data, run = tmp_path / "data", tmp_path / "out" / "dims_3"
    data.mkdir()
    run.mkdir(parents=True)
    (data / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "head": 1, "tail": 2}}))
    (run / "eval_results.json").write_text(json.dumps({"head_dice": 0.9, "tail_dice": 0.8, "mean_dice": 0.85,
                                                       "mean_hd95": 2.5, "mean_nsd": 0.95, "num_cases": 20}))
    backend = JSONStreamBackend(run / "log.json")
    logger = Logger([backend], rank=0)
    logger.log("RECIPE", {"time_budget_s": 180, "training_s": 181.5, "steps": 224})
    logger.log("PREDICT", {"cases": 4, "seconds_per_case": 0.56})
    backend.close()
    row = volume_dims.measure(data, run, "3", 3.0, [])  # eval_results.json and PREDICT present: nothing runs
    assert row == {"dims": "3", "head_dice": 0.9, "tail_dice": 0.8, "mean_dice": 0.85, "mean_hd95_mm": 2.5,
                   "mean_nsd": 0.95, "training_s": 181.5, "steps": 224, "predict_s_per_case": 0.56, "num_cases": 20}
    lines = volume_dims.table([row]).splitlines()
    assert lines[0].startswith("| dims | head_dice | tail_dice | mean_dice") and "| 3 | 0.900 | 0.800 |" in lines[2]


def test_flags_after_a_double_dash_go_to_every_run():
    args = volume_dims.parse_args(["DATA", "OUT", "--time_budget", "2", "--dims", "3", "--", "--augment_params",
                                   "elastic_prob=0"])
    assert (str(args.data_dir), args.dims, args.time_budget) == ("DATA", ["3"], 2.0)
    assert args.extra == ["--augment_params", "elastic_prob=0"]
    assert volume_dims.parse_args(["DATA", "OUT"]).extra == []
