"""Contiguous k-fold splits of a data set's images."""
from __future__ import annotations


import numpy as np

from unet_medical.base.errors import UNetError


def fold_split(num_items: int, num_folds: int, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous k-fold split: fold f validates on the f-th of num_folds contiguous blocks.

    Adjacent EM slices are 50 nm apart and strongly correlated, so validating on slices interleaved
    with training slices would measure memorisation; a contiguous block does not. Blocks follow
    np.array_split (sizes differ by at most 1, larger blocks first); across folds every item is
    validated exactly once.

    Returns:
        (train_idx, val_idx), int64 arrays in increasing order.
    """
    if num_folds < 2:
        raise UNetError(f"num_folds={num_folds}: expected at least 2 (one block to train, one to validate)")
    if not 0 <= fold < num_folds:
        raise UNetError(f"fold={fold}: expected 0..{num_folds - 1} for num_folds={num_folds}")
    if num_folds > num_items:
        raise UNetError(f"num_folds={num_folds} but there are only {num_items} images; "
                        "expected at most one fold per image")
    blocks = np.array_split(np.arange(num_items, dtype=np.int64), num_folds)
    val_idx = blocks[fold]
    train_idx = np.concatenate([b for i, b in enumerate(blocks) if i != fold])
    return train_idx, val_idx

