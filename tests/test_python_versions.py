"""Every pinned requirement resolves for each Python the package supports, against the package index.

`pip install --dry-run --only-binary=:all: --python-version X.Y` asks the index for wheels of exactly
these pins for that interpreter, without installing anything; a pin with no wheel for X.Y fails with
pip's own explanation, and the test names the version. Only 3.11 is installed on this machine: 3.12
and 3.13 are resolved, not run (README, "Pythons").
"""
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SUPPORTED = ("3.11", "3.12", "3.13")


def supported_range() -> tuple[str, str]:
    """requires-python's bounds from pyproject.toml, e.g. ('3.11', '3.14')."""
    text = (REPO / "pyproject.toml").read_text()
    match = re.search(r'requires-python = ">=(\d+\.\d+),<(\d+\.\d+)"', text)
    assert match, "pyproject.toml has no requires-python = \">=X.Y,<X.Z\""
    return match.group(1), match.group(2)


def test_requires_python_admits_exactly_the_supported_versions():
    low, high = supported_range()
    assert (low, high) == ("3.11", "3.14"), (low, high)


@pytest.mark.slow
@pytest.mark.parametrize("version", SUPPORTED)
def test_pinned_requirements_resolve(version, tmp_path):
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--only-binary=:all:", "--python-version", version, "--target", str(tmp_path / "target"),
               "-r", str(REPO / "requirements.txt"), "-r", str(REPO / "requirements-dev.txt")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    errors = "\n".join(line for line in result.stderr.splitlines() if not line.startswith("WARNING: Location"))
    assert result.returncode == 0, f"the pins do not resolve for Python {version}:\n{errors[-3000:]}"
