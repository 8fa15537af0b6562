"""Every run option in one frozen dataclass: flag definitions, YAML loading and validation.

Precedence: defaults < the recorded configuration of the run a mode starts from (runtime.lineage:
evaluate/predict/export/visualize on --model_dir, any mode with --init_from) < `--config FILE.yaml` <
flags given on the command line. parse_config is the one place that knows which flags were given
explicitly: argparse leaves every flag that was not typed out of its namespace (SUPPRESS), and the
YAML holds only the keys it names. YAML keys are the flag names (dashes or underscores). The resolved
configuration is written into `model_dir` by runtime.modes.run. NVIDIA's spellings are accepted:
--use_amp (= --amp), --use_xla (= --xla), and with --benchmark, --warmup_steps/--max_steps stand for
the benchmark's steps. Nothing here imports TensorFlow, so `--help` and flag errors are instant.
"""
from __future__ import annotations

import argparse
import dataclasses
import pathlib
from typing import Any, Mapping, Sequence

import yaml

from unet_medical.base.cpu import PRECISIONS  # standard library and NumPy only: --help stays instant
from unet_medical.base.errors import UNetError
from unet_medical.data.volume_dims import DIMS, slice_mode

EXEC_MODES = ("train", "evaluate", "train_and_evaluate", "predict", "train_and_predict", "benchmark", "export",
              "compress", "visualize")
EXPORT_FORMATS = ("savedmodel", "tftrt", "onnx", "tflite", "openvino", "packed")
EXPORT_PRECISIONS = ("fp32", "bf16", "fp16", "int8")
QUANTIZATION_MODES = ("NONE", "FIXED", "INT", "BNN", "TERNARY", "QAT_INT8")
# The MICCAI 2019 fixed-point U-Net paper's YAML keys that are not flag names, and what they mean here.
PAPER_KEYS = {"lr": "learning_rate"}
# NVIDIA's UNet_Medical spellings of flags (also accepted as YAML keys): alias -> flag.
FLAG_ALIASES = {"use_amp": "amp", "use_xla": "xla"}
OPERATION_MODES = {"normal": "train_and_evaluate", "retrain": "train_and_evaluate", "inference": "evaluate",
                   "visualize": "visualize"}


def _field(default: Any, help: str, **meta: Any) -> Any:
    return dataclasses.field(default=default, metadata={"help": help, **meta})


