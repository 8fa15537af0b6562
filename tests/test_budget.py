"""--time_budget: the arithmetic that turns measured times into a number of steps (hand values), the
schedule that is set against that number after the run started, an explicit --max_steps winning over a
recipe's budget, and budgeted runs end to end (the time spent, a resume reusing the recorded total)."""
import json
import os
import pathlib
import subprocess

import numpy as np
import pytest

from unet_medical.cli.config import parse_config
from unet_medical.training.budget import (BudgetCosts, StepMeter, budget_evaluate_every, checkpoints_after, current_costs,
                                          evaluation_due, evaluations_after, recheck_total, remaining_cost_s, steps_within_budget,
                                          warmup_done)

REPO = pathlib.Path(__file__).resolve().parents[1]


def costs(step_s=1.0, evaluation_s=0.0, checkpoint_s=0.0, checkpoint_every=1000, evaluate_every=None, after_s=0.0):
    return BudgetCosts(step_s, evaluation_s, checkpoint_s, checkpoint_every, evaluate_every, after_s)


# ---------------------------------------------------------------------------------------- arithmetic
def test_steps_alone_fill_the_remainder():
    assert steps_within_budget(costs(step_s=0.5), done=10, remaining_s=100.0) == 210
    assert steps_within_budget(costs(step_s=0.4), done=0, remaining_s=600.0) == 1500


def test_checkpoints_are_paid_for():
    # T + 0.5 x (T // 10 + (T % 10 != 0) + 1): T = 94 costs 99.5 s, T = 95 costs 100.5 s.
    c = costs(step_s=1.0, checkpoint_s=0.5, checkpoint_every=10)
    assert remaining_cost_s(c, 0, 94) == pytest.approx(99.5)
    assert remaining_cost_s(c, 0, 95) == pytest.approx(100.5)
    assert steps_within_budget(c, done=0, remaining_s=100.0) == 94


def test_budget_evaluations_follow_the_total():
    # Without --evaluate_every, 4 evaluations of 10 s: T = 160 costs 160 + 40. T = 161 (every 40) would
    # evaluate at 160 too, 1 step before the final one: that one is skipped, 201 s.
    c = costs(step_s=1.0, evaluation_s=10.0)
    assert budget_evaluate_every(160, None) == 40
    assert remaining_cost_s(c, 0, 160) == pytest.approx(200.0)
    assert remaining_cost_s(c, 0, 161) == pytest.approx(201.0)
    assert remaining_cost_s(c, 0, 180) == pytest.approx(220.0)  # 160 is 20 steps (half of 45) before 180
    assert remaining_cost_s(c, 0, 183) == pytest.approx(223.0)
    # 157-159 (every 39): 156 is under half an interval before the end, so 4 evaluations, no pocket of
    # totals that cost more than a larger one; the bisection finds the best total, 160 (200 s).
    assert remaining_cost_s(c, 0, 159) == pytest.approx(199.0)
    assert steps_within_budget(c, done=0, remaining_s=200.0) == 160


def test_given_evaluate_every_counts_evaluations_after_the_fixed_step():
    # From step 100 with --evaluate_every 25: T = 200 evaluates at 125, 150, 175 and at the end
    # (50 + 4 x 2 = 58 s). T = 201 skips 200, 1 step before the final one (under half an interval),
    # T = 213 too; T = 225 evaluates at 200 (25 steps before the end).
    c = costs(step_s=0.5, evaluation_s=2.0, evaluate_every=25)
    assert evaluations_after(100, 200, 25) == 4
    assert evaluations_after(100, 201, 25) == 4
    assert evaluations_after(100, 212, 25) == 4
    assert evaluations_after(100, 213, 25) == 5
    assert steps_within_budget(c, done=100, remaining_s=60.0) == 204  # 52 + 4 x 2 = 60 s; 205 is 60.5


