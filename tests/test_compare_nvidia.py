"""benchmarks/compare_nvidia.sh and its arithmetic (benchmarks/compare_nvidia.py): NVIDIA's DLLogger line
parsed, medians and ratios ours / NVIDIA, argument errors; end to end at toy size with a stub NVIDIA
runner (test-only) that prints fixed throughputs."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import compare_nvidia  # noqa: E402

from unet_medical.base.errors import UNetError  # noqa: E402

SCRIPT = REPO / "benchmarks" / "compare_nvidia.sh"
# What NVIDIA's StdOutBackend prints for process_performance_stats (deps/dllogger format).
NVIDIA_LINE = ("DLL 2026-12-02 08:00:00.000000 - () throughput_{m} : {v} images/s latency_{m}_mean : 7.1 "
               "latency_{m}_90 : 7.3 latency_{m}_95 : 7.4 latency_{m}_99 : 7.5")


def test_nvidia_line_is_parsed_per_mode():
    text = "noise\n" + NVIDIA_LINE.format(m="train", v="0.1234") + "\n"
    assert compare_nvidia.nvidia_throughput(text, "train") == 0.1234
    assert compare_nvidia.nvidia_throughput(NVIDIA_LINE.format(m="test", v="2.5e-1"), "predict") == 0.25
    with pytest.raises(UNetError, match="throughput_test"):
        compare_nvidia.nvidia_throughput(text, "predict")


def test_medians_and_ratios():
    rows = compare_nvidia.read_rows([
        "1\tnvidia\ttrain\t0.10", "1\tours\ttrain\t0.30", "1\tnvidia\tpredict\t0.20", "1\tours\tpredict\t1.00",
        "2\tnvidia\ttrain\t0.14", "2\tours\ttrain\t0.34", "2\tnvidia\tpredict\t0.30", "2\tours\tpredict\t0.80",
        "3\tnvidia\ttrain\t0.50", "3\tours\ttrain\t0.32", "3\tnvidia\tpredict\t0.25", "3\tours\tpredict\t0.90"])
    summary = compare_nvidia.summarize(rows)
    # medians by hand: train NVIDIA 0.14, ours 0.32; predict NVIDIA 0.25, ours 0.90
    assert summary["median_img_per_s"] == pytest.approx(
        {"nvidia_train": 0.14, "ours_train": 0.32, "nvidia_predict": 0.25, "ours_predict": 0.90})
    assert summary["ratio_ours_over_nvidia"] == pytest.approx({"train": 0.32 / 0.14, "predict": 0.90 / 0.25})
    two = compare_nvidia.summarize(rows[:8])  # an even count: the mean of the middle two
    assert two["ratio_ours_over_nvidia"]["train"] == pytest.approx(0.32 / 0.12)
    table = compare_nvidia.report(summary, "a CPU")
    assert "CPU: a CPU" in table and f"{0.90 / 0.25:.3f}" in table


def test_details_are_medians_of_each_runs_results(tmp_path):
    rows = compare_nvidia.read_rows(["1\tours\tpredict\t2.0", "2\tours\tpredict\t3.0", "3\tours\tpredict\t4.0",
                                     "1\tours\tpredict_deploy\t5.0", "1\tnvidia\tpredict\t1.0"])
    fields = {1: (100.0, 0.25, 0.40), 2: (160.0, 0.40, 0.70), 3: (120.0, 0.30, 0.50)}
    for rnd, (gflops, of_peak, of_ceiling) in fields.items():
        run = tmp_path / f"ours_predict_r{rnd}"
        run.mkdir()
        (run / "benchmark_results.json").write_text(json.dumps({
            "achieved_gflops": gflops, "unit": "AVX512-BF16", "peak_gflops": 400.0, "fraction_of_peak": of_peak,
            "ceiling_gflops": gflops / of_ceiling, "fraction_of_ceiling": of_ceiling}))
    deploy = tmp_path / "ours_predict_deploy_r1"
    deploy.mkdir()  # a deploy file has no Keras ceiling: its fields stay out
    (deploy / "benchmark_results.json").write_text(json.dumps({"achieved_gflops": 250.0, "unit": "VNNI"}))
    found = compare_nvidia.details(tmp_path, rows)
    assert found["predict"]["achieved_gflops"] == 120.0 and found["predict"]["fraction_of_peak"] == 0.30
    assert found["predict"]["fraction_of_ceiling"] == 0.50 and found["predict"]["units"] == ["AVX512-BF16"]
    assert found["predict_deploy"] == {"units": ["VNNI"], "achieved_gflops": 250.0}
    summary = {**compare_nvidia.summarize(rows), "details": found, "export_seconds": 200.0}
    text = compare_nvidia.report(summary, "a CPU")
    assert "deploy file / no-flag Keras inference: 1.667" in text  # 5.0 over the median 3.0
    assert "| predict | 120 | AVX512-BF16 | 400 | 0.3 | 240 | 0.5 |" in text
    assert "| predict_deploy | 250 | VNNI | - | - | - | - |" in text
    assert "default export: 200 s (target < 180 s: missed)" in text
    (tmp_path / "ours_predict_r2" / "benchmark_results.json").unlink()
    with pytest.raises(UNetError, match="ours_predict_r2"):
        compare_nvidia.details(tmp_path, rows)


@pytest.mark.parametrize("line", ["1\tnvidia\ttrain", "x\tours\ttrain\t1", "1\tthem\ttrain\t1", "1\tours\ttrain\t0"])
def test_malformed_results_are_named(line):
    with pytest.raises(UNetError, match="results line 1"):
        compare_nvidia.read_rows([line])


def run_script(args, env_extra, timeout=60):
    env = {**os.environ, **env_extra}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_argument_errors_exit_2_before_any_work(tmp_path, isbi_data_dir):
    assert run_script([], {}).returncode == 2
    missing = run_script([str(tmp_path / "nope"), str(isbi_data_dir)], {})
    assert missing.returncode == 2 and "NVIDIA_DIR" in missing.stderr
    no_runner = run_script([str(tmp_path), str(isbi_data_dir)], {})
    assert no_runner.returncode == 2 and "run_nvidia_benchmark.sh" in no_runner.stderr
    bad_rounds = run_script([str(tmp_path), str(isbi_data_dir)], {"ROUNDS": "0", "NVIDIA_RUNNER": "true"})
    assert bad_rounds.returncode == 2 and "ROUNDS" in bad_rounds.stderr
    no_data = run_script([str(tmp_path), str(tmp_path)], {"NVIDIA_RUNNER": "true"})
    assert no_data.returncode == 2 and "train-volume.tif" in no_data.stderr


STUB = '''import os, sys
python, data, mode, batch = sys.argv[1:5]
assert mode in ("train", "predict") and batch == "1" and os.path.isdir(data), sys.argv
key = "train" if mode == "train" else "test"
value = os.environ["STUB_" + mode.upper()]
print("DLL 2026-12-02 - () throughput_%s : %s images/s latency_%s_mean : 1.0" % (key, value, key))
'''
TOY = ("--padding same --base_filters 4 --depth 2 --batch_norm --dropout 0 --crop_size 64 --tile_size 64 "
       "--num_folds 10 --fold 9")


@pytest.mark.slow
def test_toy_comparison_alternates_and_divides_throughputs(tmp_path, isbi_data_dir):
    stub = tmp_path / "stub_nvidia.py"
    stub.write_text(STUB)
    out = tmp_path / "out"
    # One round: the A B A B order within it is what the script adds; the medians over rounds are
    # test_medians_and_ratios' (a second round cost 35 s of CI).
    env = {"NVIDIA_RUNNER": f"{sys.executable} {stub}", "STUB_TRAIN": "0.5", "STUB_PREDICT": "4.0",
           "OURS_FLAGS": TOY, "OURS_TRAIN_STEPS": "2", "ROUNDS": "1"}
    proc = run_script([str(tmp_path), str(isbi_data_dir), str(out)], env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split("\t") for line in (out / "results.tsv").read_text().splitlines()]
    # A B A B: per round NVIDIA train, ours train, NVIDIA predict, ours predict (Keras, then the deploy file)
    order = [("nvidia", "train"), ("ours", "train"), ("nvidia", "predict"), ("ours", "predict"),
             ("ours", "predict_deploy")]
    assert [(r[0], r[1], r[2]) for r in rows] == [("1", side, mode) for side, mode in order]
    modes = ("train", "predict", "predict_deploy")
    ours = {mode: [json.loads((out / f"ours_{mode}_r1" / "benchmark_results.json").read_text())] for mode in modes}
    summary = json.loads((out / "compare_nvidia.json").read_text())
    for mode, fixed in (("train", 0.5), ("predict", 4.0), ("predict_deploy", 4.0)):
        rates = [r["img_per_s"] for r in ours[mode]]
        assert all(r["batch_size"] == 1 and r["precision_reason"] for r in ours[mode])
        assert summary["ratio_ours_over_nvidia"][mode] == pytest.approx(rates[0] / fixed)
    assert all(r["model_path"].startswith(str(out / "ours_run" / "export")) for r in ours["predict_deploy"])
    assert not any(r.get("model_path") for r in ours["predict"])
    assert ours["train"][0]["bench_input"] == "real"
    assert "CPU: " in proc.stdout and "| train |" in proc.stdout and "| predict |" in proc.stdout
    assert "of ceiling" in proc.stdout and "default export: " in proc.stdout
    assert summary["details"]["predict"]["fraction_of_ceiling"] > 0 and summary["export_seconds"] > 0