@dataclasses.dataclass(frozen=True)
class Config:
    """One run of main.py. Field names are the flag names (`--batch_size`, ...)."""

    # --- what to do, where
    exec_mode: str = _field("train_and_evaluate", "what to run", choices=EXEC_MODES)
    model_dir: str = _field("results", "checkpoints, logs, evaluation and predictions go here")
    data_dir: str = _field("data/synthetic", "ISBI layout (train-volume.tif, train-labels.tif, "
                           "test-volume.tif) or images/ + masks/ folders")
    log_dir: str | None = _field(None, "where the JSON-lines log goes (default: model_dir)")
    verbose: bool = _field(False, "show TensorFlow's C++ start-up lines (CUDA probing, oneDNN notices), hidden by default")
    image_stack: str | None = _field(None, "training image TIFF stack inside data_dir (generic layout)")
    mask_stack: str | None = _field(None, "training mask TIFF stack inside data_dir (generic layout)")
    images_dir: str = _field("images", "folder of training images inside data_dir (folder layout)")
    masks_dir: str = _field("masks", "folder of masks inside data_dir, paired with images by file name")
    num_classes: int | None = _field(None, "number of classes for N-class masks (default: binary)")
    input: str | None = _field(None, "predict (and export's calibration/parity images): a TIFF stack, an image or "
                               "a folder (default: data_dir/test-volume.tif; export: data_dir's training images)")
    output_dir: str | None = _field(None, "predict: where the predictions go (default: model_dir/predictions)")
    # --- medical volumes (MSD / nnU-Net raw folders, images/ + masks/ of .nii.gz; unet_medical.cli.volume_modes)
    dims: str = _field("2", "how volumes feed the network: 2 = single slices, 2.5 = a slice and its "
                       "--context_slices neighbours as channels, 3 = a 3D network (not built yet)", choices=tuple(DIMS))
    context_slices: int = _field(1, "--dims 2.5: neighbouring slices taken on each side")
    nsd_tolerance: float = _field(2.0, "volumes: normalized surface distance tolerance in mm")
    # --- training
    batch_size: int = _field(1, "images per step (per worker)")
    learning_rate: float = _field(1e-4, "peak Adam learning rate")
    weight_decay: float = _field(0.0, "decoupled weight decay (AdamW) per step, relative to the learning rate")
    max_steps: int = _field(1000, "training steps in total (a resumed run counts from its checkpoint)")
    warmup_steps: int = _field(0, "linear learning-rate warm-up steps")
    lr_schedule: str = _field("constant", "after warm-up: constant or cosine decay to 0 at max_steps",
                              choices=("constant", "cosine"))
    dice_weight: float = _field(1.0, "weight of the soft Dice term next to cross-entropy")
    time_budget: float | None = _field(None, "minutes of training: --max_steps is set from a measured step time "
                                       "(0 or default: use --max_steps)")
    normalization: str = _field("auto", "intensity normalization: global (fixed scale), per_image (percentile "
                                "clip and rescale) or auto (default: chosen from the data)",
                                choices=("auto", "global", "per_image"))
    foreground_sampling: float | None = _field(None, "fraction of training crops centred on a rare-class pixel "
                                               "(default: chosen from the data)")
    class_weights: str = _field("auto", "cross-entropy weight per class, e.g. '1,1.5', or none (default: auto, "
                                "chosen from the data)")
    fold: int = _field(0, "which contiguous block of slices is held out for validation")
    num_folds: int = _field(5, "number of cross-validation folds (contiguous blocks)")
    seed: int = _field(0, "seed of weights, batches, crops and augmentation")
    augment: bool = _field(True, "data augmentation: flips, rotations, elastic deformation, crop-resize, "
                           "intensity, noise (--no-augment: random crops only)")
    augment_params: str | None = _field(None, "augmentation probabilities/strengths as key=value pairs, e.g. "
                                        "'elastic_prob=0.8,elastic_sigma=12,scale_range=0.9:1.1' (keys: "
                                        "utils.data.augment.AugmentConfig; in YAML also a mapping)")
    resume_training: bool = _field(False, "continue from model_dir/checkpoints/last.npz")
    log_every: int = _field(10, "log loss and throughput every N steps")
    evaluate_every: int | None = _field(None, "evaluate on the held-out fold every N steps (default: at the end "
                                        "only; with --time_budget 4 times in all)")
    checkpoint_every: int = _field(50, "write the resumable checkpoint every N steps")
    deterministic: bool = _field(False, "deterministic TF ops: two runs give bit-identical weights")
    precision: str = _field("auto", "compute precision: auto = bfloat16 mixed precision on CPUs with "
                            "AVX512_BF16 or AMX, float16 with loss scaling on GPUs with tensor cores, float32 "
                            "elsewhere (the choice and its reason are logged); fp32, bf16, fp16 force one",
                            choices=PRECISIONS)
    amp: bool = _field(False, "mixed precision whatever the hardware: --precision auto but never float32 "
                       "(bfloat16 on CPU, float16 with loss scaling on GPU; NVIDIA's spelling: --use_amp)")
    xla: bool = _field(False, "compile the training step with XLA (jit_compile; NVIDIA's spelling: --use_xla)")
    skip_finished: bool = _field(False, "training modes: do nothing when model_dir/eval_results.json already "
                                 "holds this fold's evaluation at --max_steps (rerunnable recipes)")
    # --- model
    padding: str = _field("valid", "valid: the paper's U-Net; same: output size = input size",
                          choices=("valid", "same"))
    base_filters: int = _field(64, "filters of the first level (64 = paper), doubled per level")
    depth: int = _field(4, "number of 2x2 poolings (4 = paper)")
    batch_norm: bool = _field(False, "Conv -> BatchNorm -> ReLU blocks")
    dropout: float = _field(0.5, "dropout rate at the bottleneck (0 disables)")
    crop_size: int | None = _field(None, "training input tile (default: chosen from the data for same padding, "
                                   "572 = the paper's tile for valid padding)")
    # --- inference
    tile_size: int | None = _field(None, "inference input tile (default: smallest valid tile covering the "
                                   "image, at most max_tile_size)")
    max_tile_size: int = _field(1024, "largest automatic inference tile (bounds memory)")
    tile_context: int | None = _field(None, "pixels of each same-padding tile's border thrown away "
                                      "(default 16 for same padding, 0 for valid)")
    tta: bool = _field(False, "test-time augmentation: average over the 8 flips/rotations")
    checkpoint: str = _field("last", "weights used by evaluate/predict/export: last (final) or best "
                             "(highest validation mean Dice)", choices=("best", "last"))
    model_path: str | None = _field(None, "predict/benchmark/evaluate with an exported model (SavedModel "
                                    "folder, .onnx or .tflite) instead of model_dir's checkpoint")
    saved_model: bool = _field(True, "training ends by writing model_dir/saved_model/: the best checkpoint as a "
                               "SavedModel whose serving_default runs predict's tiled inference on raw images "
                               "(docs/deployment.md)")
    init_from: str | None = _field(None, "start from the model and weights of this training run's folder "
                                   "(fine-tuning, compression, quantization of a trained model)")
    allow_training_slices: bool = _field(False, "evaluate: score even when the --fold/--num_folds validation "
                                         "block holds slices the run trained on (refused otherwise)")
    use_trt: bool = _field(False, "predict through a TF-TRT export of the run (made on first use; needs "
                           "TensorFlow built with TensorRT and a GPU, e.g. NVIDIA's NGC container)")
    # --- post-training Tucker compression (--exec_mode compress)
    rank_factor: float | None = _field(None, "Tucker ranks = ceil(channels x factor), e.g. 0.3")
    rank: int | None = _field(None, "fixed Tucker rank for both channel modes")
    rank_min: int = _field(8, "smallest Tucker rank")
    # --- quantization (MICCAI 2019 fixed-point U-Net grid; TF-MOT int8 QAT)
    quantization: str = _field("NONE", "weight/activation quantization of every conv (first and last kept "
                               "float unless --no-keep_first_float/--no-keep_last_float)",
                               choices=QUANTIZATION_MODES)
    weight_i_width: int = _field(0, "FIXED weights: integer bits i of Qi.f (twos_complement: i + f bits in all, "
                                 "sign included; paper: the magnitude's, sign apart)")
    weight_f_width: int = _field(4, "FIXED weights: fractional bits f of Qi.f")
    activation_i_width: int = _field(6, "FIXED activations: integer bits")
    activation_f_width: int = _field(0, "FIXED activations: fractional bits")
    fixed_scheme: str = _field("twos_complement", "FIXED number format: twos_complement (rounded, saturating; "
                               "Q0.4 = 4 bits, [-0.5, 0.4375]) or paper (the MICCAI 2019 code's sign-magnitude "
                               "to_fixed_point: sign apart, integer part of |v| clamped to 2^i - 1, fraction "
                               "rounded to f bits; Q0.4 spans [-1, 1] in steps of 1/16)",
                               choices=("twos_complement", "paper"))
    weight_bits: int = _field(8, "INT weights: bits (symmetric, per output channel)")
    activation_bits: int = _field(8, "INT activations: bits (moving-average range)")
    keep_first_float: bool = _field(True, "keep the first conv in float (as the paper did)")
    keep_last_float: bool = _field(True, "keep the last (1x1 head) conv in float (as the paper did)")
    num_epochs: int | None = _field(None, "train for this many passes over the training slices instead of "
                                    "--max_steps (the paper's YAML key)")
    experiment_name: str | None = _field(None, "write into model_dir/experiment_name")
    operation_mode: str | None = _field(None, "the paper's YAML key: normal/retrain (train_and_evaluate; "
                                        "retrain starts from --init_from), inference (evaluate), visualize "
                                        "(weight histograms as PNG)", choices=tuple(OPERATION_MODES))
    # --- scale-out
    distribution: str = _field("single", "single process, tf.distribute (mirrored: one node; "
                               "multi_worker: TF_CONFIG) or horovod (horovodrun)",
                               choices=("single", "mirrored", "multi_worker", "horovod"))
    lr_scaling: str = _field("none", "scale --learning_rate with the number of workers: none, linear "
                             "(Goyal et al. 2017) or sqrt", choices=("none", "linear", "sqrt"))
    # --- benchmark
    benchmark: bool = _field(False, "with --exec_mode train/predict: run the benchmark instead (NVIDIA's "
                             "recipes' spelling of --exec_mode benchmark)")
    benchmark_mode: str = _field("predict", "what --exec_mode benchmark times",
                                 choices=("train", "predict"))
    bench_warmup_steps: int = _field(3, "benchmark steps run before timing starts (with --benchmark, "
                                     "NVIDIA's --warmup_steps sets it when this flag is not given)")
    bench_steps: int = _field(10, "timed benchmark steps (with --benchmark, NVIDIA's --max_steps, which counts "
                              "the warm-up steps too, sets it to max_steps - warm-up when this flag is not given)")
    bench_input: str = _field("synthetic", "benchmark input: synthetic tensors (model only) or real data "
                              "through the pipeline / tiled inference (end to end)",
                              choices=("synthetic", "real"))
    # --- export
    export_format: str | None = _field(None, "--exec_mode export target (default: export every CPU "
                                       "candidate, time each on this machine and keep the fastest that passes "
                                       "parity, see utils.export.select)", choices=EXPORT_FORMATS)
    export_precision: str | None = _field(None, "export precision (default: fp32 for a given --export_format; "
                                          "without one, only candidates of this precision compete; int8 "
                                          "calibrates on images only: no masks needed)", choices=EXPORT_PRECISIONS)

    def __post_init__(self) -> None:
        if self.time_budget == 0:  # 0 switches a recipe's budget off: --max_steps counts
            object.__setattr__(self, "time_budget", None)
        validate(self)

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_augment_params(text: str) -> dict[str, Any]:
    """'a=1,b=0.5:0.9' -> {'a': 1.0, 'b': (0.5, 0.9)}; integers stay int (elastic_grid)."""
    params: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise UNetError(f"--augment_params: {item!r} is not key=value")
        try:
            numbers = [int(v) if v.strip().lstrip("-").isdigit() else float(v) for v in value.split(":")]
        except ValueError:
            raise UNetError(f"--augment_params: {key.strip()}={value!r}: expected a number or low:high") from None
        params[key.strip()] = tuple(numbers) if len(numbers) > 1 else numbers[0]
    return params


