"""What a study variant was made from, so that a rerun reuses a finished variant only if it would be made
the same way today.

RESULTS/variants/NAME/made_from.json is written before the variant starts training:
    flags    the main.py flags of the variant: the study's `base` with the variant's own on top (an
             `init_from: "@name"` stays a reference: the parent's hash below stands for it)
    parent   the hash of the made_from record of the variant it starts from (init_from "@name"), or None
    data     every file under --data_dir: relative path -> [size in bytes, SHA-256 of its bytes]
    hash     SHA-256 of the three above (canonical JSON)
A rerun compares today's record with the stored one; the difference is said in words (which flag, which
file, which parent) by `differences`.

The data is identified by content, not by path: the same images under another --data_dir are the same
data, and a file edited in place is a change. Hashing reads the whole folder once per study run, which
is seconds for data sets that fit a study on one machine.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from typing import Any, Mapping, Sequence

from unet_medical.base.artifacts import write_json
from unet_medical.base.errors import UNetError
from unet_medical.base.fileio import sha256_of

MADE_FROM = "made_from.json"
_SHOWN = 3  # differences named in the refusal line; the rest are counted


@dataclasses.dataclass(frozen=True)
class MadeFrom:
    """One variant's flags, parent and data (module docstring)."""

    flags: dict[str, Any]
    parent: str | None
    data: dict[str, list[Any]]

    @property
    def digest(self) -> str:
        return _digest({"flags": self.flags, "parent": self.parent, "data": self.data})

    def to_dict(self) -> dict[str, Any]:
        return {"flags": self.flags, "parent": self.parent, "data": self.data, "hash": self.digest}


def _canonical(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples become lists, keys strings), so records compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def data_files(data_dir: str | os.PathLike, exclude: Sequence[str | os.PathLike] = ()) -> dict[str, list[Any]]:
    """Every regular file under `data_dir` (hidden files and folders, and the `exclude` folders, left out):
    relative path -> [size, SHA-256]."""
    root = pathlib.Path(data_dir)
    if not root.is_dir():
        raise UNetError(f"--data_dir={data_dir}: not a folder")
    skipped = [os.path.realpath(p) for p in exclude]
    files: dict[str, list[Any]] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        real = os.path.realpath(path)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file() \
                or any(real == s or real.startswith(s + os.sep) for s in skipped):
            continue
        files[rel.as_posix()] = [path.stat().st_size, sha256_of(path)]
    return files


def made_from_records(base: Mapping[str, Any], variants: Sequence[Any], data: dict[str, list[Any]]
                      ) -> dict[str, MadeFrom]:
    """variant name -> what it is made from today (`variants` in study order: a parent comes first)."""
    records: dict[str, MadeFrom] = {}
    for variant in variants:
        flags = _canonical({**base, **variant.flags})
        ref = flags.get("init_from")
        parent = records[ref[1:]].digest if isinstance(ref, str) and ref.startswith("@") else None
        records[variant.name] = MadeFrom(flags, parent, data)
    return records


def read_made_from(folder: pathlib.Path) -> dict[str, Any] | None:
    """The made_from.json of a variant folder; None if it has none (a study of an earlier version)."""
    path = folder / MADE_FROM
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
        if not isinstance(stored, dict) or not {"flags", "parent", "data", "hash"} <= set(stored):
            raise ValueError("expected flags, parent, data and hash")
    except ValueError as exc:
        raise UNetError(f"{path} is corrupt ({exc}); delete the variant folder to train it again") from None
    return stored


def write_made_from(folder: pathlib.Path, record: MadeFrom) -> pathlib.Path:
    return write_json(folder / MADE_FROM, record.to_dict())


def differences(stored: Mapping[str, Any] | None, today: MadeFrom, parent_name: str | None) -> str:
    """What differs between a stored record and today's, in words ("" if nothing does)."""
    if stored is None:
        return f"it has no {MADE_FROM} (made by an earlier version of the study), so what it was made from is unknown"
    if stored["hash"] == today.digest:
        return ""
    said = _flag_changes(stored["flags"], today.flags) + _data_changes(stored["data"], today.data)
    if stored["parent"] != today.parent:
        said.append(f"its init_from variant {parent_name!r} is made from other settings or data"
                     if parent_name else "init_from changed")
    if not said:
        said.append(f"{MADE_FROM} does not match its own contents")
    more = f" and {len(said) - _SHOWN} more" if len(said) > _SHOWN else ""
    return "; ".join(said[:_SHOWN]) + more


def _flag_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    def show(flags: Mapping[str, Any], key: str) -> str:
        return repr(flags[key]) if key in flags else "(unset)"

    return [f"{key}: {show(old, key)} -> {show(new, key)}" for key in sorted(set(old) | set(new))
            if key not in old or key not in new or old[key] != new[key]]


def _data_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    said = []
    for what, names in (("added", [n for n in new if n not in old]), ("removed", [n for n in old if n not in new]),
                        ("changed", [n for n in new if n in old and list(old[n]) != list(new[n])])):
        if names:
            said.append(f"--data_dir: {len(names)} file{'s' if len(names) > 1 else ''} {what} (first: {names[0]})")
    return said
