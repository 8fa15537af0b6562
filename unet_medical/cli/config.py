"""Every run option: the stages' settings composed into one frozen Config, the flags, YAML loading.

Each stage owns a typed settings class (data.config.DataConfig, model.config.ModelConfig /
QuantizationSettings / CompressionConfig, training.config.TrainingConfig, inference.config.InferenceConfig,
export.config.ExportConfig; RunConfig and BenchmarkConfig here): its fields are its flags, with their help,
choices and rules, and it validates itself once when a Config is made. --help groups the flags by stage,
and config.yaml holds one section per stage (base.artifacts.flatten_config reads it and the flat files of
earlier versions).

Precedence: defaults < the recorded configuration of the run a mode starts from (runtime.lineage:
evaluate/predict/export/visualize on --model_dir, any mode with --init_from) < `--config FILE.yaml` <
flags given on the command line. parse_config is the one place that knows which flags were given
explicitly: argparse leaves every flag that was not typed out of its namespace (SUPPRESS), and the
YAML holds only the keys it names. YAML keys are the flag names (dashes or underscores). The resolved
configuration is written into `model_dir` by cli.modes.run. NVIDIA's spellings are accepted:
--use_amp (= --amp), --use_xla (= --xla), and with --benchmark, --warmup_steps/--max_steps stand for
the benchmark's steps. Nothing here imports TensorFlow, so `--help` and flag errors are instant.
"""
from __future__ import annotations

import argparse
import dataclasses
import pathlib
from typing import Any, ClassVar, Mapping, Sequence, TypeVar

import yaml

# Each stage's settings module is standard-library only (its registries are TF-free name tables), so
# --help and flag errors stay instant.
from unet_medical.base.artifacts import CONFIG_VERSION, flatten_config
from unet_medical.base.errors import UNetError
from unet_medical.base.settings import Settings, at_least, field_choices, require, setting
from unet_medical.data.config import DataConfig, augment_config
from unet_medical.evaluation.config import EvaluationConfig
from unet_medical.export.config import ExportConfig
from unet_medical.inference.config import InferenceConfig
from unet_medical.model.config import CompressionConfig, ModelConfig, QuantizationSettings, instance_over_batch_norm
from unet_medical.training.config import NVIDIA_BATCH, TrainingConfig, deep_supervision_obstacle

EXEC_MODES = ("train", "evaluate", "train_and_evaluate", "predict", "train_and_predict", "benchmark", "export",
              "compress", "visualize")
# The MICCAI 2019 fixed-point U-Net paper's YAML keys that are not flag names, and what they mean here.
PAPER_KEYS = {"lr": "learning_rate"}
# NVIDIA's UNet_Medical spellings of flags (also accepted as YAML keys): alias -> flag.
FLAG_ALIASES = {"use_amp": "amp", "use_xla": "xla"}
OPERATION_MODES = {"normal": "train_and_evaluate", "retrain": "train_and_evaluate", "inference": "evaluate",
                   "visualize": "visualize"}


