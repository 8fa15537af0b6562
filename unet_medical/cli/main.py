"""The command line: `unet-medical COMMAND [flags]`, and NVIDIA's `main.py --exec_mode MODE [flags]`.

    unet-medical train --data_dir DATA --model_dir RUN [flags]      train, then evaluate the held-out fold
    unet-medical evaluate|predict|export|compress|benchmark|visualize --model_dir RUN [flags]
    unet-medical study --config STUDY.yaml --data_dir DATA --results_dir OUT
    unet-medical report RUN_DIR [--output FILE]                    the run (or a CV folder) as one HTML page
    unet-medical --exec_mode train_and_predict ...                    (main.py's form: every exec mode)

A command is an exec mode with the same flags (`unet-medical COMMAND --help`); `train` may narrow
itself with `--exec_mode train|train_and_evaluate|train_and_predict`.
"""
from __future__ import annotations

import importlib
import sys
from typing import Callable, Sequence

from unet_medical.base.errors import UNetError, run_cli

# command -> the exec mode it runs; `train` defaults to training then scoring the held-out fold
MODE_COMMANDS = {"train": "train_and_evaluate", "evaluate": "evaluate", "predict": "predict", "export": "export",
                 "compress": "compress", "benchmark": "benchmark", "visualize": "visualize"}
# commands with a parser of their own: command -> module whose main(argv) runs it
TOOL_COMMANDS = {"study": "unet_medical.cli.study", "report": "unet_medical.cli.report"}


def exec_mode_argv(command: str, argv: Sequence[str]) -> list[str]:
    """`COMMAND flags` -> main.py's `--exec_mode MODE flags`. Raises UNetError on a contradicting --exec_mode."""
    argv = list(argv)
    given = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--exec_mode"]
    given += [a.split("=", 1)[1] for a in argv if a.startswith("--exec_mode=")]
    if not given:
        return ["--exec_mode", MODE_COMMANDS[command], *argv]
    allowed = [m for m in ("train", "train_and_evaluate", "train_and_predict") if command == "train"]
    if any(mode not in allowed for mode in given):
        raise UNetError(f"--exec_mode {given[0]} contradicts the command '{command}'"
                        + (f" (train takes --exec_mode {', '.join(allowed)})" if allowed else
                           " (give the command or --exec_mode, not both)"))
    return argv


def run_exec_mode(argv: Sequence[str]) -> None:
    """Parse main.py's flags into a Config and run its exec mode."""
    from unet_medical.cli.config import parse_config

    cfg = parse_config(argv)
    if cfg.skip_finished and cfg.num_epochs is None:  # (with --num_epochs max_steps needs the data)
        from unet_medical.cli.lineage import finished_evaluation

        target = None if cfg.time_budget is not None else cfg.max_steps  # the budget's steps are recorded
        done = finished_evaluation(cfg.model_dir, target, cfg.fold, cfg.num_folds)
        if done is not None:
            print(f"{cfg.model_dir}: fold {cfg.fold} of {cfg.num_folds} already evaluated at step "
                  f"{done['step']} (eval_results.json): skipped (--skip_finished)", flush=True)
            return
    from unet_medical.base.tf_env import import_tensorflow

    import_tensorflow(verbose=cfg.verbose)  # only after the flags are known to be good: --help stays instant
    from unet_medical.cli.modes import run

    run(cfg)


def dispatch(argv: Sequence[str]) -> Callable[[], int | None]:
    """The function that runs `argv` (the words after the program name)."""
    argv = list(argv)
    if argv and argv[0] in TOOL_COMMANDS:
        module = importlib.import_module(TOOL_COMMANDS[argv[0]])
        return lambda: module.main(argv[1:])
    if argv and argv[0] in MODE_COMMANDS:
        return lambda: run_exec_mode(exec_mode_argv(argv[0], argv[1:]))
    if argv and not argv[0].startswith("-"):
        commands = ", ".join([*MODE_COMMANDS, *TOOL_COMMANDS])
        raise UNetError(f"unknown command '{argv[0]}' (commands: {commands}; or main.py's --exec_mode MODE)")
    return lambda: run_exec_mode(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (2 with one line for a user's mistake)."""
    words = sys.argv[1:] if argv is None else list(argv)
    return run_cli(lambda: dispatch(words)())


if __name__ == "__main__":
    sys.exit(main())
