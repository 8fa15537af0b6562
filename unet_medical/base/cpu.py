"""What CPU this is, what it can do per cycle, how fast it really runs, and which precision to train in.

Base layer: imports only the standard library, NumPy and UNetError; TensorFlow is imported lazily
by `gpu_details` alone.

- `read_cpu_info` parses /proc/cpuinfo text into a `CpuInfo` (unreadable or non-Linux: empty flags).
- `fp32_flops_per_cycle` reads the one table of microarchitecture facts (`FLOP_RULES`).
- `measure_clock_ghz` (cycles counted by a chain of dependent adds on every core, else the kernel's
  figure) / `measure_sgemm_gflops` measure; `peak_report` turns them into a peak and
  the fraction of it a model reaches (a fraction above 1 means the peak model is wrong and raises).
- `choose_precision` turns `--precision auto|fp32|bf16|fp16` into a Keras dtype policy name.
"""
from __future__ import annotations

import ctypes
import dataclasses
import math
import mmap
import os
import pathlib
import platform
import threading
import time
from typing import Callable

import numpy as np

from unet_medical.base.errors import UNetError

CPUINFO = "/proc/cpuinfo"
SCALING_CUR_FREQ = "/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq"
KNOWN_VENDORS = ("GenuineIntel", "AuthenticAMD")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclasses.dataclass(frozen=True)
class CpuInfo:
    """The facts /proc/cpuinfo gives about the first CPU listed (all are the same on x86 servers).

    vendor is "GenuineIntel", "AuthenticAMD" or "other"; family/model are None when not reported;
    logical_cores counts `processor` entries (hyperthreads included), physical_cores distinct
    (physical id, core id) pairs, the cores that own the FMA units.
    """

    vendor: str = "other"
    model_name: str = ""
    family: int | None = None
    model: int | None = None
    flags: frozenset[str] = frozenset()
    logical_cores: int = 0
    physical_cores: int = 0

    def has(self, *flags: str) -> bool:
        """True if the CPU reports every one of `flags`."""
        return all(f in self.flags for f in flags)

    def has_any(self, *flags: str) -> bool:
        return any(f in self.flags for f in flags)


def _int(value: str | None) -> int | None:
    try:
        return int(value, 0) if value is not None else None
    except ValueError:
        return None


def parse_cpu_info(text: str) -> CpuInfo:
    """CpuInfo from /proc/cpuinfo text; fields that are missing or malformed stay at their defaults."""
    blocks: list[dict[str, str]] = [{}]
    for line in text.splitlines():
        if not line.strip():
            if blocks[-1]:
                blocks.append({})
            continue
        key, sep, value = line.partition(":")
        if sep:
            blocks[-1].setdefault(key.strip().lower(), value.strip())
    blocks = [b for b in blocks if b]
    first = next((b for b in blocks if "vendor_id" in b or "model name" in b or "flags" in b),
                 blocks[0] if blocks else {})
    vendor = first.get("vendor_id", "")
    # x86 lists "flags"; arm64 lists "Features".
    flags = frozenset((first.get("flags") or first.get("features") or "").lower().split())
    processors = [b for b in blocks if "processor" in b and _int(b["processor"]) is not None]
    core_ids = {(b.get("physical id"), b.get("core id")) for b in processors if "core id" in b}
    if core_ids:
        physical = len(core_ids)
    elif _int(first.get("cpu cores")):
        sockets = {b.get("physical id") for b in processors} or {None}
        physical = _int(first["cpu cores"]) * len(sockets)
    else:
        physical = len(processors)
    return CpuInfo(
        vendor=vendor if vendor in KNOWN_VENDORS else "other",
        model_name=first.get("model name", ""),
        family=_int(first.get("cpu family")),
        model=_int(first.get("model")),
        flags=flags,
        logical_cores=len(processors),
        physical_cores=physical,
    )