def augment_config(cfg: "Config") -> Any:
    """The utils.data.augment.AugmentConfig for this run: defaults, overridden by --augment_params."""
    from unet_medical.data.augment import AugmentConfig  # imports TensorFlow: only when augmentation is configured

    params = parse_augment_params(cfg.augment_params or "")
    known = {f.name for f in dataclasses.fields(AugmentConfig)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise UNetError(f"--augment_params: unknown key(s) {', '.join(unknown)}; "
                        f"expected some of {', '.join(sorted(known))}")
    try:
        return AugmentConfig(**params)
    except UNetError as exc:
        raise UNetError(f"--augment_params: {exc}") from None


def _check(condition: bool, flag: str, value: Any, expected: str) -> None:
    if not condition:
        raise UNetError(f"--{flag}={value!r}: expected {expected}")


def validate(cfg: Config) -> None:
    """Raise UNetError naming the flag for any value out of range (before any heavy work starts)."""
    for f in dataclasses.fields(cfg):
        choices = f.metadata.get("choices")
        if choices is not None and not (f.default is None and getattr(cfg, f.name) is None):
            _check(getattr(cfg, f.name) in choices, f.name, getattr(cfg, f.name), f"one of {', '.join(choices)}")
    _check(cfg.batch_size >= 1, "batch_size", cfg.batch_size, "an integer >= 1")
    _check(cfg.learning_rate > 0, "learning_rate", cfg.learning_rate, "a number > 0")
    _check(cfg.weight_decay >= 0, "weight_decay", cfg.weight_decay, "a number >= 0")
    _check(cfg.max_steps >= 0, "max_steps", cfg.max_steps, "an integer >= 0")
    _check(0 <= cfg.warmup_steps, "warmup_steps", cfg.warmup_steps, "an integer >= 0")
    _check(cfg.num_folds >= 2, "num_folds", cfg.num_folds, "an integer >= 2")
    _check(0 <= cfg.fold < cfg.num_folds, "fold", cfg.fold, f"0 <= fold < num_folds ({cfg.num_folds})")
    _check(cfg.log_every >= 1, "log_every", cfg.log_every, "an integer >= 1")
    _check(cfg.evaluate_every is None or cfg.evaluate_every >= 0, "evaluate_every", cfg.evaluate_every,
           "an integer >= 0")
    _check(cfg.checkpoint_every >= 1, "checkpoint_every", cfg.checkpoint_every, "an integer >= 1")
    _check(cfg.base_filters >= 1, "base_filters", cfg.base_filters, "an integer >= 1")
    _check(1 <= cfg.depth <= 8, "depth", cfg.depth, "an integer from 1 to 8")
    _check(0 <= cfg.dropout < 1, "dropout", cfg.dropout, "a rate in [0, 1)")
    _check(cfg.crop_size is None or cfg.crop_size >= 8, "crop_size", cfg.crop_size, "an integer >= 8")
    _check(cfg.time_budget is None or cfg.time_budget >= 0, "time_budget", cfg.time_budget, "minutes >= 0")
    _check(cfg.foreground_sampling is None or 0 <= cfg.foreground_sampling <= 1, "foreground_sampling",
           cfg.foreground_sampling, "a fraction in [0, 1]")
    if cfg.class_weights not in ("auto", "none"):
        try:
            weights = [float(w) for w in cfg.class_weights.split(",")]
        except ValueError:
            weights = []
        _check(len(weights) >= 2 and min(weights) > 0, "class_weights", cfg.class_weights,
               "auto, none, or one positive weight per class separated by commas")
    _check(cfg.dice_weight >= 0, "dice_weight", cfg.dice_weight, "a number >= 0")
    _check(cfg.num_classes is None or cfg.num_classes >= 2, "num_classes", cfg.num_classes, "an integer >= 2")
    _check(cfg.tile_size is None or cfg.tile_size >= 8, "tile_size", cfg.tile_size, "an integer >= 8")
    _check(cfg.max_tile_size >= 8, "max_tile_size", cfg.max_tile_size, "an integer >= 8")
    _check(cfg.num_epochs is None or cfg.num_epochs >= 1, "num_epochs", cfg.num_epochs, "an integer >= 1")
    for flag in ("weight_i_width", "weight_f_width", "activation_i_width", "activation_f_width"):
        _check(0 <= getattr(cfg, flag) <= 16, flag, getattr(cfg, flag), "an integer from 0 to 16")
    _check(2 <= cfg.weight_bits <= 16, "weight_bits", cfg.weight_bits, "an integer from 2 to 16")
    _check(2 <= cfg.activation_bits <= 16, "activation_bits", cfg.activation_bits, "an integer from 2 to 16")
    if cfg.augment_params is not None:
        augment_config(cfg)  # raises UNetError naming the bad key or value
    if cfg.operation_mode == "retrain":
        _check(cfg.init_from is not None, "init_from", cfg.init_from,
               "the folder of the trained float model to retrain (operation_mode: retrain)")
    _check(cfg.rank_factor is None or 0 < cfg.rank_factor <= 1, "rank_factor", cfg.rank_factor, "a factor in (0, 1]")
    _check(cfg.rank is None or cfg.rank >= 1, "rank", cfg.rank, "an integer >= 1")
    _check(cfg.rank_min >= 1, "rank_min", cfg.rank_min, "an integer >= 1")
    if cfg.exec_mode == "compress":
        _check(cfg.init_from is not None, "init_from", cfg.init_from, "the folder of a trained model to compress")
        _check((cfg.rank_factor is None) != (cfg.rank is None), "rank_factor", cfg.rank_factor,
               "exactly one of --rank_factor and --rank for --exec_mode compress")
    _check(not (cfg.amp and cfg.precision == "fp32"), "precision", cfg.precision,
           "auto, bf16 or fp16 with --amp (mixed precision); or drop --amp")
    _check(cfg.bench_warmup_steps >= 0, "bench_warmup_steps", cfg.bench_warmup_steps, "an integer >= 0")
    _check(cfg.bench_steps >= 1, "bench_steps", cfg.bench_steps, "an integer >= 1")
    slice_mode(cfg.dims)  # "3" (designed, not built) stops here with one line
    _check(cfg.context_slices >= 0, "context_slices", cfg.context_slices, "an integer >= 0")
    _check(cfg.nsd_tolerance >= 0, "nsd_tolerance", cfg.nsd_tolerance, "millimetres >= 0")
    _check(cfg.tile_context is None or cfg.tile_context >= 0, "tile_context", cfg.tile_context, "an integer >= 0")
    _check(not cfg.skip_finished or cfg.exec_mode in ("train", "train_and_evaluate", "train_and_predict", "compress"),
           "skip_finished", cfg.skip_finished, "a training --exec_mode (train, train_and_evaluate, ...)")
    if cfg.use_trt:
        _check(cfg.exec_mode in ("predict", "train_and_predict") and not cfg.benchmark, "use_trt", cfg.use_trt,
               "--exec_mode predict (TF-TRT serves predictions; export one with --exec_mode export "
               "--export_format tftrt)")
        _check(cfg.model_path is None, "use_trt", cfg.use_trt,
               "no --model_path (--use_trt exports model_dir's checkpoint to TF-TRT and predicts with it)")


def _flag_type(f: dataclasses.Field) -> Any:
    hint = str(f.type)
    if "bool" in hint:
        return bool
    if "int" in hint:
        return int
    if "float" in hint:
        return float
    return str


class _Parser(argparse.ArgumentParser):
    """argparse that raises UNetError (one clear message) instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UNetError(f"{message} (see main.py --help)")


# --help groups: the first flag of each group, in field order (a flag belongs to the last group begun).
HELP_GROUPS = {"exec_mode": "what to run, where: modes and data", "batch_size": "training",
               "dims": "medical volumes (NIfTI, DICOM)",
               "padding": "model", "tile_size": "inference and restoring a run",
               "rank_factor": "Tucker compression (--exec_mode compress)",
               "quantization": "quantization (MICCAI 2019 fixed-point grid; TF-MOT int8 QAT)",
               "num_epochs": "the MICCAI 2019 paper's YAML keys", "distribution": "scale-out",
               "benchmark": "benchmark", "export_format": "export"}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="main.py", description="U-Net medical image segmentation (TensorFlow 2, Keras 2 API)",
                     argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", help="YAML file whose keys are these flag names (flags given on the "
                        "command line win)")
    group = parser
    for f in dataclasses.fields(Config):
        if f.name in HELP_GROUPS:
            group = parser.add_argument_group(HELP_GROUPS[f.name])
        kind = _flag_type(f)
        help_text = f.metadata["help"]
        # One default per flag: a help text that already explains its default keeps it.
        if "default" not in help_text:
            help_text += f" (default: {f.default})"
        names = [f"--{f.name}", *(f"--{alias}" for alias, flag in FLAG_ALIASES.items() if flag == f.name)]
        if kind is bool:
            group.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            group.add_argument(*names, dest=f.name, type=kind, choices=f.metadata.get("choices"),
                               metavar=None if f.metadata.get("choices") else f.name.upper(), help=help_text)
    return parser


def _coerce(name: str, value: Any, source: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(Config)}
    f = fields[name]
    if value is None:
        return None
    kind = _flag_type(f)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise UNetError(f"{source}: {name}={value!r}: expected true or false")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise UNetError(f"{source}: {name}={value!r}: expected a {kind.__name__}") from None


def read_yaml_file(path: str | pathlib.Path) -> Any:
    """The parsed content of a --config YAML file (an empty file is {}); UNetError if missing or invalid."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise UNetError(f"--config {path}: file not found")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UNetError(f"--config {path}: not valid YAML ({exc})") from None


def load_yaml(path: str | pathlib.Path) -> dict[str, Any]:
    """Read a YAML config; keys are flag names. UNetError for a missing file, bad YAML, unknown keys."""
    raw = read_yaml_file(path)
    if not isinstance(raw, Mapping):
        raise UNetError(f"--config {path}: expected a mapping of flag names to values")
    known = {f.name for f in dataclasses.fields(Config)}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        name = PAPER_KEYS.get(str(key), FLAG_ALIASES.get(name, name))
        if name not in known:
            raise UNetError(f"--config {path}: unknown key {key!r}")
        if name == "augment_params" and isinstance(value, Mapping):  # the YAML form: a mapping
            value = ",".join(f"{k}={':'.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
                             for k, v in value.items())
        out[name] = _coerce(name, value, f"--config {path}")
    return out


def parse_config(argv: Sequence[str] | None = None) -> Config:
    """Flags (and an optional YAML file) -> validated Config. Bad input raises UNetError.

    The flags given explicitly are the keys of `values` before any default is filled in; that is
    what the run lineage (runtime.lineage.with_run_defaults) and NVIDIA's benchmark spelling rely on.
    """
    from unet_medical.cli.lineage import with_run_defaults

    parser = build_parser()
    args = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    config_file = args.pop("config", None)
    if config_file:
        values.update(load_yaml(config_file))
    values.update(args)
    mode = values.get("operation_mode")
    if mode is not None and "exec_mode" not in args:  # a flag still wins over the paper's YAML key
        values["exec_mode"] = OPERATION_MODES[mode]
    if values.get("experiment_name"):
        values["model_dir"] = str(pathlib.Path(values.get("model_dir", Config.model_dir)) / values["experiment_name"])
    values = with_run_defaults(values, {f.name: f.default for f in dataclasses.fields(Config)})
    values.update(nvidia_benchmark_steps(values))
    return Config(**values)


def nvidia_benchmark_steps(explicit: Mapping[str, Any]) -> dict[str, int]:
    """NVIDIA's `--benchmark --warmup_steps W --max_steps M`: W untimed steps, M steps in all, so M - W
    timed ones. Applies only to the bench flags not given explicitly; {} without --benchmark."""
    if not explicit.get("benchmark"):
        return {}
    out: dict[str, int] = {}
    if "warmup_steps" in explicit and "bench_warmup_steps" not in explicit:
        out["bench_warmup_steps"] = int(explicit["warmup_steps"])
    if "max_steps" in explicit and "bench_steps" not in explicit:
        warmup = out.get("bench_warmup_steps", explicit.get("bench_warmup_steps", Config.bench_warmup_steps))
        _check(explicit["max_steps"] > warmup, "max_steps", explicit["max_steps"],
               f"more than the {warmup} warm-up steps (with --benchmark, --max_steps counts all steps, "
               "warm-up included)")
        out["bench_steps"] = int(explicit["max_steps"]) - int(warmup)
    return out


def save_config(cfg: Config, path: str | pathlib.Path) -> None:
    """Write the resolved configuration as YAML (atomically: a crash never leaves half a file)."""
    from unet_medical.base.fileio import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
