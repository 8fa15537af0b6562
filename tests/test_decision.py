"""The run's decision: foreground threshold and test-time flips, chosen on validation and applied everywhere.

The rule (inference.decision.decide_labels) is checked pixel by pixel against a plain loop; the chooser
(evaluation.decision) on hand-made probabilities whose best threshold is known; the SavedModel's graph
against the NumPy path; and a tiny training run end to end (model.json, RECIPE lines, predict's masks).
"""
import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf
import tifffile

import main
from unet_medical.base.runlog.backends import read_log
from tests.tiny_run import TINY, write_tiny_data
from unet_medical.base.errors import UNetError
from unet_medical.evaluation.decision import MIN_GAIN, choose_decision, foreground_dice
from unet_medical.evaluation.metrics import dice_per_class
from unet_medical.export import serving
from unet_medical.inference.decision import Decision, decide_labels, parse_threshold, resolve_decision
from unet_medical.inference.tiling import _dihedral, _dihedral_inverse, keras_predictor, predict_images
from unet_medical.model.unet import UNetSpec, build_unet
from unet_medical.data.normalize import normalize_image


def random_probs(shape, k, seed=0):
    logits = np.random.default_rng(seed).normal(size=(*shape, k))
    e = np.exp(logits)
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def loop_labels(probs, threshold, background):
    """One pixel at a time, written from the rule's words, not from decide_labels."""
    out = np.zeros(probs.shape[:-1], np.int64)
    for index in np.ndindex(*probs.shape[:-1]):
        p = probs[index]
        if 1.0 - p[background] <= threshold:
            out[index] = background
        else:
            best, best_p = None, -1.0
            for c in range(len(p)):
                if c != background and p[c] > best_p:
                    best, best_p = c, p[c]
            out[index] = best
    return out


@pytest.mark.parametrize("k,background", [(2, 0), (2, 1), (3, 0), (3, 2)])
@pytest.mark.parametrize("threshold", [0.1, 0.5, 0.8])
def test_threshold_rule_matches_a_pixel_loop(k, background, threshold):
    probs = random_probs((9, 7), k, seed=k + background)
    np.testing.assert_array_equal(decide_labels(probs, threshold, background), loop_labels(probs, threshold, background))


def test_argmax_and_the_half_threshold_agree_for_one_foreground_class():
    probs = random_probs((40, 40), 2, seed=3)
    np.testing.assert_array_equal(decide_labels(probs, None, 0), probs.argmax(-1))
    np.testing.assert_array_equal(decide_labels(probs, 0.5, 0), probs.argmax(-1))
    # a lower threshold only adds foreground
    assert (decide_labels(probs, 0.2, 0) >= decide_labels(probs, 0.5, 0)).all()


def test_foreground_dice_pools_pixels_and_leaves_out_the_background():
    probs = [random_probs((12, 10), 3, seed=s) for s in range(3)]
    truth = [np.random.default_rng(10 + s).integers(0, 3, (12, 10)) for s in range(3)]
    pooled = dice_per_class(np.concatenate([t.ravel() for t in truth]),
                            np.concatenate([p.argmax(-1).ravel() for p in probs]), 3)
    assert foreground_dice(probs, truth, 0, None) == pytest.approx((pooled[1] + pooled[2]) / 2)


def underconfident(n=8, size=32, seed=0, fg_p=0.4):
    """Squares of foreground the model gives p = fg_p (under 0.5) and background p = 0.1: the best threshold
    lies between 0.1 and fg_p, and the argmax finds no foreground at all."""
    rng = np.random.default_rng(seed)
    probs, truth = [], []
    for _ in range(n):
        t = np.zeros((size, size), np.int64)
        y, x = rng.integers(0, size - 10, 2)
        t[y:y + 10, x:x + 10] = 1
        fg = np.where(t == 1, fg_p, 0.1) + rng.uniform(-0.02, 0.02, t.shape)
        probs.append(np.stack([1 - fg, fg], -1).astype(np.float32))
        truth.append(t)
    return probs, truth


def test_an_underconfident_model_gets_a_lower_threshold():
    probs, truth = underconfident()
    choice = choose_decision({False: probs}, truth, background=0)
    assert choice["scores"]["argmax"] == 0.0  # no pixel reaches 0.5
    assert 0.1 < choice["threshold"] < 0.4 and choice["tta"] is False
    assert choice["chosen_dice"] == pytest.approx(1.0) and choice["gain"] == pytest.approx(1.0)


