"""The installable package: the wheel holds every module and the console script, the commands map onto
exec modes, and TensorFlow's C++ start-up lines stay hidden unless --verbose."""
import os
import pathlib
import re
import subprocess
import sys
import zipfile

import pytest

from unet_medical.base.errors import UNetError
from unet_medical.cli.main import MODE_COMMANDS, dispatch, exec_mode_argv

REPO = pathlib.Path(__file__).resolve().parents[1]
ABSL_LINE = re.compile(r"^[IWEF]\d{4} ", re.M)  # absl's C++ log format: I0000 00:00:... file.cc:NN]


def test_each_command_is_an_exec_mode():
    assert exec_mode_argv("predict", ["--model_dir", "r"]) == ["--exec_mode", "predict", "--model_dir", "r"]
    assert exec_mode_argv("train", []) == ["--exec_mode", "train_and_evaluate"]
    # train may narrow itself to another training mode; the explicit flag is kept as typed
    assert exec_mode_argv("train", ["--exec_mode", "train_and_predict"]) == ["--exec_mode", "train_and_predict"]
    assert set(MODE_COMMANDS.values()) <= {"train_and_evaluate", "evaluate", "predict", "export", "compress",
                                           "benchmark", "visualize"}


@pytest.mark.parametrize("words, message", [
    (["predict", "--exec_mode", "train"], "--exec_mode train contradicts the command 'predict'"),
    (["train", "--exec_mode=evaluate"], "--exec_mode evaluate contradicts the command 'train'"),
    (["trian"], "unknown command 'trian'"),
])
def test_a_wrong_command_is_one_line(words, message):
    with pytest.raises(UNetError, match=re.escape(message)):
        dispatch(words)()


def run_module(args, cwd, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run([sys.executable, "-m", "unet_medical", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.slow
def test_tensorflow_start_up_lines_are_hidden_unless_verbose(tmp_path):
    """A tiny training run prints DLL lines only; --verbose brings back TF's C++ lines (cuInit, oneDNN)."""
    subprocess.run([sys.executable, str(REPO / "download_dataset.py"), "--synthetic", "--data_dir",
                    str(tmp_path / "data"), "--size", "64"], check=True, capture_output=True)
    common = ["train", "--data_dir", str(tmp_path / "data"), "--padding", "same", "--base_filters", "4",
              "--depth", "2", "--dropout", "0", "--crop_size", "32", "--batch_size", "2", "--max_steps", "2",
              "--checkpoint_every", "2", "--no-saved_model"]
    env = {"PYTHONPATH": str(REPO)}
    quiet = run_module([*common, "--model_dir", str(tmp_path / "quiet")], tmp_path, env)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert not ABSL_LINE.search(quiet.stderr), quiet.stderr[:2000]
    assert "cuInit" not in quiet.stderr and "oneDNN custom operations" not in quiet.stderr
    loud = run_module([*common, "--model_dir", str(tmp_path / "loud"), "--verbose"], tmp_path, env)
    assert loud.returncode == 0, loud.stderr[-2000:]
    assert ABSL_LINE.search(loud.stderr), "--verbose showed no TensorFlow C++ line"


@pytest.mark.slow
def test_wheel_holds_every_module_and_the_console_script(tmp_path):
    """`pip wheel .` packs every module of the tree and the unet-medical entry point; installed on its own
    (--target, outside the checkout), `python -m unet_medical` runs from it."""
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = tmp_path.glob("unet_medical_tf2-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    tree = {p.relative_to(REPO).as_posix() for p in (REPO / "unet_medical").rglob("*.py")}
    assert tree - names == set(), f"modules missing from the wheel: {sorted(tree - names)}"
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry).decode()
    assert "unet-medical = unet_medical.cli.main:main" in text, text
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([sys.executable, "-c", "import unet_medical; print(unet_medical.__file__)"], cwd=elsewhere,
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(target)})
    assert where.stdout.strip().startswith(str(target)), where.stdout + where.stderr
    helped = run_module(["train", "--help"], elsewhere, {"PYTHONPATH": str(target)})
    assert helped.returncode == 0 and "--data_dir" in helped.stdout, helped.stderr[-2000:]
