"""Process-wide numerics: seeds, op determinism, mixed precision. Called once, before the model exists."""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from unet_medical.base.cpu import CpuInfo, choose_precision, gpu_details, read_cpu_info
from unet_medical.base.errors import UNetError


def configure_seeds(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and TF (weight initialization); with `deterministic`, also make every TF op
    deterministic, so two runs give bit-identical weights (slower on GPU, free on CPU)."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def gpu_available() -> bool:
    return bool(tf.config.list_physical_devices("GPU"))


def decide_precision(precision: str, amp: bool, cpu: CpuInfo, gpus: list[dict] | int,
                     quantization: str = "NONE") -> tuple[str, str]:
    """The Keras dtype policy for the flags `--precision`, `--amp` and `--quantization`, and why.

    The decision itself is utils.cpu.choose_precision's (one place decides); this only turns the
    flags into its `requested` value:
    - `--amp` means "mixed precision" (NVIDIA's --use_amp): bf16 on a CPU, fp16 on a GPU, i.e. auto
      but never float32, even on hardware where it is slow. With --precision bf16/fp16 it is redundant;
      with --precision fp32 it contradicts it (UNetError).
    - fake-quantized models (--quantization other than NONE) run in float32 under auto: their grids
      (e.g. Q8.8, 16 bits) are finer than bfloat16's 8-bit significand, and TF-MOT's fake-quant ops
      are float32 only. Asking for bf16/fp16 explicitly with them is a UNetError.
    """
    quantized = quantization not in (None, "NONE")
    if amp and precision == "fp32":
        raise UNetError("--amp asks for mixed precision and --precision fp32 for none: give one of them")
    if quantized and (amp or precision in ("bf16", "fp16")):
        raise UNetError(f"--quantization {quantization} trains and runs in float32 (its grid is finer than "
                        f"bfloat16/float16 resolve): drop {'--amp' if amp else '--precision ' + precision}")
    requested = precision
    if amp and precision == "auto":
        on_gpu = bool(gpus) if not isinstance(gpus, int) else gpus > 0
        requested = "fp16" if on_gpu else "bf16"
    if quantized:
        requested = "fp32"
    policy, reason = choose_precision(requested, cpu, gpus)
    if quantized and precision == "auto":
        reason = f"--quantization {quantization}: fake quantization runs in float32"
    elif amp and precision == "auto":
        reason = f"--amp (mixed precision, {requested}): {reason}"
    elif precision == "auto":
        reason = f"--precision auto: {reason}"
    return policy, reason


def configure_precision(precision: str = "auto", amp: bool = False, quantization: str = "NONE", *,
                        cpu: CpuInfo | None = None, gpus: list[dict] | int | None = None) -> tuple[str, str]:
    """Set the Keras global dtype policy from the flags (see decide_precision); return (policy, reason).

    mixed_float16 needs loss scaling (utils.training.loop.make_optimizer adds it); mixed_bfloat16 has
    float32's range and needs none. The U-Net's head stays float32 under either policy.
    `cpu`/`gpus` default to this machine (read_cpu_info(), gpu_details()).
    """
    policy, reason = decide_precision(precision, amp, read_cpu_info() if cpu is None else cpu,
                                      gpu_details() if gpus is None else gpus, quantization)
    keras.mixed_precision.set_global_policy(policy)
    return policy, reason