def read_cpu_info(text: str | None = None) -> CpuInfo:
    """Parse `text`, or this machine's /proc/cpuinfo when None.

    Never raises for a missing or unreadable file (macOS, Windows, a sandbox): the result then has
    empty flags, the model name `platform.processor()` gives, and os.cpu_count() cores.
    """
    if text is not None:
        return parse_cpu_info(text)
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as f:
            info = parse_cpu_info(f.read())
    except OSError:
        info = CpuInfo(model_name=platform.processor() or platform.machine())
    cores = os.cpu_count() or 1
    return dataclasses.replace(
        info,
        model_name=info.model_name or platform.processor() or platform.machine(),
        logical_cores=info.logical_cores or cores,
        physical_cores=info.physical_cores or info.logical_cores or cores,
    )


# --- microarchitecture facts -------------------------------------------------------------------

# Intel client cores (Cannon Lake, Ice Lake, Tiger Lake, Rocket Lake) that execute AVX-512 with a
# single 512-bit FMA unit: 32 FP32 FLOP/cycle, not the 64 of the server cores.
_INTEL_ONE_FMA512_MODELS = frozenset({102, 125, 126, 140, 141, 167})


@dataclasses.dataclass(frozen=True)
class FlopRule:
    name: str
    applies: Callable[[CpuInfo], bool]
    flops: int  # FP32 FLOP per cycle per physical core (FMA counts 2)
    why: str


def _amd(cpu: CpuInfo, *families: int) -> bool:
    return cpu.vendor == "AuthenticAMD" and cpu.family in families


def _intel(cpu: CpuInfo) -> bool:
    return cpu.vendor == "GenuineIntel"


# The first rule that applies wins, so the specific microarchitectures come before the generic ISA.
FLOP_RULES: tuple[FlopRule, ...] = (
    FlopRule("AMD Zen 5", lambda c: _amd(c, 26) and c.has("avx512f"), 64,
             "two 512-bit FMA pipes (server/desktop Zen 5; mobile Zen 5 splits AVX-512 in halves)"),
    FlopRule("AMD Zen 4", lambda c: _amd(c, 25) and c.has("avx512f"), 32,
             "AVX-512 executed as two 256-bit halves on two 256-bit FMA pipes"),
    FlopRule("AMD Zen/Zen+", lambda c: _amd(c, 23) and (c.model or 0) < 0x30 and c.has("avx2"), 16,
             "two 128-bit FMA pipes: 256-bit AVX2 ops are split in halves"),
    FlopRule("AMD Zen 2/Zen 3", lambda c: _amd(c, 23, 25) and c.has("avx2", "fma"), 32,
             "two 256-bit FMA pipes"),
    FlopRule("Intel AMX server core", lambda c: _intel(c) and c.has("avx512f", "amx_tile"), 64,
             "Sapphire Rapids or later Xeon: two 512-bit FMA units (AMX tiles not counted)"),
    FlopRule("Intel client AVX-512", lambda c: _intel(c) and c.has("avx512f")
             and c.family == 6 and c.model in _INTEL_ONE_FMA512_MODELS, 32,
             "client core with one 512-bit FMA unit"),
    FlopRule("Intel AVX-512 server core", lambda c: _intel(c) and c.has("avx512f"), 64,
             "two 512-bit FMA units (Xeon Bronze/Silver parts with one unit reach half)"),
    FlopRule("AVX2+FMA", lambda c: c.has("avx2", "fma"), 32, "two 256-bit FMA units"),
    FlopRule("AVX", lambda c: c.has("avx"), 16, "no FMA: one 256-bit add + one 256-bit multiply"),
    FlopRule("SSE", lambda c: c.has_any("sse", "sse2"), 8, "one 128-bit add + one 128-bit multiply"),
)


