"""The inference stage's settings: tiles, test-time augmentation, which weights or exported file predict.
Standard library only (no TensorFlow): the command line builds its flags from it."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from unet_medical.base.settings import Rule, Settings, at_least, setting


def is_threshold(value: str | float) -> bool:
    """auto, argmax or a number strictly between 0 and 1: the --threshold rule (inference.decision uses it too)."""
    if value in ("auto", "argmax"):
        return True
    try:
        return 0.0 < float(value) < 1.0
    except (TypeError, ValueError):
        return False


@dataclasses.dataclass(frozen=True)
class InferenceConfig(Settings):
    """How a trained model predicts (unet_medical.inference)."""

    section: ClassVar[str] = "inference"
    title: ClassVar[str] = "inference and restoring a run"

    tile_size: int | None = setting(None, "inference input tile (default: smallest valid tile covering the "
                                   "image, at most max_tile_size)", rule=at_least(8))
    max_tile_size: int = setting(1024, "largest automatic inference tile (bounds memory)", rule=at_least(8))
    tile_context: int | None = setting(None, "pixels of each same-padding tile's border thrown away "
                                      "(default 16 for same padding, 0 for valid)", rule=at_least(0))
    tta: bool | None = setting(None, "test-time augmentation: average over the 8 flips/rotations (default: "
                              "the run's choice on its validation fold, recorded in model.json; a run "
                              "that recorded none: off)")
    threshold: str = setting("auto", "how probabilities become labels: auto (training: choose a foreground "
                             "threshold on the validation fold where there are 1 or 2 foreground classes; "
                             "later modes: the run's recorded choice), argmax, or a number in (0, 1) on "
                             "1 - p(background)", rule=Rule(is_threshold, "auto, argmax or a number in (0, 1)"))
    checkpoint: str = setting("last", "weights of the run's SavedModel and of evaluate/predict/export: last "
                             "(final; what eval_results.json scored) or best (highest validation mean Dice); "
                             "recorded in config.yaml, later modes on the run take it", choices=("best", "last"))
    model_path: str | None = setting(None, "predict/benchmark/evaluate with an exported model (SavedModel "
                                    "folder, .onnx or .tflite) instead of model_dir's checkpoint")
    output_dir: str | None = setting(None, "predict: an empty or new folder for the predictions (default: fresh model_dir/predictions/NNN)")
    save_probabilities: bool = setting(False, "predict on volumes: also write each case's class probabilities, "
                                       "probabilities/CASE.nii.gz (I, J, K, classes) on the input's grid, uint8 "
                                       "with scl_slope just under 1/255 (readers see 0..1)")
    use_trt: bool = setting(False, "predict through a TF-TRT export of the run (made on first use; needs "
                           "TensorFlow built with TensorRT and a GPU, e.g. NVIDIA's NGC container)")
