"""The import rules of the source tree, checked by parsing every module's imports (ast), not by importing.

Layers, top to bottom (a module may import its own layer's earlier stages and anything below):
    entry points        main.py, download_dataset.py (NVIDIA-compatible scripts at the repository root)
    unet_medical.cli    the command line: flags, exec modes, the run report
    stages              unet_medical.data -> .training -> .inference -> .evaluation -> .export
    unet_medical.model  the network and its transforms
    unet_medical.base   errors, fileio, artifacts, precision, cpu, timing, progress, registry, runlog
    unet_medical        the package's __init__ (environment TensorFlow reads at import): the very bottom
"""
from __future__ import annotations

import ast
import pathlib
from collections import defaultdict

SKIP_DIRS = {"tests", "benchmarks", "docs", "examples", "scripts", "results", "data", "build"}
PACKAGE = "unet_medical"
STAGES = tuple(f"{PACKAGE}.{s}" for s in ("data", "training", "inference", "evaluation", "export"))
MAX_LINES = 600


def modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """Dotted module name -> file, for every .py file outside tests/benchmarks/docs/... and hidden dirs."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or rel.parts[0] in SKIP_DIRS:
            continue
        name = ".".join(rel.with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """Project modules that `name` imports anywhere in its body (lazy imports count too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name and not name.startswith(candidate + "."):
                targets.add(candidate)
    return targets


def layer(name: str) -> tuple[int, int]:
    """(layer, stage index) of a module: larger layers sit higher."""
    def within(package: str) -> bool:
        return name == package or name.startswith(package + ".")

    if not within(PACKAGE) or name == f"{PACKAGE}.__main__":
        return 4, 0  # main.py, download_dataset.py, `python -m unet_medical`: entry points at the top
    if within(f"{PACKAGE}.cli"):
        return 3, 0
    for index, stage in enumerate(STAGES):
        if within(stage):
            return 2, index
    if within(f"{PACKAGE}.model"):
        return 1, 0
    return 0, 0  # unet_medical.base.*, unet_medical/__init__


def package_of(name: str, is_package: bool) -> str:
    """The package a module counts in for package cycles: its folder, at most two levels below the top
    (unet_medical.data, unet_medical.base.runlog, ...; a script at the top counts as itself)."""
    parts = name.split(".") if is_package else name.split(".")[:-1] or [name]
    return ".".join(parts[:3])


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm; components with more than one node (or a self-loop) are cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def violations(root: str | pathlib.Path) -> list[str]:
    """Every broken rule under `root`, one line each; empty when the tree is clean."""
    root = pathlib.Path(root)
    found = modules(root)
    graph = {name: imports(name, path, set(found)) for name, path in found.items()}
    problems = [f"module cycle: {' <-> '.join(c)}" for c in strongly_connected(graph)]
    packages: dict[str, set[str]] = defaultdict(set)
    def folder(module: str) -> str:
        return package_of(module, found[module].name == "__init__.py")

    for name, targets in graph.items():
        for target in targets:
            if folder(name) != folder(target):
                packages[folder(name)].add(folder(target))
    problems += [f"package cycle: {' <-> '.join(c)}" for c in strongly_connected(packages)]
    for name, targets in sorted(graph.items()):
        for target in sorted(targets):
            (own, own_stage), (their, their_stage) = layer(name), layer(target)
            upward = their > own or (own == their == 2 and their_stage > own_stage)
            if upward:
                problems.append(f"upward import: {name} imports {target}")
    for name, path in sorted(found.items()):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES:
            problems.append(f"file too long: {path.relative_to(root)} has {lines} lines (max {MAX_LINES})")
    return problems