def fp32_flops_per_cycle(cpu: CpuInfo) -> tuple[int, str]:
    """FP32 FLOP per cycle per physical core, and a one-line reason naming the rule of FLOP_RULES.

    (0, reason) when no x86 SIMD flag is known (non-x86, unreadable /proc/cpuinfo): no peak then.
    """
    for rule in FLOP_RULES:
        if rule.applies(cpu):
            return rule.flops, f"{rule.name}: {rule.why} = {rule.flops} FP32 FLOP/cycle/core"
    return 0, "no known x86 SIMD flag (sse/avx/avx2/avx512f): FP32 FLOP/cycle unknown"


# What a network computes in, as the benchmark names it: the Keras policy's compute dtype, or an exported
# model's precision (int8 for TFLite / OpenVINO / ONNX Runtime quantized files).
COMPUTE_PRECISIONS = ("float32", "bfloat16", "float16", "int8")
_POLICY_COMPUTE = {"float32": "float32", "fp32": "float32", "mixed_bfloat16": "bfloat16", "bf16": "bfloat16",
                   "bfloat16": "bfloat16", "mixed_float16": "float16", "fp16": "float16", "float16": "float16",
                   "int8": "int8"}


def compute_precision(policy: str) -> str:
    """'mixed_bfloat16' -> 'bfloat16', 'fp32' -> 'float32', 'int8' -> 'int8' (ValueError if unknown)."""
    try:
        return _POLICY_COMPUTE[policy]
    except KeyError:
        raise ValueError(f"unknown precision {policy!r} (known: {', '.join(sorted(_POLICY_COMPUTE))})") from None


@dataclasses.dataclass(frozen=True)
class ComputeUnit:
    """The unit a precision runs on: its name, FLOP (int8: OP) per cycle per physical core, and why."""

    name: str
    flops_per_cycle: int
    why: str


def compute_unit(cpu: CpuInfo, precision: str) -> ComputeUnit:
    """The fastest unit oneDNN can run `precision` ('float32', 'bfloat16', 'float16', 'int8') on, for `cpu`.

    Multiply-adds count 2. AMX tiles: TDPBF16PS does 16x16x32 bf16 and TDPBUSD 16x16x64 int8 multiply-adds
    in 16 cycles per core, i.e. 1,024 bf16 / 2,048 int8 per cycle. AVX512_BF16's VDPBF16PS and VNNI's
    VPDPBUSD fold 2 (bf16) or 4 (int8) products into each FP32 lane, at the FP32 FMA rate of the same
    vector unit. TensorFlow has no fast float16 CPU kernels: float16 is bounded by the FP32 unit.
    """
    fp32, why = fp32_flops_per_cycle(cpu)
    precision = compute_precision(precision)
    if precision == "bfloat16":
        if cpu.has("amx_bf16"):
            return ComputeUnit("AMX-BF16", 2048, "AMX tiles: 1,024 bf16 multiply-adds per cycle per core")
        if cpu.has("avx512_bf16") and fp32:
            return ComputeUnit("AVX512-BF16", 2 * fp32, f"VDPBF16PS: 2 bf16 products per FP32 lane ({why})")
        return ComputeUnit("FP32 FMA (bfloat16 emulated)", fp32, f"no AVX512_BF16/AMX-BF16: bf16 computed in FP32 ({why})")
    if precision == "int8":
        if cpu.has("amx_int8"):
            return ComputeUnit("AMX-INT8", 4096, "AMX tiles: 2,048 int8 multiply-adds per cycle per core")
        if cpu.has_any("avx512_vnni", "avx_vnni") and fp32:
            return ComputeUnit("VNNI", 4 * fp32, f"VPDPBUSD: 4 u8 x s8 products per 32-bit lane ({why})")
        if cpu.has("avx2") and fp32:
            return ComputeUnit("AVX2 int8 (no VNNI)", 2 * fp32,
                               f"VPMADDUBSW + VPMADDWD: about 2 products per 32-bit lane per cycle ({why})")
        return ComputeUnit("FP32 FMA (int8 unsupported)", fp32, why)
    if precision == "float16":
        return ComputeUnit("FP32 FMA (no TF float16 CPU kernels)", fp32, why)
    return ComputeUnit("FP32 FMA", fp32, why)


