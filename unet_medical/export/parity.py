"""Parity of an exported file with the trained Keras model on the same images: the fraction of pixels
whose argmax class equals the Keras model's and the largest probability difference, with one
threshold per precision. The reference is the Keras prediction, never labels: export needs no masks.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


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




