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
  # Neither is what this test checks (cli.decide and the SavedModel have their own), and on ISBI's
  # 512-pixel slices the flips' trial and the SavedModel cost 9 s of each variant's run.
  tta: false
  saved_model: false
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


# ----------------------------------------------------------------------------- reuse only what is unchanged
SMALL_STUDY = """
base:
  max_steps: 4
variants:
  - name: fp32
  - name: int8
    init_from: "@fp32"
    quantization: INT
"""


@pytest.fixture
def fake_training(monkeypatch):
    """The study with its variants' training and its measuring replaced: each "training" writes the
    eval_results.json main.py would and is recorded by variant name."""
    import json

    from unet_medical.cli import study

    ran = []

    def train(args, env):
        out = pathlib.Path(args[args.index("--model_dir") + 1])
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval_results.json").write_text(json.dumps({"mean_dice": 0.5, "step": 4}))
        ran.append(out.name)
        return 0

    monkeypatch.setattr(study, "run_child", train)
    monkeypatch.setattr(study, "report_study", lambda *args: None)
    return ran


def run_small_study(tmp_path, data_dir, text=SMALL_STUDY, *extra):
    from unet_medical.cli import study

    config = tmp_path / "study.yaml"
    config.write_text(text)
    return study.main(["--config", str(config), "--data_dir", str(data_dir), "--results_dir",
                       str(tmp_path / "results"), *extra])


def error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("change, named, said", [
    (lambda cfg, data: (cfg.replace("max_steps: 4", "max_steps: 6"), data), "fp32", "max_steps: 4 -> 6"),
    (lambda cfg, data: (cfg.replace("quantization: INT", "quantization: INT\n    weight_bits: 4"), data),
     "int8", "weight_bits: (unset) -> 4"),
    (lambda cfg, data: (cfg, (data / "c.png").write_bytes(b"new image")), "fp32", "1 file added (first: c.png)"),
    (lambda cfg, data: (cfg, (data / "a.png").write_bytes(b"edited")), "fp32", "1 file changed (first: a.png)"),
])
def test_a_changed_study_or_data_is_refused_before_anything_runs(tmp_path, fake_training, capsys, change, named,
                                                                  said):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.png").write_bytes(b"image a")
    (data / "b.png").write_bytes(b"image b")
    assert run_small_study(tmp_path, data) == 0
    assert fake_training == ["fp32", "int8"]
    assert run_small_study(tmp_path, data) == 0 and fake_training == ["fp32", "int8"]  # unchanged: reused

    text, _ = change(SMALL_STUDY, data)
    results = tmp_path / "results"
    before = {p: p.read_bytes() for p in results.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert run_small_study(tmp_path, data, text) == 2
    line = error_line(capsys)
    assert f"variant {named!r}" in line and said in line and "--rerun_changed" in line, line
    assert fake_training == ["fp32", "int8"]
    assert {p: p.read_bytes() for p in results.rglob("*") if p.is_file()} == before


def test_rerun_changed_trains_the_changed_variant_and_those_made_from_it_again(tmp_path, fake_training, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.png").write_bytes(b"image a")
    assert run_small_study(tmp_path, data) == 0
    changed = SMALL_STUDY.replace("max_steps: 4", "max_steps: 6")
    assert run_small_study(tmp_path, data, changed, "--rerun_changed") == 0
    assert fake_training == ["fp32", "int8", "fp32", "int8"]  # int8 starts from the new fp32
    variants = tmp_path / "results" / "variants"
    assert sorted(p.name.split(".replaced-")[0] for p in variants.iterdir() if ".replaced-" in p.name) == \
        ["fp32", "int8"]
    assert run_small_study(tmp_path, data, changed) == 0 and len(fake_training) == 4


def test_a_variant_without_a_record_is_not_trusted(tmp_path, fake_training, capsys):
    """A finished variant of a study from before made_from.json: what it was made from is unknown."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.png").write_bytes(b"image a")
    assert run_small_study(tmp_path, data) == 0
    (tmp_path / "results" / "variants" / "fp32" / "made_from.json").unlink()
    capsys.readouterr()
    assert run_small_study(tmp_path, data) == 2
    assert "variant 'fp32'" in error_line(capsys)


def test_a_study_killed_while_recording_a_variant_resumes_it(tmp_path, fake_training):
    """SIGKILL between atomic_write's temporary file and its rename leaves the variant's folder with that
    file only (seen once in CI under load): the rerun trains the variant instead of refusing it."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.png").write_bytes(b"image a")
    assert run_small_study(tmp_path, data) == 0
    int8 = tmp_path / "results" / "variants" / "int8"
    for path in int8.iterdir():
        path.unlink()
    (int8 / ".made_from.json.k3x9.tmp").write_text("{")  # cut short by the kill
    assert run_small_study(tmp_path, data) == 0
    assert fake_training == ["fp32", "int8", "int8"]
    assert (int8 / "made_from.json").is_file() and not list(int8.glob(".*.tmp"))
    # Anything else in the folder is a started run: a record-less folder stays refused.
    (int8 / "made_from.json").unlink()
    assert run_small_study(tmp_path, data) == 2


def test_a_3d_variant_is_timed_on_its_training_patch():
    from types import SimpleNamespace

    from unet_medical.cli.study import timing_input
    from unet_medical.model.unet import UNetSpec

    spec3 = UNetSpec(n_classes=3, base_filters=8, depth=3, padding="same", dims=3)
    info = SimpleNamespace(volume={"patch_size": [32, 48, 32]}, variant="float")
    assert timing_input(spec3, info, (512, 512), "fp32") == ((32, 48, 32), 32)
    with pytest.raises(UNetError, match="without a recorded patch size"):
        timing_input(spec3, SimpleNamespace(volume=None, variant="float"), (512, 512), "old")
    spec2 = UNetSpec(n_classes=2, base_filters=8, depth=3, padding="same")
    (h, w), side = timing_input(spec2, SimpleNamespace(volume=None, variant="float"), (512, 512), "fp32")
    assert h == w == side >= 512


def test_the_volume_study_file_loads_and_starts_every_variant_from_the_fp32_one():
    base, variants = load_study(pathlib.Path(__file__).resolve().parents[1] / "examples" / "study_volume_cpu.yaml")
    assert base["dims"] == "3" and base["patch_size"]
    assert [v.name for v in variants][0] == "fp32"
    assert all(v.flags.get("init_from") == "@fp32" for v in variants[1:])
