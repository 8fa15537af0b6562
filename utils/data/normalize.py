"""Intensity normalization: the one rule every stage applies to an image before the network sees it."""
from __future__ import annotations


import numpy as np



_MAX_VALUE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}



# --------------------------------------------------------------------------- normalization, folds
def normalize_image(image: np.ndarray) -> np.ndarray:
    """Scale an image to float32 in [0, 1]: uint8 / 255, uint16 / 65535 (float passes through).

    The one normalization used by training, evaluation, prediction and export alike.
    """
    image = np.asarray(image)
    if image.dtype in _MAX_VALUE:
        return image.astype(np.float32) / np.float32(_MAX_VALUE[image.dtype])
    if np.issubdtype(image.dtype, np.floating):
        return image.astype(np.float32, copy=False)
    raise TypeError(f"normalize_image expects uint8, uint16 or float, got {image.dtype}")

