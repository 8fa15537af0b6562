"""Test-time mirroring of volume runs, chosen on validation (cli.decide.choose_volume_run_decision) and
applied everywhere: the ladder rule on made-up per-case Dice, the flags that win over the run's choice, the
3-D SavedModel's in-graph mirroring against NumPy's predict_mirrored, and (slow) a toy --dims 3 run end to
end (model.json, eval_results.json, RECIPE lines, predict --tta/--no-tta, the SavedModel)."""
from __future__ import annotations

import json
import pathlib

import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf

import main
from unet_medical.base.artifacts import RunRecord, load_run_record
from unet_medical.base.errors import UNetError
from unet_medical.base.runlog import read_log
from unet_medical.cli import decide
from unet_medical.cli.config import Config
from unet_medical.cli.volume_modes import volume_decision
from unet_medical.data.normalize import normalize_image
from unet_medical.data.volume_slices import to_uint16
from unet_medical.data.volumes import read_volume
from unet_medical.evaluation.decision import MIN_GAIN, choose_mirroring
from unet_medical.evaluation.volumes import score_volumes
from unet_medical.export.volume_serving import VolumeServingModule
from unet_medical.inference.decision import Decision
from unet_medical.inference.sliding_window import predict_mirrored, sliding_window_predict
from unet_medical.inference.tiling import keras_predictor
from unet_medical.model.unet import UNetSpec, build_unet
from tests.recording import RecordingLogger

CLASSES = ("background", "organ")
ORGAN = 200  # foreground voxels of each made-up case


# ---- the rule ---------------------------------------------------------------------------------------------

def test_mirroring_is_kept_only_for_a_gain_of_min_gain():
    assert choose_mirroring({False: 0.80, True: 0.80 + 2 * MIN_GAIN})["tta"] is True
    refused = choose_mirroring({False: 0.80, True: 0.80 + MIN_GAIN / 2})
    assert refused["tta"] is False and refused["threshold"] is None and refused["gain"] == 0.0
    assert refused["scores"] == {"argmax": 0.80, "argmax_tta": 0.80 + MIN_GAIN / 2}
    assert choose_mirroring({True: 0.5})["tta"] is True  # --tta given: the one setting allowed
    assert choose_mirroring({False: 0.9, True: 0.7})["chosen"] == "argmax"


