"""The SavedModel of a 3-D run (export/volume_serving.py): the run's window normalization and the Gaussian
sliding window in the graph equal the project's NumPy path (data.volume_slices + inference.sliding_window);
the model loads and serves with TensorFlow alone, `unet_medical` not importable (docs/volumes.md's lines);
and (slow) a --dims 3 run writes it at the end of training and exports through the one exporter."""
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import main
from unet_medical.base.errors import UNetError
from unet_medical.data.normalize import normalize_image
from unet_medical.data.volume_resample import probabilities_on_grid, resample_image, resampled_shape
from unet_medical.data.volume_slices import PERCENTILES, to_uint16
from unet_medical.export.volume_serving import GRAPH_OPS, VolumeServingModule, percentiles_tf
from unet_medical.inference.sliding_window import (axis_window_starts, centre_padding, gaussian_importance,
                                                   sliding_window_predict, window_starts)
from unet_medical.inference.tiling import keras_predictor
from unet_medical.model.unet import UNetSpec, build_unet

REPO = pathlib.Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "volumes.md"
PATCH = (16, 8, 8)
SHAPE = (37, 6, 11, 1)   # axis 0 not a multiple of the patch, axis 1 shorter than it (padded)
CT_WINDOW = (-200.0, 300.0)


@pytest.fixture(scope="module")
def model():
    tf.keras.utils.set_random_seed(0)
    return build_unet(UNetSpec(n_classes=3, base_filters=4, depth=2, padding="same", dropout=0.0, dims=3))


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    return np.random.default_rng(0).integers(-1000, 1500, SHAPE).astype(np.int16)  # CT-like, HU


def numpy_path(model, volume: np.ndarray, window) -> np.ndarray:
    """What predict does: case_image_uint16 (window or the case's percentiles), normalize_image, sliding windows."""
    window = window or tuple(float(v) for v in np.percentile(volume[..., 0], PERCENTILES))
    normalized = normalize_image(to_uint16(volume[..., 0], window)[..., None])
    return sliding_window_predict(keras_predictor(model), normalized, PATCH, overlap=0.5)


@pytest.mark.parametrize("length, patch, overlap", [(n, p, o) for n in (1, 5, 8, 16, 17, 37, 100)
                                                    for p in (1, 6, 8, 16) for o in (0.0, 0.5, 0.75)])
def test_graph_window_origins_and_padding_are_numpys(length, patch, overlap):
    pad = centre_padding(tf.constant(length), patch, GRAPH_OPS)
    assert tuple(int(t) for t in pad) == centre_padding(length, patch)
    padded = length + sum(centre_padding(length, patch))
    starts = axis_window_starts(tf.constant(padded), patch, overlap, GRAPH_OPS).numpy().tolist()
    assert starts == window_starts(padded, patch, overlap)


def test_graph_percentiles_are_numpys_linear_interpolation():
    rng = np.random.default_rng(3)
    spread = np.concatenate([[-1e300, -1e-300, 0.0, 2e-300, 1e-300, 1e300], rng.normal(size=994)])[None]
    for values in (rng.normal(size=(2, 1001)), rng.integers(-1024, 3000, (1, 777)).astype(np.float64),
                   np.full((1, 5), 7.0), rng.normal(size=(1, 1)), rng.integers(0, 3, (3, 400)).astype(np.float64),
                   spread, np.array([[2.0, 1.0]])):
        got = [t.numpy() for t in percentiles_tf(tf.constant(values), PERCENTILES)]
        np.testing.assert_array_equal(np.stack(got), np.percentile(values, PERCENTILES, axis=-1))


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(1, 300)),
              elements=st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False).filter(
                  lambda x: x == 0 or abs(x) > 1e-300) | st.integers(-5, 5).map(float)),
       st.lists(st.floats(0.0, 100.0), min_size=1, max_size=3))
def test_order_statistics_by_bisection_equal_numpys_percentiles(values, quantiles):
    """Selection by counts (export.volume_serving.order_statistic), not a sort, gives np.percentile exactly:
    duplicates, zeros of both signs, magnitudes from 1e-300 to 1e6 and one-value rows included. (Not values
    near 2.2e-308: TensorFlow's CPU kernels flush subnormal results to zero, NumPy keeps them.)"""
    got = [t.numpy() for t in percentiles_tf(tf.constant(values), quantiles)]
    np.testing.assert_array_equal(np.stack(got), np.percentile(values, quantiles, axis=-1))


