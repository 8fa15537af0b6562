"""U-Net medical image segmentation: one entry point for every exec mode.

    python main.py --exec_mode train_and_evaluate --data_dir DATA --model_dir RESULTS [flags]
    python main.py --config run.yaml --exec_mode predict

Parses flags (and an optional YAML file) into one frozen Config, then hands it to runtime.modes.
"""
from __future__ import annotations

import sys

import utils  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from runtime.config import parse_config
from utils.errors import run_cli


def main(argv: list[str] | None = None) -> int:
    def run_main() -> None:
        cfg = parse_config(argv)
        if cfg.skip_finished and cfg.num_epochs is None:  # (with --num_epochs max_steps needs the data)
            from runtime.lineage import finished_evaluation

            target = None if cfg.time_budget is not None else cfg.max_steps  # the budget's steps are recorded
            done = finished_evaluation(cfg.model_dir, target, cfg.fold, cfg.num_folds)
            if done is not None:
                print(f"{cfg.model_dir}: fold {cfg.fold} of {cfg.num_folds} already evaluated at step "
                      f"{done['step']} (eval_results.json): skipped (--skip_finished)", flush=True)
                return
        from runtime.modes import run  # imports TensorFlow: only after the flags are known to be good

        run(cfg)

    return run_cli(run_main)


if __name__ == "__main__":
    sys.exit(main())
