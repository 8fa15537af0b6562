"""One writer per run folder: RUN/.lock holds the pid and host of the process that writes there.

A second command on the same folder (a training started twice, an evaluation while the run still
trains) stops with one line naming the holder. A lock whose process is gone (killed with SIGKILL, a
crashed machine) is reported as stale with the command that clears it; it is never taken over
silently, because a pid on another host cannot be checked from here.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import socket
from typing import Iterator

from unet_medical.base.errors import UNetError

LOCK_FILE = ".lock"


@dataclasses.dataclass(frozen=True)
class LockHolder:
    pid: int
    host: str

    def text(self) -> str:
        return f"{self.pid} {self.host}\n"


def this_process() -> LockHolder:
    return LockHolder(os.getpid(), socket.gethostname())


def read_holder(path: pathlib.Path) -> LockHolder | None:
    """The pid and host written in a lock file; None if it is empty or not in that form."""
    try:
        pid, host = path.read_text().split()
        return LockHolder(int(pid), host)
    except (OSError, ValueError):
        return None


def is_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host (signal 0 only checks, it sends nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


def acquire(run_dir: str | os.PathLike) -> pathlib.Path:
    """Create RUN/.lock for this process, or raise UNetError (one line) naming who holds it."""
    path = pathlib.Path(run_dir) / LOCK_FILE
    me = this_process()
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)  # atomic: one creator wins
    except FileExistsError:
        raise UNetError(_held_message(path, read_holder(path), me)) from None
    with os.fdopen(fd, "w") as fh:
        fh.write(me.text())
    return path


def _held_message(path: pathlib.Path, holder: LockHolder | None, me: LockHolder) -> str:
    clear = f"if no other command uses {path.parent}, remove it: rm {path}"
    if holder is None:
        return f"{path}: the run folder is locked by an unknown process (unreadable lock); {clear}"
    if holder.host == me.host and not is_alive(holder.pid):
        return f"{path}: stale lock of pid {holder.pid} on {holder.host}, which is gone; {clear}"
    return (f"{path}: the run folder is in use by pid {holder.pid} on {holder.host}; wait for it to finish "
            "or choose another --model_dir")


def release(path: pathlib.Path) -> None:
    """Remove the lock if this process still holds it (never another process's lock)."""
    if read_holder(path) == this_process():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Hold RUN/.lock for the duration of the block; released on exit, also on an exception."""
    path = acquire(run_dir)
    try:
        yield path
    finally:
        release(path)
