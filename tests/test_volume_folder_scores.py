"""`python -m unet_medical.evaluation LABELS_DIR PREDICTIONS_DIR`: per-case volume scores of a predictions folder,
checked against Dice counted by hand, with the refusals a grader needs (a missing case, a prediction off its
label's grid)."""
import json

import numpy as np
import pytest

from unet_medical.base.errors import UNetError
from unet_medical.data.volumes import read_volume, write_nifti, write_nifti_image
from unet_medical.evaluation.__main__ import main
from unet_medical.evaluation.volume_folders import score_folders

# oblique, anisotropic, axes flipped: the geometry a scorer must read, not assume
AFFINE = np.array([[0.0, -0.8, 0.1, 20.0], [0.7, 0.0, 0.0, -5.0], [0.0, 0.05, -2.5, 30.0], [0, 0, 0, 1]])


def _labels(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros((20, 18, 9), np.uint8)
    a, b = rng.integers(2, 6, size=2)
    labels[a:a + 8, b:b + 7, 2:7] = 1
    labels[a + 2:a + 5, b + 2:b + 5, 3:6] = 2
    return labels


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.fixture()
def folders(tmp_path):
    labels_dir, predictions_dir = tmp_path / "labelsTs", tmp_path / "predictions"
    truth, guesses = {}, {}
    for index in range(3):
        case, labels = f"case_{index}", _labels(index)
        image = read_volume(write_nifti_image(labels, AFFINE, labels_dir / f"{case}.nii.gz"))
        guess = labels.copy()
        guess[6 + index:8 + index] = 0  # each case loses a different slab of I through its class-1 box
        write_nifti(guess, image, predictions_dir / f"{case}.nii.gz")
        truth[case], guesses[case] = labels, guess
    write_nifti_image(np.zeros((4, 4, 4), np.uint8), np.eye(4), predictions_dir / "extra.nii.gz")  # ignored
    return labels_dir, predictions_dir, truth, guesses


def test_scores_are_per_case_dice_averaged_over_cases(folders):
    labels_dir, predictions_dir, truth, guesses = folders
    scores = score_folders(labels_dir, predictions_dir, tolerance_mm=0.5)
    assert scores["num_cases"] == 3 and sorted(scores["per_case"]) == ["case_0", "case_1", "case_2"]
    for cls in (1, 2):
        expected = np.mean([_dice(truth[c] == cls, guesses[c] == cls) for c in truth])
        assert scores[f"class{cls}_dice"] == pytest.approx(expected, abs=1e-9)
    assert scores["mean_dice"] == pytest.approx((scores["class1_dice"] + scores["class2_dice"]) / 2)
    assert 0 < scores["class1_hd95"] and 0 < scores["class1_nsd"] < 1


def test_a_perfect_prediction_and_class_names_from_dataset_json(folders, tmp_path):
    labels_dir, _, truth, _ = folders
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "Anterior", "2": "Posterior"}}))
    scores = score_folders(labels_dir, labels_dir)
    assert scores["Anterior_dice"] == scores["Posterior_dice"] == 1.0 and scores["mean_hd95"] == 0.0


def test_a_prediction_off_its_label_grid_or_missing_is_refused_naming_it(folders):
    labels_dir, predictions_dir, truth, _ = folders
    moved = AFFINE.copy()
    moved[0, 3] += 0.8  # one voxel shifted: overlays wrong in a viewer
    write_nifti_image(truth["case_1"], moved, predictions_dir / "case_1.nii.gz")
    with pytest.raises(UNetError, match=r"case_1\.nii\.gz does not lie on the voxel grid of .*labelsTs/case_1"):
        score_folders(labels_dir, predictions_dir)
    (predictions_dir / "case_1.nii.gz").unlink()
    with pytest.raises(UNetError, match=r"no prediction for 1 of 3 cases .*\(case_1\)"):
        score_folders(labels_dir, predictions_dir)


def test_the_command_line_prints_json_or_one_line(folders, capsys):
    labels_dir, predictions_dir, _, _ = folders
    assert main([str(labels_dir), str(predictions_dir), "--nsd_tolerance", "1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["nsd_tolerance_mm"] == 1.0 and printed["num_cases"] == 3
    assert main([str(labels_dir), str(predictions_dir / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("score: ") and "nowhere: folder does not exist" in err
    assert main([str(labels_dir), str(predictions_dir), "--nsd_tolerance=1.5"]) == 0
    assert json.loads(capsys.readouterr().out)["nsd_tolerance_mm"] == 1.5
    assert main([str(labels_dir), str(predictions_dir), "--nsd_tolerance", "x"]) == 2
    assert "--nsd_tolerance=x" in capsys.readouterr().err
