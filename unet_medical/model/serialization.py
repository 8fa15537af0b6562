"""Rebuilding a Keras model from a file without running code the file carries.

A run folder's model.json, a packed .npz and a QAT .h5 store the architecture as Keras JSON. Keras'
`model_from_json` outside safe mode unmarshals and runs the Python bytecode of a `Lambda` layer, so a
planted model.json could run anything the moment a run is evaluated. The project's networks have no
Lambda layer, so any Lambda is refused before Keras sees the JSON, and deserialisation also runs in
Keras' safe mode (which refuses marshalled lambdas in any other path, e.g. inside a wrapper's config).
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterator

import tf_keras as keras
from tf_keras.src.saving.serialization_lib import SafeModeScope

from unet_medical.base.errors import UNetError

FORBIDDEN_LAYERS = ("Lambda",)  # layers whose config holds Python code


def _class_names(node: Any) -> Iterator[str]:
    """Every "class_name" anywhere in a decoded Keras config (wrappers nest their layer's config)."""
    if isinstance(node, dict):
        name = node.get("class_name")
        if isinstance(name, str):
            yield name
        for value in node.values():
            yield from _class_names(value)
    elif isinstance(node, list):
        for value in node:
            yield from _class_names(value)


def check_no_code(architecture: str, source: str | os.PathLike) -> None:
    """Refuse (UNetError naming `source`) Keras JSON that holds a layer carrying Python code."""
    try:
        graph = json.loads(architecture)
    except ValueError as exc:
        raise UNetError(f"{source}: the stored architecture is not JSON ({exc})") from None
    found = sorted({name for name in _class_names(graph) if name.split(">")[-1] in FORBIDDEN_LAYERS})
    if found:
        raise UNetError(f"{source}: the architecture holds a {found[0]} layer (Python code); refused, "
                        "run files are loaded without running stored code")


def safe_mode() -> SafeModeScope:
    """Keras' safe mode: deserialising a marshalled Python lambda raises ValueError instead of running it."""
    return SafeModeScope(True)


def model_from_json(architecture: str, source: str | os.PathLike) -> keras.Model:
    """`keras.models.model_from_json(architecture)` in safe mode, Lambda layers refused first.

    Args:
        architecture: Keras JSON (`model.to_json()`).
        source: the file it was read from, named in the error message.
    """
    check_no_code(architecture, source)
    with safe_mode():
        try:
            return keras.models.model_from_json(architecture)
        except ValueError as exc:
            if "arbitrary code execution" not in str(exc):
                raise
            raise UNetError(f"{source}: the architecture holds Python code; refused (safe mode)") from None
