"""unet_medical.base.runlog: JSON lines round-trip, rank gating, stdout format, TensorBoard scalars read back."""
import json
import math
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from unet_medical.base import runlog
from unet_medical.base.runlog import JSONStreamBackend, Logger, StdOutBackend, TensorBoardBackend, Verbosity
from unet_medical.base.errors import UNetError

REPO = pathlib.Path(__file__).resolve().parents[1]


def _read_json_log(path):
    lines = path.read_text().splitlines()
    assert all(line.startswith(runlog.JSON_PREFIX) for line in lines)
    return [json.loads(line[len(runlog.JSON_PREFIX):]) for line in lines]


@pytest.fixture(autouse=True)
def _reset_global_logger():
    yield
    runlog.init([])


def test_json_lines_round_trip(tmp_path):
    path = tmp_path / "run" / "log.json"  # parent directory does not exist yet
    with Logger([JSONStreamBackend(path)]) as logger:
        logger.metadata("loss", {"unit": None, "format": ":.4f"})
        logger.log("PARAMETER", {"batch_size": np.int64(8), "lr": 1e-4, "model_dir": tmp_path})
        logger.log((np.int64(2), 10), {"loss": np.float32(0.5), "dice": np.array(0.875),
                                       "per_class": np.array([0.25, 0.75]), "nan": float("nan")})
        logger.log(42, {"done": True})
        logger.log("FINAL", {"v_rand": 0.9})
    records = _read_json_log(path)
    assert [r["type"] for r in records] == ["METADATA", "LOG", "LOG", "LOG", "LOG"]
    assert [r["step"] for r in records] == [None, "PARAMETER", [2, 10], 42, "FINAL"]
    for r in records:
        assert set(r) == {"timestamp", "elapsedtime", "datetime", "type", "step", "data"}
        assert r["elapsedtime"] >= 0
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}", r["datetime"])
    assert records[0]["data"] == {"loss": {"unit": None, "format": ":.4f"}}
    assert records[1]["data"] == {"batch_size": 8, "lr": 1e-4, "model_dir": str(tmp_path)}
    data = records[2]["data"]
    assert data["loss"] == 0.5 and data["dice"] == 0.875 and data["per_class"] == [0.25, 0.75]
    assert math.isnan(data["nan"])
    assert records[3]["data"] == {"done": True}
    assert [r["timestamp"] for r in records] == sorted(r["timestamp"] for r in records)


def test_json_append_and_overwrite(tmp_path):
    path = tmp_path / "log.json"
    for _ in range(2):
        with Logger([JSONStreamBackend(path, append=True)]) as logger:
            logger.log(0, {"x": 1})
    assert len(_read_json_log(path)) == 2
    with Logger([JSONStreamBackend(path, append=False)]) as logger:
        logger.log(1, {"x": 2})
    assert [r["step"] for r in _read_json_log(path)] == [1]


def test_json_lines_are_on_disk_before_close(tmp_path):
    path = tmp_path / "log.json"
    logger = Logger([JSONStreamBackend(path)])
    logger.log(3, {"loss": 0.1})
    # A killed run never reaches close(): the line must already be readable.
    assert _read_json_log(path)[0]["data"] == {"loss": 0.1}
    logger.close()


def test_tf_scalars_serialize(tmp_path):
    import unet_medical  # noqa: F401
    import tensorflow as tf

    path = tmp_path / "log.json"
    with Logger([JSONStreamBackend(path)]) as logger:
        logger.log(1, {"loss": tf.constant(0.25), "step_count": tf.Variable(7, dtype=tf.int64)})
    assert _read_json_log(path)[0]["data"] == {"loss": 0.25, "step_count": 7}


def test_nonzero_rank_writes_nothing(tmp_path, capsys):
    json_path, tb_dir = tmp_path / "log.json", tmp_path / "tb"
    logger = Logger([StdOutBackend(), JSONStreamBackend(json_path, append=False),
                     TensorBoardBackend(tb_dir)], rank=1)
    assert not logger.enabled
    logger.metadata("loss", {"unit": None})
    logger.log(0, {"loss": 1.0})
    logger.flush()
    logger.close()
    assert capsys.readouterr().out == ""
    assert not json_path.exists() and not tb_dir.exists()


def test_verbosity_filters_per_backend(tmp_path, capsys):
    path = tmp_path / "log.json"
    with Logger([StdOutBackend(verbosity=Verbosity.DEFAULT),
                 JSONStreamBackend(path, verbosity=Verbosity.VERBOSE)]) as logger:
        logger.log(1, {"detail": 1}, verbosity=Verbosity.VERBOSE)
    assert capsys.readouterr().out == ""
    assert _read_json_log(path)[0]["data"] == {"detail": 1}


