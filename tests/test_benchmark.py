"""Benchmark mode (statistics and CPU-peak arithmetic, tiny end-to-end runs), the examples/ recipes and
the cross-validation summary they print (utils.score.cv)."""
from __future__ import annotations

import json
import math
import pathlib
import statistics
import subprocess

import pytest

import main
from unet_medical.evaluation import cv as fold_summary
from unet_medical.cli.config import Config
from unet_medical.base.errors import UNetError
from unet_medical.cli import benchmark
from unet_medical.base import timing

REPO = pathlib.Path(__file__).resolve().parents[1]
REQUIRED_KEYS = {"mode", "batch_size", "img_per_s", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99",
                 "gflop_per_img", "latency_ms_p95", "latency_ms_mean", "precision", "precision_reason", "input_size",
                 "achieved_gflops", "peak"}
PEAK_KEYS = {"flop_per_cycle", "flop_per_cycle_reason", "clock_ghz", "peak_gflops", "sgemm_gflops",
             "fraction_of_peak", "fraction_of_sgemm"}


def test_latency_stats_match_linear_interpolation_quantiles():
    seconds = [0.013, 0.011, 0.052, 0.020, 0.017, 0.015, 0.031, 0.012]
    ms = [s * 1e3 for s in seconds]
    # statistics' "inclusive" method is the linear interpolation numpy uses by default.
    cuts = statistics.quantiles(ms, n=100, method="inclusive")
    stats = timing.latency_stats(seconds)
    assert stats["latency_ms_mean"] == pytest.approx(statistics.fmean(ms))
    for p in (50, 90, 95, 99):
        assert stats[f"latency_ms_p{p}"] == pytest.approx(cuts[p - 1])


def test_throughput_counts_all_images_over_all_time_and_per_step():
    rates = timing.throughput(images_per_step=2, seconds=[1.0, 0.5])
    assert rates["img_per_s"] == pytest.approx(4 / 1.5)
    assert rates["img_per_s_step_mean"] == pytest.approx((2 / 1.0 + 2 / 0.5) / 2)


class _Log:
    def __init__(self):
        self.lines = []

    def log(self, step, data):
        self.lines.append((step, data))


def test_peak_fractions_use_the_unit_of_the_precision_that_ran(monkeypatch):
    import unet_medical.base.cpu

    calls = []

    def fake_report(measured, cpu=None, precision="float32", **_):
        calls.append((measured, precision))
        per_cycle = {"float32": 64, "mixed_bfloat16": 2048}[precision]
        peak = 2 * per_cycle * 2.0
        return {"describe": "fake", "unit": f"unit for {precision}", "flop_per_cycle": per_cycle,
                "flop_per_cycle_reason": "rule", "clock_ghz": 2.0, "cores": 2, "peak_gflops": peak,
                "sgemm_gflops": 200.0, "fraction_of_peak": measured / peak, "fraction_of_sgemm": measured / 200.0}

    monkeypatch.setattr(unet_medical.base.cpu, "peak_report", fake_report)
    fp32 = benchmark.cpu_peak(64.0, "float32", _Log())
    assert fp32["fraction_of_peak"] == pytest.approx(64.0 / 256.0) and fp32["fraction_of_sgemm"] == 0.32
    bf16 = benchmark.cpu_peak(640.0, "mixed_bfloat16", _Log())  # AMX: bounded by the bf16 tiles' peak
    assert calls == [(64.0, "float32"), (640.0, "mixed_bfloat16")]
    assert bf16["unit"] == "unit for mixed_bfloat16" and bf16["fraction_of_peak"] == pytest.approx(640.0 / 8192.0)

    def wrong_peak(measured, cpu=None, **_):
        raise RuntimeError("peak fraction > 1: the peak model is wrong")

    monkeypatch.setattr(unet_medical.base.cpu, "peak_report", wrong_peak)
    log = _Log()
    kept = benchmark.cpu_peak(999.0, "float32", log)
    assert kept["peak"] is None and "peak model is wrong" in kept["peak_error"] and log.lines


