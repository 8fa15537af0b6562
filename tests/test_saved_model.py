"""model_dir/saved_model/: a model any TensorFlow program loads.

`tf.saved_model.load` alone, in a process that imports nothing but TensorFlow, gives the
probabilities of `--exec_mode predict` (small image, non-square image larger than one tile, uint8 and
float input; same and valid padding); the in-graph tile loop equals utils.inference.tiled_predict;
and `--exec_mode export` needs images only (no masks)."""
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tifffile
from PIL import Image

import main
from unet_medical.model.unet import UNetSpec, build_unet
from unet_medical.data.layouts import load_training_images
from unet_medical.data.normalize import normalize_image
from unet_medical.data.synthetic import make_em_stack
from unet_medical.base.errors import UNetError
from unet_medical.export import serving
from unet_medical.inference.tiling import keras_predictor, predict_images, tile_starts

REPO = pathlib.Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "deployment.md"
# The brief's tiny model; --max_tile_size 64 makes a 150 x 70 image need several tiles.
TINY = {"same": ["--padding", "same", "--base_filters", "4", "--depth", "2", "--crop_size", "32"],
        "valid": ["--padding", "valid", "--base_filters", "4", "--depth", "2", "--crop_size", "48"]}
COMMON = ["--max_steps", "2", "--batch_size", "2", "--num_folds", "2", "--fold", "1", "--max_tile_size", "64",
          "--no-augment", "--log_every", "1"]
SMALL, LARGE = (20, 27), (150, 70)


# ----------------------------------------------------------------------------- fast: graph vs reference
@pytest.mark.parametrize("length", [1, 5, 31, 32, 33, 64, 65, 150])
@pytest.mark.parametrize("core", [1, 7, 32])
def test_axis_tiles_are_tile_starts_with_the_later_tile_winning(length, core):
    starts, kept = (t.numpy() for t in serving.axis_tiles(tf.constant(length), tf.constant(core)))
    reference = tile_starts(length, core)
    assert starts.tolist() == reference
    # Which tile writes each pixel last in tiled_predict's loop, versus the kept ranges.
    owner = np.full(length, -1)
    for i, s in enumerate(reference):
        owner[s:s + core] = i
    expected = [int(np.count_nonzero(owner == i)) for i in range(len(reference))]
    assert kept.tolist() == expected and kept.sum() == length


@pytest.mark.slow  # a trace per image size
@pytest.mark.parametrize("padding,max_tile,tile_size", [("same", 64, None), ("same", 1024, 48),
                                                        ("valid", 96, None)])
def test_in_graph_tiling_is_tiled_predict(padding, max_tile, tile_size):
    spec = UNetSpec(padding=padding, base_filters=4, depth=2, dropout=0.0, batch_norm=True)
    model = build_unet(spec)
    module = serving.UNetServingModule(model, spec, None, np.uint8, tile_size=tile_size, max_tile_size=max_tile)
    rng = np.random.default_rng(1)
    for hw in [(1, 5), SMALL, LARGE, (33, 200)]:
        images = rng.integers(0, 256, (2, *hw, 1), dtype=np.uint8)
        expected = np.stack(predict_images(keras_predictor(model), spec, [normalize_image(im) for im in images],
                                           tile_size=tile_size, max_tile_size=max_tile))
        out = module.serve(tf.constant(images))
        np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)
        np.testing.assert_array_equal(out["labels"].numpy(), expected.argmax(-1))
        floats = module.serve(tf.constant(normalize_image(images)))["probabilities"].numpy()
        np.testing.assert_allclose(floats, expected, atol=1e-5)


def test_per_image_normalization_runs_in_the_graph():
    """A run normalized per image serves raw images of any scale exactly as predict normalizes them."""
    spec = UNetSpec(padding="same", base_filters=4, depth=2, dropout=0.0)
    model = build_unet(spec)
    rng = np.random.default_rng(4)
    for dtype, top in ((np.uint16, 3000), (np.float32, 57.0)):
        module = serving.UNetServingModule(model, spec, None, dtype, normalization="per_image")
        images = (rng.random((1, 40, 52, 1)) * top).astype(dtype)
        expected = predict_images(keras_predictor(model), spec, [normalize_image(images[0], "per_image")])[0]
        out = module.serve(tf.constant(images))["probabilities"].numpy()[0]
        np.testing.assert_allclose(out, expected, atol=1e-5)


