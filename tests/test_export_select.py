"""The default export (utils.export.select): which candidates compete on which CPU, the alternating
timing helper, and on a tiny trained U-Net: every candidate exported and checked, the fastest kept,
the others deleted, the choice recorded and run by --model_path of the export folder; OpenVINO
artefacts agree with Keras."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

import main
from unet_medical.cli.assemble import restore_model
from unet_medical.cli.config import parse_config
from unet_medical.base import timing
from unet_medical.base.cpu import CpuInfo, read_cpu_info
from unet_medical.base.errors import UNetError
from unet_medical.export import select
from unet_medical.export.formats import artifact_name
from unet_medical.inference.runtimes import load_exported, resolve_deploy_file
from unet_medical.inference.tiling import keras_predictor

ZEN3 = CpuInfo(vendor="AuthenticAMD", family=25, model=1, flags=frozenset({"avx", "avx2", "fma"}))
AMX = CpuInfo(vendor="GenuineIntel", family=6, model=143, flags=frozenset({"avx2", "fma", "avx512f", "amx_bf16"}))
HAS_OPENVINO = all(importlib.util.find_spec(m) for m in ("openvino", "nncf"))


def test_candidates_follow_the_cpu_and_the_requested_precision():
    assert select.candidates(ZEN3, [])[0] == ("savedmodel", "fp32")
    pairs_amx, pairs_zen3 = select.candidates(AMX, []), select.candidates(ZEN3, [])
    if HAS_OPENVINO:
        assert ("openvino", "bf16") in pairs_amx and ("openvino", "bf16") not in pairs_zen3
        assert ("openvino", "fp32") in pairs_zen3 and ("openvino", "int8") in pairs_zen3
    assert {p for _, p in select.candidates(AMX, [], "int8")} == {"int8"}
    with pytest.raises(UNetError, match="--export_precision=fp16"):
        select.candidates(AMX, [], "fp16")


def test_time_alternating_calls_a_b_a_b():
    order = []
    calls = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    times = timing.time_alternating(calls, warmup=1, rounds=3)
    assert order == ["a", "b"] * 4
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3} and min(times["a"]) >= 0
    summary = timing.latency_summary_ms([0.001, 0.003, 0.002])
    assert summary == {"median_ms": pytest.approx(2.0), "p90_ms": pytest.approx(2.8), "max_ms": pytest.approx(3.0),
                       "runs": 3}


TILE = 128
TINY = ["--padding", "same", "--base_filters", "4", "--depth", "2", "--batch_norm", "--dropout", "0",
        "--crop_size", "96", "--batch_size", "2", "--learning_rate", "3e-3", "--num_folds", "10",
        "--fold", "9", "--log_every", "10", "--no-augment", "--tile_size", str(TILE)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, isbi_data_dir):
    model_dir = tmp_path_factory.mktemp("select_run")
    common = ["--data_dir", str(isbi_data_dir), "--model_dir", str(model_dir), *TINY]
    assert main.main(["--exec_mode", "train", "--max_steps", "30", *common]) == 0
    return model_dir, common


@pytest.mark.slow
def test_default_export_keeps_the_fastest_candidate_that_passed(trained, tmp_path):
    model_dir, common = trained
    assert main.main(["--exec_mode", "export", *common]) == 0
    export_dir = model_dir / "export"
    document = json.loads((export_dir / "export.json").read_text())
    selection = document["selection"]
    timed = {c["file"]: c["latency"]["median_ms"] for c in selection["candidates"] if c["status"] == "timed"}
    here = read_cpu_info()
    pairs = select.candidates(here, [])  # the run trained with --precision auto: predict's policy on this CPU
    assert [(c["format"], c["precision"]) for c in selection["candidates"] if c["status"] != "skipped"] == \
        [p for p in pairs if p not in select.skip_reasons(here, pairs)]
    assert {c["file"]: c["reason"] for c in selection["candidates"] if c["status"] == "skipped"} == \
        {artifact_name(*p): reason for p, reason in select.skip_reasons(here, pairs).items()}
    assert timed and selection["chosen"] == min(timed, key=timed.get)
    assert all(c["label_agreement"] >= 0.99 for c in selection["candidates"] if c["status"] == "timed")
    assert list(document["artifacts"]) == [selection["chosen"]] and document["artifacts"][selection["chosen"]]["deploy"]
    on_disk = {p.name for p in export_dir.iterdir()} - {"export.json", "MODEL_CARD.md"}
    assert on_disk == {selection["chosen"]}  # the others were deleted
    card = (export_dir / "MODEL_CARD.md").read_text()
    assert "## Deploy file" in card and f"**`{selection['chosen']}`**" in card
    assert resolve_deploy_file(export_dir) == export_dir / selection["chosen"]
    out = tmp_path / "predict"
    assert main.main(["--exec_mode", "predict", "--model_path", str(export_dir), "--model_dir", str(out),
                      *common[:2], "--input", str(common[1]) + "/test-volume.tif"]) == 0
    assert any((out / "predictions").iterdir())


@pytest.mark.slow
@pytest.mark.skipif(not HAS_OPENVINO, reason="OpenVINO export needs openvino and nncf (requirements.txt)")
@pytest.mark.parametrize("precision, max_diff", [("fp32", 1e-4), ("int8", None)])
def test_openvino_artefact_agrees_with_keras(trained, precision, max_diff):
    model_dir, common = trained
    args = ["--exec_mode", "export", "--export_format", "openvino", "--export_precision", precision, *common]
    assert main.main(args) == 0
    path = model_dir / "export" / f"openvino_{precision}"
    assert (path / "model.xml").is_file() and (path / "model.bin").is_file()
    exported = load_exported(path)
    assert (exported.format, exported.precision, exported.tile_size) == ("openvino", precision, None)
    entry = exported.metadata
    assert entry["parity"]["tiled"]["label_agreement"] >= (0.99 if precision == "int8" else 0.995)
    if max_diff is not None:  # float32 weights at float32 inference precision: the same computation
        model, spec, _ = restore_model(parse_config(["--exec_mode", "export", *common]))
        tile = np.random.default_rng(1).random((2, TILE, TILE, 1), dtype=np.float32)
        np.testing.assert_allclose(exported(tile), keras_predictor(model)(tile), atol=max_diff)
