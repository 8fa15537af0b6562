"""The compress run's bookkeeping: the factorization's BLAS thread pin (unet_medical/model/tucker.py) and
model_dir/tucker_summary.json (unet_medical/cli/tucker_summary.py: cost, and scores of original, decomposed
and fine-tuned models on the same held-out cases)."""
import json

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from unet_medical.base.errors import UNetError
from unet_medical.cli import tucker_summary as ts
from unet_medical.model import tucker
from tests.numeric import small_unet


def blas_threads() -> set[int]:
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


@pytest.fixture
def spied_factorizations(monkeypatch):
    """The BLAS thread counts seen at each call of tensorly's partial_tucker inside tucker_compress."""
    seen = []
    real = tucker.partial_tucker

    def spy(*args, **kwargs):
        seen.append(blas_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(tucker, "partial_tucker", spy)
    return seen


@pytest.mark.parametrize("threads, expected", [(tucker.FACTORIZATION_BLAS_THREADS, {1}), (None, {2})])
def test_factorization_runs_on_the_pinned_blas_threads(spied_factorizations, threads, expected):
    assert blas_threads(), "NumPy has no BLAS threadpoolctl can see: the pin would do nothing"
    model = small_unet(2)
    with threadpool_limits(limits=2, user_api="blas"):  # the library default of a 2-core machine
        tucker.tucker_compress(model, rank_factor=0.5, input_hw=(8, 8), blas_threads=threads)
        after = blas_threads()
    assert len(spied_factorizations) == 5   # every eligible conv is factored before the MAC check
    assert all(seen == expected for seen in spied_factorizations)
    assert after == {2}   # the limit ends with the factorization


@pytest.mark.parametrize("threads", [0, -1, 1.5, True])
def test_bad_blas_thread_count_is_refused(threads):
    with pytest.raises(UNetError, match="blas_threads"):
        with tucker.blas_thread_limit(threads):
            pass


# ---------------------------------------------------------------------------------------------
# tucker_summary.json

CASES = ["case_003", "case_001", "case_002"]


def eval_file(path, mean_dice, cases=CASES, step=100):
    """An eval_results-like document of a 3-D run with two classes."""
    document = {"schema_version": 2, "dims": "3", "fold": 0, "num_folds": 5, "step": step, "tta": False,
                "num_cases": len(cases), "nsd_tolerance_mm": 2.0, "head_dice": mean_dice + 0.01,
                "tail_dice": mean_dice - 0.01, "mean_dice": mean_dice, "mean_hd95": 1.5, "mean_nsd": 0.9,
                "per_case": [], "provenance": {"files": list(cases), "precision": "float32"}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))


def compressed_run(tmp_path, original_cases=CASES, original=True):
    init, run = tmp_path / "base", tmp_path / "tucker"
    if original:
        eval_file(init / "eval_results.json", 0.90, original_cases, step=600)
    else:
        init.mkdir()
    eval_file(run / "eval_before_finetune.json", 0.10, step=0)
    eval_file(run / "eval_results.json", 0.895, step=300)
    ts.write_model_part(run, rank_factor=0.3, rank=None, rank_min=8, input_size=(32, 48, 32), layers=15,
                        decomposed=14, params=(1_000_000, 200_000), macs=(4_000_000_000, 1_000_000_000))
    return init, run


def test_summary_holds_cost_and_the_three_scores(tmp_path):
    init, run = compressed_run(tmp_path)
    summary = ts.add_scores(run, init)
    assert json.loads((run / ts.SUMMARY_FILE).read_text()) == summary
    assert summary["gflop_before"] == 8.0 and summary["gflop_after"] == 2.0 and summary["flop_ratio"] == 4.0
    assert (summary["params_before"], summary["params_after"], summary["input_size"]) == (1_000_000, 200_000,
                                                                                          [32, 48, 32])
    assert summary["original"]["mean_dice"] == 0.90 and summary["before_fine_tune"]["mean_dice"] == 0.10
    # Scores only: not the tolerance, fold or step.
    assert set(summary["after_fine_tune"]) == {"head_dice", "tail_dice", "mean_dice", "mean_hd95", "mean_nsd"}
    assert summary["mean_dice_change_points"] == pytest.approx(-0.5)
    assert (summary["fine_tune_steps"], summary["cases"]) == (300, 3)
    line = ts.headline(summary)
    assert line["after_fine_tune_mean_dice"] == 0.895 and line["mean_dice_change_points"] == pytest.approx(-0.5)
    assert all(isinstance(v, (int, float, str)) for v in line.values())


@pytest.mark.parametrize("original_cases, original, note", [
    (["case_001", "case_002", "case_004"], True, "other cases"),
    (CASES, False, "not found"),
])
def test_original_on_other_cases_is_not_compared(tmp_path, original_cases, original, note):
    init, run = compressed_run(tmp_path, original_cases, original)
    summary = ts.add_scores(run, init)
    assert summary["original"] is None and note in summary["original_note"]
    assert summary["mean_dice_change_points"] is None
    assert summary["after_fine_tune"]["mean_dice"] == 0.895


def test_summary_needs_the_runs_evaluation(tmp_path):
    init, run = compressed_run(tmp_path)
    (run / "eval_results.json").unlink()
    with pytest.raises(UNetError, match="eval_results.json: missing"):
        ts.add_scores(run, init)


def test_scores_of_keeps_score_keys_only():
    assert ts.scores_of({"mean_dice": np.float64(0.5).item(), "organ_iou": 0.4, "v_rand_thinned": 0.8,
                         "v_rand_thinned_threshold": 0.5, "step": 3, "nsd_tolerance_mm": 2.0, "flag": True,
                         "organ_hd95": 3}) == {"mean_dice": 0.5, "organ_iou": 0.4, "v_rand_thinned": 0.8,
                                              "organ_hd95": 3.0}