def test_benchmark_flag_needs_train_or_predict():
    with pytest.raises(UNetError, match="--benchmark"):
        benchmark.resolve_mode(Config(exec_mode="evaluate", benchmark=True))
    assert benchmark.resolve_mode(Config(exec_mode="predict", benchmark=True)) == "predict"
    assert benchmark.resolve_mode(Config(exec_mode="benchmark", benchmark_mode="train")) == "train"


TINY = ["--precision", "fp32", "--padding", "same", "--base_filters", "4", "--depth", "2", "--crop_size", "64",
        "--batch_size", "2",
        "--bench_warmup_steps", "1", "--bench_steps", "2", "--dropout", "0", "--no-augment"]


@pytest.mark.parametrize("mode_flags, mode, bench_input", [
    (["--exec_mode", "benchmark", "--benchmark_mode", "train"], "train", "synthetic"),
    (["--exec_mode", "predict", "--benchmark"], "predict", "synthetic"),
    (["--exec_mode", "benchmark", "--benchmark_mode", "predict", "--bench_input", "real"], "predict", "real"),
    (["--exec_mode", "train", "--benchmark", "--bench_input", "real"], "train", "real"),
])
@pytest.mark.slow
def test_tiny_benchmark_writes_sane_results(isbi_data_dir, tmp_path, mode_flags, mode, bench_input):
    argv = [*mode_flags, *TINY, "--data_dir", str(isbi_data_dir), "--model_dir", str(tmp_path)]
    assert main.main(argv) == 0
    results = json.loads((tmp_path / benchmark.RESULTS_FILE).read_text())
    assert REQUIRED_KEYS <= results.keys()
    assert (results["mode"], results["bench_input"], results["batch_size"]) == (mode, bench_input, 2)
    assert results["steps"] == 2 and results["precision"] == "float32"
    assert results["img_per_s"] > 0 and results["img_per_s_step_mean"] > 0
    assert 0 < results["latency_ms_p50"] <= results["latency_ms_p90"] <= results["latency_ms_p95"] \
        <= results["latency_ms_p99"]
    assert results["gflop_per_img"] > 0
    assert results["achieved_gflops"] == pytest.approx(results["img_per_s"] * results["gflop_per_img"])
    if results["peak"] is not None and results["peak_gflops"]:  # CPU: utils.cpu.peak_report's figures
        assert PEAK_KEYS <= results.keys()
        assert results["peak_gflops"] == pytest.approx(
            results["peak"]["cores"] * results["flop_per_cycle"] * results["clock_ghz"])
        assert 0 < results["fraction_of_peak"] < 1
        assert results["fraction_of_peak"] == pytest.approx(results["achieved_gflops"] / results["peak_gflops"])
        assert results["fraction_of_sgemm"] == pytest.approx(results["achieved_gflops"] / results["sgemm_gflops"])
        assert "FLOP/cycle" in results["flop_per_cycle_reason"]
    if bench_input == "real" and mode == "predict":  # one image per step, tiles counted
        assert results["latency_per"] == "image" and results["tiles_per_image"] >= 1
    if mode == "train":  # a training step is counted as three forward passes
        assert results["gflop_per_img"] == pytest.approx(3 * results["gflop_per_img_forward"])
    assert math.isfinite(results["latency_ms_mean"])
    # the ceiling: the same network's costliest convolution alone, same precision, batch and step kind
    assert results["ceiling_gflops"] > 0 and results["ceiling_input_shape"][0] == 2
    assert results["fraction_of_ceiling"] == pytest.approx(results["achieved_gflops"] / results["ceiling_gflops"])


