"""Throughput and latency of the training step and of inference (--exec_mode benchmark, --benchmark).

What is timed is what the project runs, nothing re-implemented:
    train    the run's trainer, utils.training.loop.build_trainer: the compiled step (forward, CE + Dice
             loss with the class weights, loss scaling, gradient, reduction over workers, Adam update)
             on synthetic tensors (model only) or on its batch stream (--bench_input real: the recipe's
             normalization, crops, sampling and augmentation included);
    predict  utils.inference.keras_predictor on synthetic tiles (model only: one call per batch of
             tiles), or --bench_input real: utils.inference.tiled_predict on the test images (end
             to end: normalization, mirror padding, tiling, stitching; one image per step).
The network is built from the flags (--padding, --base_filters, --depth, ...) with random weights:
speed does not depend on the weights. `bench_warmup_steps` untimed steps (tracing, autotuning)
come first, then `bench_steps` timed ones; each step ends when its result is on the host.

Reported (logger and MODEL_DIR/benchmark_results.json): img/s over the whole timed run and the mean
of per-step rates, latency mean and p50/p90/p95/p99 in ms, GFLOP per image (FLOPs = 2 x MACs of
model.complexity; a training step is counted as 3 forward passes, since the backward pass costs
about twice the forward one), the precision the run computed in (--precision, see
base.precision; an exported model's own precision with --model_path) and, on CPU, the peak of the
unit that precision runs on (base.cpu.peak_report: physical cores x FLOP/cycle of AMX-BF16, AVX512-BF16,
VNNI / AMX-INT8 or the FP32 FMA units, with the rule that gives it, x the clock measured under load),
the FP32 SGEMM GFLOP/s of a large NumPy matrix product, and the fractions of both the model reached.
Beside the peak, a measured ceiling (cli.ceiling): the network's own costliest convolution timed alone
in the same run, precision, batch and step kind, and the fraction of it the whole network reached.
No peak is claimed for GPUs.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from unet_medical.model.complexity import total_macs
from unet_medical.model.unet import UNetSpec, build_unet
from unet_medical.base.artifacts import write_json
from unet_medical.cli.config import Config, batch_or_default
from unet_medical.model.config import DEFAULT_DEPTH
from unet_medical.base.errors import UNetError
from unet_medical.base.timing import latency_stats, throughput, time_steps


RESULTS_FILE = "benchmark_results.json"



# Backward pass ~ 2 forward passes (gradients w.r.t. activations and w.r.t. weights).
TRAIN_FORWARD_EQUIVALENTS = 3



def resolve_mode(cfg: Config) -> str:
    """'train' or 'predict': --benchmark_mode with --exec_mode benchmark, else the exec mode itself."""
    if cfg.exec_mode == "benchmark":
        return cfg.benchmark_mode
    if cfg.exec_mode in ("train", "predict"):
        return cfg.exec_mode
    raise UNetError(f"--benchmark works with --exec_mode train or predict, not --exec_mode {cfg.exec_mode} "
                    "(or use --exec_mode benchmark --benchmark_mode train|predict)")



def benchmark_spec(cfg: Config, in_channels: int = 1) -> UNetSpec:
    """The network of the flags: a 3-D U-Net with --dims 3, else the 2-D one."""
    return UNetSpec(n_classes=cfg.num_classes or 2, in_channels=in_channels, base_filters=cfg.base_filters,
                    depth=cfg.depth or DEFAULT_DEPTH, padding=cfg.padding, batch_norm=cfg.batch_norm,
                    instance_norm=cfg.instance_norm, dropout=cfg.dropout,
                    dims=3 if cfg.dims == "3" else 2)


def benchmark_patch(cfg: Config, spec: UNetSpec) -> tuple[int, ...]:
    """The input each synthetic sample has, without its channels: (H, W) of --tile_size / --crop_size or the
    default crop; for a 3-D U-Net the --patch_size patch, by default the largest cube the --dims 3 recipe
    allows on this machine (cli.recipe.patch_cap: 64 on CPU), checked against the depth."""
    if spec.dims == 3:
        from unet_medical.cli.recipe import patch_cap
        from unet_medical.data.patches3d import check_patch_size, parse_patch_size

        patch = parse_patch_size(cfg.patch_size) or (patch_cap()[0],) * 3
        check_patch_size(patch, spec.depth)
        return patch
    from unet_medical.cli.assemble import check_crop_size, default_crop_size

    size = cfg.tile_size or cfg.crop_size or default_crop_size(spec)
    check_crop_size(spec, size)
    return (size, size)



def train_benchmark(cfg: Config, dist: Any, logger: Any = None) -> tuple[list[float], dict[str, Any]]:
    """Time the run's trainer (utils.training.loop.build_trainer): with --bench_input real, on the batch
    stream of the training run these flags would start (the recipe's normalization, crop, sampling,
    class weights; augmentation), on fold --fold's training images; with synthetic input, the same step
    on fixed random tensors (class weights only if given by flag: 'auto' needs the data)."""
    step, info = train_benchmark_step(cfg, dist, logger)
    return time_steps(step, cfg.bench_warmup_steps, cfg.bench_steps), info


def train_benchmark_step(cfg: Config, dist: Any, logger: Any = None) -> tuple[Callable[[int], Any], dict[str, Any]]:
    """(step, info): the call train_benchmark times (step(i) runs the i-th optimization step and returns
    once its loss is on the host) and the run's fields. Also what benchmarks/profile_network.py traces."""
    from unet_medical.cli.assemble import check_crop_size, load_training_set
    from unet_medical.cli.recipe import class_weights_for, resolve_recipe, trainer_data
    from unet_medical.data.folds import fold_split
    from unet_medical.data.pipeline import CropGeometry
    from unet_medical.training.loop import TrainData, build_trainer

    spec = benchmark_spec(cfg)
    if cfg.bench_input == "real":
        data = load_training_set(cfg)
        train_idx, _ = fold_split(len(data.images), cfg.num_folds, cfg.fold)
        spec = dataclasses.replace(spec, n_classes=len(data.class_names), in_channels=int(data.images[0].shape[-1]))
        cfg = resolve_recipe(cfg, data, train_idx, spec.padding, spec.depth, logger or _Silent(), dist.is_chief)
        inputs = trainer_data(cfg, data, train_idx, check_crop_size(spec, cfg.crop_size), spec.n_classes)
    elif spec.dims == 3:  # same padding: the patch is both input and output
        patch = benchmark_patch(cfg, spec)
        inputs = TrainData([], [], [], CropGeometry(max(patch), max(patch)), spec.n_classes,
                           class_weights=class_weights_for(cfg, spec.n_classes), patch_size=patch)
    else:
        inputs = TrainData([], [], [], check_crop_size(spec, cfg.crop_size), spec.n_classes,
                           class_weights=class_weights_for(cfg, spec.n_classes))
    geometry = inputs.geometry
    with dist.scope():
        model = build_unet(spec)
    trainer = build_trainer(cfg, model, inputs, dist)
    dist.broadcast_variables(list(model.variables) + list(trainer.optimizer.variables))
    total = cfg.bench_warmup_steps + cfg.bench_steps
    sample_in = inputs.patch_size or (geometry.input_size,) * 2
    sample_out = inputs.patch_size or (geometry.output_size,) * 2
    if cfg.bench_input == "real":
        batches = iter(trainer.batches(0, total))
        step = lambda i: float(trainer.step(*next(batches)))  # noqa: E731
    else:
        rng = np.random.default_rng(cfg.seed)
        images = tf.constant(rng.random((cfg.batch_size, *sample_in, spec.in_channels), np.float32))
        labels = tf.constant(rng.integers(0, spec.n_classes, (cfg.batch_size, *sample_out), np.int32))
        step = lambda i: float(trainer.step(images, labels))  # noqa: E731
    forward = 2 * total_macs(model, tuple(sample_in)) / 1e9
    return step, {"images_per_step": cfg.batch_size * dist.size, "latency_per": "step",
                  "input_size": geometry.input_size, "output_size": geometry.output_size,
                  "sample_shape": list(sample_in),
                  "gflop_per_img_forward": forward, "gflop_per_img": TRAIN_FORWARD_EQUIVALENTS * forward,
                  "flop_count": f"{TRAIN_FORWARD_EQUIVALENTS} x forward", "xla": cfg.xla,
                  "normalization": cfg.normalization if cfg.bench_input == "real" else "none (synthetic)",
                  "class_weights": ",".join(f"{w:g}" for w in inputs.class_weights) if inputs.class_weights
                  else "none", "workers": dist.size, "distribution": dist.name, "spec": dataclasses.asdict(spec)}


