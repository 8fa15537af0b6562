"""--export_format packed: the reported size is the file's; predict runs from the packed file."""
import pytest
import json

import numpy as np
import tifffile

import main

TINY = ["--padding", "same", "--base_filters", "8", "--depth", "2", "--batch_norm", "--dropout", "0",
        "--crop_size", "64", "--batch_size", "2", "--num_folds", "10", "--fold", "9", "--max_steps", "2"]


@pytest.mark.slow
def test_packed_export_and_predict(tmp_path, isbi_data_dir):
    common = ["--data_dir", str(isbi_data_dir), "--model_dir", str(tmp_path), *TINY]
    assert main.main(["--exec_mode", "train", "--quantization", "FIXED", "--weight_f_width", "4", *common]) == 0
    assert main.main(["--exec_mode", "export", "--export_format", "packed", *common]) == 0
    entry = json.loads((tmp_path / "export" / "export.json").read_text())["artifacts"]["model_packed.npz"]
    assert entry["size_bytes"] == (tmp_path / "export" / "model_packed.npz").stat().st_size
    assert entry["size_ratio_vs_float32"] > 1.5 and entry["max_abs_logit_diff"] <= 1e-5
    assert entry["latency"]["median_ms"] > 0
    card = (tmp_path / "export" / "MODEL_CARD.md").read_text()  # beside every exported model
    assert "`model_packed.npz` | packed | FIXED" in card and '"weight_f_width": 4' in card
    assert "fold 9 of 10 held out" in card and "TensorFlow 2.21.0" in card
    stack = tmp_path / "three.tif"
    with tifffile.TiffFile(isbi_data_dir / "test-volume.tif") as tif:
        tifffile.imwrite(stack, np.stack([p.asarray() for p in tif.pages[:3]]), photometric="minisblack")
    serve_dir = tmp_path / "serve"  # no checkpoint here: predict must run the packed file itself
    assert main.main(["--exec_mode", "predict", "--model_path", str(tmp_path / "export" / "model_packed.npz"),
                      "--input", str(stack), "--model_dir", str(serve_dir)]) == 0
    probs = tifffile.imread(serve_dir / "predictions" / "001" / "three-probabilities.tif")
    assert probs.shape == (3, 512, 512) and probs.dtype == np.float32 and 0 <= probs.min() <= probs.max() <= 1
    # The benchmark runs the exported file through the same inference path.
    assert main.main(["--exec_mode", "benchmark", "--benchmark_mode", "predict", "--bench_input", "real",
                      "--input", str(stack), "--bench_warmup_steps", "1", "--bench_steps", "2",
                      "--model_path", str(tmp_path / "export" / "model_packed.npz"),
                      "--model_dir", str(serve_dir)]) == 0
    results = json.loads((serve_dir / "benchmark_results.json").read_text())
    assert results["mode"] == "predict" and results["img_per_s"] > 0 and results["tiles_per_image"] >= 1


@pytest.mark.slow
def test_packed_export_of_a_float_model_is_a_clear_error(tmp_path, isbi_data_dir, capsys):
    common = ["--data_dir", str(isbi_data_dir), "--model_dir", str(tmp_path), *TINY]
    assert main.main(["--exec_mode", "train", *common]) == 0
    assert main.main(["--exec_mode", "export", "--export_format", "packed", *common]) == 2
    assert "packing needs a FIXED, INT, BNN or TERNARY model" in capsys.readouterr().err
