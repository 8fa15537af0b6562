"""The compression study: variants on the same fold, one table, one plot; a killed study resumes
with only the variants it had not finished."""
import csv
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from unet_medical.base.errors import UNetError
from unet_medical.cli.study import load_study, pareto_front

REPO = pathlib.Path(__file__).resolve().parents[1]

STUDY = """
base:
  padding: same
  base_filters: 8
  depth: 2
  batch_norm: true
  dropout: 0.0
  crop_size: 64
  batch_size: 2
  max_steps: 4
  log_every: 2
  checkpoint_every: 2
  num_folds: 10
  fold: 9
variants:
  - name: fp32
  - name: fixed_q0.4_q6.0
    init_from: "@fp32"
    quantization: FIXED
    weight_f_width: 4
    activation_i_width: 6
  - name: tucker_0.5
    init_from: "@fp32"
    exec_mode: compress
    rank_factor: 0.5
    rank_min: 2
"""


def start_study(config, data_dir, results):
    return subprocess.Popen([sys.executable, "-m", "unet_medical.cli.study", "--config", str(config), "--data_dir", str(data_dir),
                             "--results_dir", str(results), "--latency_image", "64", "--latency_rounds", "3"],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


@pytest.mark.slow
def test_killed_study_finishes_only_missing_variants(tmp_path, isbi_data_dir):
    config = tmp_path / "study.yaml"
    config.write_text(STUDY)
    results = tmp_path / "results"
    proc = start_study(config, isbi_data_dir, results)
    first_done = results / "variants" / "fp32" / "done.json"
    deadline = time.time() + 400
    while not first_done.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert first_done.exists(), proc.communicate()[0][-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the study and the variant it is training
    proc.wait()
    stamp = first_done.stat().st_mtime_ns
    assert not (results / "variants" / "tucker_0.5" / "done.json").exists()

    again = start_study(config, isbi_data_dir, results)
    output = again.communicate(timeout=600)[0]
    assert again.returncode == 0, output[-3000:]
    assert "skipping fp32 (done)" in output
    assert "running fp32" not in output
    assert first_done.stat().st_mtime_ns == stamp
    rows = list(csv.DictReader((results / "study.csv").open()))
    assert [r["name"] for r in rows] == ["fp32", "fixed_q0.4_q6.0", "tucker_0.5"]
    fixed = rows[1]
    assert fixed["stored_format"] == "bit-packed" and int(fixed["stored_bytes"]) < int(rows[0]["stored_bytes"])
    assert float(rows[2]["rank_factor"]) == 0.5 and rows[2]["score_before_finetune"] != ""
    assert all(0.0 <= float(r["score"]) <= 1.0 and float(r["latency_ms_p50"]) > 0 for r in rows)
    assert (results / "study.md").read_text().count("\n") == 5
    assert (results / "pareto.png").stat().st_size > 10_000


def test_pareto_front():
    assert pareto_front([(1, 0.5), (2, 0.9), (3, 0.8), (1, 0.4)]) == [True, True, False, False]


@pytest.mark.parametrize("text,needle", [
    ("variants: []\n", "non-empty list"),
    ("variants:\n  - name: a\n    colour: red\n", "unknown or reserved flag 'colour'"),
    ("variants:\n  - name: a\n    init_from: '@b'\n", "must name an earlier variant"),
    ("variants:\n  - name: a\n  - name: a\n", "unique"),
])
def test_bad_study_files(tmp_path, text, needle):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(UNetError, match=needle):
        load_study(path)


@pytest.mark.slow
def test_qat_variant_ships_an_int8_tflite_written_and_run_by_the_exporter(tmp_path):
    """The study's QAT file comes from the tflite format's writer and runs in inference.runtimes' TFLite."""
    import dataclasses
    import types

    import numpy as np
    import tensorflow as tf

    from unet_medical.cli.study import deployable
    from unet_medical.model.qat import quantize_model_qat
    from unet_medical.model.unet import UNetSpec, build_unet

    spec = UNetSpec(padding="same", batch_norm=True, base_filters=4, depth=2)
    tf.keras.utils.set_random_seed(0)
    model = quantize_model_qat(build_unet(spec))
    tiles = np.random.default_rng(0).random((2, 64, 64, 1), dtype=np.float32)
    model(tiles, training=True)  # gives the QAT quantizers ranges
    info = types.SimpleNamespace(variant="qat", spec=dataclasses.asdict(spec),
                                 quantization_config={"quantization": "QAT_INT8"})
    path, label, predictor = deployable(model, info, tmp_path, 64)
    assert path == tmp_path / "export" / "model_int8.tflite" and label == "tflite int8"
    probabilities = predictor(tiles)  # any batch: the exporter's TFLite has a dynamic batch
    reference = tf.nn.softmax(model(tiles, training=False), axis=-1).numpy()
    assert probabilities.shape == reference.shape and 0 <= probabilities.min() and probabilities.max() <= 1
    assert np.mean(probabilities.argmax(-1) == reference.argmax(-1)) >= 0.95
