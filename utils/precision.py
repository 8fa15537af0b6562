"""Process-wide numerics: seeds, op determinism, mixed precision. Called once, before the model exists."""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras


def configure_seeds(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and TF (weight initialization); with `deterministic`, also make every TF op
    deterministic, so two runs give bit-identical weights (slower on GPU, free on CPU)."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def gpu_available() -> bool:
    return bool(tf.config.list_physical_devices("GPU"))


POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


def configure_precision(amp: bool, policy: str | None = None) -> str:
    """Set the Keras global dtype policy and return its name.

    --amp means mixed_float16 on a GPU (tensor cores; needs loss scaling, see make_optimizer) and
    mixed_bfloat16 on a CPU (no float16 kernels worth using there; bfloat16 has float32's range, so
    no loss scaling). The U-Net's head stays float32 either way.
    `policy` (one of POLICIES) overrides that choice, whatever the device: the explicit way to run
    mixed_float16 with loss scaling on a CPU (slow there, but it exercises the GPU code path).
    """
    if policy is not None and policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    name = policy or (("mixed_float16" if gpu_available() else "mixed_bfloat16") if amp else "float32")
    keras.mixed_precision.set_global_policy(name)
    return name
