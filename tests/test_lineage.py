"""Run lineage: modes that take an existing run start from its recorded configuration (runtime.lineage),
explicit flags win; evaluation on the run's training slices is refused; a missing run creates nothing.
Also NVIDIA's flag spellings (--use_amp, --use_xla, --use_trt, --benchmark with --warmup_steps /
--max_steps) and predict's test-masks.tif."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tifffile
import yaml

import main
from unet_medical.base.artifacts import flatten_config, read_run_config, RunRecord, save_run_record
from unet_medical.cli import lineage
from unet_medical.cli.config import parse_config
from unet_medical.base.errors import UNetError
from unet_medical.inference.outputs import label_mask, masks_name, write_predictions

TINY = ["--padding", "same", "--base_filters", "4", "--depth", "2", "--crop_size", "32", "--batch_size", "2",
        "--max_steps", "2"]
TINY_SPEC = {"n_classes": 2, "in_channels": 1, "base_filters": 4, "depth": 2, "padding": "same",
             "batch_norm": False, "dropout": 0.5}


# ----------------------------------------------------------------------------- fake runs (no TensorFlow)
def fake_run(path, config=None, spec=None, quantization=None, old_layout=False):
    """A run folder as training leaves it, minus the weights: config.yaml and model.json (written by
    base.artifacts.save_run_record, as training writes it; `old_layout`: nested under "extra" as
    earlier versions wrote it)."""
    path.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (path / "config.yaml").write_text(yaml.safe_dump(config))
    if old_layout:
        extra = {"quantization_config": quantization} if quantization else {}
        (path / "model.json").write_text(json.dumps({"spec": spec or TINY_SPEC, "class_names": ["membrane", "interior"],
                                                     "extra": extra}))
        return path
    save_run_record(path, RunRecord(spec=spec or TINY_SPEC, class_names=("membrane", "interior"),
                                    quantization=(quantization or {}).get("quantization", "NONE"),
                                    quantization_config=quantization))
    return path


RECORDED = {"exec_mode": "train_and_evaluate", "data_dir": "/data/em", "image_stack": "em.tif",
            "mask_stack": "em_masks.tif", "num_classes": None, "fold": 2, "num_folds": 5, "crop_size": 96,
            "max_steps": 100, "padding": "valid", "base_filters": 64}  # padding/base_filters: model.json wins


def test_evaluate_inherits_data_fold_crop_and_architecture(tmp_path):
    run = fake_run(tmp_path / "run", RECORDED, quantization={"quantization": "FIXED", "weight_f_width": 5})
    cfg = parse_config(["--exec_mode", "evaluate", "--model_dir", str(run)])
    assert (cfg.data_dir, cfg.image_stack, cfg.mask_stack) == ("/data/em", "em.tif", "em_masks.tif")
    assert (cfg.fold, cfg.num_folds, cfg.crop_size) == (2, 5, 96)
    assert (cfg.padding, cfg.base_filters, cfg.depth, cfg.dropout) == ("same", 4, 2, 0.5)  # from model.json
    assert (cfg.quantization, cfg.weight_f_width) == ("FIXED", 5)
    assert cfg.max_steps == 1000  # not a lineage flag: the default


def test_model_json_of_earlier_versions_still_gives_its_quantization(tmp_path):
    run = fake_run(tmp_path / "run", RECORDED, quantization={"quantization": "INT", "weight_bits": 4}, old_layout=True)
    cfg = parse_config(["--exec_mode", "predict", "--model_dir", str(run)])
    assert (cfg.quantization, cfg.weight_bits) == ("INT", 4)


def test_explicit_flags_and_yaml_win_over_the_run(tmp_path):
    run = fake_run(tmp_path / "run", RECORDED)
    yaml_file = tmp_path / "over.yaml"
    yaml_file.write_text("crop_size: 64\n")
    cfg = parse_config(["--exec_mode", "predict", "--model_dir", str(run), "--data_dir", "/other",
                        "--fold", "0", "--config", str(yaml_file), "--padding", "same"])
    assert (cfg.data_dir, cfg.fold, cfg.crop_size) == ("/other", 0, 64)
    assert cfg.image_stack == "em.tif" and cfg.num_folds == 5


def test_contradicting_architecture_flag_is_refused(tmp_path):
    run = fake_run(tmp_path / "run", RECORDED)
    with pytest.raises(UNetError, match=r"--base_filters=64: --model_dir=.*base_filters=4"):
        parse_config(["--exec_mode", "export", "--model_dir", str(run), "--base_filters", "64"])


def test_init_from_inherits_but_not_the_quantization(tmp_path):
    parent = fake_run(tmp_path / "parent", RECORDED, quantization={"quantization": "INT", "weight_bits": 4})
    cfg = parse_config(["--exec_mode", "compress", "--init_from", str(parent), "--rank_factor", "0.5",
                        "--model_dir", str(tmp_path / "new")])
    assert (cfg.crop_size, cfg.fold, cfg.padding, cfg.data_dir) == (96, 2, "same", "/data/em")
    assert cfg.quantization == "NONE" and cfg.weight_bits == 8


def test_fresh_training_and_benchmarks_read_no_run(tmp_path):
    run = fake_run(tmp_path / "run", RECORDED)
    assert parse_config(["--exec_mode", "train", "--model_dir", str(run)]).crop_size is None  # a new run: the recipe chooses
    assert parse_config(["--exec_mode", "predict", "--benchmark", "--model_dir", str(tmp_path / "x")]).fold == 0


def test_exported_model_reads_its_run(tmp_path):
    run = fake_run(tmp_path / "run", RECORDED)
    (run / "export").mkdir()
    (run / "export" / "model.onnx").write_bytes(b"onnx")
    cfg = parse_config(["--exec_mode", "predict", "--model_path", str(run / "export" / "model.onnx"),
                        "--model_dir", str(tmp_path / "serve")])
    assert cfg.data_dir == "/data/em" and cfg.fold == 2
    assert not (tmp_path / "serve").exists()


@pytest.mark.parametrize("mode", ["evaluate", "predict", "export", "visualize"])
def test_missing_run_creates_nothing(tmp_path, capsys, mode):
    missing, log_dir = tmp_path / "typo", tmp_path / "logs"
    assert main.main(["--exec_mode", mode, "--model_dir", str(missing), "--log_dir", str(log_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--model_dir={missing}" in err and "Traceback" not in err
    assert not missing.exists() and not log_dir.exists()


def test_missing_init_from_and_model_path_create_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert main.main(["--exec_mode", "train", "--init_from", str(tmp_path / "nope"), "--model_dir", str(out)]) == 2
    assert "--init_from=" in capsys.readouterr().err and not out.exists()
    assert main.main(["--exec_mode", "predict", "--model_path", str(tmp_path / "m.onnx"), "--model_dir", str(out)]) == 2
    assert "--model_path=" in capsys.readouterr().err and not out.exists()


def test_training_slices_follow_the_init_from_ancestry(tmp_path):
    data = {"data_dir": str(tmp_path / "data"), "image_stack": None, "images_dir": "images"}
    base = {**data, "exec_mode": "train_and_evaluate", "num_folds": 5, "max_steps": 10}
    parent = fake_run(tmp_path / "parent", {**base, "fold": 0})
    child = fake_run(tmp_path / "child", {**base, "fold": 1, "init_from": str(parent)})
    names = [f"s{i}.png" for i in range(10)]  # runs recorded without train_files: their fold of today's names
    seen = lineage.training_slices(child, names, data)
    # 10 slices in 5 blocks of 2: the child trained on all but 2-3, its parent on all but 0-1.
    assert sorted(seen) == sorted(names)
    assert len(seen["s0.png"]) == 1 and "fold 1 of 5" in seen["s0.png"][0] and len(seen["s4.png"]) == 2
    assert lineage.training_slices(child, names, {**data, "data_dir": str(tmp_path / "other")}) == {}
    with pytest.raises(UNetError, match="--allow_training_slices"):
        lineage.check_evaluation_slices(child, names[2:4], names, data, 1, 5)
    orphan = fake_run(tmp_path / "orphan", {**base, "fold": 1})
    lineage.check_evaluation_slices(orphan, names[2:4], names, data, 1, 5)  # its own block: allowed


def test_finished_evaluation(tmp_path):
    (tmp_path / "eval_results.json").write_text(json.dumps({"step": 600, "fold": 3, "num_folds": 5}))
    assert lineage.finished_evaluation(tmp_path, 600, 3, 5)["step"] == 600
    assert lineage.finished_evaluation(tmp_path, 800, 3, 5) is None
    assert lineage.finished_evaluation(tmp_path, 600, 2, 5) is None
    assert lineage.finished_evaluation(tmp_path / "none", 600, 3, 5) is None


# ----------------------------------------------------------------------------- NVIDIA's spellings
def test_nvidia_amp_and_xla_spellings(tmp_path):
    cfg = parse_config(["--use_amp", "--use_xla"])
    assert cfg.amp and cfg.xla
    assert not parse_config(["--amp", "--no-use_amp"]).amp
    path = tmp_path / "nv.yaml"
    path.write_text("use_amp: true\nuse-xla: true\n")
    cfg = parse_config(["--config", str(path)])
    assert cfg.amp and cfg.xla


@pytest.mark.parametrize("argv,warmup,steps", [
    (["--benchmark", "--warmup_steps", "200", "--max_steps", "1000"], 200, 800),
    (["--benchmark", "--max_steps", "13"], 3, 10),
    (["--benchmark", "--warmup_steps", "2", "--max_steps", "9", "--bench_steps", "4"], 2, 4),
    (["--benchmark", "--warmup_steps", "2", "--bench_warmup_steps", "1", "--max_steps", "9"], 1, 8),
    (["--warmup_steps", "200", "--max_steps", "1000"], 3, 10),  # no --benchmark: LR warm-up and training steps
])
def test_nvidia_benchmark_steps(argv, warmup, steps):
    cfg = parse_config(["--exec_mode", "train", *argv])
    assert (cfg.bench_warmup_steps, cfg.bench_steps) == (warmup, steps)


def test_nvidia_benchmark_needs_more_steps_than_warmup():
    with pytest.raises(UNetError, match="--max_steps=200"):
        parse_config(["--exec_mode", "train", "--benchmark", "--warmup_steps", "200", "--max_steps", "200"])


def test_use_trt_is_for_predict():
    with pytest.raises(UNetError, match="--use_trt"):
        parse_config(["--exec_mode", "train", "--use_trt"])


def test_label_mask_and_names():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 7, 2))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    mask = label_mask(probs, ("membrane", "interior"))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    np.testing.assert_array_equal(mask == 255, probs[..., 1] > probs[..., 0])
    three = rng.random((4, 4, 3))
    np.testing.assert_array_equal(label_mask(three, ("a", "b", "c")), np.argmax(three, axis=-1))
    assert masks_name("test-volume") == "test-masks.tif" and masks_name("stack") == "stack-masks.tif"


def test_write_predictions_writes_a_multipage_mask_stack(tmp_path):
    probs = [np.stack([1 - p, p], -1) for p in np.random.default_rng(1).random((3, 6, 8))]
    images = [np.zeros((6, 8, 1), np.float32)] * 3
    written = write_predictions(tmp_path, probs, images, ["a", "b", "c"], ("membrane", "interior"), "test-volume")
    assert written[1] == tmp_path / "test-masks.tif"
    with tifffile.TiffFile(written[1]) as tif:
        assert len(tif.pages) == 3
    masks = tifffile.imread(written[1])
    np.testing.assert_array_equal(masks, np.stack([np.where(p[..., 1] > p[..., 0], 255, 0) for p in probs]))


# ----------------------------------------------------------------------------- a real tiny run
@pytest.fixture(scope="module")
def fold1_run(tmp_path_factory, isbi_data_dir):
    """A tiny same-padding U-Net trained 2 steps on ISBI fold 1 of 5 (evaluated on slices 6-11)."""
    run = tmp_path_factory.mktemp("lineage") / "run"
    assert main.main(["--exec_mode", "train_and_evaluate", "--data_dir", str(isbi_data_dir), "--model_dir",
                      str(run), "--fold", "1", *TINY]) == 0
    return run


def copy_run(run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(run, out)
    return out


def parameters(run):
    """The first PARAMETER record of the newest command in run/log.json."""
    records = [json.loads(line.removeprefix("DLLL ")) for line in (run / "log.json").read_text().splitlines()
               if line.strip()]
    params = [r["data"] for r in records if r.get("step") == "PARAMETER" and "exec_mode" in r.get("data", {})]
    return params[-1]


@pytest.mark.slow
def test_evaluate_with_only_model_dir_reproduces_the_run(fold1_run, tmp_path, isbi_data_dir):
    run = copy_run(fold1_run, tmp_path)
    trained = json.loads((run / "eval_results.json").read_text())
    assert main.main(["--exec_mode", "evaluate", "--model_dir", str(run)]) == 0
    again = json.loads((run / "eval_results_last.json").read_text())  # the training run's file stays its own
    assert again["fold"] == 1 and again["step"] == trained["step"] == 2
    assert again["provenance"]["files"] == trained["provenance"]["files"]
    assert again["decision"] == trained["decision"]  # the run's recorded rule, applied again
    for key, value in trained.items():
        if key not in ("per_case", "provenance", "decision"):  # per_case: compared case by case below
            assert again[key] == pytest.approx(value, abs=1e-6), key
    assert [(c["index"], c["name"]) for c in again["per_case"]] == [(c["index"], c["name"]) for c in trained["per_case"]]
    for case, before in zip(again["per_case"], trained["per_case"]):
        assert case["dice"] == pytest.approx(before["dice"], abs=1e-6)
        assert case["mean_dice"] == pytest.approx(before["mean_dice"], abs=1e-6)
    used = flatten_config(yaml.safe_load((run / "config_evaluate.yaml").read_text()))  # version 2: by section
    assert (used["data_dir"], used["fold"], used["padding"], used["base_filters"], used["crop_size"]) == \
        (str(isbi_data_dir), 1, "same", 4, 32)
    logged = parameters(run)  # the PARAMETER line shows the values in effect
    assert (logged["padding"], logged["base_filters"], logged["depth"], logged["fold"]) == ("same", 4, 2, 1)


@pytest.mark.slow
def test_evaluating_training_slices_is_refused_unless_allowed(fold1_run, tmp_path, capsys):
    run = copy_run(fold1_run, tmp_path)
    before = (run / "eval_results.json").read_text()
    assert main.main(["--exec_mode", "evaluate", "--model_dir", str(run), "--fold", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "--allow_training_slices" in err and "fold 1 of 5" in err
    assert (run / "eval_results.json").read_text() == before
    assert main.main(["--exec_mode", "evaluate", "--model_dir", str(run), "--fold", "0",
                      "--allow_training_slices"]) == 0
    assert json.loads((run / "eval_results_last.json").read_text())["fold"] == 0


@pytest.mark.slow
def test_compress_init_from_needs_no_training_flags(fold1_run, tmp_path, isbi_data_dir):
    out = tmp_path / "tucker"
    assert main.main(["--exec_mode", "compress", "--init_from", str(fold1_run), "--model_dir", str(out),
                      "--rank_factor", "0.5", "--rank_min", "1", "--max_steps", "1"]) == 0
    used = read_run_config(out)
    assert (used["crop_size"], used["fold"], used["padding"], used["data_dir"]) == (32, 1, "same", str(isbi_data_dir))
    assert json.loads((out / "eval_results.json").read_text())["fold"] == 1


@pytest.mark.slow
def test_predict_from_the_run_writes_test_masks(fold1_run, tmp_path, isbi_data_dir, capsys):
    run = copy_run(fold1_run, tmp_path)
    stack = tmp_path / "in" / "test-volume.tif"
    stack.parent.mkdir()
    with tifffile.TiffFile(isbi_data_dir / "test-volume.tif") as tif:
        tifffile.imwrite(stack, np.stack([p.asarray() for p in tif.pages[:2]]), photometric="minisblack")
    assert main.main(["--exec_mode", "predict", "--model_dir", str(run), "--input", str(stack)]) == 0
    probs = tifffile.imread(run / "predictions" / "001" / "test-volume-probabilities.tif")
    masks = tifffile.imread(run / "predictions" / "001" / "test-masks.tif")
    assert masks.shape == probs.shape == (2, 512, 512) and masks.dtype == np.uint8
    # The run's recorded rule (inference.decision): interior where 1 - p(interior) <= t, else membrane.
    threshold = json.loads((run / "model.json").read_text())["decision"]["threshold"]
    cut = 0.5 if threshold is None else 1.0 - threshold
    decided = probs != cut  # exact ties are the argmax's choice
    expected = probs[decided] > cut if threshold is None else probs[decided] >= cut
    np.testing.assert_array_equal(masks[decided], np.where(expected, 255, 0))
    # --use_trt on a TensorFlow without TensorRT: one clear line, no export attempted.
    import tensorflow as tf

    if tf.sysconfig.get_build_info().get("is_tensorrt_build"):
        pytest.skip("this TensorFlow has TensorRT")
    capsys.readouterr()
    assert main.main(["--exec_mode", "predict", "--model_dir", str(run), "--use_trt"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "TensorRT" in err and "NGC" in err
    assert not (run / "export").exists()


@pytest.mark.slow
def test_use_trt_exports_tftrt_from_the_runs_checkpoint(fold1_run, tmp_path, monkeypatch):
    """Where TensorRT exists, --use_trt exports the run to TF-TRT (fp16 with --amp) before predicting.
    No TensorRT here: the build check is faked and the export is intercepted at its entry."""
    import tensorflow as tf

    from unet_medical.cli import export_mode

    run = copy_run(fold1_run, tmp_path)
    requested = []

    def intercepted(cfg, logger):
        requested.append((cfg.export_format, cfg.export_precision, cfg.model_dir, cfg.use_trt))
        raise UNetError("intercepted")

    monkeypatch.setattr(tf.sysconfig, "get_build_info", lambda: {"is_tensorrt_build": True})
    monkeypatch.setattr(export_mode, "run_export", intercepted)
    assert main.main(["--exec_mode", "predict", "--model_dir", str(run), "--use_trt"]) == 2
    assert main.main(["--exec_mode", "predict", "--model_dir", str(run), "--use_trt", "--use_amp"]) == 2
    assert requested == [("tftrt", "fp32", str(run), False), ("tftrt", "fp16", str(run), False)]
