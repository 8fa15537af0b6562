"""utils.score.metrics against hand-computed values, a plain NumPy reference and scikit-image."""
import json

import numpy as np
import pytest
import tifffile
from skimage.metrics import adapted_rand_error, variation_of_information

from unet_medical.evaluation import metrics
from unet_medical.base.errors import UNetError


# --- Dice, IoU, pixel error ----------------------------------------------------------------------

def test_hand_example_confusion_dice_iou_pixel_error():
    y_true = np.array([[0, 0, 0], [1, 1, 1], [1, 1, 1]])
    y_pred = np.array([[0, 0, 1], [0, 1, 1], [1, 1, 1]])
    # Class 0: TP 2, FP 1, FN 1. Class 1: TP 5, FP 1, FN 1. Class 2: absent from both -> 1.0.
    cm = metrics.confusion_matrix(y_true, y_pred, 3)
    np.testing.assert_array_equal(cm, [[2, 1, 0], [1, 5, 0], [0, 0, 0]])
    assert cm.dtype == np.int64
    np.testing.assert_allclose(metrics.dice_per_class(y_true, y_pred, 3), [4 / 6, 10 / 12, 1.0])
    np.testing.assert_allclose(metrics.iou_per_class(y_true, y_pred, 3), [2 / 4, 5 / 7, 1.0])
    assert metrics.pixel_error(y_true, y_pred) == pytest.approx(2 / 9)


def _reference_dice_iou(y_true, y_pred, num_classes):
    """Set-based definition: Dice = 2|A and B| / (|A| + |B|), IoU = |A and B| / |A or B|."""
    dice, iou = [], []
    for c in range(num_classes):
        a, b = y_true == c, y_pred == c
        inter, union, total = np.sum(a & b), np.sum(a | b), a.sum() + b.sum()
        dice.append(2 * inter / total if total else 1.0)
        iou.append(inter / union if union else 1.0)
    return np.array(dice), np.array(iou)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("shape", [(7, 9), (2, 5, 6, 3)])
def test_dice_iou_match_set_reference(seed, shape):
    rng = np.random.default_rng(seed)
    num_classes = 4
    # Classes 0..2 only, so class 3 exercises the empty case.
    y_true = rng.integers(0, 3, size=shape)
    y_pred = np.where(rng.random(shape) < 0.7, y_true, rng.integers(0, 3, size=shape))
    ref_dice, ref_iou = _reference_dice_iou(y_true, y_pred, num_classes)
    np.testing.assert_allclose(metrics.dice_per_class(y_true, y_pred, num_classes), ref_dice)
    np.testing.assert_allclose(metrics.iou_per_class(y_true, y_pred, num_classes), ref_iou)
    assert metrics.confusion_matrix(y_true, y_pred, num_classes).sum() == y_true.size
    assert metrics.pixel_error(y_true, y_pred) == pytest.approx(np.mean(y_true != y_pred))


def test_confusion_matrix_rejects_bad_input():
    with pytest.raises(UNetError, match=r"class ids in \[0, 2\)"):
        metrics.confusion_matrix(np.array([0, 2]), np.array([0, 1]), 2)
    with pytest.raises(UNetError, match="same shape"):
        metrics.confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int), 2)
    with pytest.raises(UNetError, match="integer class ids"):
        metrics.confusion_matrix(np.zeros(3), np.zeros(3, int), 2)


# --- Rand and information scores vs scikit-image -------------------------------------------------


def _skimage_rand(gt, pred):
    error, split, merge = adapted_rand_error(gt, pred, ignore_labels=(0,))
    return {"v_rand": 1 - error, "v_rand_split": split, "v_rand_merge": merge}


def _skimage_info(gt, pred):
    """V_info from skimage's conditional entropies and independently computed marginal entropies."""
    false_splits, false_merges = variation_of_information(gt, pred, ignore_labels=(0,))
    fg = gt != 0

    def entropy(labels):
        _, counts = np.unique(labels, return_counts=True)
        p = counts / counts.sum()
        return -np.sum(p * np.log2(p))

    h_gt, h_pred = entropy(gt[fg]), entropy(pred[fg])
    mutual_info = h_gt - false_merges  # H(gt) - H(gt | pred)
    assert mutual_info == pytest.approx(h_pred - false_splits, abs=1e-9)
    split, merge = mutual_info / h_pred, mutual_info / h_gt
    return {"v_info": 2 / (1 / split + 1 / merge), "v_info_split": split, "v_info_merge": merge}


