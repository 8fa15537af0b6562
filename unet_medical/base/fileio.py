"""Atomic file writes: a crash, SIGKILL or full disk never leaves a half-written artefact.

Each writer writes a temporary file in the destination's folder, flushes it to disk, then renames it
over the destination (rename is atomic on POSIX file systems). If writing fails, the temporary file
is removed and the previous version of the destination is left untouched.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
from typing import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> pathlib.Path:
    """Call `write(tmp_path)` to produce the file, then atomically move it to `path`."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def atomic_write_folder(path: str | os.PathLike, write: Callable[[str], None]) -> pathlib.Path:
    """Call `write(staging_path)` to produce a folder (an OpenVINO IR, a SavedModel) under a temporary name beside
    `path`, then move it into place, replacing an older folder there; a crash leaves no half-written `path`."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        write(str(staging / path.name))
        if path.is_dir():
            shutil.rmtree(path)
        os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def atomic_savez(path: str | os.PathLike, arrays: dict) -> pathlib.Path:
    """np.savez(**arrays) to `path` atomically (uncompressed, so sizes reflect the stored dtypes)."""
    import numpy as np

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.savez would append ".npz" to a bare path
            np.savez(fh, **arrays)

    return atomic_write(path, write)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> pathlib.Path:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, or of a folder (a SavedModel): its files' relative paths and bytes, in order."""
    import hashlib

    path, digest = pathlib.Path(path), hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file != path:
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def size_on_disk(path: str | os.PathLike) -> int:
    """Bytes of a file, or of every file below a folder (an OpenVINO IR, a SavedModel)."""
    path = pathlib.Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