def test_stdout_format(capsys):
    with Logger([StdOutBackend(prefix="DLL")]) as logger:
        logger.metadata("throughput", {"unit": "img/s", "format": ":.2f"})
        logger.log((0, 20), {"loss": np.float64(0.123456789), "throughput": 12.3456,
                             "mode": "train"})
        logger.log("FINAL", {"v_rand": 0.9, "epochs": 3})
        logger.log(7, {"lr": 1e-4})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3  # metadata is not printed
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\S*"
    assert re.fullmatch(rf"DLL {stamp} - step \(0, 20\) \| loss: 0\.12346 \| "
                        rf"throughput: 12\.35 img/s \| mode: train", lines[0]), lines[0]
    assert re.fullmatch(rf"DLL {stamp} - FINAL \| v_rand: 0\.9 \| epochs: 3", lines[1]), lines[1]
    assert re.fullmatch(rf"DLL {stamp} - step 7 \| lr: 0\.0001", lines[2]), lines[2]


def test_tensorboard_scalars_read_back(tmp_path):
    import unet_medical  # noqa: F401
    import tensorflow as tf

    log_dir = tmp_path / "tb"
    with Logger([TensorBoardBackend(log_dir)]) as logger:
        logger.log("PARAMETER", {"lr": 0.1})               # string step: skipped
        logger.log((0, 1), {"loss": 9.0})                  # tuple step: skipped
        logger.log(3, {"loss": np.float32(0.5), "mode": "train", "ok": True})
        logger.log(4, {"loss": tf.constant(0.25), "dice": 0.75})
    scalars = []
    for event_file in sorted(log_dir.iterdir()):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            for value in event.summary.value:
                scalars.append((event.step, value.tag, float(tf.make_ndarray(value.tensor))))
    assert sorted(scalars) == [(3, "loss", 0.5), (4, "dice", 0.75), (4, "loss", 0.25)]


def test_module_level_api_delegates_to_global_logger(tmp_path, capsys):
    path = tmp_path / "log.json"
    runlog.log(0, {"before_init": 1})  # no backends yet: a silent no-op
    logger = runlog.init([JSONStreamBackend(path)], rank=0)
    assert runlog.get_logger() is logger
    runlog.metadata("loss", {"unit": None})
    runlog.log(1, {"loss": 0.5})
    runlog.flush()
    runlog.close()
    runlog.log(2, {"loss": 0.4})  # after close: ignored
    records = _read_json_log(path)
    assert [r["type"] for r in records] == ["METADATA", "LOG"]
    assert records[1]["data"] == {"loss": 0.5}
    assert capsys.readouterr().out == ""


def test_bad_paths_fail_at_start_with_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(UNetError, match="JSON log file"):
        Logger([JSONStreamBackend(blocker / "log.json")])
    with pytest.raises(UNetError, match="TensorBoard log directory"):
        Logger([TensorBoardBackend(blocker / "tb")])


def test_bad_step_is_rejected(tmp_path):
    logger = Logger([JSONStreamBackend(tmp_path / "log.json")])
    with pytest.raises(TypeError, match="step"):
        logger.log(1.5, {"x": 1})
    logger.close()


def test_importing_dllogger_does_not_import_tensorflow():
    code = "import sys; from unet_medical.base import runlog; sys.exit('tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=str(REPO))
    assert result.returncode == 0


def test_tensorboard_named_steps_images_and_hparams(tmp_path):
    import unet_medical  # noqa: F401
    import tensorflow as tf
    from tensorboard.plugins.hparams import metadata as hparams_metadata

    log_dir = tmp_path / "tb"
    panel = np.zeros((1, 6, 9, 3), np.uint8)
    panel[0, :, 3:6] = 255
    with Logger([TensorBoardBackend(log_dir), JSONStreamBackend(tmp_path / "log.json")]) as logger:
        logger.log(("eval", 20), {"membrane_dice": 0.8, "tta": False})  # validation at training step 20
        logger.log(("eval", "last"), {"membrane_dice": 0.1})            # not an integer step: skipped
        logger.images(20, {"eval/panel": panel})
        logger.hparams({"learning_rate": 1e-4, "padding": "same", "augment": True, "ranks": [1, 2], "none": None})
    scalars, images, hparams, texts = [], [], {}, []
    for event_file in sorted(log_dir.iterdir()):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                if plugin == "scalars":
                    scalars.append((event.step, value.tag, float(tf.make_ndarray(value.tensor))))
                elif plugin == "images":
                    width, height, png = tf.make_ndarray(value.tensor)
                    images.append((event.step, value.tag, int(width), int(height), tf.io.decode_png(png).numpy()))
                elif plugin == hparams_metadata.PLUGIN_NAME:
                    info = hparams_metadata.parse_session_start_info_plugin_data(value.metadata.plugin_data.content)
                    hparams = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
                               for k, v in info.hparams.items()}
                elif plugin == "text":
                    texts.append(tf.make_ndarray(value.tensor).item().decode())
    assert scalars == [(20, "eval/membrane_dice", pytest.approx(0.8))]
    assert [(s, t, w, h) for s, t, w, h, _ in images] == [(20, "eval/panel", 9, 6)]
    np.testing.assert_array_equal(images[0][4], panel[0])
    assert hparams == {"learning_rate": pytest.approx(1e-4), "padding": "same", "augment": True, "ranks": "[1, 2]"}
    assert "| padding | same |" in texts[0]
    # Images and hyper-parameters stay out of the JSON log; the named-step record keeps its list step.
    assert [r["step"] for r in _read_json_log(tmp_path / "log.json")] == [["eval", 20], ["eval", "last"]]
