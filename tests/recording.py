"""A runlog.Logger stand-in that keeps what it is given, shared by the tests that read log lines."""
from __future__ import annotations


class RecordingLogger:
    """Keeps every (step, data) record; `enabled` as a runlog.Logger has it."""

    enabled = True

    def __init__(self) -> None:
        self.records: list[tuple[str, dict]] = []

    def log(self, step, data, verbosity: int = 0) -> None:
        self.records.append((step, dict(data)))

    def recipe(self, flag: str) -> dict:
        """The one RECIPE record for --flag (a test fails on none or several)."""
        (line,) = [d for s, d in self.records if s == "RECIPE" and d["flag"] == flag]
        return line