class _Silent:
    """A logger that drops records (train_benchmark called without one)."""

    def log(self, *args: Any, **kwargs: Any) -> None:
        pass


def _predictor(cfg: Config, in_channels: int) -> tuple[UNetSpec, Any, Any, int | None]:
    """(spec, predictor, Keras model whose MACs are counted, fixed tile or None): the network built from
    the flags with random weights, or an exported model (--model_path) run by its own runtime."""
    from unet_medical.inference.tiling import keras_predictor

    if cfg.model_path:
        from unet_medical.inference.runtimes import load_exported

        exported = load_exported(cfg.model_path)
        return exported.spec, exported, build_unet(exported.spec), exported.tile_size_for(cfg.tile_size)
    spec = benchmark_spec(cfg, in_channels)
    model = build_unet(spec)
    return spec, keras_predictor(model), model, cfg.tile_size



def _exported_fields(predictor: Any) -> dict[str, Any]:
    """model_path, format and precision of an exported model (utils.inference.runtimes.ExportedModel)."""
    from unet_medical.inference.runtimes import ExportedModel

    if not isinstance(predictor, ExportedModel):
        return {}
    return {"model_path": str(predictor.path), "format": predictor.format, "exported_precision": predictor.precision}



def _predict_benchmark(cfg: Config) -> tuple[list[float], dict[str, Any]]:
    step, info = predict_benchmark_step(cfg)
    return time_steps(step, cfg.bench_warmup_steps, cfg.bench_steps), info