def test_a_well_calibrated_model_keeps_the_argmax():
    probs, truth = underconfident(fg_p=0.9)
    choice = choose_decision({False: probs}, truth, background=0)
    assert choice["threshold"] is None and choice["gain"] == 0.0
    assert "argmax" in choice["reason"]


def test_flips_are_kept_only_for_a_gain_of_min_gain():
    probs, truth = underconfident(fg_p=0.9)
    # "TTA" probabilities that fix one foreground pixel the plain ones miss: a gain far under MIN_GAIN
    flipped_truth = [t.copy() for t in truth]
    tta = [p.copy() for p in probs]
    y, x = np.argwhere(truth[0] == 0)[0]
    flipped_truth[0][y, x] = 1
    tta[0][y, x] = [0.2, 0.8]
    small = choose_decision({False: probs, True: tta}, flipped_truth, background=0)
    assert small["tta"] is False
    assert 0 < small["scores"]["argmax_tta"] - small["scores"]["argmax"] < MIN_GAIN
    big = choose_decision({False: [np.stack([p[..., 1], p[..., 0]], -1) for p in probs], True: probs}, truth, 0)
    assert big["tta"] is True and big["gain"] > MIN_GAIN


def test_a_fixed_threshold_is_scored_not_scanned():
    probs, truth = underconfident()
    choice = choose_decision({False: probs}, truth, background=0, scan_thresholds=False, fixed_threshold=0.3)
    assert choice["threshold"] == 0.3 and set(choice["scores"]) == {"fixed"}


def test_flags_win_over_the_recorded_choice():
    recorded = {"threshold": 0.3, "tta": True}
    assert resolve_decision("auto", None, recorded) == Decision(0.3, True)
    assert resolve_decision("argmax", False, recorded) == Decision(None, False)
    assert resolve_decision("0.7", None, None) == Decision(0.7, False)
    assert resolve_decision("auto", None, None) == Decision(None, False)