# Instructions that multiply int8 faster than float: VNNI's VPDPBUSD (4 u8 x s8 products per 32-bit lane)
# and AMX-INT8 tiles. Without them int8 goes through VPMADDUBSW + VPMADDWD, measured no faster than float.
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def has_int8_dot_product(cpu: CpuInfo) -> bool:
    """True if the CPU reports VNNI (AVX-512 or AVX) or AMX-INT8, the units that make int8 pay off."""
    return cpu.has_any(*INT8_DOT_FLAGS)


_SUMMARY_FLAGS = (  # (label, flags any of which shows it), in the order describe() lists them
    ("FMA", ("fma",)),
    ("VNNI", ("avx512_vnni", "avx_vnni")),
    ("BF16", ("avx512_bf16",)),
    ("FP16", ("avx512_fp16",)),
    ("AMX-BF16", ("amx_bf16",)),
    ("AMX-FP16", ("amx_fp16",)),
    ("AMX-INT8", ("amx_int8",)),
)


def flags_summary(cpu: CpuInfo) -> str:
    """The flags that matter for deep learning: widest vector ISA, then FMA/VNNI/BF16/FP16/AMX."""
    for label, flag in (("AVX-512", "avx512f"), ("AVX2", "avx2"), ("AVX", "avx"),
                        ("SSE4.2", "sse4_2"), ("SSE2", "sse2"), ("SSE", "sse"), ("NEON", "asimd")):
        if flag in cpu.flags:
            parts = [label]
            break
    else:
        return "no SIMD flags known"
    for label, flags in _SUMMARY_FLAGS:
        if label == "FMA" and parts[0] == "AVX-512":
            continue  # AVX-512 implies FMA
        if cpu.has_any(*flags):
            parts.append(label)
    return ", ".join(parts)


def describe(cpu: CpuInfo) -> str:
    """One line: "Intel(R) Xeon(R) Processor (GenuineIntel family 6 model 143; AVX-512, VNNI, ...)"."""
    fam = "?" if cpu.family is None else cpu.family
    mod = "?" if cpu.model is None else cpu.model
    return f"{cpu.model_name or 'unknown CPU'} ({cpu.vendor} family {fam} model {mod}; {flags_summary(cpu)})"


# --- measurements ------------------------------------------------------------------------------

def _cpuinfo_mhz() -> list[float]:
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == "cpu mhz":
            try:
                out.append(float(value))
            except ValueError:
                pass
    return out


def _scaling_cur_mhz() -> list[float]:
    try:
        with open(SCALING_CUR_FREQ, encoding="ascii") as f:
            return [int(f.read().strip()) / 1000.0]  # kHz
    except (OSError, ValueError):
        return []


def kernel_clock_ghz(seconds: float = 0.3) -> float:
    """The kernel-reported clock, in GHz, while a NumPy matmul keeps the cores busy.

    Samples `cpu MHz` from /proc/cpuinfo (all processors, five samples over `seconds`) and averages;
    without it, cpu0's cpufreq scaling_cur_freq. In a VM this is usually the nominal/TSC clock, below the
    turbo clock the cores run at (Zen 4 here: 2.596 GHz reported, 3.5-3.6 GHz counted). NaN when neither
    source exists.
    """
    stop = threading.Event()

    def busy() -> None:  # the matmul releases the GIL, so sampling below runs concurrently
        a = np.ones((384, 384), np.float32)
        out = np.empty_like(a)
        while not stop.is_set():
            np.matmul(a, a, out=out)

    worker = threading.Thread(target=busy, daemon=True)
    worker.start()
    samples: list[float] = []
    try:
        n = 5
        time.sleep(min(0.05, seconds / (n + 1)))  # let the governor ramp up
        for _ in range(n):
            samples += _cpuinfo_mhz() or _scaling_cur_mhz()
            time.sleep(seconds / n)
    finally:
        stop.set()
        worker.join()
    return sum(samples) / len(samples) / 1000.0 if samples else math.nan