def _random_segmentations(seed):
    """(gt, pred) label pairs: few large segments, many small ones, and a noisy relabelled copy."""
    rng = np.random.default_rng(seed)
    shape = (48, 40)
    few = rng.integers(0, 5, size=shape)                   # 4 segments + background, scattered
    many = rng.integers(0, 400, size=shape)                 # hundreds of tiny segments
    cells = metrics.segment_cells(rng.random(shape) < 0.6)  # connected blobs, 0 = membrane
    noisy = np.where(rng.random(shape) < 0.1, rng.integers(0, 50, size=shape), cells * 7 + 3)
    return [(few, many), (many, few), (cells, noisy), (few, rng.integers(0, 3, size=shape)),
            (cells, metrics.segment_cells(rng.random(shape) < 0.5))]


@pytest.mark.parametrize("seed", range(4))
def test_rand_and_info_scores_match_skimage(seed):
    for gt, pred in _random_segmentations(seed):
        ours_rand, ref_rand = metrics.rand_scores(gt, pred), _skimage_rand(gt, pred)
        ours_info, ref_info = metrics.info_scores(gt, pred), _skimage_info(gt, pred)
        for key in ref_rand:
            assert ours_rand[key] == pytest.approx(ref_rand[key], abs=1e-9), key
        for key in ref_info:
            assert ours_info[key] == pytest.approx(ref_info[key], abs=1e-9), key


@pytest.mark.parametrize("seed", range(3))
def test_identical_and_relabelled_segmentations_score_one(seed):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 300, size=(32, 32))
    # A permutation of label ids is the same segmentation.
    relabelled = rng.permutation(1000)[gt] + 1
    for pred in (gt, relabelled):
        scores = {**metrics.rand_scores(gt, pred), **metrics.info_scores(gt, pred)}
        for key, value in scores.items():
            assert value == pytest.approx(1.0, abs=1e-12), key


def test_split_and_merge_are_not_swapped():
    gt = np.array([[1, 1, 1, 1], [2, 2, 2, 2]])
    over = np.array([[1, 1, 3, 3], [2, 2, 4, 4]])   # each cell cut in two: a false split only
    under = np.ones_like(gt)                        # both cells fused: a false merge only
    for scores in (metrics.rand_scores, metrics.info_scores):
        s_over, s_under = scores(gt, over), scores(gt, under)
        prefix = "v_rand" if "v_rand" in s_over else "v_info"
        assert s_over[f"{prefix}_merge"] == pytest.approx(1.0)
        assert s_over[f"{prefix}_split"] < 1.0
        assert s_under[f"{prefix}_split"] == pytest.approx(1.0)
        assert s_under[f"{prefix}_merge"] < 1.0


def test_membrane_is_excluded_and_empty_foreground_scores_one():
    gt = np.array([[0, 1, 1], [0, 2, 2]])
    pred = np.array([[5, 1, 1], [6, 2, 2]])  # differs only where gt is membrane
    assert metrics.rand_scores(gt, pred)["v_rand"] == pytest.approx(1.0)
    assert metrics.info_scores(gt, pred)["v_info"] == pytest.approx(1.0)
    all_membrane = np.zeros_like(gt)
    assert metrics.rand_scores(all_membrane, pred)["v_rand"] == 1.0
    assert metrics.info_scores(all_membrane, pred)["v_info"] == 1.0


def test_segment_cells_uses_four_connectivity():
    mask = np.array([[1, 0, 1],
                     [0, 1, 0],
                     [1, 1, 0]], dtype=bool)
    labels = metrics.segment_cells(mask)
    assert labels[0, 1] == 0 and labels[0, 0] != 0
    # Diagonal neighbours are separate cells; the bottom-left L is one cell.
    assert len(np.unique(labels[mask])) == 3
    assert labels[1, 1] == labels[2, 1] == labels[2, 0]
    with pytest.raises(UNetError, match="2-D"):
        metrics.segment_cells(np.zeros((2, 2, 2), bool))


# --- segmentation_metrics ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def isbi_label_slices(isbi_data_dir):
    """Two real ISBI ground-truth slices as class ids (0 = membrane, 1 = interior)."""
    labels = tifffile.imread(isbi_data_dir / "train-labels.tif")[:2]
    return (labels == 255).astype(np.int64)


def _one_hot(y, num_classes=2):
    return np.eye(num_classes, dtype=np.float32)[y]


def test_segmentation_metrics_perfect_on_real_isbi_slices(isbi_label_slices):
    y = isbi_label_slices
    results = metrics.segmentation_metrics(_one_hot(y), y, ("membrane", "interior"))
    assert set(results) == {"membrane_dice", "interior_dice", "membrane_iou", "interior_iou",
                            "mean_dice", "pixel_error", "v_rand_argmax", "v_info_argmax", "v_rand_thinned",
                            "v_info_thinned", "v_rand_thinned_threshold", "v_info_thinned_threshold"}
    for key in ("membrane_dice", "interior_dice", "membrane_iou", "interior_iou", "mean_dice",
                "v_rand_argmax", "v_info_argmax", "v_rand_thinned", "v_info_thinned"):
        assert results[key] == pytest.approx(1.0), key
    assert results["pixel_error"] == 0.0
    assert all(type(v) is float for v in results.values())
    json.dumps(results)


