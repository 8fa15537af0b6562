"""Compression of --dims 3 runs through the unchanged 2-D flows: --exec_mode compress decomposes the 3-D
U-Net's Conv3D/Conv3DTranspose (MACs counted at the run's --patch_size patch), fine-tunes and evaluates it;
--quantization INT / QAT_INT8 train a 3-D U-Net with quantized Conv3D layers and evaluate it."""
from __future__ import annotations

import csv
import json

import pytest

import main
from unet_medical.base.runlog import read_log
from unet_medical.data import synthetic_volumes as sv

TINY_3D = ["--dims", "3", "--base_filters", "4", "--depth", "2", "--batch_norm", "--batch_size", "2",
           "--patch_size", "32,32,16", "--num_folds", "3", "--learning_rate", "3e-3", "--no-saved_model"]


@pytest.mark.slow
def test_compress_a_3d_run(tmp_path):
    data, run, out = tmp_path / "ct", tmp_path / "run", tmp_path / "tucker"
    sv.write_volume_kind(data, "ct", 3, seed=0)
    assert main.main(["--exec_mode", "train_and_evaluate", "--data_dir", str(data), "--model_dir", str(run),
                      "--max_steps", "2", *TINY_3D]) == 0
    assert main.main(["--exec_mode", "compress", "--init_from", str(run), "--model_dir", str(out),
                      "--rank_factor", "0.5", "--rank_min", "1", "--max_steps", "1"]) == 0
    with open(out / "tucker_report.csv", newline="") as f:
        rows = {row["name"]: row for row in csv.DictReader(f)}
    decomposed = {name: row for name, row in rows.items() if row["kept"] == "False"}
    assert decomposed and {row["kind"] for row in decomposed.values()} <= {"Conv3D", "Conv3DTranspose"}
    assert all(int(row["macs_after"]) < int(row["macs_before"]) for row in decomposed.values())
    # MACs at the 32x32x16 patch: the first conv (1 -> 4 channels, 3x3x3) sees every voxel of it.
    first = rows["enc1_conv1"]
    assert int(first["macs_before"]) == 27 * 1 * 4 * 32 * 32 * 16
    assert json.loads((out / "model.json").read_text())["spec"]["dims"] == 3

    # tucker_summary.json: the network's cost at the patch, and the three models' scores on the same cases.
    summary = json.loads((out / "tucker_summary.json").read_text())
    original, after = (json.loads((d / "eval_results.json").read_text()) for d in (run, out))
    before = json.loads((out / "eval_before_finetune.json").read_text())
    assert original["provenance"]["files"] == after["provenance"]["files"]
    assert (summary["rank_factor"], summary["input_size"]) == (0.5, [32, 32, 16])
    assert summary["convs_decomposed"] == len(decomposed) and summary["convs"] == len(rows)
    assert summary["params_after"] < summary["params_before"] and summary["gflop_after"] < summary["gflop_before"]
    # Whole-network MACs: the convs' (tucker_report.csv) plus the rest (batch norm, pooling: a small share).
    conv_gflop = 2 * sum(int(row["macs_before"]) for row in rows.values()) / 1e9
    assert conv_gflop <= summary["gflop_before"] < 1.1 * conv_gflop
    for name, scores in (("original", original), ("before_fine_tune", before), ("after_fine_tune", after)):
        for key in ("mean_dice", "mean_hd95", "mean_nsd", "organ_dice", "lesion_dice"):
            assert summary[name][key] == pytest.approx(scores[key]), (name, key)
    assert (before["step"], after["step"], summary["fine_tune_steps"]) == (0, 1, 1)
    assert summary["mean_dice_change_points"] == pytest.approx(100 * (after["mean_dice"] - original["mean_dice"]))
    tucker_lines = [record["data"] for record in read_log(out / "log.json") if record["step"] == "TUCKER"]
    assert len(tucker_lines) == 1 and tucker_lines[0]["after_fine_tune_mean_dice"] == after["mean_dice"]


@pytest.mark.slow
# A FIXED/INT run stores its quantized layers in model.json; a QAT run stores the float architecture and
# its quantization (the QAT transform is applied again when the run is loaded).
@pytest.mark.parametrize("quantization, marker", [("INT", "QuantConv3D"), ("QAT_INT8", "QAT_INT8")])
def test_quantized_3d_run_trains_and_evaluates(tmp_path, quantization, marker):
    data, run = tmp_path / "ct", tmp_path / "run"
    sv.write_volume_kind(data, "ct", 3, seed=0)
    assert main.main(["--exec_mode", "train_and_evaluate", "--data_dir", str(data), "--model_dir", str(run),
                      "--max_steps", "2", "--quantization", quantization, *TINY_3D]) == 0
    results = json.loads((run / "eval_results.json").read_text())
    assert results["dims"] == "3" and isinstance(results["mean_dice"], float)
    assert marker in (run / "model.json").read_text()
