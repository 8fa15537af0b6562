"""--time_budget: how many training steps fit in a number of minutes, from steps the run has timed itself.

A run with a budget starts on a provisional total. `StepMeter` records the wall time of every step
(batch fetch included) and calls a step steady only once its input shape has been seen WARM_STEPS_PER_SHAPE
times: the first steps of each shape pay for tracing, kernel selection and memory set-up, and timing
them made the old 8-step probe read 0.90 s/step for a run that then went at 0.36-0.43 s/step. When the
warm-up is over (`warmup_done`), `steps_within_budget` fixes the total from the steady rate, leaving
time for the planned evaluations and checkpoints and for the work the run does once training ends (the
decision on validation: its flipped or mirrored pass, BudgetCosts.after_s), so the budget is the run's
and not only its training loop's; the loop then sets the learning-rate schedule against
that total and records it in every checkpoint, so a resume reuses it and never measures again.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Hashable

WARM_STEPS_PER_SHAPE = 3  # steps of each input shape thrown away before timing (tracing, autotuning)
MIN_STEADY_STEPS = 20  # steady steps needed before the rate is trusted ...
WARMUP_FRACTION = 0.1  # ... at least this fraction of the budget spent ...
STEADY_FRACTION = 0.05  # ... and this fraction in steady steps: the input pipeline's autotuning and the
# machine's other jobs settle over seconds, not over 20 fast steps (0.020 s/step measured, 0.013 ran)
LATEST_FRACTION = 0.5  # fix the total by then whatever was measured (a step slower than the budget)
# From half the budget on, a fixed total is checked every twentieth of the budget against the steps of the
# last interval: a job that starts on the same cores after the fix slows every later step (a 30 s budget
# ran 41 s in CI), and two checks at 50 % and 80 % still ran 42 s when the load kept rising after them.
RECHECK_FRACTIONS = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))  # 0.5, 0.55, ..., 0.95
MIN_RECHECK_STEPS = 10  # steps timed since the last (re)fix before a recheck trusts their mean
RECHECK_SLACK = 0.03  # ... and refixed when its projected end misses the budget by more than this fraction
BUDGET_EVALUATIONS = 4  # evaluations of a budgeted run without --evaluate_every (the last one included)
UNBOUNDED_STEPS = 10**9  # the batch stream's bound while the total is not known (the loop stops it)


@dataclasses.dataclass
class StepMeter:
    """Wall times (s) of training steps, split into warm-up steps and steady ones per input shape."""

    seen: dict[Hashable, int] = dataclasses.field(default_factory=dict)
    warmup_s: list[float] = dataclasses.field(default_factory=list)
    steady_s: list[float] = dataclasses.field(default_factory=list)

    def add(self, shape: Hashable, seconds: float) -> None:
        count = self.seen.get(shape, 0)
        self.seen[shape] = count + 1
        (self.warmup_s if count < WARM_STEPS_PER_SHAPE else self.steady_s).append(float(seconds))

    def seconds_per_step(self) -> float:
        """Mean steady step time. Without steady steps (a step that takes much of the budget), the fastest
        warm-up step after the first: the first one is mostly tracing.

        The mean, not the median: steps where augmentation competes with the step for the cores are
        part of the steady state the budget has to pay for."""
        if self.steady_s:
            return sum(self.steady_s) / len(self.steady_s)
        if not self.warmup_s:
            raise ValueError("no step timed yet")
        return min(self.warmup_s[1:] or self.warmup_s)


def warmup_done(meter: StepMeter, elapsed_s: float, budget_s: float) -> bool:
    """Is the step time known well enough to fix the total? MIN_STEADY_STEPS steady steps taking
    STEADY_FRACTION of the budget, and WARMUP_FRACTION of it spent. Steps so slow that MIN_STEADY_STEPS of them would take more than
    that fraction: at LATEST_FRACTION, once a step after the first (tracing) is timed. In any case when
    the whole budget is spent."""
    if elapsed_s >= budget_s:
        return True
    if len(meter.steady_s) >= MIN_STEADY_STEPS and sum(meter.steady_s) >= STEADY_FRACTION * budget_s:
        return elapsed_s >= WARMUP_FRACTION * budget_s
    slow = (len(meter.warmup_s) + len(meter.steady_s) >= 2
            and meter.seconds_per_step() * MIN_STEADY_STEPS > WARMUP_FRACTION * budget_s)
    return slow and elapsed_s >= LATEST_FRACTION * budget_s


def budget_evaluate_every(total_steps: int, evaluate_every: int | None) -> int:
    """--evaluate_every, or BUDGET_EVALUATIONS evenly spaced evaluations (curve points, best.npz)."""
    return evaluate_every if evaluate_every else max(1, total_steps // BUDGET_EVALUATIONS)


def final_margin(every: int) -> int:
    """Steps a periodic evaluation must keep before the final one at the total: half an interval. One
    closer would score nearly the same weights twice (a budget refixed to 997 steps evaluated at 972 and
    997, and one refixed to 265 at 264 and 265: 6 s each on 768-px lesion images)."""
    return max(1, (every + 1) // 2)


def evaluation_due(step: int, total: int, every: int) -> bool:
    """Does the loop evaluate after step `step` of `total` on its every-`every`-steps schedule (the final
    evaluation, after the last step, is not part of it)?"""
    return step % every == 0 and total - step >= final_margin(every)


def evaluations_after(done: int, total: int, every: int) -> int:
    """Evaluations the loop runs after step `done` until `total`: those `evaluation_due`, plus the final one."""
    return max(0, (total - final_margin(every)) // every - done // every) + 1


def checkpoints_after(done: int, total: int, every: int) -> int:
    """Checkpoint writes after step `done`: every `every` steps, at `total`, and once more after the final
    evaluation (utils.training.loop.train)."""
    return total // every - done // every + (total % every != 0) + 1


@dataclasses.dataclass(frozen=True)
class BudgetCosts:
    """What the rest of a budgeted run costs, in seconds, as measured at the end of its warm-up."""

    step_s: float
    evaluation_s: float  # 0 when the run does not evaluate
    checkpoint_s: float
    checkpoint_every: int
    evaluate_every: int | None  # --evaluate_every; None: budget_evaluate_every of the total
    after_s: float = 0.0  # once, after the last step: the end-of-run decision's extra pass (0: none planned)


def remaining_cost_s(costs: BudgetCosts, done: int, total: int) -> float:
    """Seconds from step `done` to the end of a run of `total` steps: steps, evaluations, checkpoints and
    the work after training (after_s)."""
    evaluations = 0
    if costs.evaluation_s > 0:
        evaluations = evaluations_after(done, total, budget_evaluate_every(total, costs.evaluate_every))
    return ((total - done) * costs.step_s + evaluations * costs.evaluation_s
            + checkpoints_after(done, total, costs.checkpoint_every) * costs.checkpoint_s + costs.after_s)


def steps_within_budget(costs: BudgetCosts, done: int, remaining_s: float) -> int:
    """The largest total (>= done) whose remaining cost fits `remaining_s` seconds; `done` if none does.

    Bisection between `done` and the steps alone would fill: the cost grows with the total (by a step
    each step, plus an evaluation or a checkpoint now and then), so the first total that does not fit
    bounds the answer.
    """
    if costs.step_s <= 0:
        raise ValueError(f"step time must be positive, got {costs.step_s}")
    fits, too_many = done, done + max(0, math.floor(remaining_s / costs.step_s)) + 1
    while too_many - fits > 1:
        middle = (fits + too_many) // 2
        if remaining_cost_s(costs, done, middle) <= remaining_s:
            fits = middle
        else:
            too_many = middle
    return fits


def current_costs(fixed: BudgetCosts, recent_steps_s: list[float], latest_s: dict[str, float]) -> BudgetCosts:
    """The costs a recheck projects with: the mean of the steps since the last check, and the latest
    evaluation and checkpoint timed since the fix and the after-training estimate made from that evaluation
    (`latest_s` keys "evaluation", "checkpoint", "after"), else the fix's. Evaluations slow down with the
    steps when another job shares the cores (a 3-minute run under a rising load ended 15 % late with the
    fix's evaluation time)."""
    return dataclasses.replace(fixed, step_s=sum(recent_steps_s) / len(recent_steps_s),
                               evaluation_s=latest_s.get("evaluation", fixed.evaluation_s),
                               checkpoint_s=latest_s.get("checkpoint", fixed.checkpoint_s),
                               after_s=latest_s.get("after", fixed.after_s))


def recheck_total(costs: BudgetCosts, done: int, total: int, remaining_s: float, budget_s: float) -> int | None:
    """A new total when the rest of the run, at `costs` (the step time measured since the last fix),
    would miss the budget's remaining `remaining_s` seconds by more than RECHECK_SLACK of `budget_s`;
    None when the fixed total still fits. The new total may equal `done` (stop now) but never goes below."""
    projected = remaining_cost_s(costs, done, total)
    if abs(projected - remaining_s) <= RECHECK_SLACK * budget_s:
        return None
    refit = steps_within_budget(costs, done, remaining_s)
    return None if refit == total else refit


def describe_fix(costs: BudgetCosts, meter: StepMeter, done: int, total: int, budget_s: float, spent_s: float,
                 minutes: float) -> dict[str, Any]:
    """The RECIPE record of a fixed total: how the number was reached, in words and in numbers."""
    warm = sum(meter.warmup_s) / len(meter.warmup_s) if meter.warmup_s else float("nan")
    every = budget_evaluate_every(total, costs.evaluate_every)
    evaluations = evaluations_after(done, total, every) if costs.evaluation_s > 0 else 0
    checkpoints = checkpoints_after(done, total, costs.checkpoint_every)
    reason = (f"--time_budget {minutes:g} min = {budget_s:.0f} s: {costs.step_s:.3f} s/step measured over "
              f"{len(meter.steady_s)} steady steps after {len(meter.warmup_s)} warm-up steps ({warm:.3f} s/step); "
              f"{spent_s:.1f} s spent by step {done}; {evaluations} evaluations x {costs.evaluation_s:.2f} s and "
              f"{checkpoints} checkpoints x {costs.checkpoint_s:.2f} s to come"
              + (f", then {costs.after_s:.1f} s for the decision on validation" if costs.after_s > 0 else ""))
    return {"flag": "max_steps", "value": int(total), "reason": reason, "s_per_step": round(costs.step_s, 5),
            "warmup_s_per_step": round(warm, 5), "warmup_steps_timed": len(meter.warmup_s),
            "steady_steps_timed": len(meter.steady_s), "budget_s": budget_s, "spent_s": round(spent_s, 3),
            "at_step": int(done), "evaluation_s": round(costs.evaluation_s, 3),
            "checkpoint_s": round(costs.checkpoint_s, 3), "after_training_s": round(costs.after_s, 3)}


def describe_recheck(costs: BudgetCosts, fixed_s_per_step: float, steps_timed: int, done: int, old_total: int,
                     total: int, spent_s: float, budget_s: float) -> dict[str, Any]:
    """The RECIPE record of a total changed by `recheck_total`."""
    reason = (f"rechecked at {spent_s:.1f} s of {budget_s:.0f} s: {costs.step_s:.4f} s/step over the last "
              f"{steps_timed} steps (fixed at {fixed_s_per_step:.4f} s/step): {old_total} steps would end "
              f"{'late' if total < old_total else 'early'}, {total} fit")
    return {"flag": "max_steps", "value": int(total), "reason": reason, "s_per_step": round(costs.step_s, 5),
            "previous_value": int(old_total), "budget_s": budget_s, "spent_s": round(spent_s, 3),
            "at_step": int(done), "recheck": True}
