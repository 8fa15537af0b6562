"""Export on real ISBI slices with a tiny trained U-Net: every format predicts the same labels as the
Keras model through the one tiled inference path; the SavedModel serves raw images of any size;
TF-TRT without TensorRT fails with one clear message; exported models drive predict and evaluate."""
import json
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tifffile

import main
from unet_medical.model.unet import UNetSpec, build_unet, is_valid_input_size
from unet_medical.cli.config import parse_config
from unet_medical.data.folds import fold_split
from unet_medical.data.normalize import normalize_image
from unet_medical.base.errors import UNetError
from unet_medical.inference.tiling import keras_predictor, predict_images
from unet_medical.cli.assemble import load_training_set, restore_model
from unet_medical.inference.runtimes import load_exported, load_predictor
from unet_medical.export import formats, serving
from unet_medical.export import parity

TILE = 128  # small tiles keep int8 calibration and parity fast; 512 slices need 6 x 6 tiles
TINY = ["--padding", "same", "--base_filters", "4", "--depth", "2", "--batch_norm", "--dropout", "0",
        "--crop_size", "96", "--batch_size", "2", "--learning_rate", "3e-3", "--num_folds", "10",
        "--fold", "9", "--log_every", "10", "--no-augment", "--tile_size", str(TILE)]
EXPORTS = [("savedmodel", "fp32"), ("onnx", "fp32"), ("onnx", "int8"),
           ("tflite", "fp32"), ("tflite", "fp16"), ("tflite", "int8")]
WHOLE_IMAGE = 1 << 30  # max_tile_size under which plan_tiles covers any image with one tile


@pytest.fixture(scope="module")
def run(tmp_path_factory, isbi_data_dir):
    """A tiny same-padding BN U-Net trained 30 steps on ISBI (fold 9 of 10 held out: 3 slices)."""
    model_dir = tmp_path_factory.mktemp("export_run")
    common = ["--data_dir", str(isbi_data_dir), "--model_dir", str(model_dir), *TINY]
    assert main.main(["--exec_mode", "train", "--max_steps", "30", *common]) == 0
    cfg = parse_config(["--exec_mode", "export", *common])
    model, spec, info = restore_model(cfg)
    data = load_training_set(cfg)
    _, val_idx = fold_split(len(data.images), cfg.num_folds, cfg.fold)
    raw = [data.images[i] for i in val_idx]
    images = [normalize_image(im) for im in raw]
    reference = predict_images(keras_predictor(model), spec, images, tile_size=TILE)
    return {"dir": model_dir, "common": common, "model": model, "spec": spec, "raw": raw, "images": images,
            "reference": reference, "cache": {}}


def exported(run, export_format, precision) -> pathlib.Path:
    """Export once per module through the CLI and return the artefact's path."""
    key = (export_format, precision)
    if key not in run["cache"]:
        args = ["--exec_mode", "export", "--export_format", export_format, "--export_precision", precision]
        assert main.main([*args, *run["common"]]) == 0
        run["cache"][key] = run["dir"] / "export" / formats.artifact_name(export_format, precision)
    return run["cache"][key]


def label_agreement(reference, candidate) -> float:
    same = sum(int(np.count_nonzero(r.argmax(-1) == c.argmax(-1))) for r, c in zip(reference, candidate))
    return same / sum(r.shape[0] * r.shape[1] for r in reference)


@pytest.mark.parametrize("export_format,precision", EXPORTS)
@pytest.mark.slow
def test_exported_model_agrees_with_keras(run, export_format, precision):
    if export_format == "onnx":
        pytest.importorskip("tf2onnx", reason="ONNX export needs tf2onnx (requirements.txt)")
        pytest.importorskip("onnxruntime", reason="ONNX models run with onnxruntime (requirements.txt)")
    path = exported(run, export_format, precision)
    assert path.exists()
    predictor, tile_size = load_predictor(path)
    assert tile_size == (TILE if export_format == "tflite" else None)
    probs = predict_images(predictor, run["spec"], run["images"], tile_size=tile_size or TILE)
    agreement = label_agreement(run["reference"], probs)
    max_diff = max(float(np.abs(r - p).max()) for r, p in zip(run["reference"], probs))
    print(f"{export_format} {precision}: labels agree on {agreement:.5%} of pixels, max |dp| {max_diff:.3g}")
    assert agreement >= (0.99 if precision == "int8" else 0.995)
    if precision == "fp32":
        assert max_diff < 1e-4  # the same float computation, up to summation order

    entry = json.loads((run["dir"] / "export" / "export.json").read_text())["artifacts"][path.name]
    assert (entry["format"], entry["precision"], entry["parity_tile_size"]) == (export_format, precision, TILE)
    assert UNetSpec(**entry["spec"]) == run["spec"]
    assert entry["class_names"] == ["membrane", "interior"] and entry["step"] == 30
    # What export recorded is what an independent run of the same path measures.
    assert entry["parity"]["tiled"]["label_agreement"] == pytest.approx(agreement, abs=1e-9)
    assert entry["parity"]["tiled"]["max_abs_prob_diff"] == pytest.approx(max_diff, rel=1e-3, abs=1e-6)