@pytest.mark.parametrize("bad", ["0", "1", "1.5", "half", "-0.2"])
def test_a_bad_threshold_is_one_line(bad, capsys):
    with pytest.raises(UNetError, match="--threshold"):
        parse_threshold(bad)
    assert main.main(["--exec_mode", "train", "--data_dir", "x", "--model_dir", "y", "--threshold", bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--threshold" in err[0]


@pytest.mark.parametrize("k", range(8))
def test_in_graph_flips_are_the_numpy_flips(k):
    x = np.random.default_rng(k).random((2, 6, 6, 3)).astype(np.float32)
    np.testing.assert_array_equal(serving.dihedral_tf(tf.constant(x), k).numpy(), _dihedral(x, k))
    np.testing.assert_array_equal(serving.dihedral_inverse_tf(tf.constant(x), k).numpy(), _dihedral_inverse(x, k))


def test_the_serving_graph_applies_flips_and_threshold_as_predict_does():
    spec = UNetSpec(padding="same", base_filters=4, depth=2, dropout=0.0, batch_norm=False, n_classes=3)
    model = build_unet(spec)  # random weights: not flip-equivariant, so TTA changes the result
    module = serving.UNetServingModule(model, spec, None, np.uint8, max_tile_size=48,
                                       class_names=("bg", "a", "b"), threshold=0.3, tta=True)
    images = np.random.default_rng(2).integers(0, 256, (1, 40, 70, 1), dtype=np.uint8)
    expected = predict_images(keras_predictor(model), spec, [normalize_image(images[0])], max_tile_size=48,
                              tta=True)[0]
    plain = predict_images(keras_predictor(model), spec, [normalize_image(images[0])], max_tile_size=48)[0]
    assert np.abs(expected - plain).max() > 1e-4  # the flips did change something
    out = module.serve(tf.constant(images))
    np.testing.assert_allclose(out["probabilities"].numpy()[0], expected, atol=1e-5)
    np.testing.assert_array_equal(out["labels"].numpy()[0], decide_labels(expected, 0.3, 0))


DECISION_PASSES: list[bool] = []  # chosen_run's: the flips setting of each prediction its decision made


@pytest.fixture(scope="module")
def chosen_run(tmp_path_factory):
    """A tiny run (DECISION_PASSES: what its end-of-training decision predicted)."""
    from unet_medical.cli import decide

    data = write_tiny_data(tmp_path_factory)
    run = tmp_path_factory.mktemp("runs") / "run"
    flags = [f for f in TINY if f != "--no-saved_model"]
    def counted(*args, tta=False, **kwargs):
        DECISION_PASSES.append(bool(tta))
        return predict_images(*args, tta=tta, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(decide, "predict_images", counted)
        assert main.main(["--exec_mode", "train_and_evaluate", "--data_dir", str(data), "--model_dir", str(run),
                          "--num_folds", "5", "--fold", "0", *flags]) == 0
    return data, run


@pytest.mark.slow  # a tiny training run
def test_the_decision_reuses_the_final_evaluations_plain_pass(chosen_run):
    """The final evaluation predicted the shipped weights already: the decision predicts only the flips, and
    the plain score it takes equals a fresh prediction of the shipped model."""
    from unet_medical.base.artifacts import load_run_record
    from unet_medical.cli.assemble import load_training_set, restore_model
    from unet_medical.cli.config import parse_config
    from unet_medical.cli.decide import choose_run_decision
    from unet_medical.data.folds import fold_split
    from tests.recording import RecordingLogger

    data, run = chosen_run
    assert DECISION_PASSES == [True]  # the flips alone: the plain pass was the final evaluation's
    record = json.loads((run / "model.json").read_text())["decision"]
    assert record["first_pass"] == "the final evaluation's"
    cfg = parse_config(["--exec_mode", "evaluate", "--model_dir", str(run), "--no-tta"])
    shipped, spec, info = restore_model(cfg)
    assert info.step == json.loads((run / "eval_results.json").read_text())["step"] == 4
    training_set = load_training_set(cfg)
    _, val_idx = fold_split(len(training_set.images), cfg.num_folds, cfg.fold)
    (run / "fresh").mkdir()
    fresh, _ = choose_run_decision(cfg.replace(model_dir=str(run / "fresh")), shipped, spec,
                                   [training_set.images[i] for i in val_idx], [training_set.masks[i] for i in val_idx],
                                   training_set.class_names, load_run_record(run), RecordingLogger())
    assert fresh.decision["first_pass"] == "predicted"
    assert fresh.decision["scores"]["argmax"] == pytest.approx(record["scores"]["argmax"], abs=1e-5)


@pytest.mark.slow  # a tiny training run, a SavedModel and a predict
def test_training_records_the_decision_and_predict_applies_it(chosen_run, tmp_path):
    data, run = chosen_run
    record = json.loads((run / "model.json").read_text())["decision"]
    assert set(record) >= {"threshold", "tta", "scores", "reason", "chosen_dice", "gain"}
    assert "argmax_tta" in record["scores"]  # flips were tried: the fold is small
    results = json.loads((run / "eval_results.json").read_text())
    assert results["decision"]["threshold"] == record["threshold"]
    flags = {r["data"].get("flag") for r in read_log(run / "log.json") if r.get("step") == "RECIPE"}
    assert {"threshold", "tta"} <= flags
    # predict with a forced threshold: the masks are decide_labels of the probabilities it wrote
    out = tmp_path / "pred"
    main.main(["--exec_mode", "predict", "--model_dir", str(run), "--data_dir", str(data), "--output_dir", str(out),
               "--threshold", "0.2", "--no-tta"])
    interior = tifffile.imread(out / "test-volume-probabilities.tif")  # p(interior), ISBI's convention
    masks = tifffile.imread(out / "test-masks.tif")
    probs = np.stack([1 - interior, interior], -1)
    np.testing.assert_array_equal(masks == 255, decide_labels(probs, 0.2, 1) == 1)
    # the SavedModel's graph applies the recorded decision
    loaded = tf.saved_model.load(str(run / "saved_model"))
    image = tifffile.imread(pathlib.Path(data) / "test-volume.tif")[:1, ..., None]
    served = loaded.signatures["serving_default"](images=tf.constant(image))
    p = served["probabilities"].numpy()[0]
    np.testing.assert_array_equal(served["labels"].numpy()[0], decide_labels(p, record["threshold"], 1))


def test_the_budget_reserves_the_flipped_pass_only_when_the_decision_will_make_it():
    from unet_medical.cli.decide import TTA_TRIAL_LIMIT_S, PlainPass, decision_cost_s

    latest = PlainPass(step=100, tta=False, seconds=5.0, result=None)
    assert decision_cost_s(None, latest) == 40.0  # --tta unset: 8 flipped passes of 5 s
    assert decision_cost_s(True, latest) == 0.0 and decision_cost_s(False, latest) == 0.0  # --tta/--no-tta given
    assert decision_cost_s(None, None) == 0.0  # nothing evaluated yet
    at_limit = TTA_TRIAL_LIMIT_S / 8
    assert decision_cost_s(None, PlainPass(100, False, at_limit, None)) == TTA_TRIAL_LIMIT_S
    assert decision_cost_s(None, PlainPass(100, False, at_limit + 0.1, None)) == 0.0  # not tried: no cost