@pytest.mark.parametrize("every", [1, 2, 3, 7, 25, 243])
@pytest.mark.parametrize("done", [0, 5, 24, 100])
def test_evaluations_after_counts_the_steps_the_loop_evaluates_at(every, done):
    # Independent count: walk the steps as the loop does, with the rule written out here.
    for total in range(done + 1, done + 4 * every + 3):
        walked = sum(1 for s in range(done + 1, total + 1)
                     if s % every == 0 and s < total and total - s >= every / 2) + 1
        assert evaluations_after(done, total, every) == walked, (done, total, every)
        assert walked - 1 == sum(evaluation_due(s, total, every) for s in range(done + 1, total + 1))


def test_no_periodic_evaluation_right_before_the_final_one():
    # The run refixed to 997 steps with evaluations every 243 evaluated at 972 and at 997 (6 s each).
    assert not evaluation_due(972, 997, 243)
    assert evaluation_due(729, 997, 243)
    assert not evaluation_due(264, 265, 66)
    assert evaluation_due(2, 4, 2) and not evaluation_due(4, 4, 2)
    assert evaluation_due(9, 10, 1)


def test_a_recheck_keeps_a_total_that_still_fits_and_refits_one_that_does_not():
    # 100 steps left at 0.1 s = 10 s against 10.2 s left of a 30 s budget: within 3 % (0.9 s), kept.
    assert recheck_total(costs(step_s=0.1), done=100, total=200, remaining_s=10.2, budget_s=30.0) is None
    # The steps slowed to 0.15 s: 15 s would end 4.8 s late; 68 more steps fit 10.2 s.
    assert recheck_total(costs(step_s=0.15), done=100, total=200, remaining_s=10.2, budget_s=30.0) == 168
    # They sped up to 0.0625 s: 6.25 s would end 3.95 s early; 163 more fit.
    assert recheck_total(costs(step_s=0.0625), done=100, total=200, remaining_s=10.2, budget_s=30.0) == 263
    # Nothing left: stop where the run is, never before it.
    assert recheck_total(costs(step_s=0.1), done=100, total=200, remaining_s=-1.0, budget_s=30.0) == 100


def test_a_recheck_counts_the_evaluations_as_slow_as_they_have_become():
    fixed = costs(step_s=0.1, evaluation_s=1.0, checkpoint_s=0.1, evaluate_every=25)
    # Before any evaluation after the fix: the fix's times, with the new step time.
    assert current_costs(fixed, [0.125, 0.125], {}) == BudgetCosts(0.125, 1.0, 0.1, 1000, 25)
    slowed = current_costs(fixed, [0.1, 0.1], {"evaluation": 3.0, "checkpoint": 0.3})
    assert (slowed.step_s, slowed.evaluation_s, slowed.checkpoint_s) == (0.1, 3.0, 0.3)
    # By hand: 100 steps left at 0.1 s, evaluations at 125, 150, 175 and the final one, checkpoints at 200
    # and after the final evaluation. At 1 s per evaluation the rest takes 10 + 4 + 0.2 = 14.2 s: it fits
    # 14.5 s. At 3 s (and 0.3 s per checkpoint) it takes 22.6 s: the total must come down.
    assert recheck_total(current_costs(fixed, [0.1], {}), 100, 200, 14.5, 30.0) is None
    assert recheck_total(slowed, 100, 200, 14.5, 30.0) < 200


def test_the_work_after_training_is_paid_for_once():
    # 100 steps of 1 s and the decision's flipped pass (40 s) after them: 140 s, whatever the total.
    c = costs(step_s=1.0, after_s=40.0)
    assert remaining_cost_s(c, 0, 100) == pytest.approx(140.0)
    assert remaining_cost_s(c, 0, 101) == pytest.approx(141.0)
    assert steps_within_budget(c, done=0, remaining_s=600.0) == 560
    # A recheck projects the latest estimate (the evaluations slowed, so the decision will too) ...
    fixed = costs(step_s=0.1, after_s=8.0)
    assert current_costs(fixed, [0.1], {}).after_s == 8.0
    assert current_costs(fixed, [0.1], {"after": 16.0}).after_s == 16.0
    # ... and with 100 steps (10 s) left and 18.5 s to go, 8 s after training fits, 16 s does not.
    assert recheck_total(current_costs(fixed, [0.1], {}), 100, 200, 18.5, 60.0) is None
    assert recheck_total(current_costs(fixed, [0.1], {"after": 16.0}), 100, 200, 18.5, 60.0) == 125


