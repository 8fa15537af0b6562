"""model_dir/curves.png: training loss, validation Dice and learning rate against the step.

Read from the run's own JSON log (log.json), which a resumed run appends to, so the curve of a run
that was interrupted and resumed is whole. Records: training steps are int steps with "loss" and
"learning_rate"; validation scores are ("eval", step) records (runtime.modes). A step logged twice
(the steps between the last checkpoint and a crash are trained again after --resume_training) keeps
its last value, which is the one the finished run's weights come from.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Sequence

from unet_medical.base import runlog
from unet_medical.base.fileio import atomic_write

CURVES = "curves.png"


@dataclasses.dataclass
class Curves:
    """step -> value series read from a log: training loss and learning rate, validation scores."""

    loss: dict[int, float] = dataclasses.field(default_factory=dict)
    learning_rate: dict[int, float] = dataclasses.field(default_factory=dict)
    scores: dict[str, dict[int, float]] = dataclasses.field(default_factory=dict)


def read_curves(log_path: str | pathlib.Path, score_keys: Sequence[str]) -> Curves:
    """The series of `log_path` (a JSON-lines DLLogger log); `score_keys` are the eval metrics kept.

    Lines that are not complete records (a run killed mid-write) are skipped.
    """
    curves = Curves(scores={key: {} for key in score_keys})
    for record in runlog.read_log(log_path):
        step, data = record.get("step"), record["data"]
        if isinstance(step, int) and not isinstance(step, bool):
            for name, series in (("loss", curves.loss), ("learning_rate", curves.learning_rate)):
                if isinstance(data.get(name), (int, float)):
                    series[step] = float(data[name])
        elif isinstance(step, list) and len(step) == 2 and step[0] == "eval" and isinstance(step[1], int):
            for key in score_keys:
                if isinstance(data.get(key), (int, float)):
                    curves.scores[key][step[1]] = float(data[key])
    return curves


def plot_curves(curves: Curves, path: str | pathlib.Path, title: str = "") -> pathlib.Path:
    """Write the three panels (loss, validation scores, learning rate; shared step axis) as a PNG,
    atomically: a reader never sees a half-written file."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(7, 7.5), layout="constrained")
    axes = fig.subplots(3, 1, sharex=True)
    panels = ((axes[0], {"training loss": curves.loss}, "loss"),
              (axes[1], {f"validation {k}": v for k, v in curves.scores.items()}, "validation Dice"),
              (axes[2], {"learning rate": curves.learning_rate}, "learning rate"))
    for ax, series, ylabel in panels:
        drawn = False
        for label, values in series.items():
            if values:
                steps = sorted(values)
                ax.plot(steps, [values[s] for s in steps], marker="o" if len(steps) < 30 else None,
                        markersize=3, label=label)
                drawn = True
        if drawn:
            ax.legend(loc="best", fontsize=8)
        else:
            ax.text(0.5, 0.5, "not logged yet", ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[2].set_xlabel("step")
    if title:
        fig.suptitle(title, fontsize=10)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def write_curves(log_path: str | pathlib.Path, model_dir: str | pathlib.Path, score_keys: Sequence[str]
                 ) -> pathlib.Path:
    """model_dir/curves.png from the run's log."""
    return plot_curves(read_curves(log_path, score_keys), pathlib.Path(model_dir) / CURVES,
                       title=str(pathlib.Path(model_dir).name))