@pytest.mark.parametrize("window", [CT_WINDOW, None], ids=["ct_window", "case_percentiles"])
def test_serving_graph_equals_numpy_sliding_window(model, volume, window):
    module = VolumeServingModule(model, PATCH, (window,), image_dtype=np.int16)
    np.testing.assert_array_equal(module.gaussian_importance.numpy(), gaussian_importance(PATCH))
    expected = numpy_path(model, volume, window)
    out = module.serve(tf.constant(volume[None]), tf.constant((0.7, 0.7, 2.5), tf.float64))  # read only if resampled
    probabilities = out["probabilities"].numpy()[0]
    print(f"{window}: max |p_graph - p_numpy| = {np.abs(probabilities - expected).max():.2e}")
    assert probabilities.shape == SHAPE[:3] + (3,) and out["labels"].dtype == tf.uint8
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    np.testing.assert_array_equal(out["labels"].numpy()[0], expected.argmax(-1))


def resampled_numpy_path(model, volume: np.ndarray, window, spacing, target) -> np.ndarray:
    """predict of a resampled run: the volume to the target grid (resample_case's rule), numpy_path there,
    the probabilities back onto the volume's grid."""
    if resampled_shape(volume.shape, spacing, target) == volume.shape[:3]:
        return numpy_path(model, volume, window)
    probabilities = numpy_path(model, resample_image(volume, spacing, target), window)
    return probabilities_on_grid(probabilities, volume.shape[:3], spacing, target)


TARGET = (0.8, 0.8, 2.5)


@pytest.mark.parametrize("spacing", [(0.7, 0.7, 2.5), (1.0, 2.9, 0.6), TARGET],
                         ids=["in_plane_finer", "axis1_anisotropic", "on_target"])
@pytest.mark.parametrize("window", [CT_WINDOW, None], ids=["ct_window", "case_percentiles"])
def test_a_resampled_runs_graph_resamples_predicts_and_puts_back_as_numpy_does(model, volume, window, spacing):
    module = VolumeServingModule(model, PATCH, (window,), image_dtype=np.int16, target_spacing=TARGET)
    expected = resampled_numpy_path(model, volume, window, spacing, TARGET)
    out = module.serve(tf.constant(volume[None]), tf.constant(spacing, tf.float64))
    probabilities = out["probabilities"].numpy()[0]
    print(f"{spacing} {window}: max |p_graph - p_numpy| = {np.abs(probabilities - expected).max():.2e}")
    assert probabilities.shape == SHAPE[:3] + (3,)  # the input's grid, whatever grid the network saw
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)  # 1.8e-6 at most on Zen 4
    assert np.mean(out["labels"].numpy()[0] == expected.argmax(-1)) > 0.999  # a near-tie may flip
    assert module.target_spacing_mm.numpy().tolist() == list(TARGET)


@pytest.mark.parametrize("export_format,name", [("onnx", "volume.onnx"), ("openvino", "volume.xml")])
def test_the_whole_volume_files_equal_the_serving_graph(model, volume, tmp_path, export_format, name):
    """tf2onnx (onnxruntime runs it) and OpenVINO's TensorFlow frontend (its CPU plugin at f32 runs it) convert all
    of serve: percentiles by bisection, resampling weights, the while_loop of windows, the put-back. The nnU-Net /
    MONAI complaint that pre-processing and sliding window stay outside. One conversion each (ONNX about 10 s
    alone), both branches: a spacing that resamples and one already on the target. (A run without a target
    spacing converts the same ops less the resampling: the slow export tests run one.)"""
    module = VolumeServingModule(model, PATCH, (None,), image_dtype=np.int16, target_spacing=TARGET)
    module.write_volume(export_format, tmp_path / name)
    serve = module.volume_server(export_format, tmp_path / name)
    for spacing in ((1.0, 2.9, 0.6), TARGET):
        served = serve(volume, spacing)
        expected = module.serve(tf.constant(volume[None]), tf.constant(spacing, tf.float64))["probabilities"].numpy()[0]
        print(f"{export_format} {spacing}: max |p_file - p_graph| = {np.abs(served - expected).max():.2e}")
        assert served.shape == SHAPE[:3] + (3,)
        np.testing.assert_allclose(served, expected, atol=1e-5)