def test_checkpoint_count_by_hand():
    assert checkpoints_after(0, 100, 50) == 3  # 50, 100, after the final evaluation
    assert checkpoints_after(8, 539, 50) == 12  # 50 ... 500, 539, final
    assert checkpoints_after(60, 99, 50) == 2  # 99, final


def test_a_spent_budget_stops_at_once():
    assert steps_within_budget(costs(step_s=0.5, evaluation_s=3.0), done=42, remaining_s=-1.0) == 42
    assert steps_within_budget(costs(step_s=0.5, evaluation_s=30.0), done=42, remaining_s=20.0) == 42


def test_the_vessel_run_of_the_report():
    """The old probe timed 8 steps right after tracing: 0.897 s/step, 668 steps for 10 minutes. Warm-up
    steps of each input shape are left out, so the steady 0.36-0.43 s/step decide."""
    meter = StepMeter()
    for seconds in (4.2, 1.1, 0.9):  # tracing, autotuning, first allocations
        meter.add((4, 256, 256, 1), seconds)
    for seconds in np.linspace(0.36, 0.43, 40):
        meter.add((4, 256, 256, 1), seconds)
    assert len(meter.warmup_s) == 3 and len(meter.steady_s) == 40
    assert meter.seconds_per_step() == pytest.approx(0.395)
    assert steps_within_budget(costs(step_s=meter.seconds_per_step()), done=43, remaining_s=600 - 22.0) == 43 + 1463


def test_every_input_shape_warms_up_on_its_own():
    meter = StepMeter()
    for _ in range(3):
        meter.add("a", 1.0)
    meter.add("a", 0.1)
    for _ in range(3):
        meter.add("b", 2.0)  # a new shape traces again: not a steady step
    meter.add("b", 0.3)
    assert meter.steady_s == [0.1, 0.3] and meter.seconds_per_step() == pytest.approx(0.2)
    with pytest.raises(ValueError):
        StepMeter().seconds_per_step()
    single = StepMeter()
    single.add("a", 9.0)
    assert single.seconds_per_step() == 9.0


def test_warmup_needs_steady_steps_over_a_twentieth_and_a_tenth_of_the_budget():
    meter = StepMeter()
    for _ in range(3 + 20):
        meter.add("a", 0.125)
    assert not warmup_done(meter, elapsed_s=10.0, budget_s=100.0)  # 2.5 s of steady steps: too short a sample
    for _ in range(20):
        meter.add("a", 0.125)
    assert not warmup_done(meter, elapsed_s=8.0, budget_s=100.0)  # 5 s of steady steps, 8 % of the budget
    assert warmup_done(meter, elapsed_s=10.0, budget_s=100.0)
    slow = StepMeter()
    slow.add("a", 40.0)  # a very slow model: decide by half the budget, once a step after tracing is timed
    assert not warmup_done(slow, elapsed_s=40.0, budget_s=100.0)
    assert not warmup_done(slow, elapsed_s=55.0, budget_s=100.0)
    assert warmup_done(slow, elapsed_s=100.0, budget_s=100.0)
    slow.add("a", 12.0)
    slow.add("a", 11.0)
    assert warmup_done(slow, elapsed_s=63.0, budget_s=100.0)
    traced_slowly = StepMeter()  # tracing took half the budget, the steps are fast: time 20 of them first
    traced_slowly.add("a", 55.0)
    traced_slowly.add("a", 0.02)
    assert not warmup_done(traced_slowly, elapsed_s=55.1, budget_s=100.0)
    assert slow.seconds_per_step() == 11.0  # no steady step: the fastest after the first (tracing)