CHAIN_ADDS = 8  # dependent adds per loop iteration: the loop's own dec/jnz run beside them


def dependent_add_chain(adds: int = CHAIN_ADDS) -> Callable[[int], int] | None:
    """f(n) running n iterations of `adds` dependent `add rax, 1` (x86-64 machine code in an executable
    page) and returning adds * n; None off x86-64 or where the OS refuses an executable mapping.

    An integer add has a latency of one cycle on every x86-64 core, so the loop takes adds * n cycles:
    timing it counts the clock the core really runs at, which a VM's /proc/cpuinfo does not report.
    No library measures this; the loop is 40 bytes.
    """
    if platform.machine().lower() not in ("x86_64", "amd64") or not 1 <= adds <= 28:
        return None
    loop = bytes.fromhex("4883c001") * adds + bytes.fromhex("48ffc9")  # add rax, 1 (x adds); dec rcx
    code = (bytes.fromhex("4889f9" "31c0")  # mov rcx, rdi (n); xor eax, eax
            + loop + bytes([0x75, (-(len(loop) + 2)) & 0xFF])  # jnz back to the first add
            + b"\xc3")  # ret (rax = adds * n)
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, ValueError, AttributeError):  # W+X refused (hardened kernels), or no mmap.PROT_EXEC
        return None
    page.write(code)
    function = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_uint64)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
    function.page = page  # the mapping lives as long as the function
    return function


def counted_clock_ghz(seconds: float = 0.2, threads: int | None = None, adds: int = CHAIN_ADDS) -> float:
    """The clock in GHz counted by `dependent_add_chain` on `threads` cores at once (default: every core
    this process may use, so all-core turbo, the clock a multi-threaded convolution runs at): per thread
    the best of 3 runs of about seconds / 3, median over threads. NaN where the chain cannot run.
    ctypes releases the GIL, so the threads run in parallel.

    Each run is timed on its thread's CPU clock, not the wall clock: on a loaded machine (3 test workers
    on 2 cores) the OS deschedules the thread for whole time slices, and wall time then read 1.85 GHz on
    a 3.6 GHz core. A guest kernel cannot see the hypervisor's steal time, so that alone can still read slow.
    """
    chain = dependent_add_chain(adds)
    if chain is None:
        return math.nan
    threads = threads or _usable_cpus()
    probe = time.thread_time()
    chain(100_000)
    per_iteration = max((time.thread_time() - probe) / 100_000, 1e-10)
    n = max(10_000, int(seconds / 3 / per_iteration))
    rates: list[float] = []

    def run() -> None:
        best = math.inf
        for _ in range(3):
            start = time.thread_time()
            chain(n)
            best = min(best, time.thread_time() - start)
        rates.append(adds * n / best / 1e9)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return float(np.median(rates))


def measure_clock_ghz(seconds: float = 0.3) -> tuple[float, str]:
    """(GHz, source): the counted clock (counted_clock_ghz) where the add chain runs, else the
    kernel-reported one (kernel_clock_ghz). A peak must bound what runs, and the kernel's figure can be
    below the real clock: on Zen 4 it made the bfloat16 "peak" 332 GFLOP/s while the paper net ran at 402."""
    counted = counted_clock_ghz(seconds)
    if math.isfinite(counted) and counted > 0:
        return counted, "counted (dependent adds on every core)"
    return kernel_clock_ghz(seconds), "kernel-reported (cpu MHz under load)"


