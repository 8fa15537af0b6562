"""curves.png: the series read back from a (resumed) JSON log, the PNG written; the TensorBoard
comparison panel (input | prediction | truth)."""
import json

import numpy as np
from PIL import Image

from unet_medical.base.runlog import JSON_PREFIX
from unet_medical.cli.curves import plot_curves, read_curves, write_curves
from unet_medical.inference.outputs import background_class, comparison_panel, overlay


def _line(step, data, kind="LOG"):
    return JSON_PREFIX + json.dumps({"type": kind, "step": step, "data": data}) + "\n"


def test_read_curves_of_a_resumed_run(tmp_path):
    log = tmp_path / "log.json"
    log.write_text(
        _line("PARAMETER", {"max_steps": 4})
        + _line(1, {"loss": 1.0, "learning_rate": 0.1, "progress": "1/4"})
        + _line(2, {"loss": 0.9, "learning_rate": 0.1})
        + _line(["eval", 2], {"membrane_dice": 0.5, "mean_dice": 0.6, "step": 2})
        + _line(3, {"loss": 0.85, "learning_rate": 0.05})    # killed after step 3, checkpoint at 2
        + 'DLLL {"type": "LOG", "step": 4, "da'                # ... mid-write
        + "\n" + _line(None, {"loss": {"unit": None}}, kind="METADATA")
        + _line(3, {"loss": 0.8, "learning_rate": 0.05})     # resumed from 2: step 3 again
        + _line(4, {"loss": 0.7, "learning_rate": 0.05})
        + _line(["eval", 4], {"membrane_dice": 0.7, "mean_dice": 0.75})
        + _line(["eval", 4], {"interior_dice": 0.9}))           # another record at that step, other keys
    curves = read_curves(log, ("membrane_dice", "mean_dice"))
    assert curves.loss == {1: 1.0, 2: 0.9, 3: 0.8, 4: 0.7}     # the last value of a repeated step
    assert curves.learning_rate == {1: 0.1, 2: 0.1, 3: 0.05, 4: 0.05}
    assert curves.scores == {"membrane_dice": {2: 0.5, 4: 0.7}, "mean_dice": {2: 0.6, 4: 0.75}}
    written = write_curves(log, tmp_path / "run", ("membrane_dice", "mean_dice"))
    assert written == tmp_path / "run" / "curves.png"
    with Image.open(written) as image:
        assert image.format == "PNG" and image.size[0] > 300
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["curves.png"]  # no temporary file left


def test_curves_of_a_run_without_a_log_yet(tmp_path):
    curves = read_curves(tmp_path / "missing.json", ("mean_dice",))
    assert curves.loss == {} and curves.scores == {"mean_dice": {}}
    assert plot_curves(curves, tmp_path / "curves.png").stat().st_size > 0


def test_comparison_panel_is_input_prediction_truth_side_by_side():
    rng = np.random.default_rng(0)
    image = rng.random((400, 300, 1), dtype=np.float32)
    predicted = rng.integers(0, 2, (400, 300))
    truth = rng.integers(0, 2, (400, 300))
    panel = comparison_panel(image, predicted, truth, skip_class=1, max_side=192, gap=4)
    # Stride 3 (ceil(400 / 192)): 134 x 100 per panel, two 4-pixel white gaps.
    assert panel.shape == (134, 3 * 100 + 8, 3) and panel.dtype == np.uint8
    grey = (np.clip(image[::3, ::3, 0] * 255.0, 0, 255)).astype(np.uint8)
    np.testing.assert_array_equal(panel[:, :100], np.repeat(grey[..., None], 3, axis=-1))
    np.testing.assert_array_equal(panel[:, 100:104], 255)
    np.testing.assert_array_equal(panel[:, 104:204], overlay(image, predicted, skip_class=1)[::3, ::3])
    np.testing.assert_array_equal(panel[:, 208:], overlay(image, truth, skip_class=1)[::3, ::3])


def test_background_class():
    assert background_class(("membrane", "interior")) == 1
    assert background_class(("background", "foreground")) == 0
    assert background_class(("class0", "class1", "class2")) == 0
