"""Flags, YAML and validation: bad input stops with one message naming the flag or file."""
import pytest

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
    from unet_medical.cli.config import augment_config

    cfg = parse_config(["--augment_params", "elastic_prob=0.8,elastic_grid=4,scale_range=0.9:1.1"])
    aug = augment_config(cfg)
    assert aug.elastic_prob == 0.8 and aug.elastic_grid == 4 and aug.scale_range == (0.9, 1.1)
    assert aug.flip_h_prob == 0.5  # untouched defaults
    path = tmp_path / "run.yaml"
    path.write_text("augment_params:\n  noise_prob: 0.0\n  gamma_range: [0.9, 1.1]\n")
    aug = augment_config(parse_config(["--config", str(path)]))
    assert aug.noise_prob == 0.0 and aug.gamma_range == (0.9, 1.1)


@pytest.mark.parametrize("text,needle", [("wobble=1", "unknown key"), ("elastic_prob=2", "elastic_prob"),
                                         ("elastic_prob", "not key=value"), ("noise_std=loud", "noise_std")])
def test_bad_augment_params(text, needle):
    with pytest.raises(UNetError, match=needle):
        parse_config(["--augment_params", text])
