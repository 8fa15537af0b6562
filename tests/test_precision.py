"""--precision auto|fp32|bf16|fp16 and --amp: the decision from faked CPU flags and GPU capabilities
(utils.precision over utils.cpu.choose_precision), the PARAMETER line that states it, and that an
export writes float32 files whatever the training precision."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import main
from unet_medical.cli import assemble
from unet_medical.base import precision
from unet_medical.base.cpu import CpuInfo
from unet_medical.base.errors import UNetError

ZEN3 = CpuInfo(vendor="AuthenticAMD", family=25, model=1, flags=frozenset({"sse2", "avx", "avx2", "fma"}),
               logical_cores=2, physical_cores=2)
AVX512_NO_BF16 = CpuInfo(vendor="GenuineIntel", family=6, model=85,
                         flags=frozenset({"avx2", "fma", "avx512f", "avx512_vnni"}), logical_cores=2, physical_cores=2)
ZEN4 = CpuInfo(vendor="AuthenticAMD", family=25, model=17,
               flags=frozenset({"avx2", "fma", "avx512f", "avx512_bf16"}), logical_cores=2, physical_cores=2)
SAPPHIRE_RAPIDS = CpuInfo(vendor="GenuineIntel", family=6, model=143, flags=frozenset(
    {"avx2", "fma", "avx512f", "amx_tile", "amx_bf16", "amx_int8"}), logical_cores=2, physical_cores=2)
A100, T4, P100 = {"compute_capability": (8, 0)}, {"compute_capability": (7, 5)}, {"compute_capability": (6, 0)}


@pytest.mark.parametrize("cpu, gpus, policy", [
    (ZEN3, [], "float32"),               # no BF16: bfloat16 would be emulated
    (AVX512_NO_BF16, [], "float32"),     # AVX-512 alone is not enough
    (ZEN4, [], "mixed_bfloat16"),        # AVX512_BF16
    (SAPPHIRE_RAPIDS, [], "mixed_bfloat16"),  # AMX (no avx512_bf16 flag listed here)
    (ZEN3, [A100], "mixed_float16"),     # the GPU decides: tensor cores
    (SAPPHIRE_RAPIDS, [P100], "float32"),  # GPU without tensor cores, CPU flags irrelevant
])
def test_auto_follows_the_hardware(cpu, gpus, policy):
    chosen, reason = precision.decide_precision("auto", False, cpu, gpus)
    assert chosen == policy
    assert reason.startswith("--precision auto: ") and len(reason) > 30


@pytest.mark.parametrize("cpu, gpus, policy", [
    (ZEN3, [], "mixed_bfloat16"),      # --amp never means float32 ...
    (SAPPHIRE_RAPIDS, [], "mixed_bfloat16"),
    (ZEN3, [T4], "mixed_float16"),     # ... and means float16 on any GPU
    (ZEN3, [P100], "mixed_float16"),
    (ZEN3, 1, "mixed_float16"),        # a GPU count without capabilities
])
def test_amp_is_auto_but_never_float32(cpu, gpus, policy):
    chosen, reason = precision.decide_precision("auto", True, cpu, gpus)
    assert chosen == policy and reason.startswith("--amp (mixed precision")


def test_explicit_precisions_are_honoured_and_contradictions_refused():
    assert precision.decide_precision("fp32", False, SAPPHIRE_RAPIDS, [])[0] == "float32"
    assert precision.decide_precision("bf16", False, ZEN3, [])[0] == "mixed_bfloat16"
    assert "slower" in precision.decide_precision("bf16", False, ZEN3, [])[1]
    assert precision.decide_precision("fp16", True, ZEN3, [])[0] == "mixed_float16"
    with pytest.raises(UNetError, match="--amp"):
        precision.decide_precision("fp32", True, ZEN3, [])


def test_fake_quantized_models_stay_float32():
    policy, reason = precision.decide_precision("auto", False, SAPPHIRE_RAPIDS, [], quantization="FIXED")
    assert policy == "float32" and "--quantization FIXED" in reason
    for flags in (("bf16", False), ("auto", True)):
        with pytest.raises(UNetError, match="--quantization QAT_INT8"):
            precision.decide_precision(*flags, SAPPHIRE_RAPIDS, [], quantization="QAT_INT8")


def test_configure_precision_sets_the_global_policy():
    assert precision.configure_precision("auto", cpu=SAPPHIRE_RAPIDS, gpus=[])[0] == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert precision.configure_precision("auto", cpu=ZEN3, gpus=[])[0] == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"


TINY = ["--padding", "same", "--base_filters", "4", "--depth", "2", "--crop_size", "64", "--batch_size", "2",
        "--dropout", "0", "--no-augment", "--max_steps", "2", "--log_every", "1", "--checkpoint_every", "100",
        "--num_folds", "10", "--fold", "9", "--tile_size", "128"]


def parameter_lines(model_dir) -> list[dict]:
    lines = (model_dir / "log.json").read_text().splitlines()
    records = [json.loads(line.removeprefix("DLLL").strip()) for line in lines]
    return [r["data"] for r in records if r.get("step") == "PARAMETER"]


@pytest.mark.slow
@pytest.mark.parametrize("cpu, compute_dtype", [(ZEN3, "float32"), (SAPPHIRE_RAPIDS, "bfloat16")])
def test_default_training_precision_follows_faked_cpu_flags(isbi_data_dir, tmp_path, monkeypatch, cpu, compute_dtype):
    """No flag: the CPU flags decide, and the PARAMETER line says what and why."""
    monkeypatch.setattr(precision, "read_cpu_info", lambda: cpu)
    monkeypatch.setattr(precision, "gpu_details", lambda: [])
    built = []
    build = assemble.build_unet
    monkeypatch.setattr(assemble, "build_unet", lambda spec: built.append(build(spec)) or built[-1])
    argv = ["--exec_mode", "train", *TINY, "--data_dir", str(isbi_data_dir), "--model_dir", str(tmp_path)]
    assert main.main(argv) == 0
    assert built[0].get_layer("enc1_conv1").compute_dtype == compute_dtype
    logged = [p for p in parameter_lines(tmp_path) if "precision_reason" in p]
    assert logged and logged[0]["precision"] == ("float32" if compute_dtype == "float32" else "mixed_bfloat16")
    assert ("CPU has AMX-BF16" in logged[0]["precision_reason"]) == (cpu is SAPPHIRE_RAPIDS)
    info = json.loads((tmp_path / "model.json").read_text())
    assert info["precision"] == logged[0]["precision"]


@pytest.mark.slow
def test_export_of_a_bfloat16_run_computes_in_float32(isbi_data_dir, tmp_path):
    """Training in bfloat16 stores bfloat16 layer policies; the exported SavedModel must still compute in
    float32: no bfloat16 tensor in its graph, and it matches a float32 Keras model of the same weights."""
    common = [*TINY, "--data_dir", str(isbi_data_dir), "--model_dir", str(tmp_path)]
    assert main.main(["--exec_mode", "train", "--precision", "bf16", *common]) == 0
    architecture = json.loads(json.loads((tmp_path / "model.json").read_text())["architecture"])
    assert "mixed_bfloat16" in json.dumps(architecture)  # the trained model really was bfloat16
    keras.mixed_precision.set_global_policy("float32")
    assert main.main(["--exec_mode", "export", "--export_format", "savedmodel", "--precision", "bf16", *common]) == 0
    exported = [p for p in parameter_lines(tmp_path) if p.get("precision_reason", "").startswith("export")]
    assert exported and exported[-1]["precision"] == "float32"

    loaded = tf.saved_model.load(str(tmp_path / "export" / "savedmodel"))
    tile_fn = loaded.signatures["tile"]
    dtypes = {t.dtype for op in tile_fn.graph.get_operations() for t in op.outputs}
    for function in tile_fn.graph.as_graph_def().library.function:  # the model body is a nested function
        for node in function.node_def:
            dtypes |= {tf.as_dtype(v.type) for k, v in node.attr.items() if k in ("T", "dtype", "DstT") and v.type}
    assert tf.bfloat16 not in dtypes

    keras.mixed_precision.set_global_policy("float32")
    model, _, _, _ = assemble.load_trained(tmp_path, "last")
    assert model.get_layer("enc1_conv1").compute_dtype == "float32"
    tile = np.random.default_rng(0).random((1, 128, 128, 1), dtype=np.float32)
    expected = tf.nn.softmax(model(tile, training=False), axis=-1).numpy()
    got = tile_fn(tiles=tf.constant(tile))["probabilities"].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