def predict_benchmark_step(cfg: Config) -> tuple[Callable[[int], Any], dict[str, Any]]:
    """(step, info): the call the predict benchmark times (step(i): one batch of synthetic tiles, or with
    --bench_input real the i-th test image end to end, normalization and tiling included) and the fields."""
    from unet_medical.data.layouts import load_test_data
    from unet_medical.data.normalize import normalize_image
    from unet_medical.inference.tiling import plan_tiles, tile_starts, tiled_predict
    from unet_medical.cli.assemble import check_crop_size

    if cfg.bench_input == "real":
        data = load_test_data(cfg.data_dir, input_path=cfg.input)
        spec, predictor, model, tile_size = _predictor(cfg, int(data.images[0].shape[-1]))
        plans = [plan_tiles(spec, im.shape[:2], tile_size=tile_size, max_tile_size=cfg.max_tile_size,
                            context=cfg.tile_context) for im in data.images]

        def step(i: int) -> None:
            k = i % len(data.images)
            tiled_predict(predictor, normalize_image(data.images[k]), plans[k], batch_size=cfg.batch_size,
                          tta=bool(cfg.tta))

        tiles = [len(tile_starts(im.shape[0], p.core)) * len(tile_starts(im.shape[1], p.core)) * (8 if cfg.tta else 1)
                 for im, p in zip(data.images, plans)]
        per_tile = {p.tile_size: 2 * total_macs(model, (p.tile_size,) * 2) / 1e9 for p in set(plans)}
        gflop = float(np.mean([n * per_tile[p.tile_size] for n, p in zip(tiles, plans)]))
        return step, {"images_per_step": 1, "latency_per": "image", "input_size": plans[0].tile_size,
                      "sample_shape": [plans[0].tile_size] * 2,
                      "tiles_per_image": float(np.mean(tiles)), "tiles_per_call": cfg.batch_size,
                      "image_size": list(data.images[0].shape[:2]), "tta": bool(cfg.tta), "gflop_per_img": gflop,
                      "flop_count": "forward x tiles", "spec": dataclasses.asdict(spec), **_exported_fields(predictor)}
    spec, predictor, model, tile_size = _predictor(cfg, 1)
    sample = benchmark_patch(cfg.replace(tile_size=tile_size), spec)
    output = sample if spec.dims == 3 else (check_crop_size(spec, sample[0]).output_size,) * 2
    tiles = np.random.default_rng(cfg.seed).random((cfg.batch_size, *sample, spec.in_channels), np.float32)
    info = {"images_per_step": cfg.batch_size, "latency_per": "batch", "input_size": max(sample),
            "output_size": max(output), "sample_shape": list(sample),
            "gflop_per_img": 2 * total_macs(model, sample) / 1e9,
            "flop_count": "forward", "spec": dataclasses.asdict(spec), **_exported_fields(predictor)}
    return lambda i: predictor(tiles), info