# The settings of every stage, in the order --help and config.yaml list them. A stage owns its flags:
# their defaults, help, choices and rules live in its config module; the command line only composes them.
@dataclasses.dataclass(frozen=True)
class RunConfig(Settings):
    """What to run and where its files go (the command line's own settings)."""

    section: ClassVar[str] = "run"
    title: ClassVar[str] = "what to run, where"

    exec_mode: str = setting("train_and_evaluate", "what to run", choices=EXEC_MODES)
    model_dir: str = setting("results", "checkpoints, logs, evaluation and predictions go here")
    log_dir: str | None = setting(None, "where the JSON-lines log goes (default: model_dir)")
    plugins: str | None = setting(None, "comma-separated Python modules imported before the flags are checked; "
                                 "they register losses, metrics, export formats, ... (installed plugins of the "
                                 "'unet_medical.plugins' entry-point group load without it)")
    verbose: bool = setting(False, "show TensorFlow's C++ start-up lines (CUDA probing, oneDNN notices), hidden by default")
    skip_finished: bool = setting(False, "training modes: do nothing when model_dir/eval_results.json already "
                                 "holds this fold's evaluation at --max_steps (rerunnable recipes)")
    allow_training_slices: bool = setting(False, "evaluate: score even when the --fold/--num_folds validation "
                                         "block holds slices the run trained on (refused otherwise)")
    experiment_name: str | None = setting(None, "write into model_dir/experiment_name")
    operation_mode: str | None = setting(None, "the paper's YAML key: normal/retrain (train_and_evaluate; "
                                        "retrain starts from --init_from), inference (evaluate), visualize "
                                        "(weight histograms as PNG)", choices=tuple(OPERATION_MODES))


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig(Settings):
    """What --exec_mode benchmark (or --benchmark) times."""

    section: ClassVar[str] = "benchmark"
    title: ClassVar[str] = "benchmark"

    benchmark: bool = setting(False, "with --exec_mode train/predict: run the benchmark instead (NVIDIA's "
                             "recipes' spelling of --exec_mode benchmark)")
    benchmark_mode: str = setting("predict", "what --exec_mode benchmark times",
                                 choices=("train", "predict"))
    bench_warmup_steps: int = setting(3, "benchmark steps run before timing starts (with --benchmark, "
                                     "NVIDIA's --warmup_steps sets it when this flag is not given)", rule=at_least(0))
    bench_steps: int = setting(10, "timed benchmark steps (with --benchmark, NVIDIA's --max_steps, which counts "
                              "the warm-up steps too, sets it to max_steps - warm-up when this flag is not given)", rule=at_least(1))
    bench_input: str = setting("synthetic", "benchmark input: synthetic tensors (model only) or real data "
                              "through the pipeline / tiled inference (end to end)",
                              choices=("synthetic", "real"))


STAGES: tuple[type[Settings], ...] = (RunConfig, DataConfig, ModelConfig, TrainingConfig, InferenceConfig,
                                      EvaluationConfig, CompressionConfig, QuantizationSettings, ExportConfig,
                                      BenchmarkConfig)
S = TypeVar("S", bound=Settings)


@dataclasses.dataclass(frozen=True)
class Config(BenchmarkConfig, ExportConfig, QuantizationSettings, CompressionConfig, EvaluationConfig,
             InferenceConfig, TrainingConfig, ModelConfig, DataConfig, RunConfig):
    """One run: every stage's settings, flat (field names are the flag names, `cfg.batch_size`).

    Each stage validates its own fields once, here, by building its typed settings object; a stage gets
    that object with `cfg.stage(TrainingConfig)`. Rules between stages are in `check_across`.
    (Bases are listed last stage first: a dataclass collects fields from the end of the MRO.)
    """

    def __post_init__(self) -> None:
        if self.time_budget == 0:  # 0 switches a recipe's budget off: --max_steps counts
            object.__setattr__(self, "time_budget", None)
        object.__setattr__(self, "_stages", {cls: cls.from_values(self) for cls in STAGES})
        check_across(self)

    def stage(self, cls: type[S]) -> S:
        """This run's settings of one stage (validated when the Config was made)."""
        return self._stages[cls]

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_sections(self) -> dict[str, dict[str, Any]]:
        """{section: {flag: value}} in STAGES order: config.yaml's layout (base.artifacts.CONFIG_VERSION)."""
        return {cls.section: {f.name: getattr(self, f.name) for f in dataclasses.fields(cls)} for cls in STAGES}