def measure_sgemm_gflops(n: int = 2048, repeats: int = 3) -> float:
    """GFLOP/s of one n x n float32 matmul (2 n^3 FLOP) through NumPy's BLAS, best of `repeats`
    after one warm-up, all threads the BLAS uses."""
    if n < 1 or repeats < 1:
        raise ValueError(f"n and repeats must be >= 1, got n={n}, repeats={repeats}")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    np.matmul(a, b, out=c)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / max(best, 1e-9) / 1e9


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def peak_report(measured_gflops: float | None, cpu: CpuInfo | None = None, *,
                clock_ghz: float | None = None, sgemm_gflops: float | None = None,
                sgemm_n: int = 2048, precision: str = "float32") -> dict:
    """Peak GFLOP/s of `cpu` (this machine when None) in `precision`, and how much of it a model reaches.

    peak = cores * FLOP/cycle of the unit `precision` runs on (compute_unit) * clock, with physical
    cores (on this machine, no more than the process may run on) and the clock from measure_clock_ghz
    unless `clock_ghz` is given; the FP32 SGEMM reference is measured at `sgemm_n` unless
    `sgemm_gflops` is given. Fractions are None when the value they need is unknown. A fraction of
    peak above 1 (model, or SGEMM against the FP32 unit) is a bug in the peak model and raises
    RuntimeError.
    """
    here = cpu is None
    cpu = read_cpu_info() if here else cpu
    unit = compute_unit(cpu, precision)
    flops, why = unit.flops_per_cycle, f"{unit.name}: {unit.why}"
    fp32_flops = fp32_flops_per_cycle(cpu)[0]
    cores = cpu.physical_cores or cpu.logical_cores
    if here:
        cores = min(cores, _usable_cpus())
    clock, clock_source = measure_clock_ghz() if clock_ghz is None else (float(clock_ghz), "given")
    sgemm = measure_sgemm_gflops(sgemm_n) if sgemm_gflops is None else float(sgemm_gflops)
    clock_known = math.isfinite(clock) and clock > 0
    peak = cores * flops * clock if flops and cores and clock_known else None
    fp32_peak = cores * fp32_flops * clock if fp32_flops and cores and clock_known else None

    def fraction(value: float | None, of: float | None) -> float | None:
        return None if value is None or not of else value / of

    report = {
        "cpu": cpu.model_name,
        "describe": describe(cpu),
        "flags": flags_summary(cpu),
        "precision": compute_precision(precision),
        "unit": unit.name,
        "flop_per_cycle": flops,
        "flop_per_cycle_reason": why,
        "clock_ghz": clock,
        "clock_source": clock_source,
        "cores": cores,
        "peak_gflops": peak,
        "sgemm_gflops": sgemm,
        "fp32_peak_gflops": fp32_peak,
        "sgemm_fraction_of_peak": fraction(sgemm, fp32_peak),
        "measured_gflops": measured_gflops,
        "fraction_of_peak": fraction(measured_gflops, peak),
        "fraction_of_sgemm": fraction(measured_gflops, sgemm),
    }
    for key, per_cycle, of in (("fraction_of_peak", flops, peak), ("sgemm_fraction_of_peak", fp32_flops, fp32_peak)):
        if report[key] is not None and report[key] > 1.0:
            raise RuntimeError(
                f"peak fraction > 1: the peak model is wrong for {describe(cpu)} ({key}={report[key]:.3f}: "
                f"{cores} cores x {per_cycle} FLOP/cycle x {clock:.3f} GHz = {of:.1f} GFLOP/s; {why})")
    return report


# --- precision ---------------------------------------------------------------------------------

def gpu_details() -> list[dict]:
    """This machine's GPUs as TF describes them ({"compute_capability": (8, 0), "device_name": ...}).
    Imports TensorFlow."""
    import tensorflow as tf

    return [tf.config.experimental.get_device_details(g) for g in tf.config.list_physical_devices("GPU")]


def _capability(gpu: dict) -> tuple[int, int] | None:
    cc = gpu.get("compute_capability") if isinstance(gpu, dict) else None
    if isinstance(cc, str):
        cc = cc.split(".")
    try:
        major, minor = (int(x) for x in cc)
        return major, minor
    except (TypeError, ValueError):
        return None