# ---------------------------------------------------------------------------------------- schedule
def test_schedule_is_set_against_the_fixed_total_without_retracing():
    import tensorflow as tf

    from unet_medical.training.loop import WarmupSchedule

    schedule = WarmupSchedule(1.0, warmup_steps=10, total_steps=110, decay="cosine")
    assert float(schedule(60)) == pytest.approx(0.5)  # halfway from the end of warm-up to the total
    traced = tf.function(lambda step: schedule(step))
    schedule.hold()  # a budget before its total is known: the peak after warm-up
    assert float(traced(tf.constant(500))) == pytest.approx(1.0)
    assert float(traced(tf.constant(4))) == pytest.approx(0.5)  # warm-up unchanged
    schedule.set_total(300, decay_start=100)  # fixed at step 100: continuous there, 0 at 300
    assert float(traced(tf.constant(100))) == pytest.approx(1.0)
    assert float(traced(tf.constant(200))) == pytest.approx(0.5)
    assert float(traced(tf.constant(300))) == pytest.approx(0.0, abs=1e-7)
    assert traced.experimental_get_tracing_count() == 1


# ---------------------------------------------------------------------------------------- --max_steps wins
def test_typed_max_steps_overrules_a_recipes_budget():
    recipe = ["--time_budget", "10"]
    cfg = parse_config([*recipe, "--max_steps", "4"])
    assert (cfg.max_steps, cfg.time_budget, cfg.time_budget_ignored) == (4, None, 10.0)
    cfg = parse_config(["--max_steps", "4", *recipe])  # the order on the line does not matter
    assert (cfg.max_steps, cfg.time_budget) == (4, None)
    cfg = parse_config(recipe)  # no --max_steps typed: the budget decides
    assert (cfg.time_budget, cfg.time_budget_ignored) == (10.0, None)
    cfg = parse_config([*recipe, "--time_budget", "0", "--max_steps", "4"])
    assert (cfg.time_budget, cfg.time_budget_ignored) == (None, None)  # nothing was overruled
    from unet_medical.cli.config import build_parser

    help_text = build_parser().format_help()
    assert "--time_budget_ignored" not in help_text and "--max_steps typed" in " ".join(help_text.split())


def log_records(path: pathlib.Path) -> list[dict]:
    return [json.loads(line[5:]) for line in path.read_text().splitlines() if line.startswith("DLLL ")]


def recipe_records(path: pathlib.Path) -> list[dict]:
    return [r["data"] for r in log_records(path) if r["step"] == "RECIPE"]


TINY = ["--base_filters", "4", "--depth", "2", "--batch_size", "1", "--crop_size", "64", "--no-saved_model",
        "--log_every", "5", "--checkpoint_every", "20"]


@pytest.fixture(scope="module")
def vessels(tmp_path_factory):
    from unet_medical.data.synthetic_kinds import write_folder_kind

    path = tmp_path_factory.mktemp("data") / "vessels"
    write_folder_kind(path, "vessels", num_images=5)
    return path