def run_benchmark(cfg: Config, logger: Any, dist: Any) -> dict[str, Any]:
    """Time cfg's mode; log and (on rank 0) write MODEL_DIR/benchmark_results.json. Returns the results."""
    from unet_medical.base.precision import configure_precision, configure_seeds, gpu_available

    mode = resolve_mode(cfg)
    cfg = cfg.replace(batch_size=batch_or_default(cfg))
    if cfg.model_path and mode == "train":
        raise UNetError(f"--model_path={cfg.model_path}: an exported model can be benchmarked for predict "
                        "only (--benchmark_mode predict); training benchmarks build the network from the flags")
    if mode == "predict" and cfg.xla:
        logger.log("PARAMETER", {"message": "--xla compiles the training step only; the predict "
                                            "benchmark runs without it"})
    configure_seeds(cfg.seed, cfg.deterministic)
    # The benchmark builds the plain network of the flags (no --quantization), so only --precision/--amp count.
    policy, reason = configure_precision(cfg.precision, cfg.amp)
    if mode == "train":
        times, info = train_benchmark(cfg, dist, logger)
    else:
        times, info = _predict_benchmark(cfg)
    if "exported_precision" in info:  # --model_path: the runtime of the file decides, not the Keras policy
        policy = info.pop("exported_precision")
        reason = f"{info['model_path']} was exported in {policy}; --precision/--amp do not apply to it"
    logger.log("PARAMETER", {"precision": policy, "precision_reason": reason})
    results: dict[str, Any] = {"mode": mode, "bench_input": cfg.bench_input, "batch_size": cfg.batch_size,
                               "precision": policy, "precision_reason": reason,
                               "warmup_steps": cfg.bench_warmup_steps, "steps": cfg.bench_steps}
    results.update(throughput(info.pop("images_per_step"), times))
    results.update(latency_stats(times))
    results.update(info)
    results["achieved_gflops"] = results["img_per_s"] * results["gflop_per_img"]
    if not cfg.model_path:  # an exported file runs in another runtime: the Keras convolution does not bound it
        results.update(network_ceiling(cfg, mode, results))
    if gpu_available():
        results.update(peak=None, peak_note="no peak figure is claimed for GPUs")
    else:
        results.update(cpu_peak(results["achieved_gflops"], policy, logger))
    logger.log("BENCHMARK", {k: v for k, v in results.items() if isinstance(v, (int, float, str)) or v is None})
    if dist.is_chief:
        write_json(pathlib.Path(cfg.model_dir) / RESULTS_FILE, results)
    return results



def network_ceiling(cfg: Config, mode: str, results: dict[str, Any]) -> dict[str, Any]:
    """The ceiling fields (cli.ceiling.conv_ceiling): the benchmarked network's costliest convolution timed
    alone with the same precision, batch and step kind, and the fraction of it the whole network reached."""
    from unet_medical.cli.ceiling import conv_ceiling

    model = build_unet(UNetSpec(**results["spec"]))
    batch = cfg.batch_size
    ceiling = conv_ceiling(model, tuple(results["sample_shape"]), batch, train=mode == "train",
                           warmup=max(1, cfg.bench_warmup_steps), steps=cfg.bench_steps)
    ceiling["fraction_of_ceiling"] = results["achieved_gflops"] / ceiling["ceiling_gflops"]
    return ceiling


def cpu_peak(achieved_gflops: float, precision: str, logger: Any) -> dict[str, Any]:
    """The results' peak fields from base.cpu.peak_report for the unit `precision` runs on (AMX-BF16,
    AVX512-BF16, VNNI / AMX-INT8 for int8 exports, else the FP32 FMA units): unit, flop_per_cycle and its
    reason, measured clock, peak, the FP32 SGEMM, and the fractions of both that `achieved_gflops` is.

    A fraction above 1 means the peak model is wrong for this CPU: peak_report raises; the timed results
    are kept and the error is recorded and logged instead of the fractions.
    """
    from unet_medical.base.cpu import peak_report

    try:
        report = peak_report(achieved_gflops, precision=precision)
    except (RuntimeError, ValueError) as exc:
        logger.log("PARAMETER", {"peak_error": str(exc)})
        return {"peak": None, "peak_error": str(exc)}
    logger.log("PARAMETER", {"cpu": report["describe"], "unit": report["unit"], "flop_per_cycle": report["flop_per_cycle"],
                             "flop_per_cycle_reason": report["flop_per_cycle_reason"],
                             "clock_ghz": report["clock_ghz"], "peak_gflops": report["peak_gflops"],
                             "sgemm_gflops": report["sgemm_gflops"]})
    return {"peak": report, **{key: report[key] for key in (
        "unit", "flop_per_cycle", "flop_per_cycle_reason", "clock_ghz", "peak_gflops", "sgemm_gflops",
        "fraction_of_peak", "fraction_of_sgemm")}}


def benchmark_step(cfg: Config, dist: Any, logger: Any = None) -> tuple[Callable[[int], Any], dict[str, Any]]:
    """(step, info) of cfg's mode (train_benchmark_step or predict_benchmark_step), with the precision
    policy and seeds set as run_benchmark sets them: what benchmarks/profile_network.py profiles."""
    from unet_medical.base.precision import configure_precision, configure_seeds

    configure_seeds(cfg.seed, cfg.deterministic)
    policy, reason = configure_precision(cfg.precision, cfg.amp)
    step, info = (train_benchmark_step(cfg, dist, logger) if resolve_mode(cfg) == "train"
                  else predict_benchmark_step(cfg))
    return step, {"precision": policy, "precision_reason": reason, **info}
