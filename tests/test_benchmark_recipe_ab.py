"""benchmarks/recipe_ab.py without training: arms parse, a finished run's scores and steps are read."""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import recipe_ab  # noqa: E402
from unet_medical.base.runlog import JSONStreamBackend, Logger  # noqa: E402


def test_an_arm_is_a_name_and_its_flags():
    assert recipe_ab.parse_arm('wide=--crop_size 384 --augment_params "flip_h_prob=0"') == (
        "wide", ["--crop_size", "384", "--augment_params", "flip_h_prob=0"])
    for bad in ("--loss ce_dice", "two words=--loss x", "=--loss x"):
        with pytest.raises(argparse.ArgumentTypeError, match="NAME="):
            recipe_ab.parse_arm(bad)


def test_a_finished_run_gives_its_dice_scores_and_steps(tmp_path):
    (tmp_path / "eval_results.json").write_text(json.dumps(
        {"background_dice": 0.97, "vessel_dice": 0.81, "mean_dice": 0.89, "pixel_error": 0.03,
         "v_rand_thinned": 0.95, "num_images": 4, "tta": False}))
    backend = JSONStreamBackend(tmp_path / "log.json")
    logger = Logger([backend], rank=0)
    logger.log("RECIPE", {"flag": "max_steps", "value": 650})
    logger.log("RECIPE", {"time_budget_s": 180, "training_s": 178.2, "steps": 602})
    backend.close()
    assert recipe_ab.scores_of(json.loads((tmp_path / "eval_results.json").read_text())) == {
        "background_dice": 0.97, "vessel_dice": 0.81, "mean_dice": 0.89, "v_rand_thinned": 0.95}
    assert recipe_ab.steps_of(tmp_path) == 602
    assert recipe_ab.steps_of(tmp_path / "missing") is None


def test_a_run_with_max_steps_gives_its_last_training_step(tmp_path):
    backend = JSONStreamBackend(tmp_path / "log.json")
    logger = Logger([backend], rank=0)
    for step in (25, 50, 456):
        logger.log(step, {"loss": 0.5})
    logger.log(("eval", 456), {"mean_dice": 0.8})
    backend.close()
    assert recipe_ab.steps_of(tmp_path) == 456