def check_across(cfg: Config) -> None:
    """Rules that tie flags of different stages together (each stage checked its own already)."""
    if cfg.operation_mode == "retrain":
        require(cfg.init_from is not None, "init_from", cfg.init_from,
                "the folder of the trained float model to retrain (operation_mode: retrain)")
    if cfg.exec_mode == "compress":
        require(cfg.init_from is not None, "init_from", cfg.init_from, "the folder of a trained model to compress")
        require((cfg.rank_factor is None) != (cfg.rank is None), "rank_factor", cfg.rank_factor,
                "exactly one of --rank_factor and --rank for --exec_mode compress")
    require(not cfg.skip_finished or cfg.exec_mode in ("train", "train_and_evaluate", "train_and_predict", "compress"),
            "skip_finished", cfg.skip_finished, "a training --exec_mode (train, train_and_evaluate, ...)")
    if cfg.dims == "3":
        check_volumetric(cfg)
    if cfg.deep_supervision:
        obstacle = deep_supervision_obstacle(cfg.padding, cfg.depth, cfg.quantization != "NONE"
                                             or cfg.exec_mode == "compress")
        require(obstacle is None, "deep_supervision", True, f"a network it applies to, not {obstacle}")
    if cfg.use_trt:
        require(cfg.exec_mode in ("predict", "train_and_predict") and not cfg.benchmark, "use_trt", cfg.use_trt,
                "--exec_mode predict (TF-TRT serves predictions; export one with --exec_mode export "
                "--export_format tftrt)")
        require(cfg.model_path is None, "use_trt", cfg.use_trt,
                "no --model_path (--use_trt exports model_dir's checkpoint to TF-TRT and predicts with it)")


def check_volumetric(cfg: Config) -> None:
    """--dims 3 refuses, in one line each, the 2D-only settings that would otherwise do nothing."""
    require(cfg.padding == "same", "padding", cfg.padding, "same for --dims 3 (the 3D U-Net pads its convolutions)")
    require(cfg.crop_size is None, "crop_size", cfg.crop_size, "no --crop_size with --dims 3 (give --patch_size)")
    augment_config(cfg.augment_params, "3")  # one line naming a key a 3D patch does not have
    require(cfg.normalization != "per_image", "normalization", cfg.normalization,
            "auto or global with --dims 3 (volumes are scaled by their intensity window)")
    require(cfg.input_scale in (None, 1.0), "input_scale", cfg.input_scale, "1 with --dims 3 (no rescaling)")
    require(cfg.tile_size is None and cfg.tile_context is None, "tile_size", cfg.tile_size,
            "no --tile_size/--tile_context with --dims 3 (3D prediction slides windows of the training patch)")
    # Not built for 3D yet (real-input benchmarks, TF-TRT): refused rather than run on a network they would
    # break. Export goes through cli.volume_export; quantization and Tucker compression handle Conv3D
    # (model.quantized_layers, model.tucker); the benchmark times synthetic patches; an exported patch network
    # (--model_path) slides over volumes as the Keras one does.
    require(cfg.bench_input == "synthetic" or (cfg.exec_mode != "benchmark" and not cfg.benchmark), "bench_input",
            cfg.bench_input, "synthetic for --dims 3 benchmarks (patches of --patch_size; timing the real "
            "patch stream is not built for 3D yet)")
    require(not cfg.use_trt, "use_trt", cfg.use_trt, "no TF-TRT for --dims 3 networks (TF-TRT is 2-D only)")
    require(cfg.model_path is None or not (cfg.exec_mode == "benchmark" or cfg.benchmark), "model_path",
            cfg.model_path, "no exported model in --dims 3 benchmarks (they time the network of the flags)")


def volumetric_conflict(cfg: Config) -> str:
    """Why --dims auto may not choose the 3D network for `cfg`: check_volumetric's one-line refusal of it
    as a --dims 3 run (e.g. the paper's default --padding valid), or "" when it would pass. The rule stays
    in check_volumetric alone."""
    try:
        check_volumetric(cfg.replace(dims="3"))
    except UNetError as exc:
        return str(exc)
    return ""


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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="main.py", description="U-Net medical image segmentation (TensorFlow 2, Keras 2 API)",
                     argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", help="YAML file whose keys are these flag names (flags given on the "
                        "command line win)")
    for cls in STAGES:
        group = parser.add_argument_group(cls.title)
        for f in dataclasses.fields(cls):
            if f.metadata.get("flag", True):
                _add_flag(group, f)
    return parser


