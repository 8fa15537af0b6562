"""The default export's time savers (unet_medical.export.select): which candidates are skipped on which CPU and
why, the bf16 SavedModel candidate where the run computes in bfloat16, early elimination while timing, skipped
candidates and progress recorded, and the bf16 SavedModel really computing in bfloat16 while parity still
compares with the float32 Keras model."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from unet_medical.base.cpu import CpuInfo, choose_precision, has_int8_dot_product
from unet_medical.base.errors import UNetError
from unet_medical.export import formats, parity, select
from unet_medical.model.unet import UNetSpec, build_unet
from tests.recording import RecordingLogger

# Flags as /proc/cpuinfo lists them on the machines of docs/facts.md.
ZEN3 = CpuInfo(vendor="AuthenticAMD", family=25, model=1, flags=frozenset({"avx", "avx2", "fma"}))
ZEN4 = CpuInfo(vendor="AuthenticAMD", family=25, model=17,
               flags=frozenset({"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"}))
XEON_AMX = CpuInfo(vendor="GenuineIntel", family=6, model=207,
                   flags=frozenset({"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
                                    "amx_int8"}))
EVERY = [("savedmodel", "fp32"), ("savedmodel", "bf16"), ("tflite", "int8"), ("onnx", "int8"), ("openvino", "int8"),
         ("openvino", "bf16"), ("openvino", "fp32")]


def test_int8_pays_off_only_with_vnni_or_amx_int8():
    assert not has_int8_dot_product(ZEN3)
    assert has_int8_dot_product(ZEN4) and has_int8_dot_product(XEON_AMX)
    assert has_int8_dot_product(CpuInfo(flags=frozenset({"avx2", "avx_vnni"})))  # Alder Lake's AVX-VNNI


def test_zen3_skips_every_int8_candidate():
    pairs = [("savedmodel", "fp32"), ("tflite", "int8"), ("onnx", "int8"), ("openvino", "int8"), ("openvino", "fp32")]
    skipped = select.skip_reasons(ZEN3, pairs)
    assert set(skipped) == {("tflite", "int8"), ("onnx", "int8"), ("openvino", "int8")}
    assert all("VNNI" in reason and "0.97-1.06x" in reason for reason in skipped.values())


@pytest.mark.parametrize("cpu", [ZEN4, XEON_AMX], ids=["zen4", "xeon_amx"])
def test_bf16_cpus_skip_onnx_int8_and_the_fp32_savedmodel(cpu):
    skipped = select.skip_reasons(cpu, EVERY)
    assert set(skipped) == {("onnx", "int8"), ("savedmodel", "fp32")}
    assert "TFLite int8" in skipped[("onnx", "int8")] and "bf16 SavedModel" in skipped[("savedmodel", "fp32")]


def test_a_rule_needs_its_better_rival_in_the_export():
    # Without TFLite int8 (e.g. --export_precision filters or missing packages) ONNX Runtime int8 competes,
    # without the bf16 SavedModel (a --precision fp32 run) the fp32 one does.
    assert select.skip_reasons(ZEN4, [("onnx", "int8"), ("openvino", "int8")]) == {}
    assert select.skip_reasons(ZEN4, [("savedmodel", "fp32"), ("tflite", "int8")]) == {}
    # --precision bf16 on a CPU that emulates bfloat16: the fp32 SavedModel may well be faster, both compete.
    assert select.skip_reasons(ZEN3, [("savedmodel", "fp32"), ("savedmodel", "bf16")]) == {}


def test_never_every_candidate_is_skipped():
    assert select.skip_reasons(ZEN3, [("tflite", "int8"), ("onnx", "int8")]) == {}


def test_the_keras_precision_savedmodel_is_a_candidate_where_bf16_is_chosen():
    for cpu in (ZEN4, XEON_AMX):
        assert choose_precision("auto", cpu, [])[0] == "mixed_bfloat16"
        assert ("savedmodel", "bf16") in select.candidates(cpu, [])
        # --precision fp32 (or a fake-quantized run): predict runs float32, so the fp32 SavedModel is the baseline.
        assert ("savedmodel", "bf16") not in select.candidates(cpu, [], run_policy="float32")
    assert ("savedmodel", "bf16") not in select.candidates(ZEN3, [])
    assert ("savedmodel", "bf16") in select.candidates(ZEN3, [], run_policy="mixed_bfloat16")  # --precision bf16
    assert select.candidates(ZEN4, [], "bf16")[0] == ("savedmodel", "bf16")


def test_parity_subset_spreads_over_the_fold():
    assert select.parity_subset(np.arange(24, 30)).tolist() == [24, 29]
    assert select.parity_subset(np.arange(3), 5).tolist() == [0, 1, 2]
    assert select.parity_subset(np.arange(10), 3).tolist() == [0, 4, 9]  # linspace 0, 4.5, 9 rounded half to even


def test_serving_signatures_are_checked_on_one_image_of_each_dtype():
    images = [np.zeros((4, 4, 1), np.uint8), np.zeros((4, 4, 1), np.uint8), np.zeros((4, 4, 1), np.uint16),
              np.zeros((4, 4, 1), np.uint8), np.zeros((4, 4, 1), np.uint16)]
    assert parity.serving_parity_indices(images, 1) == [0, 2]
    assert parity.serving_parity_indices(images, 2) == [0, 1, 2, 4]
    assert parity.serving_parity_indices(images, None) == [0, 1, 2, 3, 4]


def test_the_serving_check_reuses_the_reference_when_the_tiles_are_the_same():
    from unet_medical.inference.tiling import plan_tiles

    image = np.zeros((64, 64, 1), np.float32)
    planned = plan_tiles(SPEC, image.shape[:2]).tile_size  # what the serving graph picks without --tile_size
    plan = dict(tile_size=planned, context=None, max_tile_size=1024, input_scale=1.0)
    assert parity.same_tiles(SPEC, [image], plan, {**plan, "tile_size": None})
    assert not parity.same_tiles(SPEC, [image], {**plan, "tile_size": planned - 8}, {**plan, "tile_size": None})
    assert not parity.same_tiles(SPEC, [image], {**plan, "input_scale": 0.5}, {**plan, "tile_size": None})


def test_slow_candidates_stop_being_timed_after_the_elimination_rounds():
    calls = {"fast": 0, "close": 0, "slow": 0}

    def sleeper(name, seconds):
        def call():
            calls[name] += 1
            time.sleep(seconds)
        return call

    # 15x apart (eliminated whatever the load), and two equal ones (kept: ms of sleep overshoot is < 1.5x).
    times = select.time_with_elimination({"fast": sleeper("fast", 0.02), "close": sleeper("close", 0.02),
                                          "slow": sleeper("slow", 0.3)}, warmup=1, rounds=4)
    assert {k: len(v) for k, v in times.items()} == {"fast": 4, "close": 4, "slow": select.ELIMINATION_ROUNDS}
    assert calls == {"fast": 5, "close": 5, "slow": 1 + select.ELIMINATION_ROUNDS}  # warm-up + timed rounds
    assert min(times["slow"]) >= 0.3


def test_selection_records_skipped_candidates_and_shows_progress(tmp_path, monkeypatch):
    """select_fastest without TensorFlow artefacts: fake files, fake runtimes of known speed."""
    latency = {"savedmodel_bf16": 0.0012, "model_int8.tflite": 0.001, "openvino_int8": 0.05}  # seconds per tile

    def export_one(fmt, precision):
        name = formats.artifact_name(fmt, precision)
        if (fmt, precision) == ("openvino", "bf16"):
            raise UNetError("openvino bf16 export failed the parity check: 98% of pixels agree")
        (tmp_path / name).write_bytes(b"x")
        entry = {"format": fmt, "precision": precision, "file": name, "size_bytes": 1,
                 "parity": {"tiled": {"label_agreement": 0.999}}}
        formats.record_artifact(tmp_path, entry)
        return entry

    runs = []
    monkeypatch.setattr(select, "load_exported", lambda path: (lambda tile: runs.append(path.name)))
    # Wall times as if each runtime took `latency`, whatever the load of the machine running the test.
    monkeypatch.setattr(select, "time_alternating", lambda calls, warmup, rounds: {
        name: [call() or latency[name] for _ in range(warmup + rounds)][warmup:] for name, call in calls.items()})
    logger = RecordingLogger()
    pairs = [p for p in EVERY if p != ("openvino", "fp32")]
    entry = select.select_fastest(tmp_path, pairs, export_one, np.zeros((1, 8, 8, 1), np.float32), {"tile_size": 8},
                                  rounds=3, cpu=ZEN4, logger=logger)
    document = json.loads((tmp_path / "export.json").read_text())
    selection = document["selection"]
    status = {(c["format"], c["precision"]): c["status"] for c in selection["candidates"]}
    assert status == {("savedmodel", "fp32"): "skipped", ("onnx", "int8"): "skipped",
                      ("savedmodel", "bf16"): "timed", ("tflite", "int8"): "timed",
                      ("openvino", "int8"): "eliminated", ("openvino", "bf16"): "failed"}
    reasons = {c["file"]: c["reason"] for c in selection["candidates"] if c["status"] == "skipped"}
    assert reasons == {"savedmodel": select.SKIP_RULES[2].reason, "model_int8.onnx": select.SKIP_RULES[1].reason}
    assert entry["file"] == selection["chosen"] == "model_int8.tflite"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.json", "model_int8.tflite"]
    assert all(c["seconds"] >= 0 for c in selection["candidates"] if c["status"] != "skipped")

    lines = [data for step, data in logger.records if step == "EXPORT"]
    assert [d["candidate"] for d in lines if d.get("status") == "skipped"] == ["savedmodel fp32", "onnx int8"]
    assert all(d["reason"] for d in lines if d.get("status") == "skipped")
    started = [d["candidate"] for d in lines if d.get("status") == "exporting"]
    assert started == ["1/4", "2/4", "3/4", "4/4"]  # each exported candidate announces itself before its work
    rounds = [d for d in lines if "timing" in d]
    assert [d["timing"] for d in rounds] == ["round 1/3", "round 2/3", "round 3/3"]
    assert "openvino_int8" in rounds[1] and "openvino_int8" not in rounds[2]
    assert runs.count("openvino_int8") == 1 + select.ELIMINATION_ROUNDS and runs.count("model_int8.tflite") == 4


def test_every_candidate_skipped_or_failed_is_one_error(tmp_path):
    def export_one(fmt, precision):
        raise UNetError("tf2onnx could not convert the model")

    with pytest.raises(UNetError, match=r"no candidate passed \(savedmodel fp32: the bf16 SavedModel.*"
                                        r"savedmodel bf16: tf2onnx could not"):
        select.select_fastest(tmp_path, [("savedmodel", "fp32"), ("savedmodel", "bf16")], export_one,
                              np.zeros((1, 8, 8, 1), np.float32), {"tile_size": 8}, cpu=ZEN4)


SPEC = UNetSpec(base_filters=4, depth=2, padding="same", dropout=0.0)


def tiny_models():
    """The same weights as a float32 model and as one rebuilt under mixed_bfloat16 (as export_mode does).
    Seeded: an untrained network's bfloat16 argmax agrees with float32 on 99.4-99.99 % of pixels depending on
    its weights, around the 99.5 % parity bar, so unseeded weights made the bf16 export fail at random."""
    keras.utils.set_random_seed(0)
    fp32 = build_unet(SPEC)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        bf16 = build_unet(SPEC)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    bf16.set_weights(fp32.get_weights())
    return fp32, bf16


def tiny_inputs(tile: int = 64) -> formats.ExportInputs:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (64, 64, 1), dtype=np.uint8) for _ in range(2)]
    return formats.ExportInputs(parity_images=images, calibration_images=[im.astype(np.float32) / 255 for im in images],
                                tile_size=tile, context=0, serving_tile_size=tile)


def graph_dtypes(path) -> set:
    tile_fn = tf.saved_model.load(str(path)).signatures["tile"]
    dtypes = {t.dtype for op in tile_fn.graph.get_operations() for t in op.outputs}
    for function in tile_fn.graph.as_graph_def().library.function:  # the model body is a nested function
        for node in function.node_def:
            dtypes |= {tf.as_dtype(v.type) for k, v in node.attr.items() if k in ("T", "dtype", "DstT") and v.type}
    return dtypes


def test_bf16_savedmodel_computes_in_bfloat16_and_is_checked_against_float32(tmp_path):
    fp32, bf16 = tiny_models()
    logger = RecordingLogger()
    entry = formats.export_model(fp32, SPEC, ["background", "membrane"], tmp_path, "savedmodel", "bf16", tiny_inputs(),
                                 artifact_model=bf16, logger=logger)
    assert entry["file"] == "savedmodel_bf16" and tf.bfloat16 in graph_dtypes(tmp_path / "savedmodel_bf16")
    report = entry["parity"]["tiled"]
    # The reference is the float32 model: bfloat16 rounding shows as a non-zero difference (a bf16-vs-bf16
    # comparison would give exactly 0), small against bfloat16's 2^-8 relative step on these logits.
    assert 0 < report["max_abs_prob_diff"] < 0.05
    assert entry["parity"]["serving"]["pixels"] == 2 * 64 * 64  # an explicit export checks serving on every image
    steps = [data["step"] for step, data in logger.records if step == "EXPORT"]
    assert steps == ["write", "parity on 2 held-out images"]


def test_a_savedmodel_is_never_labelled_with_a_precision_it_does_not_compute_in(tmp_path):
    fp32, _ = tiny_models()
    with pytest.raises(UNetError, match="savedmodel bf16: the model computes in float32"):
        formats.export_model(fp32, SPEC, ["background", "membrane"], tmp_path, "savedmodel", "bf16", tiny_inputs(),
                             check_parity=False)
    assert not (tmp_path / "savedmodel_bf16").exists()


def test_keras_reference_is_predicted_once_for_all_candidates(tmp_path, monkeypatch):
    fp32, bf16 = tiny_models()
    calls = []
    real = parity.keras_predictor

    def counting(model):
        predict = real(model)
        return lambda tiles: (calls.append(len(tiles)), predict(tiles))[1]

    monkeypatch.setattr(parity, "keras_predictor", counting)
    shared = parity.SharedExportWork()
    for precision, source in (("fp32", fp32), ("bf16", bf16)):
        formats.export_model(fp32, SPEC, ["background", "membrane"], tmp_path, "savedmodel", precision, tiny_inputs(),
                             artifact_model=source, shared=shared)
    assert len(calls) == 2  # 2 parity images of one 64-pixel tile each, for the first candidate only


def test_openvino_needs_only_its_own_packages():
    """The missing-package check runs before any work, so a package the writer does not use would refuse an
    export that works: OpenVINO converts with its own TensorFlow frontend, not tf2onnx."""
    from unet_medical.inference.artifact_formats import format_of

    assert format_of("openvino").needs("bf16") == ("openvino",)
    assert format_of("openvino").needs("int8") == ("openvino", "nncf")
    assert "tf2onnx" in format_of("onnx").needs("fp32")