def test_float_images_outside_0_1_are_refused():
    spec = UNetSpec(padding="same", base_filters=4, depth=2, dropout=0.0)
    module = serving.UNetServingModule(build_unet(spec), spec)
    for bad in (255.0, -0.5, np.nan):
        with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(serving.FLOAT_RANGE_MESSAGE)):
            module.serve(tf.constant(np.full((1, 8, 8, 1), bad, np.float32)))


def test_a_tile_plan_with_no_output_fails_when_the_module_is_built():
    spec = UNetSpec(padding="same", base_filters=4, depth=2, dropout=0.0)
    with pytest.raises(UNetError, match="--tile_size=32"):
        serving.UNetServingModule(build_unet(spec), spec, context=16, tile_size=32)


def test_training_images_load_without_masks(tmp_path):
    (tmp_path / "images").mkdir()
    for i, size in enumerate([(10, 12), (9, 7)]):
        Image.fromarray(np.full(size, 40 * i, np.uint8)).save(tmp_path / "images" / f"s{10 - 8 * i}.png")
    data = load_training_images(tmp_path)
    assert data.names == ["s2.png", "s10.png"] and data.masks is None  # natural order, no masks read
    assert [im.shape for im in data.images] == [(9, 7, 1), (10, 12, 1)]
    tifffile.imwrite(tmp_path / "train-volume.tif", np.zeros((3, 8, 8), np.uint8), photometric="minisblack")
    # ISBI without train-labels.tif: its volume wins over images/, as in load_training_data.
    assert load_training_images(tmp_path).names == [f"train-volume.tif[{i}]" for i in range(3)]
    assert load_training_images(tmp_path / "images") is None


# ----------------------------------------------------------------------------- slow: the CLI end to end
def write_folder_dataset(root: pathlib.Path) -> pathlib.Path:
    """images/ + masks/ of four 64 x 64 synthetic EM slices (generated here)."""
    images, labels = make_em_stack(num_slices=4, size=64, seed=3)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image).save(root / "images" / f"slice{i}.png")
        Image.fromarray(label).save(root / "masks" / f"slice{i}.png")
    return root


def write_inputs(folder: pathlib.Path) -> dict[str, np.ndarray]:
    """A small uint8 PNG, a larger non-square uint8 PNG and the same as a float32 TIFF in [0, 1]."""
    stack, _ = make_em_stack(num_slices=1, size=160, seed=11)
    small, large = stack[0, 5:5 + SMALL[0], 9:9 + SMALL[1]], stack[0, :LARGE[0], 40:40 + LARGE[1]]
    folder.mkdir()
    Image.fromarray(small).save(folder / "small.png")
    Image.fromarray(large).save(folder / "large.png")
    large_float = large.astype(np.float32) / 255.0
    tifffile.imwrite(folder / "large_float.tif", large_float, photometric="minisblack")
    return {"small": small, "large": large, "large_float": large_float}