def _add_flag(group: Any, f: dataclasses.Field) -> None:
    """--name (and its NVIDIA alias) for one settings field: a --x/--no-x switch for booleans."""
    kind = _flag_type(f)
    help_text = f.metadata["help"]
    # One default per flag: a help text that already explains its default keeps it.
    if "default" not in help_text:
        help_text += f" (default: {f.default})"
    names = [f"--{f.name}", *(f"--{alias}" for alias, flag in FLAG_ALIASES.items() if flag == f.name)]
    if kind is bool:
        group.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction, help=help_text)
    else:
        choices = field_choices(f)
        group.add_argument(*names, dest=f.name, type=kind, choices=choices,
                           metavar=None if choices else f.name.upper(), help=help_text)


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
    raw = flatten_config(read_yaml_file(path), f"--config {path}")
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
    from unet_medical.cli.plugins import load_plugins

    # Plugins first: the parser's choices (--loss, --export_format, ...) include what they register.
    load_plugins(_prescan_plugins(argv))
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    config_file = args.pop("config", None)
    if config_file:
        values.update(load_yaml(config_file))
        load_plugins(values.get("plugins"), source=f"--config {config_file}: plugins")
    values.update(args)
    mode = values.get("operation_mode")
    if mode is not None and "exec_mode" not in args:  # a flag still wins over the paper's YAML key
        values["exec_mode"] = OPERATION_MODES[mode]
    if values.get("experiment_name"):
        values["model_dir"] = str(pathlib.Path(values.get("model_dir", Config.model_dir)) / values["experiment_name"])
    values.update(instance_over_batch_norm(values))
    explicit = set(values)
    values = with_run_defaults(values, {f.name: f.default for f in dataclasses.fields(Config)})
    if str(values.get("dims")) in ("3", "auto"):
        # the 3D U-Net's only padding is its default (explicit valid: refused); auto may choose 3D
        values.setdefault("padding", "same")
    load_plugins(values.get("plugins"), source="plugins recorded in the run's config.yaml")
    values.update(nvidia_benchmark_steps(values))
    values.update(steps_over_budget(values, explicit))
    return Config(**values)


def batch_or_default(cfg: Config) -> int:
    """Images (2-D tiles, 3-D windows) per step or call outside a training run's own loop: --batch_size when
    given, else NVIDIA's 1. A training run chooses its batch once it knows its network
    (cli.recipe.resolve_batch_size); predict, evaluate, export, the benchmarks and train_and_predict's
    prediction take this."""
    return cfg.batch_size or NVIDIA_BATCH


def steps_over_budget(values: Mapping[str, Any], explicit: set[str]) -> dict[str, Any]:
    """An explicit --max_steps (command line or --config) wins over any --time_budget, including the one a
    recipe passes before the user's flags: the budget is dropped and kept in time_budget_ignored, so
    the run can say so. {} when --max_steps was not given explicitly or no budget is set."""
    budget = values.get("time_budget")
    if "max_steps" not in explicit or not budget or values.get("benchmark"):
        return {}
    return {"time_budget": None, "time_budget_ignored": float(budget)}


def _prescan_plugins(argv: Sequence[str] | None) -> str | None:
    """The --plugins value of a command line, read before the full parser exists."""
    prescan = argparse.ArgumentParser(add_help=False)
    prescan.add_argument("--plugins")
    return prescan.parse_known_args(argv)[0].plugins


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
        require(explicit["max_steps"] > warmup, "max_steps", explicit["max_steps"],
               f"more than the {warmup} warm-up steps (with --benchmark, --max_steps counts all steps, "
               "warm-up included)")
        out["bench_steps"] = int(explicit["max_steps"]) - int(warmup)
    return out


def save_config(cfg: Config, path: str | pathlib.Path) -> None:
    """Write the resolved configuration as YAML (atomically: a crash never leaves half a file)."""
    from unet_medical.base.fileio import atomic_write_text

    sections = {"config_version": CONFIG_VERSION, **cfg.to_sections()}
    atomic_write_text(path, yaml.safe_dump(sections, sort_keys=False))
