"""--deep_supervision: heads on the decoder levels, labels subsampled, the weighted loss, and a run that ships the
plain network and resumes its heads."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from unet_medical.base.errors import UNetError
from unet_medical.model.unet import UNetSpec, build_unet
from unet_medical.training import checkpoint as ckpt
from unet_medical.training.deep_supervision import level_weights, subsample, supervise, supervised_levels
from unet_medical.training.losses import cross_entropy_dice_loss


def test_levels_and_weights_follow_nnunet():
    assert supervised_levels(4) == [1, 2, 3]  # the deepest decoder level (4) is left out
    assert supervised_levels(2) == [1]
    np.testing.assert_allclose(level_weights([1, 2, 3]), [4 / 7, 2 / 7, 1 / 7], rtol=1e-12)
    np.testing.assert_allclose(level_weights([1, 2, 3, 4, 5]), np.array([16, 8, 4, 2, 1]) / 31, rtol=1e-12)


@pytest.mark.parametrize("shape", [(2, 16, 24), (1, 8, 16, 32)])
@pytest.mark.parametrize("level", [1, 2, 3])
def test_subsampled_labels_are_the_centre_pixel_of_each_block(shape, level):
    labels = np.random.default_rng(level).integers(0, 5, size=shape).astype(np.int32)
    stride = 2 ** (level - 1)
    got = subsample(tf.constant(labels), level).numpy()
    # Reference: output pixel i along an axis reads input pixel i * stride + stride // 2, index by index.
    expected = labels
    for axis in range(1, len(shape)):
        picks = [i * stride + stride // 2 for i in range(shape[axis] // stride)]
        expected = np.take(expected, picks, axis=axis)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dims", [2, 3])
def test_heads_sit_on_the_decoder_levels_and_the_shipped_network_is_unchanged(dims):
    spec = UNetSpec(n_classes=3, padding="same", base_filters=4, depth=3, batch_norm=True, dropout=0.0, dims=dims)
    model = build_unet(spec)
    weights_before = len(model.weights)
    supervised = supervise(model, 3)
    assert supervised.levels == (1, 2)
    side = 16
    outputs = supervised.trained(tf.zeros((2,) + (side,) * dims + (1,)), training=False)
    assert [tuple(o.shape) for o in outputs] == [(2,) + (side,) * dims + (3,), (2,) + (side // 2,) * dims + (3,)]
    assert all(o.dtype == tf.float32 for o in outputs)
    assert len(model.weights) == weights_before  # the heads are not the model's
    assert len(supervised.aux_variables) == 2  # one 1x1 head: kernel and bias
    shared = {id(v) for v in model.trainable_variables}
    assert shared < {id(v) for v in supervised.trained.trainable_variables}
    # The first output is the network's own logits.
    image = tf.random.normal((1,) + (side,) * dims + (1,), seed=1)
    np.testing.assert_allclose(supervised.trained(image)[0].numpy(), model(image).numpy(), atol=1e-6)


def test_the_loss_is_the_weighted_sum_of_the_levels():
    model = build_unet(UNetSpec(padding="same", base_filters=4, depth=4, dropout=0.0))
    supervised = supervise(model, 2)
    rng = np.random.default_rng(0)
    labels = tf.constant(rng.integers(0, 2, size=(2, 32, 32)), tf.int32)
    pixel_weights = tf.constant(rng.uniform(0.5, 2.0, size=(2, 32, 32)), tf.float32)
    outputs = supervised.trained(tf.constant(rng.normal(size=(2, 32, 32, 1)), tf.float32))
    got = float(supervised.loss(cross_entropy_dice_loss, outputs, labels, 2, 1.0, pixel_weights))
    expected = 0.0
    for weight, logits, stride in zip([4 / 7, 2 / 7, 1 / 7], outputs, [1, 2, 4]):
        lab = labels.numpy()[:, stride // 2::stride, stride // 2::stride]
        wts = pixel_weights.numpy()[:, stride // 2::stride, stride // 2::stride]
        expected += weight * float(cross_entropy_dice_loss(logits, tf.constant(lab), 2, dice_weight=1.0,
                                                           weights=tf.constant(wts)))
    assert got == pytest.approx(expected, rel=1e-6)


def test_networks_that_cannot_be_supervised_are_refused_in_one_line():
    with pytest.raises(UNetError, match="--depth 3 or more"):
        supervise(build_unet(UNetSpec(padding="same", base_filters=4, depth=2)), 2)
    with pytest.raises(UNetError, match="--padding same"):
        supervise(build_unet(UNetSpec(base_filters=4, depth=3)), 2)
    import tf_keras as keras
    plain = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 1)])
    with pytest.raises(UNetError, match="no layer dec1_relu2"):
        supervise(plain, 2)


@pytest.mark.parametrize("flags, needle", [
    (["--padding", "valid"], "--padding same"),
    (["--padding", "same", "--depth", "2"], "--depth 3 or more"),
    (["--padding", "same", "--quantization", "INT"], "a float network"),
])
def test_the_command_line_refuses_what_cannot_be_supervised(tmp_path, flags, needle):
    from unet_medical.cli.config import parse_config

    with pytest.raises(UNetError, match=needle):
        parse_config(["--exec_mode", "train", "--model_dir", str(tmp_path / "run"), "--deep_supervision", *flags])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from tests.tiny_run import write_tiny_data

    return write_tiny_data(tmp_path_factory)


def tiny(depth: int = 3) -> list[str]:
    from tests.tiny_run import TINY

    flags = list(TINY)
    flags[flags.index("--depth") + 1] = str(depth)
    return flags


@pytest.mark.slow  # three tiny training runs
def test_a_supervised_run_ships_the_plain_network_and_resumes_its_heads(tmp_path, data_dir, capsys):
    from unet_medical.cli.main import main as cli_main

    from unet_medical.base.runlog.backends import read_log

    run = tmp_path / "run"
    # Unset, the recipe turns it on for this same-padding depth-3 float network, and says so.
    assert cli_main(["train", "--data_dir", str(data_dir), "--model_dir", str(run), *tiny()]) == 0
    (line,) = [r["data"] for r in read_log(run / "log.json")
               if r.get("step") == "RECIPE" and r["data"].get("flag") == "deep_supervision"]
    assert line["value"] is True and "decoder level 2 also" in line["reason"]
    last, best = ckpt.checkpoint_dir(run) / ckpt.LAST, ckpt.checkpoint_dir(run) / ckpt.BEST
    with np.load(last) as data:
        header = json.loads(data["header"].tobytes())
        heads = [data[f"aux/{i:05d}"] for i in range(len(header["names"]["aux"]))]
    assert [h.shape for h in heads] == [(1, 1, 8, 2), (2,)]  # dec2 (8 channels) -> 2 classes
    with np.load(best) as data:
        assert "aux" not in json.loads(data["header"].tobytes())["names"]
    plain = tmp_path / "plain"
    assert cli_main(["train", "--data_dir", str(data_dir), "--model_dir", str(plain), *tiny(),
                     "--no-deep_supervision"]) == 0
    with np.load(ckpt.checkpoint_dir(plain) / ckpt.BEST) as a, np.load(best) as b:
        assert sorted(a.files) == sorted(b.files)  # the same network's weights, nothing more
    # The resume takes --deep_supervision from the record and continues the heads it saved.
    assert cli_main(["train", "--model_dir", str(run), "--resume_training", "--max_steps", "6"]) == 0
    with np.load(last) as data:
        assert json_step(data) == 6
        assert not np.array_equal(data["aux/00000"], heads[0])  # the heads trained on
    # A resume that drops it is refused in one line, and so is one that adds it to a plain run.
    capsys.readouterr()
    assert cli_main(["train", "--model_dir", str(run), "--resume_training", "--max_steps", "8",
                     "--no-deep_supervision"]) == 2
    assert "deep_supervision" in capsys.readouterr().err
    assert cli_main(["train", "--model_dir", str(plain), "--resume_training", "--max_steps", "8",
                     "--deep_supervision"]) == 2
    assert "deep_supervision" in capsys.readouterr().err



def json_step(data) -> int:
    return json.loads(data["header"].tobytes())["step"]


@pytest.mark.parametrize("flags, padding, depth, dims, resuming, expected, why", [
    ([], "same", 4, 2, False, True, "decoder levels 2-3 also scored through 1x1 heads"),
    ([], "valid", 4, 2, False, False, "valid padding"),
    ([], "same", 2, 2, False, False, "depth 2"),
    (["--quantization", "INT"], "same", 4, 2, False, False, "quantized"),
    ([], "same", 3, 3, False, True, "decoder level 2 also scored through 1x1x1 heads"),
    ([], "same", 2, 3, False, False, "depth 2"),
    ([], "same", 4, 2, True, False, "recorded before"),
])
def test_the_recipe_decides_an_unset_flag_and_says_why(tmp_path, flags, padding, depth, dims, resuming, expected, why):
    from tests.recording import RecordingLogger
    from unet_medical.cli.config import parse_config
    from unet_medical.cli.recipe import resolve_deep_supervision

    logger = RecordingLogger()
    cfg = parse_config(["--exec_mode", "train", "--model_dir", str(tmp_path / "run"), "--padding", padding,
                        "--depth", str(depth), *flags])
    assert resolve_deep_supervision(cfg, padding, depth, dims, resuming, logger).deep_supervision is expected
    line = logger.recipe("deep_supervision")
    assert line["value"] is expected and why in line["reason"]
    # A flag the user typed wins, and the recipe says nothing.
    typed = parse_config(["--exec_mode", "train", "--model_dir", str(tmp_path / "run"), "--no-deep_supervision"])
    quiet = RecordingLogger()
    assert resolve_deep_supervision(typed, "same", 4, 2, False, quiet).deep_supervision is False
    assert quiet.records == []
