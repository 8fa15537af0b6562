"""benchmarks/dicom_syntaxes.py on a tiny series: every syntax reads back to the same voxels (the script
asserts it) and gets its timing line."""
from __future__ import annotations

import pathlib
import subprocess
import sys

from tests.dicom_fixtures import COMPRESSED_SYNTAXES

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "dicom_syntaxes.py"


def test_each_syntax_loads_and_is_timed():
    result = subprocess.run([sys.executable, str(SCRIPT), "--shape", "3", "16", "20", "--repeats", "1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("CPU: ") and "(3, 16, 20) int16" in lines[1]
    timed = [line.split("  ")[0].strip() for line in lines[2:]]
    assert timed == ["uncompressed", *COMPRESSED_SYNTAXES]
    assert all(" MB  median " in line for line in lines[2:])
