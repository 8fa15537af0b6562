"""Score a folder of predicted label volumes against a folder of true ones, as a challenge scores a submission.

    python -m unet_medical.evaluation LABELS_DIR PREDICTIONS_DIR [--nsd_tolerance MM]

LABELS_DIR holds CASE.nii.gz label maps (an MSD labelsTr/ or labelsTs/ folder, or masks/); PREDICTIONS_DIR the
CASE.nii.gz files `--exec_mode predict` wrote. Cases pair by file name without ending, and every label needs
its prediction (a missing case would otherwise raise the mean silently). A prediction must lie on its label's
voxel grid (shape and affine, data.volume_layouts.require_same_grid): a file that a viewer would overlay shifted or
flipped is refused naming both files, not scored. (Header codes are not compared: label files of public sets
do not always carry their image's.) Class names come from a
dataset.json beside LABELS_DIR (MSD layout), else class1, class2, ...; spacing from the label's affine.
The result has eval_results.json's volume keys (evaluation.volumes.score_volumes): {class}_dice, _hd95 (mm),
_nsd, mean_*, per_case.
"""
from __future__ import annotations

import os
import pathlib
from typing import Any

import numpy as np

from unet_medical.base.errors import UNetError
from unet_medical.data.volume_layouts import read_dataset_json, require_same_grid, volume_files
from unet_medical.data.volumes import Volume, read_volume
from unet_medical.evaluation.volumes import score_volumes


def _class_map(volume: Volume) -> np.ndarray:
    """(I, J, K) int label map of a label volume; UNetError naming the file if its values are not class ids."""
    array = np.asarray(volume.array)
    if array.ndim != 3:
        raise UNetError(f"{volume.path}: a label map must be 3D, got shape {array.shape}")
    values = np.unique(array)
    if (values < 0).any() or (values != np.round(values)).any():
        raise UNetError(f"{volume.path}: values {values[:8].tolist()} are not class indices 0, 1, ...")
    return array.astype(np.int32)


def class_names_for(labels_dir: pathlib.Path, largest_class: int) -> tuple[str, ...]:
    """Names of classes 0..N: a dataset.json beside labels_dir (MSD), else background, class1, class2, ..."""
    meta = labels_dir.parent / "dataset.json"
    if meta.is_file():
        names = read_dataset_json(meta).class_names
        if largest_class >= len(names):
            raise UNetError(f"{labels_dir}: class {largest_class} occurs, but {meta} names only "
                            f"{len(names)} classes ({', '.join(names)})")
        return names
    return ("background",) + tuple(f"class{i}" for i in range(1, max(2, largest_class + 1)))


def score_folders(labels_dir: str | os.PathLike, predictions_dir: str | os.PathLike,
                  tolerance_mm: float = 2.0) -> dict[str, Any]:
    """eval_results-style scores (module docstring) of every label in labels_dir against its prediction.

    Args:
        labels_dir: folder of true label maps, one CASE.nii.gz (or any data.volumes ending) per case.
        predictions_dir: folder holding a CASE.<ending> prediction for every case of labels_dir (more are ignored).
        tolerance_mm: the NSD tolerance in mm (> 0).
    """
    if not tolerance_mm > 0:
        raise UNetError(f"--nsd_tolerance={tolerance_mm}: expected a distance in mm > 0")
    labels_dir, predictions_dir = pathlib.Path(labels_dir), pathlib.Path(predictions_dir)
    label_files, prediction_files = volume_files(labels_dir), volume_files(predictions_dir)
    missing = sorted(set(label_files) - set(prediction_files))
    if missing:
        raise UNetError(f"{predictions_dir}: no prediction for {len(missing)} of {len(label_files)} cases of "
                        f"{labels_dir} ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})")
    predictions, labels, spacings = {}, {}, {}
    for case, path in label_files.items():
        label, prediction = read_volume(path), read_volume(prediction_files[case])
        require_same_grid(label, prediction, "it would not overlay its scan")
        labels[case], predictions[case] = _class_map(label), _class_map(prediction)
        spacings[case] = label.spacing
    largest = max(int(max(labels[c].max(), predictions[c].max())) for c in labels)
    return score_volumes(predictions, labels, spacings, class_names_for(labels_dir, largest), tolerance_mm)