@pytest.mark.parametrize("mode", ["train", "predict"])
def test_a_3d_benchmark_times_patches_of_the_3d_unet(tmp_path, mode):
    """--dims 3 benchmarks the 3-D U-Net on synthetic (B, P0, P1, P2, C) patches of --patch_size: the run's trainer
    step or the Keras predictor, FLOPs of the 3-D network (3x its forward pass to train), the ceiling a Conv3D."""
    from unet_medical.model.complexity import total_macs
    from unet_medical.model.unet import UNetSpec, build_unet

    argv = ["--exec_mode", "benchmark", "--benchmark_mode", mode, "--dims", "3", "--patch_size", "16,16,8",
            *[f for f in TINY if f not in ("--crop_size", "64")], "--model_dir", str(tmp_path)]
    assert main.main(argv) == 0
    results = json.loads((tmp_path / benchmark.RESULTS_FILE).read_text())
    assert results["spec"]["dims"] == 3 and results["sample_shape"] == [16, 16, 8] and results["img_per_s"] > 0
    spec = UNetSpec(n_classes=2, base_filters=4, depth=2, padding="same", dropout=0.0, dims=3)
    forward = 2 * total_macs(build_unet(spec), (16, 16, 8)) / 1e9
    assert results["gflop_per_img"] == pytest.approx(forward * (3 if mode == "train" else 1))
    assert results["ceiling_layer_kind"] in ("Conv3D", "Conv3DTranspose") and results["ceiling_input_shape"][0] == 2
    assert len(results["ceiling_input_shape"]) == 5 and results["fraction_of_ceiling"] > 0


@pytest.mark.slow
def test_train_benchmark_times_the_runs_trainer(tmp_path, monkeypatch):
    """--bench_input real builds the trainer a training run would: on vessel-like data the recipe's
    per-image normalization, foreground sampling and 1,1.5 class weights, on the fold's training images."""
    import numpy as np

    from unet_medical.data.layouts import load_training_data
    from unet_medical.data.normalize import normalize_image
    from unet_medical.data.synthetic_kinds import write_folder_kind
    from unet_medical.training import loop

    data = tmp_path / "vessels"
    write_folder_kind(data, "vessels", num_images=5)
    built = []
    real_build = loop.build_trainer

    def recording(cfg, model, inputs, dist):
        built.append(inputs)
        return real_build(cfg, model, inputs, dist)

    monkeypatch.setattr(loop, "build_trainer", recording)
    argv = ["--exec_mode", "benchmark", "--benchmark_mode", "train", "--bench_input", "real", *TINY,
            "--data_dir", str(data), "--model_dir", str(tmp_path / "bench")]
    assert main.main(argv) == 0
    results = json.loads((tmp_path / "bench" / benchmark.RESULTS_FILE).read_text())
    assert (results["normalization"], results["class_weights"]) == ("per_image", "1,1.5")
    (inputs,) = built
    assert list(inputs.class_weights) == [1.0, 1.5] and inputs.sampling.foreground > 0
    raw = load_training_data(str(data))
    assert len(inputs.images) == 4  # fold 0 of 5 holds one image out
    np.testing.assert_array_equal(inputs.images[0], normalize_image(raw.images[1], "per_image"))


# --------------------------------------------------------------------------- examples/ support

EXAMPLES = REPO / "examples"
NEW_RECIPES = ("unet_FP32_1GPU.sh", "unet_FP32_8GPU.sh", "unet_TF-AMP_1GPU.sh", "unet_TF-AMP_8GPU.sh",
               "unet_TRAIN_FULL.sh", "unet_TRAIN_BENCHMARK.sh", "unet_TRAIN_BENCHMARK_TF-AMP.sh", "unet_INFER.sh",
               "unet_INFER_TF-AMP.sh", "unet_INFER_BENCHMARK.sh", "unet_INFER_BENCHMARK_TF-AMP.sh",
               "unet_CPU_BENCHMARK.sh", "unet_CPU_2WORKERS.sh")


