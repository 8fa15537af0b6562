"""Plugins from outside the package: --plugins modules (and the entry-point group) register a loss and an
export format that the command line then accepts, trains with, exports to and checks for parity."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from unet_medical.base.errors import UNetError
from unet_medical.cli import plugins
from unet_medical.cli.config import parse_config
from unet_medical.inference.artifact_formats import EXPORT_FORMATS
from unet_medical.training.loss_registry import LOSSES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A loss (plain mean absolute error on the softmax) and an export format (the weights as .npz, loaded
# back into the U-Net that export.json's spec describes).
TOY_PLUGIN = textwrap.dedent('''
    import numpy as np

    from unet_medical.inference.artifact_formats import EXPORT_FORMATS, ExportFormat
    from unet_medical.training.loss_registry import LOSSES


    @LOSSES.register("toy_mae")
    def toy_mae(logits, labels, num_classes, **options):
        import tensorflow as tf

        probs = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
        return tf.reduce_mean(tf.abs(probs - tf.one_hot(tf.cast(labels, tf.int32), num_classes)))


    def write_toy(request):
        weights = request.model.get_weights()
        np.savez(request.path, *weights)
        return {"toy_arrays": len(weights)}


    def load_toy(path, metadata):
        from unet_medical.inference.tiling import keras_predictor
        from unet_medical.model.unet import UNetSpec, build_unet

        model = build_unet(UNetSpec(**metadata["spec"]))
        with np.load(path) as arrays:
            model.set_weights([arrays[f"arr_{i}"] for i in range(len(arrays.files))])
        return keras_predictor(model)


    EXPORT_FORMATS.register("toy", ExportFormat("toy", ("fp32",), lambda precision: "model_toy.npz",
                                                write=write_toy, load=load_toy))
''')


@pytest.fixture
def toy_module(tmp_path, monkeypatch):
    """A plugin module `toyfast` on sys.path registering loss 'toy_fast'; unregistered afterwards."""
    (tmp_path / "toyfast.py").write_text(
        "from unet_medical.training.loss_registry import LOSSES\n"
        "LOSSES.register('toy_fast', lambda logits, labels, num_classes, **options: 0.0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "toyfast"
    LOSSES.unregister("toy_fast")
    plugins._loaded.discard("toyfast")
    sys.modules.pop("toyfast", None)


def test_plugin_names_become_valid_choices(toy_module, tmp_path):
    with pytest.raises(UNetError, match=r"^--loss='toy_fast': expected one of ce_dice, ce_dice_cldice$"):
        _validate_loss("toy_fast", tmp_path)  # before the plugin is loaded the name is unknown
    cfg = parse_config(["--exec_mode", "train", "--model_dir", str(tmp_path / "run"), "--plugins", toy_module,
                        "--loss", "toy_fast"])
    assert cfg.loss == "toy_fast" and cfg.plugins == toy_module
    assert LOSSES.names() == ("ce_dice", "ce_dice_cldice", "toy_fast") and LOSSES.get("toy_fast")(None, None, 2) == 0.0
    assert plugins.load_plugins(toy_module) == []  # a second load imports nothing again


def _validate_loss(name, tmp_path):
    from unet_medical.cli.config import Config

    Config(exec_mode="train", model_dir=str(tmp_path / "a"), loss=name)


def test_unknown_names_and_missing_modules_are_one_line_errors(tmp_path):
    with pytest.raises(UNetError) as err:
        parse_config(["--loss", "nope"])
    assert "\n" not in str(err.value) and "--loss" in str(err.value) and "ce_dice" in str(err.value)
    with pytest.raises(UNetError) as err:
        LOSSES.get("nope")
    assert str(err.value) == "--loss: unknown loss 'nope' (choices: ce_dice, ce_dice_cldice)"
    with pytest.raises(UNetError, match=r"--export_format: unknown export format 'nope' \(choices: savedmodel, "):
        EXPORT_FORMATS.get("nope")
    with pytest.raises(UNetError, match="--plugins: cannot import plugin module 'no_such_plugin_mod'"):
        parse_config(["--plugins", "no_such_plugin_mod"])


def test_entry_point_plugins_load_once(monkeypatch):
    calls = []

    class Point:
        name, value = "toy", "toy_entry:register"

        def load(self):
            return lambda: calls.append("registered")

    monkeypatch.setattr(plugins.importlib.metadata, "entry_points",
                        lambda group: [Point()] if group == plugins.ENTRY_POINT_GROUP else [])
    try:
        assert plugins.load_entry_points() == ["toy"] and plugins.load_entry_points() == []
    finally:
        plugins._loaded.discard("entry point toy = toy_entry:register")
    assert calls == ["registered"]


def _run(args, env, cwd):
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_toy_plugin_trains_and_exports_end_to_end(tmp_path):
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    (plugin_dir / "toyplugin.py").write_text(TOY_PLUGIN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, str(plugin_dir)])}
    data, run = tmp_path / "data", tmp_path / "run"
    _run(["download_dataset.py", "--synthetic", "--data_dir", str(data), "--size", "64"], env, REPO)
    tiny = ["--data_dir", str(data), "--model_dir", str(run), "--padding", "same", "--base_filters", "4",
            "--depth", "2", "--crop_size", "32", "--tile_size", "64", "--no-augment"]
    _run(["-m", "unet_medical", "train", "--plugins", "toyplugin", "--loss", "toy_mae", "--max_steps", "3",
          "--log_every", "1", *tiny], env, REPO)
    assert "toy_mae" in (run / "config.yaml").read_text()
    _run(["-m", "unet_medical", "export", "--plugins", "toyplugin", "--export_format", "toy", *tiny], env, REPO)
    toy = run / "export" / "model_toy.npz"
    assert toy.is_file()
    entry = json.loads((run / "export" / "export.json").read_text())["artifacts"]["model_toy.npz"]
    assert entry["format"] == "toy" and entry["toy_arrays"] > 0
    # Parity computed by the export: the toy loader's predictions against the Keras model's, same images.
    tiled = entry["parity"]["tiled"]
    assert tiled["label_agreement"] == 1.0 and tiled["max_abs_prob_diff"] < 1e-5