@pytest.mark.slow  # a conversion and a 192x192x96 volume through both (about 20 s)
def test_the_whole_volume_onnx_sums_overlapping_windows_without_losing_any(tmp_path):
    """Windows overlapping along K are summed by a product with a 0/1 matrix, not tensor_scatter_nd_add: tf2onnx
    writes that as ScatterND with reduction add, and onnxruntime lost updates there from several threads
    (this volume: probabilities up to 13, in different slices from run to run; two runs of two failed)."""
    tf.keras.utils.set_random_seed(0)
    small = build_unet(UNetSpec(n_classes=3, base_filters=4, depth=2, padding="same", dropout=0.0, dims=3))
    module = VolumeServingModule(small, (64, 64, 64), (None,), image_dtype=np.int16)
    module.write_volume("onnx", tmp_path / "volume.onnx")
    volume = np.random.default_rng(0).integers(-1000, 1500, (192, 192, 96, 1)).astype(np.int16)
    served = module.volume_server("onnx", tmp_path / "volume.onnx")(volume, (1.0, 1.0, 1.0))
    expected = module.serve(tf.constant(volume[None]), tf.constant((1.0, 1.0, 1.0), tf.float64))["probabilities"]
    np.testing.assert_allclose(served, expected.numpy()[0], atol=1e-5)


def test_a_resampled_runs_graph_refuses_a_spacing_that_is_not_positive(model, volume):
    module = VolumeServingModule(model, PATCH, (CT_WINDOW,), image_dtype=np.int16, target_spacing=TARGET)
    for bad in ((0.8, 0.0, 2.5), (0.8, -1.0, 2.5), (0.8, np.nan, 2.5)):
        with pytest.raises(tf.errors.InvalidArgumentError, match="spacing: three"):
            module.serve(tf.constant(volume[None]), tf.constant(bad, tf.float64))
    with pytest.raises(UNetError, match="three positive spacings"):
        VolumeServingModule(model, PATCH, (CT_WINDOW,), target_spacing=(0.8, 0.8))


def test_serving_module_refuses_a_wrong_record_in_one_line(model):
    with pytest.raises(UNetError, match=r"^2 intensity windows for a model of 1 channel\(s\)$"):
        VolumeServingModule(model, PATCH, (None, None))
    with pytest.raises(UNetError, match="expected three positive voxel counts"):
        VolumeServingModule(model, (16, 8), (None,))


