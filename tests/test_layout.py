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


U = "unet_medical"
CLEAN = {
    "main.py": f"import {U}.cli.modes\n",
    f"{U}/__init__.py": "",
    f"{U}/cli/__init__.py": "",
    f"{U}/cli/modes.py": f"from {U}.training import loop\nfrom {U}.data import pipeline\n",
    f"{U}/base/__init__.py": "",
    f"{U}/base/errors.py": "",
    f"{U}/data/__init__.py": "",
    f"{U}/data/pipeline.py": f"from {U}.base.errors import UNetError\n",
    f"{U}/training/__init__.py": "",
    f"{U}/training/loop.py": f"from {U}.data.pipeline import x\nfrom {U}.model import unet\n",
    f"{U}/model/__init__.py": f"import {U}\n",
    f"{U}/model/unet.py": f"from {U}.base.errors import UNetError\n",
    f"{U}/base/runlog/__init__.py": f"from {U}.base.errors import UNetError\n",
}


def test_clean_fixture_tree_passes(tmp_path):
    assert violations(write_tree(tmp_path, CLEAN)) == []


@pytest.mark.parametrize("change, expected", [
    ({f"{U}/model/unet.py": f"from {U}.model import blocks\n", f"{U}/model/blocks.py": f"def f():\n    import {U}.model.unet\n"},
     f"module cycle: {U}.model.blocks <-> {U}.model.unet"),
    ({f"{U}/data/pipeline.py": f"from {U}.training.loop import train\n"},
     f"upward import: {U}.data.pipeline imports {U}.training.loop"),
    ({f"{U}/training/loop.py": f"from {U}.cli.modes import run\n"},
     f"upward import: {U}.training.loop imports {U}.cli.modes"),
    ({f"{U}/model/unet.py": f"from {U}.data import pipeline\n"},
     f"upward import: {U}.model.unet imports {U}.data.pipeline"),
    ({f"{U}/base/runlog/__init__.py": f"import {U}.cli\n"}, f"upward import: {U}.base.runlog imports {U}.cli"),
    ({f"{U}/base/errors.py": f"from {U}.model import unet\n"}, f"upward import: {U}.base.errors imports {U}.model.unet"),
    ({f"{U}/model/unet.py": "x = 1\n" * 601}, f"file too long: {U}/model/unet.py has 601 lines (max 600)"),
])
def test_each_broken_rule_is_reported(tmp_path, change, expected):
    found = violations(write_tree(tmp_path, {**CLEAN, **change}))
    assert expected in found, found


def test_package_cycle_without_a_module_cycle_is_reported(tmp_path):
    tree = {**CLEAN, f"{U}/data/a.py": f"from {U}.training import b\n",
            f"{U}/training/b.py": "x = 1\n", f"{U}/training/c.py": f"from {U}.data import d\n",
            f"{U}/data/d.py": "x = 1\n"}
    found = violations(write_tree(tmp_path, tree))
    assert f"package cycle: {U}.data <-> {U}.training" in found, found
    assert not any(line.startswith("module cycle") for line in found)


def test_the_package_tree_shows_the_layers():
    """The folders a newcomer sees are the layers: base, model, the five stages and the command line."""
    package = REPO / U
    folders = {p.name for p in package.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert {"base", "model", "data", "training", "inference", "evaluation", "export", "cli"} <= folders, folders
    loose = sorted(p.name for p in package.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert loose == [], f"modules outside a layer: {loose}"


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
