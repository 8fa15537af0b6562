"""Parity of an exported file with the trained Keras model on the same images: the fraction of pixels
whose argmax class equals the Keras model's and the largest probability difference, with one
threshold per precision. The reference is the Keras prediction, never labels: export needs no masks.
`parity_reports` runs the check of a 2-D artefact; `SharedExportWork` keeps what several artefacts of
one export share (the Keras reference predictions), so it is computed once.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable, Hashable, Sequence

import numpy as np

from unet_medical.data.normalize import normalize_image
from unet_medical.inference.artifact_formats import format_of
from unet_medical.inference.runtimes import PROBABILITIES, load_exported
from unet_medical.inference.tiling import keras_predictor, plan_tiles, predict_images
from unet_medical.export.serving import SERVING_INPUT, serving_signature_name

from unet_medical.base.errors import UNetError


# Minimum fraction of pixels whose predicted label must equal the Keras model's.
PARITY_THRESHOLDS = {"fp32": 0.995, "bf16": 0.995, "fp16": 0.995, "int8": 0.99}



# ----------------------------------------------------------------------------- parity
@dataclasses.dataclass(frozen=True)
class ParityReport:
    """How an artefact's predictions compare with the Keras model's on the same images."""

    label_agreement: float      # fraction of pixels (voxels) with the same argmax class
    max_abs_prob_diff: float    # largest |p_export - p_keras| over pixels and classes
    mean_abs_prob_diff: float
    threshold: float            # required label_agreement
    pixels: int                 # pixels, or voxels for volumes

    @property
    def passed(self) -> bool:
        return self.label_agreement >= self.threshold



def compare_probabilities(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray],
                          threshold: float) -> ParityReport:
    """Parity of two lists of (H, W, K) or (D, H, W, K) probability maps (same shapes, pairwise)."""
    same = total = 0
    max_diff, sum_diff, count = 0.0, 0.0, 0
    for ref, cand in zip(reference, candidate, strict=True):
        if ref.shape != cand.shape:
            raise UNetError(f"exported model output shape {cand.shape} differs from the Keras model's {ref.shape}")
        same += int(np.count_nonzero(ref.argmax(-1) == cand.argmax(-1)))
        total += int(np.prod(ref.shape[:-1]))
        diff = np.abs(ref.astype(np.float64) - cand)
        max_diff, sum_diff, count = max(max_diff, float(diff.max())), sum_diff + float(diff.sum()), count + diff.size
    return ParityReport(label_agreement=same / total, max_abs_prob_diff=max_diff,
                        mean_abs_prob_diff=sum_diff / count, threshold=threshold, pixels=total)


# ----------------------------------------------------------------------------- one 2-D artefact's check
class SharedExportWork:
    """What the candidates of one default export have in common, made once: the serving module of each
    source model (its `tile` traced once) and the Keras model's parity predictions per tile plan."""

    def __init__(self) -> None:
        self._made: dict[Hashable, Any] = {}

    def once(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """make() on the first call for `key`, the stored result afterwards."""
        if key not in self._made:
            self._made[key] = make()
        return self._made[key]


def serving_parity_indices(images: Sequence[np.ndarray], per_dtype: int | None) -> list[int]:
    """Which parity images the serving signatures are checked on: every one (`per_dtype` None), or the first
    `per_dtype` of each dtype, so every signature the images reach (serving_uint8, serving_uint16, ...) is run."""
    if per_dtype is None:
        return list(range(len(images)))
    taken: dict[str, list[int]] = {}
    for i, image in enumerate(images):
        same = taken.setdefault(np.dtype(image.dtype).name, [])
        if len(same) < per_dtype:
            same.append(i)
    return sorted(i for indices in taken.values() for i in indices)


def same_tiles(spec: Any, images: Sequence[np.ndarray], plan: dict[str, Any], other: dict[str, Any]) -> bool:
    """Whether predict_images cuts every image into the same tiles under the two plans (e.g. --tile_size unset,
    so the serving graph plans each image, against the export's tile, which was planned the same way)."""
    if plan == other:
        return True
    if plan["input_scale"] != 1 or other["input_scale"] != 1:  # images are resized first: not worth working out
        return False
    return all(plan_tiles(spec, image.shape[:2], tile_size=plan["tile_size"], max_tile_size=plan["max_tile_size"],
                          context=plan["context"]) ==
               plan_tiles(spec, image.shape[:2], tile_size=other["tile_size"], max_tile_size=other["max_tile_size"],
                          context=other["context"]) for image in images)


def parity_reports(model: Any, spec: Any, path: pathlib.Path, entry: dict[str, Any], inputs: Any,
                   logger: Any = None, shared: SharedExportWork | None = None) -> dict[str, ParityReport]:
    """Keras vs artefact through the tiled path ("tiled"), and the serving signature ("serving", on the images
    `serving_parity_indices` picks by inputs.serving_images_per_dtype). `inputs` is the export's
    formats.ExportInputs, `spec` the UNetSpec.

    The reference is always the Keras model's own prediction of the same images (never labels), made once
    per tile plan when `shared` is given.
    """
    import tensorflow as tf

    shared = shared or SharedExportWork()
    # Precisions without a threshold of their own (packed: the quantization modes) must match as fp32 does.
    threshold = PARITY_THRESHOLDS.get(entry["precision"], PARITY_THRESHOLDS["fp32"])
    images = [normalize_image(im, inputs.normalization) for im in inputs.parity_images]
    plan = dict(tile_size=inputs.tile_size, context=inputs.context, max_tile_size=inputs.max_tile_size,
                input_scale=inputs.input_scale)

    def keras_reference(plan: dict[str, Any], indices: Sequence[int]) -> list[np.ndarray]:
        key = ("keras reference", id(model), tuple(indices), *sorted(plan.items()))
        return shared.once(key, lambda: predict_images(keras_predictor(model), spec, [images[i] for i in indices],
                                                       **plan, logger=logger, label="parity keras"))

    reference = keras_reference(plan, range(len(images)))
    exported = load_exported(path, metadata=entry)
    predicted = predict_images(exported, spec, images, **plan, logger=logger,
                               label=f"parity {entry['format']} {entry['precision']}")
    reports = {"tiled": compare_probabilities(reference, predicted, threshold)}
    if format_of(entry["format"]).serving_signatures:
        # The serving signatures run predict's tile plan in the graph: compare with exactly that plan.
        indices = serving_parity_indices(inputs.parity_images, inputs.serving_images_per_dtype)
        serving_plan = {**plan, "tile_size": inputs.serving_tile_size}
        # With the run's test-time flips in the serving graph, the reference averages the same flips.
        tta = bool(getattr(inputs, "tta", False))
        same = not tta and same_tiles(spec, [images[i] for i in indices], plan, serving_plan)
        expected = [reference[i] for i in indices] if same else keras_reference({**serving_plan, "tta": tta}, indices)
        # The SavedModel the tiled check just loaded (a paper-net load takes seconds), else load it.
        loaded = getattr(exported.predictor, "loaded", None) or tf.saved_model.load(str(path))
        raw = [inputs.parity_images[i] for i in indices]
        served = [loaded.signatures[serving_signature_name(im.dtype)](**{SERVING_INPUT: tf.constant(im[None])})
                  [PROBABILITIES].numpy()[0] for im in raw]
        reports["serving"] = compare_probabilities(expected, served, threshold)
    return reports
