"""unet_medical.base.registry: registration, lazy entries, the one-line unknown-name error, duplicates."""
import sys

import pytest

from unet_medical.base.errors import UNetError
from unet_medical.base.registry import Registry


def test_register_as_decorator_and_as_call_keeps_order():
    reg: Registry = Registry("loss", flag="--loss")

    @reg.register("b")
    def b():
        return "b"

    reg.register("a", len)
    assert reg.names() == ("b", "a")
    assert reg.get("b") is b and reg.get("a") is len
    assert "a" in reg and "z" not in reg and len(reg) == 2 and list(reg) == ["b", "a"]


def test_unknown_name_is_one_line_naming_flag_and_choices():
    reg: Registry = Registry("loss", flag="--loss")
    reg.register("ce_dice", len)
    reg.register("mae", abs)
    with pytest.raises(UNetError) as err:
        reg.get("x")
    assert str(err.value) == "--loss: unknown loss 'x' (choices: ce_dice, mae)"


def test_duplicate_name_is_refused():
    reg: Registry = Registry("export format", flag="--export_format")
    reg.register("onnx", len)
    with pytest.raises(UNetError, match="--export_format: .onnx. is already registered as a export format"):
        reg.register("onnx", abs)
    with pytest.raises(UNetError, match="already registered"):
        reg.register_lazy("onnx", "json:dumps")
    assert reg.get("onnx") is len


def test_lazy_entry_imports_only_on_get():
    reg: Registry = Registry("metric", flag="--metric")
    reg.register_lazy("csv_writer", "csv:writer")
    sys.modules.pop("csv", None)
    assert reg.names() == ("csv_writer",)
    assert "csv" not in sys.modules  # listing names imported nothing
    import csv

    assert reg.get("csv_writer") is csv.writer


def test_bad_lazy_target_and_empty_name_are_refused():
    reg: Registry = Registry("loss", flag="--loss")
    with pytest.raises(ValueError, match="package.module:attribute"):
        reg.register_lazy("x", "no_colon")
    with pytest.raises(UNetError, match="non-empty string"):
        reg.register("", len)


def test_unregister_frees_the_name():
    reg: Registry = Registry("loss", flag="--loss")
    reg.register("toy", len)
    reg.unregister("toy")
    reg.register("toy", abs)
    assert reg.get("toy") is abs