def choose_precision(requested: str, cpu: CpuInfo, gpus: list[dict] | int) -> tuple[str, str]:
    """The Keras dtype policy for `--precision requested`, and why.

    `gpus` is `gpu_details()` (dicts with "compute_capability") or a GPU count (capability unknown).
    When there is a GPU the model runs on it, so the GPU decides and the CPU flags do not matter.
    auto: every GPU has tensor cores (compute capability >= 7.0) -> mixed_float16 (with loss
    scaling); GPU without, or of unknown capability -> float32; no GPU: a CPU with AVX512_BF16 or
    AMX-BF16 -> mixed_bfloat16, else float32. fp32/bf16/fp16 are honoured; the reason says when
    they will be slow.
    """
    if requested not in PRECISIONS:
        raise UNetError(f"--precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if isinstance(gpus, bool) or not isinstance(gpus, (int, list, tuple)):
        raise TypeError(f"gpus must be a list of device details or a count, got {gpus!r}")
    caps = [None] * gpus if isinstance(gpus, int) else [_capability(g) for g in gpus]
    on_gpu = bool(caps)
    known = on_gpu and all(c is not None for c in caps)
    cc = min(caps) if known else None
    cc_text = f"GPU compute capability {cc[0]}.{cc[1]}" if cc else "GPU compute capability unknown"
    cpu_bf16 = cpu.has_any(*BF16_FLAGS)
    cpu_bf16_names = "/".join(n for f, n in zip(BF16_FLAGS, ("AVX512_BF16", "AMX-BF16")) if f in cpu.flags)

    if requested == "fp32":
        return "float32", "forced by --precision fp32"
    if requested == "fp16":
        if not on_gpu:
            return "mixed_float16", ("forced by --precision fp16 on a CPU: TF runs float16 (with loss "
                                     "scaling) but has no fast CPU float16 kernels, expect it slower than float32")
        if cc and cc >= (7, 0):
            return "mixed_float16", f"forced by --precision fp16: {cc_text} >= 7.0 has tensor cores (loss scaling on)"
        return "mixed_float16", f"forced by --precision fp16: {cc_text}, tensor cores not known to exist (loss scaling on)"
    if requested == "bf16":
        if on_gpu:
            if cc and cc >= (8, 0):
                return "mixed_bfloat16", f"forced by --precision bf16: {cc_text} >= 8.0 has bfloat16 tensor cores"
            return "mixed_bfloat16", f"forced by --precision bf16: {cc_text}, no bfloat16 tensor cores known (< 8.0): likely slow"
        if cpu_bf16:
            return "mixed_bfloat16", f"forced by --precision bf16: CPU has {cpu_bf16_names}"
        return "mixed_bfloat16", ("forced by --precision bf16: CPU has no AVX512_BF16/AMX, bfloat16 is "
                                  "emulated and slower than float32")
    # auto
    if on_gpu:
        if cc and cc >= (7, 0):
            return "mixed_float16", f"{cc_text} >= 7.0 has tensor cores: float16 compute with loss scaling"
        if cc:
            return "float32", f"{cc_text} < 7.0: no tensor cores, float16 would not be faster"
        return "float32", f"{cc_text}: not assuming tensor cores (pass gpu_details() to decide)"
    if cpu_bf16:
        return "mixed_bfloat16", f"CPU has {cpu_bf16_names}: oneDNN runs bfloat16 natively, no loss scaling needed"
    return "float32", "CPU has no AVX512_BF16/AMX: bfloat16 would be emulated and slower"


def peak_memory_mb() -> float:
    """This process's peak resident memory so far, in MiB.

    Linux: VmHWM of /proc/self/status, the high-water mark of this program's own address space.
    getrusage's ru_maxrss is the fallback elsewhere: on Linux it starts a program started by fork + exec
    at its parent's size (the kernel carries the forked copy's mark across exec), so a run launched from
    a 850 MB test process reported 850 MB before doing anything."""
    try:
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024.0, 1)  # kB
    except OSError:
        pass
    import resource  # POSIX only; imported here so that the module stays importable elsewhere

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)  # KiB on Linux
