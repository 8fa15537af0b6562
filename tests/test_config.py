"""Flags, YAML and validation: bad input stops with one message naming the flag or file."""
import dataclasses

import pytest
import yaml

from unet_medical.cli.config import Config, load_yaml, parse_config
from unet_medical.base.errors import UNetError


def test_defaults_and_flags():
    cfg = parse_config(["--exec_mode", "train", "--batch_size", "4", "--no-augment", "--padding", "same"])
    assert cfg.exec_mode == "train" and cfg.batch_size == 4 and cfg.augment is False and cfg.padding == "same"
    assert cfg.base_filters == 64 and cfg.depth is None  # None: the recipe chooses it (4 for small objects)


def test_yaml_then_flags_override(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("batch_size: 8\nlearning-rate: 0.001\naugment: false\n")
    cfg = parse_config(["--config", str(path), "--batch_size", "2"])
    assert cfg.batch_size == 2 and cfg.learning_rate == 0.001 and cfg.augment is False


@pytest.mark.parametrize("argv,needle", [
    (["--exec_mode", "dance"], "--exec_mode"),
    (["--padding", "full"], "--padding"),
    (["--batch_size", "0"], "--batch_size"),
    (["--fold", "5", "--num_folds", "5"], "--fold"),
    (["--dropout", "1.5"], "--dropout"),
    (["--num_folds", "1"], "--num_folds"),
    (["--batch_size", "two"], "--batch_size"),
    (["--no_such_flag", "1"], "--no_such_flag"),
])
def test_bad_flags_name_the_flag(argv, needle):
    with pytest.raises(UNetError, match=needle):
        parse_config(argv)


@pytest.mark.parametrize("text,needle", [("colour: red\n", "unknown key 'colour'"),
                                         ("batch_size: [1\n", "not valid YAML"),
                                         ("- 1\n- 2\n", "expected a mapping"),
                                         ("augment: maybe\n", "augment")])
def test_bad_yaml_names_the_file(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UNetError, match=needle) as info:
        load_yaml(path)
    assert str(path) in str(info.value)


def test_missing_yaml():
    with pytest.raises(UNetError, match="nope.yaml: file not found"):
        parse_config(["--config", "nope.yaml"])


def test_config_is_frozen():
    with pytest.raises(Exception):
        Config().batch_size = 3


def test_augment_params_flag_and_yaml(tmp_path):
    from unet_medical.data.config import augment_config

    cfg = parse_config(["--augment_params", "elastic_prob=0.8,elastic_grid=4,scale_range=0.9:1.1"])
    aug = augment_config(cfg.augment_params)
    assert aug.elastic_prob == 0.8 and aug.elastic_grid == 4 and aug.scale_range == (0.9, 1.1)
    assert aug.flip_h_prob == 0.5  # untouched defaults
    path = tmp_path / "run.yaml"
    path.write_text("augment_params:\n  noise_prob: 0.0\n  gamma_range: [0.9, 1.1]\n")
    aug = augment_config(parse_config(["--config", str(path)]).augment_params)
    assert aug.noise_prob == 0.0 and aug.gamma_range == (0.9, 1.1)


def test_augment_params_of_a_3d_network_set_its_volume_augment():
    from unet_medical.data.config import augment_config, augment_dims
    from unet_medical.data.patches3d import VolumeAugment

    text = "elastic_prob=0.5,elastic_sigma=2,affine_prob=0,zoom_range=0.9:1.1"
    cfg = parse_config(["--dims", "3", "--padding", "same", "--augment_params", text])
    aug = augment_config(cfg.augment_params, "3")
    assert aug == VolumeAugment(elastic_prob=0.5, elastic_sigma=2, affine_prob=0, zoom_range=(0.9, 1.1))
    # --dims auto reads keys only a 3D patch has as meant for it, and shared or 2-D keys as 2-D ones.
    assert parse_config(["--augment_params", "affine_prob=0.1"]).augment_params == "affine_prob=0.1"
    assert augment_dims("affine_prob=0.1,rot90_prob=0") == "3" and augment_dims("rot90_prob=0.1") == "2"
    assert augment_dims("flip_h_prob=0.1") == "2"
    with pytest.raises(UNetError, match=r"--augment_params: unknown key\(s\) flip_h_prob for a --dims 3 network"):
        parse_config(["--dims", "3", "--padding", "same", "--augment_params", "flip_h_prob=0.5"])
    with pytest.raises(UNetError, match="--augment_params: elastic_prob=2: expected a probability"):
        parse_config(["--dims", "3", "--padding", "same", "--augment_params", "elastic_prob=2"])
    with pytest.raises(UNetError, match=r"unknown key\(s\) affine_prob for 2-D images and slices"):
        augment_config("affine_prob=0.1", "2")


@pytest.mark.parametrize("text,needle", [("wobble=1", "unknown key"), ("elastic_prob=2", "elastic_prob"),
                                         ("elastic_prob", "not key=value"), ("noise_std=loud", "noise_std")])
def test_bad_augment_params(text, needle):
    with pytest.raises(UNetError, match=needle):
        parse_config(["--augment_params", text])


# --- each stage owns its typed settings ---------------------------------------------------------------

def test_each_stage_validates_its_own_flags_with_one_line():
    """The rules live with the stage: building its settings alone raises the same one line a flag gets."""
    from unet_medical.data.config import DataConfig
    from unet_medical.inference.config import InferenceConfig
    from unet_medical.model.config import CompressionConfig, ModelConfig
    from unet_medical.training.config import TrainingConfig

    cases = [(lambda: DataConfig(fold=5, num_folds=5), r"--fold=5: expected 0 <= fold < num_folds \(5\)"),
             (lambda: DataConfig(num_classes=1), r"--num_classes=1: expected an integer >= 2"),
             (lambda: TrainingConfig(batch_size=0), r"--batch_size=0: expected an integer >= 1"),
             (lambda: TrainingConfig(amp=True, precision="fp32"), r"--precision='fp32'"),
             (lambda: ModelConfig(dropout=1.0), r"--dropout=1.0: expected a rate in \[0, 1\)"),
             (lambda: InferenceConfig(tile_size=4), r"--tile_size=4"),
             (lambda: CompressionConfig(rank_factor=1.5), r"--rank_factor=1.5: expected a factor in \(0, 1\]")]
    for build, message in cases:
        with pytest.raises(UNetError, match=message):
            build()
    for flags, message in [(["--fold", "5"], "--fold=5"), (["--batch_size", "0"], "--batch_size=0")]:
        with pytest.raises(UNetError, match=message):
            parse_config(flags)


def test_a_config_hands_each_stage_its_typed_settings():
    from unet_medical.base.settings import Settings
    from unet_medical.cli.config import STAGES
    from unet_medical.training.config import TrainingConfig

    cfg = parse_config(["--batch_size", "3", "--learning_rate", "0.002", "--fold", "1"])
    training = cfg.stage(TrainingConfig)
    assert isinstance(training, TrainingConfig) and (training.batch_size, training.learning_rate) == (3, 0.002)
    assert cfg.stage(TrainingConfig) is training  # built (and validated) once
    # every flag belongs to exactly one stage, and the stages together are the Config
    names = [f.name for cls in STAGES for f in dataclasses.fields(cls)]
    assert len(names) == len(set(names)) and set(names) == {f.name for f in dataclasses.fields(Config)}
    assert all(issubclass(cls, Settings) and cls.section for cls in STAGES)


def test_fixed_point_widths_have_one_bound_shared_with_the_quantizers():
    """Q20.5 is 25 bits: the flag is refused with the quantizers' own rule (1 <= i + f <= 24), at parse time;
    Q16.8 (24 bits), which the old 0..16-per-width check also allowed, and Q0.20, which it refused, both pass."""
    with pytest.raises(UNetError, match=r"1 <= i \+ f <= 24"):
        parse_config(["--weight_i_width", "20", "--weight_f_width", "5"])
    assert parse_config(["--weight_i_width", "0", "--weight_f_width", "20"]).weight_f_width == 20
    assert parse_config(["--activation_i_width", "16", "--activation_f_width", "8"]).activation_i_width == 16


def test_config_yaml_has_one_section_per_stage_and_old_flat_files_still_load(tmp_path):
    from unet_medical.base.artifacts import CONFIG_VERSION, read_run_config
    from unet_medical.cli.config import STAGES, save_config

    cfg = parse_config(["--batch_size", "3", "--padding", "same", "--fold", "2"])
    save_config(cfg, tmp_path / "config.yaml")
    raw = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert raw["config_version"] == CONFIG_VERSION
    assert list(raw)[1:] == [cls.section for cls in STAGES]
    assert raw["training"]["batch_size"] == 3 and raw["model"]["padding"] == "same" and raw["data"]["fold"] == 2
    assert read_run_config(tmp_path) == cfg.to_dict()
    # the file a run wrote is a valid --config, and gives back the same Config
    assert parse_config(["--config", str(tmp_path / "config.yaml")]) == cfg
    # a version-1 (flat) config.yaml of an earlier run still loads
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.yaml").write_text(yaml.safe_dump({"batch_size": 5, "padding": "valid", "fold": 1}))
    assert read_run_config(old) == {"batch_size": 5, "padding": "valid", "fold": 1}
    (old / "config.yaml").write_text(yaml.safe_dump({"config_version": 9, "training": {}}))
    with pytest.raises(UNetError, match="config_version 9"):
        read_run_config(old)


def test_help_groups_flags_by_stage(capsys):
    from unet_medical.cli.config import STAGES, build_parser

    text = build_parser().format_help()
    positions = [text.index(f"\n{cls.title}:") for cls in STAGES]
    assert positions == sorted(positions)


def test_the_batch_is_left_to_a_training_run_and_is_nvidias_one_elsewhere(tmp_path):
    from unet_medical.cli.config import batch_or_default
    from unet_medical.cli.recipe import resolve_batch_size
    from unet_medical.training.config import choose_batch_size

    assert parse_config(["--exec_mode", "train", "--model_dir", str(tmp_path / "a")]).batch_size is None
    assert batch_or_default(parse_config(["--exec_mode", "benchmark", "--model_dir", str(tmp_path / "b")])) == 1
    assert batch_or_default(parse_config(["--exec_mode", "benchmark", "--batch_size", "3",
                                          "--model_dir", str(tmp_path / "d")])) == 3
    assert [choose_batch_size(*args)[0] for args in ((3, "same"), (2, "same"), (2, "valid"))] == [2, 4, 1]
    records = []

    class Recorder:
        def log(self, step, data):
            records.append((step, data))

    logger = Recorder()
    assert resolve_batch_size(Config(padding="same"), 3, "same", logger).batch_size == 2
    assert records[0][0] == "RECIPE" and records[0][1]["flag"] == "batch_size" and "nnU-Net" in records[0][1]["reason"]
    assert resolve_batch_size(Config(padding="same", batch_size=6), 3, "same", logger).batch_size == 6
    assert len(records) == 1  # a given batch is not a choice