def docs_snippet() -> str:
    """The six lines of docs/volumes.md that serve a NIfTI volume with the 3-D SavedModel."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    (snippet,) = [b for b in blocks if "tf.saved_model.load" in b and "nib.save" in b]
    assert len(snippet.strip().splitlines()) == 6
    return snippet


# `python -I` in another folder, with `unet_medical` made unimportable (an installed editable copy
# would otherwise be found): the docs' lines must run on TensorFlow, NumPy and nibabel alone.
TF_ONLY_SCRIPT = '''
import sys
sys.modules["unet_medical"] = None  # any import of the project fails
SNIPPET
probabilities = out["probabilities"][0]
tf.io.write_file("probabilities.out", tf.io.serialize_tensor(probabilities))
weights = model.gaussian_importance.numpy()
np.save("weights.npy", weights)
print("CLASSES", ",".join(n.decode() for n in model.class_names.numpy()),
      "PROJECT", sorted(m for m in sys.modules if m.startswith("unet_medical") and sys.modules[m] is not None))
'''


def serve_nifti_without_project(saved_model: pathlib.Path, volume: np.ndarray, workdir: pathlib.Path
                                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(labels read back from the written NIfTI, probabilities, Gaussian weights, stdout) of the docs' lines."""
    import nibabel as nib

    workdir.mkdir()
    affine = np.array([[0.0, -0.9, 0.1, 12.0], [0.8, 0.0, 0.0, -30.0], [0.0, 0.1, 2.4, 5.5], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(volume[..., 0], affine), workdir / "scan_0000.nii.gz")
    snippet = docs_snippet().replace('"RUN/saved_model"', repr(str(saved_model)))
    script = TF_ONLY_SCRIPT.replace("SNIPPET\n", snippet)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run([sys.executable, "-I", "-c", script], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = nib.load(workdir / "scan_labels.nii.gz")
    assert np.allclose(written.affine, affine, atol=1e-5)
    probabilities = tf.io.parse_tensor(tf.io.read_file(str(workdir / "probabilities.out")), tf.float32).numpy()
    return np.asarray(written.dataobj), probabilities, np.load(workdir / "weights.npy"), proc.stdout


NO_TF_SCRIPT = '''
import sys
sys.modules["unet_medical"] = sys.modules["tensorflow"] = None  # neither the project nor TensorFlow
SNIPPET
'''


WHOLE_VOLUME_LINES = {"onnx": ("ort.InferenceSession", "RUN/export/model_volume.onnx"),
                      "openvino": ("ov.Core().compile_model", "RUN/export/openvino_fp32/model_volume.xml")}


def whole_volume_docs_lines(export_format: str, file: pathlib.Path, workdir: pathlib.Path
                            ) -> tuple[np.ndarray, np.ndarray]:
    """(labels written by docs/volumes.md's five whole-volume lines of `export_format`, the int16 volume they
    read), run in a process where TensorFlow and the project cannot be imported."""
    import nibabel as nib

    workdir.mkdir()
    volume = np.random.default_rng(5).integers(-1000, 1500, (40, 36, 20)).astype(np.int16)
    nib.save(nib.Nifti1Image(volume, np.diag([0.8, 0.8, 2.5, 1.0])), workdir / "scan_0000.nii.gz")
    marker, placeholder = WHOLE_VOLUME_LINES[export_format]
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    (snippet,) = [b for b in blocks if marker in b]
    assert len(snippet.strip().splitlines()) == 5
    script = NO_TF_SCRIPT.replace("SNIPPET\n", snippet.replace(f'"{placeholder}"', repr(str(file))))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run([sys.executable, "-I", "-c", script], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = nib.load(workdir / "scan_labels.nii.gz")
    assert np.allclose(written.affine, np.diag([0.8, 0.8, 2.5, 1.0]))
    return np.asarray(written.dataobj), volume


@pytest.mark.slow  # saving traces six signatures (~10 s) and the subprocess loads TensorFlow
def test_saved_model_serves_a_nifti_with_tensorflow_alone(model, volume, tmp_path):
    module = VolumeServingModule(model, PATCH, (CT_WINDOW,), image_dtype=np.int16,
                                 class_names=("background", "organ", "lesion"))
    tf.saved_model.save(module, str(tmp_path / "saved_model"), signatures=module.signatures())
    labels, probabilities, weights, stdout = serve_nifti_without_project(tmp_path / "saved_model", volume,
                                                                       tmp_path / "elsewhere")
    assert "CLASSES background,organ,lesion PROJECT []" in stdout
    expected = numpy_path(model, volume, CT_WINDOW)
    print(f"SavedModel alone vs NumPy sliding window: max |dp| = {np.abs(probabilities - expected).max():.2e}")
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    np.testing.assert_array_equal(labels, expected.argmax(-1))
    np.testing.assert_array_equal(weights, gaussian_importance(PATCH))


TINY_3D = ["--dims", "3", "--base_filters", "4", "--depth", "2", "--batch_size", "2", "--patch_size", "32,32,16",
           "--num_folds", "3", "--max_steps", "2", "--log_every", "1"]


@pytest.fixture(scope="module")
def run3d(tmp_path_factory) -> dict[str, pathlib.Path]:
    """A tiny --dims 3 run (2 steps) on the synthetic CT set, its SavedModel written at the end of training."""
    from unet_medical.data import synthetic_volumes as sv

    root = tmp_path_factory.mktemp("run3d")
    data, run = root / "ct", root / "run"
    sv.write_volume_kind(data, "ct", 3, seed=0)
    assert main.main(["--exec_mode", "train", "--data_dir", str(data), "--model_dir", str(run), *TINY_3D]) == 0
    return {"data": data, "run": run}


@pytest.mark.slow
def test_a_3d_run_writes_its_saved_model_at_the_end_of_training(run3d):
    from unet_medical.data.volume_training import case_inputs, load_volume_slices, windows_from_record

    run = run3d["run"]
    loaded = tf.saved_model.load(str(run / "saved_model"))
    record = json.loads((run / "model.json").read_text())["volume"]
    windows = windows_from_record(record["normalization"])
    case = load_volume_slices(run3d["data"], dims="3", windows=windows).volumes.cases[2]
    raw = case.image.array  # the volume as read, (I, J, K, 1)
    serving = loaded.signatures["serving_default"]
    assert serving.structured_input_signature[1]["volumes"].dtype == raw.dtype
    served = serving(volumes=tf.constant(raw[None]), spacing=tf.constant(np.asarray(case.image.spacing)))["probabilities"]
    served = served.numpy()[0]
    tile = loaded.signatures["tile"]  # the run's network alone: the NumPy path around it is the reference
    expected = sliding_window_predict(lambda x: tile(tiles=tf.constant(x))["probabilities"].numpy(),
                                      normalize_image(case_inputs(case.image, record)[0]), (32, 32, 16))
    np.testing.assert_allclose(served, expected, atol=1e-5)


@pytest.mark.slow
def test_a_3d_run_exports_one_format_into_export_json_and_refuses_tflite(run3d, capsys, tmp_path):
    from unet_medical.base.artifacts import SCHEMA_KEY, SCHEMA_VERSION

    run = run3d["run"]
    export = ["--exec_mode", "export", "--model_dir", str(run), "--data_dir", str(run3d["data"])]
    assert main.main([*export, "--export_format", "onnx"]) == 0
    document = json.loads((run / "export" / "export.json").read_text())
    entry = document["artifacts"]["model.onnx"]
    assert document[SCHEMA_KEY] == SCHEMA_VERSION and entry["dims"] == 3 and entry["patch_shape"] == [32, 32, 16]
    assert entry["parity"]["patches"]["label_agreement"] == 1.0 and entry["latency"]["median_ms"] > 0
    assert entry["spec"]["dims"] == 3 and entry["class_names"] == ["background", "organ", "lesion"]
    held_out = json.loads((run / "model.json").read_text())["volume"]["validation_cases"]
    assert entry["parity_cases"] == held_out and (run / "export" / "MODEL_CARD.md").is_file()
    # fp32 ONNX also ships the whole-volume graph, checked on a raw held-out case like the SavedModel's signature
    assert entry["volume_file"] == "model_volume.onnx" and entry["volume_size_bytes"] > 0
    assert entry["volume_input"].startswith("volumes: int16") and entry["parity"]["serving"]["label_agreement"] >= 0.995
    # The docs' lines give the file's own labels (the file itself was checked against Keras: parity.serving)
    labels, volume = whole_volume_docs_lines("onnx", run / "export" / "model_volume.onnx", tmp_path / "onnx_alone")
    import onnxruntime

    session = onnxruntime.InferenceSession(str(run / "export" / "model_volume.onnx"), providers=["CPUExecutionProvider"])
    expected = session.run(["labels"], {"volumes": volume[None, ..., None], "spacing": np.array([0.8, 0.8, 2.5])})[0][0]
    np.testing.assert_array_equal(labels, expected)
    # fp32 OpenVINO carries it too, inside its folder, with the precision it was checked at
    assert main.main([*export, "--export_format", "openvino"]) == 0
    entry = json.loads((run / "export" / "export.json").read_text())["artifacts"]["openvino_fp32"]
    xml = run / "export" / "openvino_fp32" / "model_volume.xml"
    assert entry["volume_file"] == "openvino_fp32/model_volume.xml" and entry["volume_inference_precision"] == "f32"
    assert entry["volume_size_bytes"] > xml.stat().st_size and entry["parity"]["serving"]["label_agreement"] >= 0.995
    folder = sum(f.stat().st_size for f in (run / "export" / "openvino_fp32").iterdir())
    assert entry["size_bytes"] + entry["volume_size_bytes"] == folder  # the patch network's size, stated apart
    labels, volume = whole_volume_docs_lines("openvino", xml, tmp_path / "openvino_alone")
    import openvino

    compiled = openvino.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    out = compiled({"volumes": volume[None, ..., None], "spacing": np.array([0.8, 0.8, 2.5])})
    np.testing.assert_array_equal(labels, out[compiled.output("labels")][0])
    # predict slides the exported patch network over the test volumes as it slides the Keras one
    import nibabel as nib

    predict = ["--exec_mode", "predict", "--model_dir", str(run), "--data_dir", str(run3d["data"]), "--precision", "fp32"]
    assert main.main([*predict, "--output_dir", str(tmp_path / "keras")]) == 0
    assert main.main([*predict, "--model_path", str(run / "export" / "openvino_fp32"),
                      "--output_dir", str(tmp_path / "openvino")]) == 0
    keras_files = sorted((tmp_path / "keras").glob("*.nii.gz"))
    assert keras_files and [f.name for f in keras_files] == sorted(f.name for f in (tmp_path / "openvino").glob("*.nii.gz"))
    for keras_file in keras_files:
        ours, theirs = nib.load(keras_file), nib.load(tmp_path / "openvino" / keras_file.name)
        assert np.array_equal(ours.affine, theirs.affine) and ours.shape == theirs.shape
        assert np.mean(np.asarray(ours.dataobj) == np.asarray(theirs.dataobj)) > 0.999
    # evaluate scores the held-out case with it as with the checkpoint (its volume record read from the run folder)
    evaluate = ["--exec_mode", "evaluate", "--model_dir", str(run), "--data_dir", str(run3d["data"]), "--precision", "fp32"]
    assert main.main(evaluate) == 0
    assert main.main([*evaluate, "--model_path", str(run / "export" / "openvino_fp32")]) == 0
    scores = [json.loads((run / name).read_text()) for name in ("eval_results_last.json", "eval_results_openvino_fp32.json")]
    assert scores[1]["mean_dice"] == pytest.approx(scores[0]["mean_dice"], abs=1e-3)
    capsys.readouterr()
    assert main.main([*export, "--export_format", "tflite"]) == 2
    error = [line for line in capsys.readouterr().err.splitlines() if "TFLite" in line]
    assert len(error) == 1 and "(MaxPooling3D): TFLite has no builtin op" in error[0], error


@pytest.mark.slow
def test_the_default_export_of_a_3d_run_keeps_the_fastest_candidate(run3d):
    run = run3d["run"]
    assert main.main(["--exec_mode", "export", "--model_dir", str(run), "--data_dir", str(run3d["data"])]) == 0
    document = json.loads((run / "export" / "export.json").read_text())
    selection = document["selection"]
    candidates = {(c["format"], c["precision"]): c for c in selection["candidates"]}
    print({k: (c["status"], (c.get("latency") or {}).get("median_ms"), c.get("error", "")[:80])
           for k, c in candidates.items()})
    assert selection["patch_shape"] == [32, 32, 16] and ("tflite", "int8") not in candidates
    assert candidates[("savedmodel", "fp32")]["status"] == "timed"
    chosen = document["artifacts"][selection["chosen"]]
    assert chosen["deploy"] and chosen["dims"] == 3 and (run / "export" / selection["chosen"]).exists()
    log = [json.loads(line[len("DLLL "):])["data"] for line in (run / "log.json").read_text().splitlines()
           if line.startswith("DLLL ") and '"EXPORT"' in line]
    progress = [d for d in log if "/" in str(d.get("candidate", ""))]  # a line as each candidate starts and ends
    assert [d["status"] for d in progress[::2]] == ["exporting"] * len(candidates)
    assert len(progress) == 2 * len(candidates) and progress[-1]["candidate"] == f"{len(candidates)}/{len(candidates)}"
    assert any(d.get("status") == "left out" and d["candidate"] == "tflite int8" for d in log)
