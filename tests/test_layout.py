"""The tree's import rules (tests/layout_rules.py) hold for the project, and catch each kind of break."""
import pathlib
import textwrap

import pytest

from tests.layout_rules import violations

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_project_tree_follows_the_import_rules():
    assert violations(REPO) == []


def write_tree(root: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


CLEAN = {
    "main.py": "import runtime.modes\n",
    "runtime/__init__.py": "",
    "runtime/modes.py": "from utils.training import loop\nfrom utils.data import pipeline\n",
    "utils/__init__.py": "",
    "utils/errors.py": "",
    "utils/data/__init__.py": "",
    "utils/data/pipeline.py": "from utils.errors import UNetError\n",
    "utils/training/__init__.py": "",
    "utils/training/loop.py": "from utils.data.pipeline import x\nfrom model import unet\n",
    "model/__init__.py": "import utils\n",
    "model/unet.py": "from utils.errors import UNetError\n",
    "dllogger/__init__.py": "from utils.errors import UNetError\n",
}


def test_clean_fixture_tree_passes(tmp_path):
    assert violations(write_tree(tmp_path, CLEAN)) == []


@pytest.mark.parametrize("change, expected", [
    ({"model/unet.py": "from model import blocks\n", "model/blocks.py": "def f():\n    import model.unet\n"},
     "module cycle: model.blocks <-> model.unet"),
    ({"utils/data/pipeline.py": "from utils.training.loop import train\n"},
     "upward import: utils.data.pipeline imports utils.training.loop"),
    ({"utils/training/loop.py": "from runtime.modes import run\n"},
     "upward import: utils.training.loop imports runtime.modes"),
    ({"model/unet.py": "from utils.data import pipeline\n"},
     "upward import: model.unet imports utils.data.pipeline"),
    ({"dllogger/__init__.py": "import runtime\n"}, "upward import: dllogger imports runtime"),
    ({"model/unet.py": "x = 1\n" * 601}, "file too long: model/unet.py has 601 lines (max 600)"),
])
def test_each_broken_rule_is_reported(tmp_path, change, expected):
    found = violations(write_tree(tmp_path, {**CLEAN, **change}))
    assert expected in found, found


def test_package_cycle_without_a_module_cycle_is_reported(tmp_path):
    tree = {**CLEAN, "utils/data/a.py": "from utils.training import b\n",
            "utils/training/b.py": "x = 1\n", "utils/training/c.py": "from utils.data import d\n",
            "utils/data/d.py": "x = 1\n"}
    found = violations(write_tree(tmp_path, tree))
    assert "package cycle: utils.data <-> utils.training" in found, found
    assert not any(line.startswith("module cycle") for line in found)


def test_ruff_finds_nothing():
    """The linter configured in pyproject.toml passes on the whole tree."""
    import shutil
    import subprocess
    import sys

    ruff = pathlib.Path(sys.executable).with_name("ruff")
    command = [str(ruff)] if ruff.exists() else [shutil.which("ruff") or "ruff"]
    result = subprocess.run([*command, "check", "--output-format", "concise", str(REPO)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]