def docs_snippet() -> str:
    """The five lines of docs/deployment.md that use the SavedModel."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    (snippet,) = [b for b in blocks if "tf.saved_model.load" in b]
    assert len(snippet.strip().splitlines()) == 5
    return snippet


# Runs with `python -I` in another folder: no project code on sys.path, only TensorFlow imported.
# The docs' five lines load the model and serve the PNGs; float input goes through serving_float32
# and the dtype-polymorphic `serve`. Tensors travel as serialized TensorProtos (tf.io only).
TF_ONLY_SCRIPT = '''
import importlib.util, pathlib, sys
import tensorflow as tf
folder = pathlib.Path(sys.argv[1])
for name in ("small", "large"):
    SNIPPET
    assert image.dtype == tf.uint8 and tf.reduce_all(tf.cast(labels, tf.int64) == tf.argmax(probabilities, -1))
    tf.io.write_file(str(folder / (name + ".out")), tf.io.serialize_tensor(probabilities))
x = tf.io.parse_tensor(tf.io.read_file(str(folder / "large_float.in")), tf.float32)[None]
signature = model.signatures["serving_float32"](images=x)["probabilities"]
tf.debugging.assert_near(model.serve(x)["probabilities"], signature, atol=1e-6)
tf.io.write_file(str(folder / "large_float.out"), tf.io.serialize_tensor(signature[0]))
names = [n.decode() for n in model.class_names.numpy()]
project = sorted(m for m in sys.modules if m.split(".")[0] in ("main", "model", "runtime", "utils", "dllogger"))
importable = [m for m in ("main", "runtime") if importlib.util.find_spec(m) is not None]
print("CLASSES", ",".join(names), "PROJECT_MODULES", project, "IMPORTABLE", importable)
'''


def serve_without_project_code(saved_model: pathlib.Path, inputs: dict[str, np.ndarray],
                               workdir: pathlib.Path) -> tuple[dict[str, np.ndarray], str]:
    workdir.mkdir()
    snippet = docs_snippet().replace('"results/saved_model"', repr(str(saved_model)))
    snippet = snippet.replace('"slice.png"', 'str(folder / (name + ".png"))')
    script = TF_ONLY_SCRIPT.replace("    SNIPPET\n", "".join(f"    {line}\n" for line in snippet.strip().splitlines()))
    for name in ("small", "large"):
        Image.fromarray(inputs[name]).save(workdir / f"{name}.png")
    float_image = tf.constant(inputs["large_float"][..., None])
    tf.io.write_file(str(workdir / "large_float.in"), tf.io.serialize_tensor(float_image))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run([sys.executable, "-I", "-c", script, str(workdir)], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = {name: tf.io.parse_tensor(tf.io.read_file(str(workdir / f"{name}.out")), tf.float32).numpy()
               for name in inputs}
    return outputs, proc.stdout


_RUNS: dict[str, dict] = {}


def train_tiny(padding: str, tmp_path_factory) -> dict:
    """A tiny U-Net trained 2 steps on a generated images/ + masks/ folder (once per padding)."""
    if padding not in _RUNS:
        root = tmp_path_factory.mktemp(f"saved_model_{padding}")
        data_dir = write_folder_dataset(root / "data")
        flags = [*TINY[padding], *COMMON, "--data_dir", str(data_dir), "--model_dir", str(root / "run")]
        assert main.main(["--exec_mode", "train", *flags]) == 0
        _RUNS[padding] = {"root": root, "flags": flags, "run": root / "run", "data_dir": data_dir}
    return _RUNS[padding]


@pytest.fixture(scope="module", params=["same", "valid"])
def trained(request, tmp_path_factory):
    return train_tiny(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def trained_same(tmp_path_factory):
    return train_tiny("same", tmp_path_factory)


@pytest.mark.slow
def test_saved_model_alone_gives_predicts_probabilities(trained):
    run = trained["run"]
    saved = run / "saved_model"
    assert (saved / "saved_model.pb").is_file()
    assert not [p for p in run.iterdir() if p.name.startswith(".saved_model")]  # no staging left behind
    record = [json.loads(line[len("DLLL "):]) for line in (run / "log.json").read_text().splitlines()
              if line.startswith("DLLL ") and '"SAVED_MODEL"' in line]
    assert record and record[-1]["data"]["size_bytes"] > 0 and record[-1]["data"]["checkpoint"] == "last"

    inputs = write_inputs(trained["root"] / "inputs")
    assert main.main(["--exec_mode", "predict", "--input", str(trained["root"] / "inputs"),  # its default weights
                      *trained["flags"]]) == 0
    served, stdout = serve_without_project_code(saved, inputs, trained["root"] / "elsewhere")
    # The project's modules were neither imported nor importable in that process.
    assert "CLASSES background,foreground PROJECT_MODULES [] IMPORTABLE []" in stdout
    for name, image in inputs.items():
        predicted = tifffile.imread(run / "predictions" / "001" / f"{name}-probabilities.tif")  # class 1 of 2
        assert served[name].shape == (*image.shape[:2], 2) and predicted.shape == image.shape[:2]
        np.testing.assert_allclose(served[name].sum(-1), 1.0, atol=1e-5)
        diff = float(np.abs(served[name][..., 1] - predicted).max())
        print(f"{trained['run'].parent.name} {name} {image.shape}: max |p_savedmodel - p_predict| = {diff:.2e}")
        assert diff <= 1e-3


@pytest.mark.slow
def test_no_saved_model_flag_skips_it(tmp_path):
    data_dir = write_folder_dataset(tmp_path / "data")
    flags = [*TINY["same"], *COMMON, "--data_dir", str(data_dir), "--model_dir", str(tmp_path / "run")]
    assert main.main(["--exec_mode", "train", "--no-saved_model", *flags]) == 0
    assert (tmp_path / "run" / "checkpoints" / "last.npz").is_file()
    assert not (tmp_path / "run" / "saved_model").exists()


@pytest.mark.slow
@pytest.mark.parametrize("export_format,precision", [("savedmodel", "fp32"), ("tflite", "int8")])
def test_export_needs_images_only(trained_same, export_format, precision):
    trained = trained_same
    unlabelled = trained["root"] / f"unlabelled_{export_format}"
    shutil.copytree(trained["data_dir"] / "images", unlabelled / "images")  # masks/ left behind
    run = trained["root"] / f"export_{export_format}"
    shutil.copytree(trained["run"], run, ignore=shutil.ignore_patterns("export", "predictions"))
    flags = [*trained["flags"], "--data_dir", str(unlabelled), "--model_dir", str(run)]
    assert main.main(["--exec_mode", "export", "--export_format", export_format,
                      "--export_precision", precision, *flags]) == 0
    name = "savedmodel" if export_format == "savedmodel" else f"model_{precision}.tflite"
    entry = json.loads((run / "export" / "export.json").read_text())["artifacts"][name]
    # The run's fold split of its 4 training images: calibrated on 2, checked on the held-out 2.
    assert entry["parity_images"] == ["slice2.png", "slice3.png"]
    assert entry["calibration_source"] == str(unlabelled / "images")
    checks = {"tiled", "serving"} if export_format == "savedmodel" else {"tiled"}
    assert set(entry["parity"]) == checks
    for report in entry["parity"].values():
        assert report["label_agreement"] >= report["threshold"]


@pytest.mark.slow
def test_export_checks_parity_on_input_images(trained_same):
    # --input images of three sizes and two dtypes (the float TIFF loads as uint16): calibration
    # and parity on all of them, the serving signature of each image's dtype checked.
    trained = trained_same
    folder = trained["root"] / "export_inputs"
    write_inputs(folder)
    run = trained["root"] / "export_input"
    shutil.copytree(trained["run"], run, ignore=shutil.ignore_patterns("export", "predictions"))
    flags = [*trained["flags"], "--model_dir", str(run), "--input", str(folder)]
    assert main.main(["--exec_mode", "export", "--export_format", "savedmodel", *flags]) == 0
    entry = json.loads((run / "export" / "export.json").read_text())["artifacts"]["savedmodel"]
    assert entry["parity_images"] == ["large.png", "large_float.tif", "small.png"]
    assert entry["parity"]["serving"]["pixels"] == 2 * LARGE[0] * LARGE[1] + SMALL[0] * SMALL[1]
    assert entry["parity"]["serving"]["max_abs_prob_diff"] < 1e-4


@pytest.mark.slow
def test_export_without_any_images_names_what_it_looked_for(trained_same, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    flags = [*trained_same["flags"], "--data_dir", str(tmp_path / "empty")]
    assert main.main(["--exec_mode", "export", "--export_format", "savedmodel", *flags]) == 2
    err = capsys.readouterr().err
    assert "no images to calibrate" in err and "--input" in err and "Traceback" not in err
