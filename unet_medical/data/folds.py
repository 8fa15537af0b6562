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



def case_fold_split(case_of_item: np.ndarray, num_folds: int, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """k-fold split by case: the cases are split as fold_split splits items, and every item (a slice)
    goes where its case goes, so no volume has slices on both sides (neighbouring slices of one
    volume are nearly identical: validating on them would measure memorisation).

    Args:
        case_of_item: (N,) int case index of each item.
    Returns:
        (train_idx, val_idx) item indices, int64, increasing.
    """
    case_of_item = np.asarray(case_of_item)
    cases = np.unique(case_of_item)
    if num_folds > len(cases):
        raise UNetError(f"num_folds={num_folds} but there are only {len(cases)} cases; "
                        "expected at most one fold per case")
    train_cases, val_cases = fold_split(len(cases), num_folds, fold)
    in_val = np.isin(case_of_item, cases[val_cases])
    return np.flatnonzero(~in_val).astype(np.int64), np.flatnonzero(in_val).astype(np.int64)