@pytest.mark.slow  # seconds of setup or a subprocess: the fast subset stays under 2 minutes
def test_serving_signature_takes_raw_images_of_two_sizes(run):
    serve = tf.saved_model.load(str(exported(run, "savedmodel", "fp32"))).signatures["serving_default"]
    model, spec = run["model"], run["spec"]
    for h, w in [(512, 512), (200, 136)]:
        batch = np.stack([im[:h, :w] for im in run["raw"][:2]])
        assert batch.dtype == np.uint8
        out = serve(images=tf.constant(batch))
        probs, labels = out["probabilities"].numpy(), out["labels"].numpy()
        assert probs.shape == (2, h, w, 2) and labels.shape == (2, h, w) and labels.dtype == np.uint8
        np.testing.assert_array_equal(labels, probs.argmax(-1))
        # The export's --tile_size 128 plan, tiled inside the graph (a 512 slice: 6 x 6 tiles).
        expected = predict_images(keras_predictor(model), spec, [normalize_image(b) for b in batch], tile_size=TILE)
        np.testing.assert_allclose(probs, np.stack(expected), atol=2e-5)


@pytest.mark.parametrize("hw", [(37, 50), (9, 70)])
def test_valid_padding_serving_handles_any_size(hw):
    spec = UNetSpec(padding="valid", base_filters=4, depth=2, dropout=0.0)
    model = build_unet(spec)
    module = formats.UNetServingModule(model, spec, context=0)
    image = np.random.default_rng(3).integers(0, 256, (1, *hw, 1), dtype=np.uint8)
    probs = module.serve(tf.constant(image))["probabilities"].numpy()[0]
    expected = predict_images(keras_predictor(model), spec, [normalize_image(image[0])], max_tile_size=WHOLE_IMAGE)[0]
    assert probs.shape == (*hw, 2)
    np.testing.assert_allclose(probs, expected, atol=2e-5)


@pytest.mark.slow  # seconds of setup or a subprocess: the fast subset stays under 2 minutes
def test_tftrt_without_tensorrt_is_one_clear_error(run, capsys):
    if not formats.tensorrt_problems():
        pytest.skip("this TensorFlow has TensorRT and a GPU: TF-TRT export can run here")
    args = ["--exec_mode", "export", "--export_format", "tftrt", "--export_precision", "int8", *run["common"]]
    assert main.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert "TensorRT" in err and "NGC" in err and "onnx" in err
    assert not (run["dir"] / "export" / "tftrt_int8").exists()


@pytest.mark.slow
def test_failed_parity_leaves_no_artifact(run, tmp_path, monkeypatch):
    # A copy of the trained run and a threshold no model can reach: the export must fail and leave
    # neither the artefact, nor its metadata, nor a staging folder.
    shutil.copytree(run["dir"] / "checkpoints", tmp_path / "checkpoints")
    shutil.copy(run["dir"] / "model.json", tmp_path / "model.json")
    monkeypatch.setitem(parity.PARITY_THRESHOLDS, "fp16", 1.01)
    args = ["--exec_mode", "export", "--export_format", "tflite", "--export_precision", "fp16",
            *run["common"], "--model_dir", str(tmp_path)]
    assert main.main(args) == 2
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == []


@pytest.mark.slow
def test_predict_and_evaluate_with_an_exported_model(run, tmp_path):
    stack = tmp_path / "two.tif"
    tifffile.imwrite(stack, np.stack([im[..., 0] for im in run["raw"][:2]]))
    tflite = exported(run, "tflite", "int8")
    predict = ["--exec_mode", "predict", "--input", str(stack), *run["common"]]
    assert main.main(predict) == 0
    (keras_file,) = (run["dir"] / "predictions" / "001").glob("*probabilities*.tif")
    keras_probs = tifffile.imread(keras_file)
    assert main.main([*predict, "--model_path", str(tflite)]) == 0  # its own folder: 002
    exported_probs = tifffile.imread(run["dir"] / "predictions" / "002" / keras_file.name)
    assert exported_probs.shape == keras_probs.shape == (2, 512, 512)
    assert np.mean((exported_probs > 0.5) == (keras_probs > 0.5)) >= 0.99

    evaluate = ["--exec_mode", "evaluate", *run["common"]]
    assert main.main(evaluate) == 0
    keras_eval = json.loads((run["dir"] / "eval_results_last.json").read_text())
    assert main.main([*evaluate, "--model_path", str(tflite)]) == 0
    exported_eval = json.loads((run["dir"] / f"eval_results_{tflite.name}.json").read_text())
    assert exported_eval["mean_dice"] == pytest.approx(keras_eval["mean_dice"], abs=0.01)


@pytest.mark.slow  # seconds of setup or a subprocess: the fast subset stays under 2 minutes
def test_fixed_tile_runtime_rejects_another_tile_size(run):
    model = load_exported(exported(run, "tflite", "fp32"))
    assert model.tile_size_for(None) == TILE
    with pytest.raises(UNetError, match="--tile_size=96"):
        model.tile_size_for(96)


@pytest.mark.parametrize("export_format,precision", [("savedmodel", "int8"), ("onnx", "fp16"),
                                                     ("packed", "fp32")])
def test_unavailable_combinations_fail_before_any_work(export_format, precision):
    with pytest.raises(UNetError, match=export_format):
        formats.check_export_request(export_format, precision)


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(UNetError, match="not found"):
        load_exported(tmp_path / "missing.onnx")
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(UNetError, match=r"\.onnx, a \.tflite or a packed \.npz"):
        load_exported(tmp_path / "model.bin")
    (tmp_path / "model.tflite").write_bytes(b"x")
    with pytest.raises(UNetError, match="export.json"):
        load_exported(tmp_path / "model.tflite")


@pytest.mark.parametrize("length", [1, 2, 3, 7])
@pytest.mark.parametrize("before,after", [(0, 0), (2, 1), (5, 9), (20, 3)])
def test_mirror_pad_matches_numpy_reflect(length, before, after):
    x = np.arange(length * 4, dtype=np.float32).reshape(1, length, 4, 1)
    got = serving.mirror_pad(tf.constant(x), before, after, 3, 6).numpy()
    np.testing.assert_array_equal(got, np.pad(x, ((0, 0), (before, after), (3, 6), (0, 0)), mode="reflect"))


@pytest.mark.parametrize("spec", [UNetSpec(padding="valid", depth=2), UNetSpec(padding="valid"),
                                  UNetSpec(padding="same", depth=3)])
def test_valid_size_progression_lists_exactly_the_valid_sizes(spec):
    first, step = serving.valid_size_progression(spec)
    for size in range(1, first + 6 * step):
        assert is_valid_input_size(spec, size) == (size >= first and (size - first) % step == 0), size


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_in_graph_normalization_is_normalize_image(dtype):
    image = np.random.default_rng(0).integers(0, np.iinfo(dtype).max + 1, (5, 7, 1), dtype=dtype)
    np.testing.assert_array_equal(serving.normalize_images(tf.constant(image)).numpy(), normalize_image(image))


def test_compare_probabilities_by_hand():
    ref = np.array([[[0.9, 0.1], [0.4, 0.6]]], np.float32)      # labels 0, 1
    cand = np.array([[[0.8, 0.2], [0.55, 0.45]]], np.float32)   # labels 0, 0
    report = parity.compare_probabilities([ref], [cand], threshold=0.5)
    assert report.label_agreement == 0.5 and report.pixels == 2 and report.passed
    assert report.max_abs_prob_diff == pytest.approx(0.15)
    assert report.mean_abs_prob_diff == pytest.approx((0.1 + 0.1 + 0.15 + 0.15) / 4)
