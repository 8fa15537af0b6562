"""Plugins: code outside the package that registers losses, metrics, export formats or quantization modes.

Two ways in, both before any flag is validated (so a plugin's names are valid choices of --loss,
--export_format, ...):
- installed distributions that declare an entry point in the group `unet_medical.plugins`
  (pyproject: `[project.entry-points."unet_medical.plugins"] toy = "toyplugin"`); the entry point may
  name a module (imported) or a callable (imported, then called once with no arguments);
- `--plugins mod1,mod2` (or `plugins:` in a --config YAML, or recorded in the run being evaluated or
  exported): modules imported by name from sys.path / PYTHONPATH.

A plugin module registers at import time, e.g.
    from unet_medical.training.loss_registry import LOSSES
    @LOSSES.register("toy_mae")
    def toy_mae(logits, labels, num_classes, **options): ...
"""
from __future__ import annotations

import importlib
import importlib.metadata
from typing import Iterable

from unet_medical.base.errors import UNetError

ENTRY_POINT_GROUP = "unet_medical.plugins"

_loaded: set[str] = set()  # entry points and modules already run in this process (loading is idempotent)


def plugin_names(text: str | None) -> list[str]:
    """'a, b.c' -> ['a', 'b.c'] (the --plugins value)."""
    return [name.strip() for name in (text or "").split(",") if name.strip()]


def load_entry_points() -> list[str]:
    """Load every `unet_medical.plugins` entry point of the installed distributions; return their names."""
    names = []
    for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        key = f"entry point {point.name} = {point.value}"
        if key in _loaded:
            continue
        try:
            loaded = point.load()
        except Exception as exc:  # a broken plugin must say which one it is
            raise UNetError(f"plugin {key} (group {ENTRY_POINT_GROUP}) failed to load: "
                            f"{type(exc).__name__}: {exc}") from exc
        if callable(loaded):
            loaded()
        _loaded.add(key)
        names.append(point.name)
    return names


def load_modules(modules: Iterable[str], source: str = "--plugins") -> list[str]:
    """Import each module (registering its entries); UNetError naming `source` and the module if one fails."""
    names = []
    for module in modules:
        if module in _loaded:
            continue
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise UNetError(f"{source}: cannot import plugin module {module!r} ({exc}); is its folder on "
                            "PYTHONPATH?") from None
        _loaded.add(module)
        names.append(module)
    return names


def load_plugins(text: str | None, source: str = "--plugins") -> list[str]:
    """Entry-point plugins, then the modules of a --plugins value; returns what was loaded now."""
    return load_entry_points() + load_modules(plugin_names(text), source)
