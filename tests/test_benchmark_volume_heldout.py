"""benchmarks/volume_heldout.sh without training: its usage line, and an OUT_DIR that already holds a run or
predictions is refused before anything runs (a held-out record is never overwritten)."""
from __future__ import annotations

import pathlib
import subprocess

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "volume_heldout.sh"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_too_few_arguments_print_the_usage_line():
    result = run("TRAIN", "IMAGES", "LABELS")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().startswith("usage: bash benchmarks/volume_heldout.sh TRAIN_DIR TEST_IMAGES_DIR")


def test_an_out_dir_holding_a_run_or_predictions_is_refused_untouched(tmp_path):
    for held in ("run", "predictions"):
        out = tmp_path / held
        (out / held).mkdir(parents=True)
        (out / held / "keep.txt").write_text("record")
        result = run(str(tmp_path / "train"), str(tmp_path / "images"), str(tmp_path / "labels"), str(out))
        assert result.returncode == 2
        assert result.stderr.strip() == f"error: {out} already holds run/ or predictions/; give an empty or new OUT_DIR"
        assert sorted(p.name for p in out.rglob("*")) == sorted([held, "keep.txt"])  # nothing written
