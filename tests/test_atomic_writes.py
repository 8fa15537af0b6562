"""Artefacts are written atomically (base.fileio): a crash in the middle of a write leaves the previous
file as it was and no partial or temporary file beside it."""
from __future__ import annotations

import csv
import dataclasses
import pathlib
import types

import pytest

from unet_medical.base.fileio import atomic_write_text


class Crash(Exception):
    """The process dying in the middle of a write."""


def folder_state(folder: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_the_helper_keeps_the_previous_file_when_the_write_fails(tmp_path):
    from unet_medical.base.fileio import atomic_write

    path = atomic_write_text(tmp_path / "a.txt", "previous")

    def half_then_crash(tmp: str) -> None:
        pathlib.Path(tmp).write_text("half")
        raise Crash

    with pytest.raises(Crash):
        atomic_write(path, half_then_crash)
    assert folder_state(tmp_path) == {"a.txt": b"previous"}


def test_a_crash_while_writing_the_tucker_report_keeps_the_previous_report(tmp_path, monkeypatch):
    from unet_medical.model.tucker import LayerReport, read_report_csv, write_report_csv

    previous = [LayerReport("earlier_run", "Conv2D", True, "1x1 kernel", None, None, 10, 10, 100, 100, 0.0)]
    report = [LayerReport(f"conv{i}", "Conv2D", False, "", 2, 2, 100, 50, 1000, 500, 0.25) for i in range(3)]
    path = tmp_path / "tucker_report.csv"
    write_report_csv(previous, path)
    before = folder_state(tmp_path)
    calls = []

    def writerow(self, row):  # the header and the first layer go through, then the process dies
        calls.append(row)
        if len(calls) > 2:
            raise Crash
        return real(self, row)

    real = csv.DictWriter.writerow
    monkeypatch.setattr(csv.DictWriter, "writerow", writerow)
    with pytest.raises(Crash):
        write_report_csv(report, path)
    assert folder_state(tmp_path) == before
    monkeypatch.undo()
    assert read_report_csv(path) == previous


def test_a_crash_while_the_study_writes_its_tflite_keeps_the_previous_file(tmp_path, monkeypatch):
    """The study's deployable file (int8 TFLite, bit-packed .npz) comes from its format's writer via
    base.fileio: a writer that dies half-way leaves the file of the previous study run."""
    from unet_medical.cli import study
    from unet_medical.model.unet import UNetSpec, build_unet

    spec = UNetSpec(padding="same", base_filters=2, depth=1)

    def writer(request):
        request.path.write_bytes(b"half a flatbuffer")
        raise Crash

    fake = types.SimpleNamespace(file_name=lambda precision: "model_int8.tflite", writer=lambda: writer)
    monkeypatch.setattr(study, "format_of", lambda name: fake)
    export = tmp_path / "export"
    atomic_write_text(export / "model_int8.tflite", "previous study's model")
    info = types.SimpleNamespace(spec=dataclasses.asdict(spec), quantization_config={"quantization": "QAT_INT8"})
    with pytest.raises(Crash):
        study.export_file(build_unet(spec), info, export, "tflite", "int8", 32)
    assert folder_state(export) == {"model_int8.tflite": b"previous study's model"}


def test_a_folder_is_written_under_a_temporary_name_and_replaces_an_older_one(tmp_path):
    from unet_medical.base.fileio import atomic_write_folder, size_on_disk

    target = tmp_path / "openvino_fp32"

    def write(path: str, text: str = "graph") -> None:
        folder = pathlib.Path(path)
        folder.mkdir()
        (folder / "model.xml").write_text(text)
        (folder / "model.bin").write_bytes(b"\0" * 10)

    assert atomic_write_folder(target, write) == target
    atomic_write_folder(target, lambda p: write(p, "graph two"))
    assert (target / "model.xml").read_text() == "graph two" and size_on_disk(target) == len("graph two") + 10

    def crash(path: str) -> None:
        write(path)
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError):
        atomic_write_folder(target, crash)
    assert (target / "model.xml").read_text() == "graph two"  # the older folder stands
    assert sorted(p.name for p in tmp_path.iterdir()) == ["openvino_fp32"]  # no staging folder left behind