@pytest.mark.parametrize("name", NEW_RECIPES)
def test_recipe_is_valid_bash_and_passes_extra_flags_through(name):
    path = EXAMPLES / name
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    text = path.read_text()
    assert '"$1"' in text and '"$2' in text and '"${@:3}"' in text


def _write_fold(root, k, **metrics):
    folder = root / f"fold_{k}"
    folder.mkdir()
    (folder / "eval_results.json").write_text(json.dumps({**metrics, "fold": k}))


def test_fold_summary_mean_and_sample_std(tmp_path, capsys):
    values = {"membrane_dice": [0.80, 0.84, 0.78], "v_rand_thinned": [0.90, 0.93, 0.91],
              "v_info_thinned": [0.95, 0.97, 0.96], "pixel_error": [0.07, 0.06, 0.08]}
    for k in range(3):
        _write_fold(tmp_path, k, **{name: v[k] for name, v in values.items()})
    assert fold_summary.main([str(tmp_path)]) == 0
    summary = json.loads((tmp_path / fold_summary.SUMMARY_JSON).read_text())
    assert [fold["fold"] for fold in summary["folds"]] == [0, 1, 2]
    for name, v in values.items():
        assert summary["mean"][name] == pytest.approx(statistics.fmean(v))
        assert summary["sd"][name] == pytest.approx(statistics.stdev(v))
    table = capsys.readouterr().out
    assert "mean" in table and f"{statistics.fmean(values['v_rand_thinned']):.4f}" in table


def test_fold_summary_names_the_missing_results(tmp_path, capsys):
    _write_fold(tmp_path, 0, membrane_dice=0.8, v_rand_thinned=0.9, v_info_thinned=0.9, pixel_error=0.1)
    (tmp_path / "fold_1").mkdir()
    assert fold_summary.main([str(tmp_path)]) == 2
    assert "fold_1" in capsys.readouterr().err
    with pytest.raises(UNetError, match="no fold_"):
        fold_summary.read_fold_results(tmp_path / "fold_1")
    with pytest.raises(UNetError, match="v_info_thinned"):
        fold_summary.summarize({0: {"membrane_dice": 0.8, "v_rand_thinned": 0.9, "pixel_error": 0.1}}, fold_summary.METRICS)


@pytest.mark.parametrize("train", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_conv_ceiling_times_the_costliest_convolution_alone(train):
    """The ceiling layer is the layer call with the most MACs (checked against layer_costs' own counts), and
    its copy keeps the layer's config (filters, kernel, dtype policy)."""
    from unet_medical.cli.ceiling import conv_ceiling, layer_alone
    from unet_medical.model.complexity import largest_layer_call, layer_costs
    from unet_medical.model.unet import UNetSpec, build_unet

    model = build_unet(UNetSpec(base_filters=4, depth=2, padding="same", batch_norm=True, dropout=0.0))
    layer, in_shape, macs = largest_layer_call(model, (32, 32))
    costs = {c.name: c.macs for c in layer_costs(model, (32, 32))}
    assert macs == max(costs.values()) and costs[layer.name] == macs
    alone = layer_alone(layer, in_shape, batch=2)
    assert alone.layers[-1].get_config() == {**layer.get_config(), "name": alone.layers[-1].name}
    result = conv_ceiling(model, (32, 32), batch=2, train=train, warmup=1, steps=2, min_seconds=0.0)
    assert result["ceiling_steps"] == 2
    longer = conv_ceiling(model, (32, 32), batch=2, train=train, warmup=1, steps=2, min_seconds=0.3)
    assert longer["ceiling_steps"] > 2  # a toy convolution takes well under 0.15 s: more steps fill the time
    assert result["ceiling_layer"] == layer.name and result["ceiling_input_shape"] == [2, *in_shape[1:]]
    assert result["ceiling_gflop_per_step"] == pytest.approx(2 * macs * 2 * (3 if train else 1) / 1e9)
    assert result["ceiling_gflops"] > 0