@pytest.mark.slow
def test_cpu_recipe_with_max_steps_trains_exactly_that_many(vessels, tmp_path):
    """The recipe passes --time_budget 15; the user's --max_steps 4 after it wins (the issue: 16,410 steps)."""
    from unet_medical.training import checkpoint as ckpt

    run = tmp_path / "run"
    done = subprocess.run(["bash", str(REPO / "examples" / "unet_CPU_TRAIN.sh"), str(vessels), str(run), *TINY,
                           "--max_steps", "4"], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert ckpt.read_header(run / "checkpoints" / "last.npz").step == 4
    assert json.loads((run / "eval_results.json").read_text())["step"] == 4
    said = [r for r in recipe_records(run / "log.json") if r.get("flag") == "max_steps"]
    assert said == [{"flag": "max_steps", "value": 4, "reason": "--max_steps given: --time_budget 15 ignored"}]


@pytest.mark.slow
def test_budget_is_spent_and_a_resume_reuses_the_recorded_total(vessels, tmp_path, monkeypatch):
    """30 s of training on a tiny model spends its budget though its steps slow down by 10 ms (about
    1.7x) right after the total is fixed, as when another job starts on the same cores: a recheck
    refixes the total and the run ends within 35 % of the budget (without rechecks it ran 41 s of 30 in
    CI). The target, within 10 % on an idle machine, is measured by benchmarks/time_budget.py, not here.
    A resume with another budget trains to the recorded total and measures nothing."""
    import time

    import main
    from unet_medical.training import budget, loop
    from unet_medical.training import checkpoint as ckpt

    slowed = []  # non-empty once the total is fixed
    describe_fix, build_trainer = budget.describe_fix, loop.build_trainer
    monkeypatch.setattr(budget, "describe_fix", lambda *a, **k: slowed.append(1) or describe_fix(*a, **k))

    def slow_after_fix(*args, **kwargs):
        trainer = build_trainer(*args, **kwargs)
        step = trainer.step

        def slower(images, labels):
            if slowed:
                time.sleep(0.010)
            return step(images, labels)
        trainer.step = slower
        return trainer
    monkeypatch.setattr(loop, "build_trainer", slow_after_fix)

    run = tmp_path / "run"
    flags = ["--exec_mode", "train", "--data_dir", str(vessels), "--model_dir", str(run), *TINY, "--no-augment",
             "--warmup_steps", "5", "--lr_schedule", "cosine"]
    assert main.main([*flags, "--time_budget", "0.5"]) == 0
    records = [r for r in log_records(run / "log.json") if r["step"] == "RECIPE"]
    fixes = [r for r in records if r["data"].get("flag") == "max_steps"]
    fixed, rechecked = fixes[0], fixes[1:]
    end = next(r for r in records if "training_s" in r["data"])
    assert rechecked and rechecked[0]["data"]["value"] < fixed["data"]["value"]
    assert all(r["data"]["recheck"] and r["data"]["spent_s"] >= 0.5 * 30 for r in rechecked)
    total = fixes[-1]["data"]["value"]
    # The wall time itself is the benchmark's (benchmarks/time_budget.py: 0.987 and 0.999 idle). Here only
    # a bound a run without rechecks would break, on the steps: in CI 10.4 s once passed between the last
    # step's log line and the end, where the loop only writes its last three checkpoint files (fsynced;
    # another test was writing beside it), which no step time can foresee.
    started = fixed["timestamp"] - fixed["data"]["spent_s"]  # the loop's start, by the fix record's clock
    last_step = max(r["timestamp"] for r in log_records(run / "log.json") if r["step"] == total)
    assert last_step - started == pytest.approx(30.0, rel=0.35)  # the steps themselves end on time
    assert fixed["data"]["warmup_steps_timed"] >= 3 and fixed["data"]["steady_steps_timed"] >= 20
    header = ckpt.read_header(run / "checkpoints" / "last.npz")
    assert header.step == total == end["data"]["steps"] and header.meta["total_steps"] == total
    assert header.meta["decay_start"] == max(5, fixed["data"]["at_step"])  # a recheck keeps the decay start
    assert json.loads((run / "dataset_fingerprint.json").read_text())["max_steps"] == total
    from unet_medical.base.artifacts import read_run_config

    assert read_run_config(run)["max_steps"] == total
    print(f"budget 30 s: warm-up {fixed['data']['warmup_s_per_step']:.3f} s/step, steady "
          f"{fixed['data']['s_per_step']:.4f} s/step, fixed {fixed['data']['value']} steps, rechecked "
          f"{[r['data']['value'] for r in rechecked]}, trained {end['data']['training_s']:.1f} s")

    # A resume (with another budget) reuses the recorded total: nothing to train, nothing measured.
    before = len(records)
    assert main.main([*flags, "--time_budget", "5", "--resume_training"]) == 0
    later = recipe_records(run / "log.json")[before:]
    steps_said = [r for r in later if r.get("flag") == "max_steps"]
    assert [r["value"] for r in steps_said] == [total] and "recorded" in steps_said[0]["reason"]
    assert not any("s_per_step" in r for r in later)
    assert ckpt.read_header(run / "checkpoints" / "last.npz").step == total