def test_segmentation_metrics_all_interior_prediction(isbi_label_slices):
    y = isbi_label_slices
    all_interior = np.broadcast_to(np.array([0.2, 0.8], np.float32), y.shape + (2,))
    results = metrics.segmentation_metrics(list(all_interior), list(y), ("membrane", "interior"))
    assert results["membrane_dice"] == 0.0
    assert results["pixel_error"] == pytest.approx(np.mean(y == 0))
    # One predicted segment fuses every cell: merge-dominated, far from perfect.
    assert results["v_rand_argmax"] < 0.2
    per_slice = [metrics.rand_scores(metrics.segment_cells(s == 1), np.ones_like(s))["v_rand"]
                 for s in y]
    assert results["v_rand_argmax"] == pytest.approx(np.mean(per_slice))
    assert results["v_rand_thinned"] < 0.2


def test_segmentation_metrics_pools_pixels_and_skips_isbi_scores_for_other_classes():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=(3, 6, 5))
    prob = rng.random((3, 6, 5, 3))
    results = metrics.segmentation_metrics(prob, y, ("bg", "a", "b"))
    pred = prob.argmax(-1)
    ref_dice, ref_iou = _reference_dice_iou(y, pred, 3)
    assert results["a_dice"] == pytest.approx(ref_dice[1])
    assert results["b_iou"] == pytest.approx(ref_iou[2])
    assert results["mean_dice"] == pytest.approx(ref_dice.mean())
    assert not any(key.startswith(("v_rand", "v_info")) for key in results)


def test_thick_but_correct_membranes_score_high_only_when_thinned():
    """Every cell right, membranes 3 px thick instead of 1: the leaderboard's thinned score forgives it."""
    truth = np.ones((64, 64), np.int64)
    truth[:, 31] = truth[31, :] = 0  # four cells, 1-px walls
    thick = np.ones_like(truth)
    thick[:, 30:33] = thick[30:33, :] = 0
    results = metrics.segmentation_metrics([_one_hot(thick)], [truth], ("membrane", "interior"))
    assert results["v_rand_thinned"] == pytest.approx(1.0)
    assert results["v_rand_argmax"] < 0.99


@pytest.mark.slow  # seconds of setup or a subprocess: the fast subset stays under 2 minutes
def test_thinned_scores_of_slices_equal_the_stack_scorer(isbi_label_slices):
    from unet_medical.evaluation.isbi import score_stack

    y = isbi_label_slices
    rng = np.random.default_rng(1)
    interior = np.clip(y + rng.normal(0, 0.4, y.shape), 0, 1).astype(np.float32)
    prob = np.stack([1 - interior, interior], axis=-1)
    results = metrics.segmentation_metrics(list(prob), list(y), ("membrane", "interior"))
    stack = score_stack((y == 1).astype(np.uint8) * 255, interior)
    assert results["v_rand_thinned"] == pytest.approx(stack.v_rand, abs=1e-12)
    assert results["v_info_thinned"] == pytest.approx(stack.v_info, abs=1e-12)
    assert results["v_rand_thinned_threshold"] == stack.v_rand_threshold


def test_segmentation_metrics_rejects_mismatched_inputs():
    with pytest.raises(UNetError, match="3 classes"):
        metrics.segmentation_metrics(np.zeros((1, 4, 4, 2)), np.zeros((1, 4, 4), int),
                                     ("a", "b", "c"))
    with pytest.raises(UNetError, match="2 predicted slices but 1 label"):
        metrics.segmentation_metrics(np.zeros((2, 4, 4, 2)), np.zeros((1, 4, 4), int), ("a", "b"))


def test_a_registered_per_class_metric_is_reported_for_every_class():
    from unet_medical.evaluation.metrics import PER_CLASS_METRICS, segmentation_metrics

    assert PER_CLASS_METRICS.names()[:2] == ("dice", "iou")
    PER_CLASS_METRICS.register("recall", lambda cm: np.diag(cm) / np.maximum(cm.sum(axis=1), 1))
    try:
        truth = np.array([[[0, 0, 1, 1]]])
        prob = np.eye(2)[np.array([[[0, 1, 1, 1]]])]  # one background pixel called foreground
        out = segmentation_metrics(prob, truth, ("bg", "fg"))
    finally:
        PER_CLASS_METRICS.unregister("recall")
    assert out["bg_recall"] == 0.5 and out["fg_recall"] == 1.0
    assert out["bg_dice"] == pytest.approx(2 / 3) and out["fg_iou"] == pytest.approx(2 / 3)