def made_up_case(missed: int) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, truth) (10, 10, 10) maps: the truth's ORGAN organ voxels, of which the prediction misses
    `missed`; Dice = 2 (ORGAN - missed) / (2 ORGAN - missed)."""
    truth = np.zeros(1000, np.uint8)
    truth[:ORGAN] = 1
    predicted = truth.copy()
    predicted[:missed] = 0
    return predicted.reshape(10, 10, 10), truth.reshape(10, 10, 10)


class MadeUpCases:
    """A VolumeEvaluator's predict/score over made-up cases: label maps whose per-case Dice is known, scored
    by evaluation.volumes.score_volumes (what the run's evaluator scores with)."""

    def __init__(self, missed: dict[bool, list[int]], mirror_passes: int = 8):
        self.missed, self.cases, self.predicted = missed, [f"case_{i}" for i in range(len(missed[False]))], []
        self.mirror_passes = mirror_passes

    def predict(self, model, tta: bool, label: str) -> dict[str, np.ndarray]:
        self.predicted.append(tta)
        return {name: made_up_case(m)[0] for name, m in zip(self.cases, self.missed[tta])}

    def score(self, predictions: dict[str, np.ndarray]) -> dict:
        truth = {name: made_up_case(0)[1] for name in self.cases}
        return score_volumes(predictions, truth, {name: (1.0, 1.0, 1.0) for name in self.cases}, CLASSES, 1.0)


def expected_dice(missed: list[int]) -> float:
    return float(np.mean([2 * (ORGAN - m) / (2 * ORGAN - m) for m in missed]))


@pytest.mark.parametrize("mirrored, kept", [([4, 2, 0], True), ([19, 10, 4], False)])
def test_a_volume_run_keeps_mirroring_by_the_per_case_dice_it_gains(tmp_path, mirrored, kept):
    plain = [20, 10, 4]
    gain = expected_dice(mirrored) - expected_dice(plain)
    assert (gain >= MIN_GAIN) is kept  # the made-up cases sit on the side of the rule the case says
    cases, lines = MadeUpCases({False: plain, True: mirrored}), RecordingLogger()
    record, results = decide.choose_volume_run_decision(Config(model_dir=str(tmp_path)), None, cases,
                                                        RunRecord(spec={}, class_names=CLASSES), lines)
    choice = record.decision
    assert cases.predicted == [False, True] and choice["tta"] is kept and choice["threshold"] is None
    assert choice["scores"]["argmax"] == pytest.approx(expected_dice(plain))
    assert choice["scores"]["argmax_tta"] == pytest.approx(expected_dice(mirrored))
    assert results[True]["mean_dice"] == pytest.approx(expected_dice(mirrored))
    assert load_run_record(tmp_path).decision == json.loads(json.dumps(choice))  # model.json has it
    assert lines.recipe("threshold")["value"] == "argmax" and "volumes keep the argmax" in lines.recipe("threshold")["reason"]
    tta_line = lines.recipe("tta")
    assert tta_line["value"] is kept
    for score in (expected_dice(plain), expected_dice(mirrored)):  # both scores and their cost are stated
        assert f"{score:.4f} (" in tta_line["reason"]


def test_mirroring_is_not_tried_past_the_time_limit_and_a_given_tta_is_the_only_setting(tmp_path, monkeypatch):
    monkeypatch.setattr(decide, "TTA_TRIAL_LIMIT_S", 0.0)
    cases, lines = MadeUpCases({False: [20, 10], True: [0, 0]}), RecordingLogger()
    record, results = decide.choose_volume_run_decision(Config(model_dir=str(tmp_path)), None, cases,
                                                        RunRecord(spec={}, class_names=CLASSES), lines)
    assert cases.predicted == [False] and set(results) == {False} and record.decision["tta"] is False
    assert "mirroring not tried" in lines.recipe("tta")["reason"]
    # A run that mirrors no axis has no mirrored pass to try, however fast; the budget reserves nothing for it.
    monkeypatch.setattr(decide, "TTA_TRIAL_LIMIT_S", 180.0)
    unmirrored, lines = MadeUpCases({False: [20, 10], True: [0, 0]}, mirror_passes=1), RecordingLogger()
    record, _ = decide.choose_volume_run_decision(Config(model_dir=str(tmp_path)), None, unmirrored,
                                                  RunRecord(spec={}, class_names=CLASSES), lines)
    assert unmirrored.predicted == [False] and record.decision["tta"] is False
    assert "the run mirrors no axis" in lines.recipe("tta")["reason"]
    latest = decide.PlainPass(step=5, tta=False, seconds=10.0, result=None)
    assert decide.decision_cost_s(None, latest, 1) == 0.0
    assert decide.decision_cost_s(None, latest, 4) == 40.0 and decide.decision_cost_s(None, latest) == 80.0
    given = MadeUpCases({False: [20, 10], True: [30, 30]})
    record, _ = decide.choose_volume_run_decision(Config(model_dir=str(tmp_path), tta=True), None, given,
                                                  RunRecord(spec={}, class_names=CLASSES), RecordingLogger())
    assert given.predicted == [True] and record.decision["tta"] is True


def test_volume_flags_win_over_the_recorded_choice_and_a_threshold_is_refused():
    recorded = {"threshold": None, "tta": True}
    assert volume_decision("auto", None, recorded) == Decision(None, True)
    assert volume_decision("auto", False, recorded) == Decision(None, False)
    assert volume_decision("argmax", True, {"tta": False}) == Decision(None, True)
    with pytest.raises(UNetError, match=r"^--threshold=0.3: volume runs label by the argmax") as caught:
        volume_decision("0.3", None, recorded)
    assert "\n" not in str(caught.value)


# ---- the SavedModel's graph -------------------------------------------------------------------------------

PATCH = (16, 8, 8)


@pytest.fixture(scope="module")
def model():
    tf.keras.utils.set_random_seed(1)  # random weights: not flip-equivariant, so mirroring changes the result
    return build_unet(UNetSpec(n_classes=3, base_filters=4, depth=2, padding="same", dropout=0.0, dims=3))


@pytest.mark.parametrize("axes", [(0, 1, 2), (0, 2)])
def test_in_graph_mirroring_of_a_window_batch_is_predict_mirrored(model, axes):
    windows = np.random.default_rng(0).random((2, *PATCH, 1)).astype(np.float32)
    module = VolumeServingModule(model, PATCH, (None,), mirror=True, mirror_axes=axes)
    mirrored = module.window_probabilities(tf.constant(windows))
    expected = predict_mirrored(keras_predictor(model), windows, axes)
    plain = keras_predictor(model)(windows)
    assert np.abs(expected - plain).max() > 1e-3  # the flips do change the probabilities
    np.testing.assert_allclose(mirrored.numpy(), expected, atol=1e-5)


def test_a_mirroring_serving_graph_equals_numpys_mirrored_sliding_window(model):
    window = (-200.0, 300.0)
    volume = np.random.default_rng(2).integers(-1000, 1500, (21, 6, 11, 1)).astype(np.int16)
    normalized = normalize_image(to_uint16(volume[..., 0], window)[..., None])
    expected = sliding_window_predict(keras_predictor(model), normalized, PATCH, overlap=0.5, mirror=True)
    plain = sliding_window_predict(keras_predictor(model), normalized, PATCH, overlap=0.5)
    assert (expected.argmax(-1) != plain.argmax(-1)).any()
    module = VolumeServingModule(model, PATCH, (window,), image_dtype=np.int16, mirror=True)
    out = module.serve(tf.constant(volume[None]), tf.constant([1.0, 1.0, 1.0], tf.float64))
    np.testing.assert_allclose(out["probabilities"].numpy()[0], expected, atol=1e-5)
    np.testing.assert_array_equal(out["labels"].numpy()[0], expected.argmax(-1))


# ---- a toy --dims 3 run end to end ------------------------------------------------------------------------

TINY_3D = ["--dims", "3", "--base_filters", "4", "--depth", "2", "--batch_size", "2", "--patch_size", "32,32,16",
           "--num_folds", "3", "--max_steps", "2", "--log_every", "1", "--dropout", "0", "--precision", "fp32"]


@pytest.fixture(scope="module")
def ct_data(tmp_path_factory) -> pathlib.Path:
    from unet_medical.data import synthetic_volumes as sv

    data = tmp_path_factory.mktemp("decide3d") / "ct"
    sv.write_volume_kind(data, "ct", 3, seed=0)
    return data


def train(data: pathlib.Path, run: pathlib.Path, *flags: str) -> None:
    assert main.main(["--exec_mode", "train_and_evaluate", "--data_dir", str(data), "--model_dir", str(run),
                      *TINY_3D, *flags]) == 0


@pytest.fixture(scope="module")
def run3d(ct_data, tmp_path_factory) -> dict[str, pathlib.Path]:
    """A tiny --dims 3 train_and_evaluate run (2 steps) on the synthetic CT set, --tta unset: it chooses."""
    run = tmp_path_factory.mktemp("chooses") / "run"
    train(ct_data, run)
    return {"data": ct_data, "run": run}


@pytest.fixture(scope="module")
def mirrored_run(ct_data, tmp_path_factory) -> dict:
    """The same run made to choose mirroring (the toy network's own choice is the plain argmax): the chooser
    gets min_gain = -1, and every validation prediction of the evaluator is counted as (label, tta). It
    mirrors I and K only (--mirror_axes 0,2), which predict, evaluate and the SavedModel must follow."""
    from unet_medical.cli.volume_modes import VolumeEvaluator

    run, calls = tmp_path_factory.mktemp("mirrors") / "run", []
    predict = VolumeEvaluator.predict

    def counted(self, model, tta, label="evaluate"):
        calls.append((label, bool(tta)))
        return predict(self, model, tta, label)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(decide, "choose_mirroring", lambda scores: choose_mirroring(scores, min_gain=-1.0))
        patch.setattr(VolumeEvaluator, "predict", counted)
        train(ct_data, run, "--mirror_axes", "0,2")
    return {"data": ct_data, "run": run, "calls": calls}


def reference_probabilities(run: pathlib.Path, image_path: pathlib.Path, mirror: bool,
                            mirror_axes: tuple[int, ...] | None = None) -> np.ndarray:
    """What predict should give for one raw NIfTI: the run's Keras model by NumPy sliding windows, mirrored
    over `mirror_axes` (default: the run's recorded ones)."""
    from unet_medical.cli.assemble import load_trained
    from unet_medical.data.volume_training import case_inputs

    model = load_trained(str(run), "last")[0]
    record = load_run_record(run).volume
    normalized = normalize_image(case_inputs(read_volume(image_path), record)[0])
    axes = tuple(record["mirror_axes"]) if mirror_axes is None else mirror_axes
    return sliding_window_predict(keras_predictor(model), normalized, tuple(record["patch_size"]), overlap=0.5,
                                  mirror=mirror, mirror_axes=axes)


@pytest.mark.slow
def test_a_3d_run_records_its_mirroring_and_scores_the_chosen_rule(run3d):
    run = run3d["run"]
    decision = load_run_record(run).decision
    scores = decision["scores"]
    print(f"toy 3-D run: {decision['reason']}")
    assert set(scores) == {"argmax", "argmax_tta"} and decision["threshold"] is None  # the fold is small: tried
    assert decision["tta"] is (scores["argmax_tta"] >= scores["argmax"] + MIN_GAIN)
    results = json.loads((run / "eval_results.json").read_text())
    assert results["decision"] == decision and results["tta"] is decision["tta"]
    assert results["mean_dice"] == pytest.approx(scores[decision["chosen"]])  # eval_results scores the chosen rule
    recipe = {r["data"]["flag"]: r["data"] for r in read_log(run / "log.json") if r.get("step") == "RECIPE"}
    assert recipe["threshold"]["value"] == "argmax" and recipe["tta"]["value"] is decision["tta"]
    # 2 training cases, too few to show an order: every axis is mirrored, in training and at test time
    assert recipe["mirror_axes"]["value"] == "0,1,2" and "every axis is mirrored" in recipe["mirror_axes"]["reason"]
    assert load_run_record(run).volume["mirror_axes"] == [0, 1, 2]


def assert_labels_of(labels: np.ndarray, probabilities: np.ndarray, tie: float = 1e-6) -> None:
    """labels are the argmax of probabilities (I, J, K, n) wherever the two most probable classes differ by
    more than `tie`: a 2-step network has near-ties (about 1 % of voxels), which float32 sums in another
    order (the paths differ by ~1e-7) may flip."""
    top = np.sort(probabilities, axis=-1)
    clear = top[..., -1] - top[..., -2] > tie
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(labels[clear], probabilities.argmax(-1)[clear])


def predicted_labels(run: pathlib.Path, data: pathlib.Path, out: pathlib.Path, *flags: str) -> np.ndarray:
    assert main.main(["--exec_mode", "predict", "--model_dir", str(run), "--input", str(data / "imagesTs"),
                      "--output_dir", str(out), "--precision", "fp32", *flags]) == 0  # as the reference
    return np.asarray(nib.load(out / "case_003.nii.gz").dataobj)


@pytest.mark.slow
def test_tta_flags_override_the_recorded_choice_in_predict(run3d, tmp_path):
    run, data = run3d["run"], run3d["data"]
    image = data / "imagesTs" / "case_003_0000.nii.gz"
    reference = {mirror: reference_probabilities(run, image, mirror) for mirror in (False, True)}
    assert (reference[True].argmax(-1) != reference[False].argmax(-1)).mean() > 0.01  # the flags are told apart
    assert_labels_of(predicted_labels(run, data, tmp_path / "tta", "--tta"), reference[True])
    assert_labels_of(predicted_labels(run, data, tmp_path / "no_tta", "--no-tta"), reference[False])
    recorded = load_run_record(run).decision["tta"]
    assert_labels_of(predicted_labels(run, data, tmp_path / "unset"), reference[recorded])


@pytest.mark.slow
def test_a_run_that_mirrors_scores_eval_results_from_the_maps_it_chose_on(mirrored_run):
    run, calls = mirrored_run["run"], mirrored_run["calls"]
    decision = load_run_record(run).decision
    assert decision["tta"] is True and decision["chosen"] == "argmax_tta"
    # The decision took the final evaluation's plain pass and predicted the mirrored one alone; no third pass.
    assert calls[-2:] == [("evaluate", False), ("decision", True)] and ("decision", False) not in calls
    assert decision["first_pass"] == "the final evaluation's"
    results = json.loads((run / "eval_results.json").read_text())
    assert results["tta"] is True and results["decision"] == decision
    assert results["mean_dice"] == pytest.approx(decision["scores"]["argmax_tta"])
    assert set(results["per_case"]) == set(load_run_record(run).volume["validation_cases"])
    assert any(r.get("step") == ["eval_decided", 2] for r in read_log(run / "log.json"))
    # evaluate applies the run's choice when --tta is unset, and the flag wins
    for flags, tta, score in (([], True, "argmax_tta"), (["--no-tta"], False, "argmax")):
        assert main.main(["--exec_mode", "evaluate", "--model_dir", str(run), "--precision", "fp32", *flags]) == 0
        again = json.loads((run / "eval_results_last.json").read_text())
        assert again["tta"] is tta and again["mean_dice"] == pytest.approx(decision["scores"][score], abs=1e-6)
        assert ("decision" in again) is (tta is True)  # the recorded choice's block, only under that choice


@pytest.mark.slow
def test_the_saved_model_of_a_run_that_mirrors_matches_predict_with_mirroring(mirrored_run, tmp_path):
    run, data = mirrored_run["run"], mirrored_run["data"]
    image = data / "imagesTs" / "case_003_0000.nii.gz"
    raw = read_volume(image).array[..., None]  # the volume as predict reads it
    assert load_run_record(run).volume["mirror_axes"] == [0, 2]
    assert not any(r.get("step") == "RECIPE" and r["data"]["flag"] == "mirror_axes" for r in read_log(run / "log.json"))
    expected = reference_probabilities(run, image, mirror=True)
    every_axis = reference_probabilities(run, image, mirror=True, mirror_axes=(0, 1, 2))
    assert np.abs(expected - every_axis).max() > 1e-3  # the recorded axes are what tells them apart
    predicted = predicted_labels(run, data, tmp_path / "pred")  # flags unset: the run's choice, mirrored
    for saved in (run / "saved_model", run / "export" / "savedmodel"):  # written by training, by export
        if not saved.exists():
            assert main.main(["--exec_mode", "export", "--model_dir", str(run), "--data_dir", str(data),
                              "--export_format", "savedmodel"]) == 0
            entry = json.loads((run / "export" / "export.json").read_text())["artifacts"]["savedmodel"]
            assert entry["decision"] == {"threshold": None, "tta": True}
            assert entry["parity"]["serving"]["label_agreement"] >= 0.995  # against predict_mirrored's windows
        loaded = tf.saved_model.load(str(saved))
        served = loaded.signatures[f"serving_{raw.dtype.name}"](volumes=tf.constant(raw[None]),
                                                                 spacing=tf.constant(np.asarray(read_volume(image).spacing)))
        probabilities = served["probabilities"].numpy()[0]
        np.testing.assert_allclose(probabilities, expected, atol=1e-5)
        np.testing.assert_array_equal(served["labels"].numpy()[0], probabilities.argmax(-1))
        assert_labels_of(predicted, probabilities)
