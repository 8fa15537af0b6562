"""The official ISBI 2012 scores V_rand(thinned) and V_info(thinned), computed the way Fiji does.

The challenge's evaluation script ("Segmentation evaluation after border thinning - Script" on
imagej.github.io) calls, from Fiji's Trainable_Segmentation (package ``trainableSegmentation``)::

    new RandError(labels, proposal).getMaximalVRandAfterThinning(0.0, 1.0, 0.1, true)
    new VariationOfInformation(labels, proposal).getMaximalVInfoAfterThinning(0.0, 1.0, 0.1)

This module reproduces those two numbers with NumPy/SciPy. Every rule below was read in the Java
(``metrics/RandError.java``, ``metrics/VariationOfInformation.java``, ``metrics/Metrics.java``,
``metrics/ClassificationStatistics.java``, ``utils/WatershedTransform2D.java``,
``utils/Neighborhood2DC4.java``, ``utils/PixelRecord.java``, ``utils/Utils.java`` and VIB-lib's
``util/FindConnectedRegions.java``); the method each comes from is named.

Thresholds
    ``RandError.getForegroundRestrictedRandAfterThinningStats(min, max, step, perSliceAverage)`` and
    ``VariationOfInformation.getForegroundRestrictedScoresAfterThinning(min, max, step)`` loop
    ``for (double th = min; th <= max; th += step)``: 0.1 is added to a double, so the 11 thresholds
    are 0, 0.1, 0.2, 0.30000000000000004, ..., 0.7999999999999999, 0.8999999999999999 and
    0.9999999999999999 (``java_thresholds``).

Binarisation (both images, at every threshold)
    ``RandError.getForegroundRestrictedRandAfterThinningStatsN2(label, proposal, th)`` and
    ``VariationOfInformation.foregroundRestrictedScoreAfterThinningN2(label, proposal, th)``:
    ground truth is foreground where ``label.getPixelValue(x, y) > th`` (strictly greater); the
    proposal is interior where ``proposal.getPixelValue(x, y) > th`` and the watershed input is set
    to 0 there and 255 elsewhere. Slices arrive through ``getProcessor(i).convertToFloat()``, so the
    comparison is a 32-bit float pixel promoted to double against a double threshold:
    ``float32(0.1) > 0.1`` is true. Here both images are cast to float32 and compared in float64
    (NumPy would otherwise round the threshold to float32).

Ground truth: not thinned, 4-connected components of the foreground
    ``Utils.connectedComponents(imp, 4)`` runs ``FindConnectedRegions.run`` with
    ``diagonal = false`` and ``valuesOverDouble = 0`` (pixels > 0 only), minimum region size 1:
    every 4-connected component of the binarised ground truth is one segment; its membrane is
    label 0 and stays as thick as it is drawn.

Proposal: thinned by a 4-connected watershed of the *binarised* proposal (not a skeleton)
    ``new WatershedTransform2D(binaryProposal, 4).apply()`` floods the 0/255 image, not the
    probabilities. Level 0 (the interior) is labelled first: its 4-connected components
    (``Neighborhood2DC4``) are the basins, i.e. the seeds. Level 255 (the membrane) is then flooded
    by one FIFO queue (``java.util.LinkedList``): it starts with the membrane pixels 4-adjacent to a
    basin, in the order of the sorted pixel list (``PixelRecord.compareTo``: value, then creation
    order, and pixels are created column by column: x outer, y inner), and a popped pixel appends
    its still-unqueued membrane neighbours in the order (x-1, y), (x, y-1), (x+1, y), (x, y+1).
    A popped pixel takes the label of its already-labelled neighbours (basins, earlier layers, and
    earlier pixels of its own distance layer; queued-but-unpopped pixels do not count) if they carry
    exactly one label, and becomes a dam (label 0, ``WSHED``) if they carry two or more, or only
    dams (the ``flag`` bookkeeping of Vincent and Soille reduces to this rule). So a membrane band
    between two cells becomes a 1-pixel dam where the two fronts meet, and a membrane spur inside one
    cell is absorbed by that cell. With no interior at all the whole slice is one segment (the
    "new minimum at level 255" branch). ``thin_proposal`` reproduces the queue order exactly, one
    distance layer at a time.

Counting: restricted to ground-truth foreground, dams are singletons
    ``RandError.getForegroundRestrictedRandIndexStatsN2(cluster1, cluster2)`` and
    ``VariationOfInformation.foregroundRestrictedFscore(cluster1, cluster2)``: pixels with ground
    truth label 0 are dropped (row 0 skipped, n = number of ground-truth foreground pixels); proposal
    label 0 (the dams) is not one segment: each dam pixel is its own segment (the ``aux / n`` terms in
    V_rand, the ``- aux * log(n)`` terms in V_info). p_ij = n_ij / n, a_i = sum_j p_ij (dams
    included), b_j = sum_i p_ij (j > 0)::

        V_rand: precision = sum p_ij^2 / sum b_j^2,  recall = sum p_ij^2 / sum a_i^2
                (``ClassificationStatistics``: precision = 1 if fp == 0, recall = 1 if fn == 0,
                F = 0 if precision + recall == 0)
        V_info: precision = I(A;B) / H(A), recall = I(A;B) / H(B) (A = ground truth, B = proposal;
                precision 0 and recall 1 if H(A) == 0; precision 1 and recall 0 if H(B) == 0)
        F = 2 * precision * recall / (precision + recall)

    A slice without ground-truth foreground (n = 0) scores F = 0 for both (NaN arithmetic then the
    ``fScore`` guard for V_rand, the H(A) == 0 branch for V_info). V_info is NaN when precision and
    recall are both exactly 0 (0 / 0 in Java too); such a threshold can never be the maximum.

Averaging over slices, maximum over thresholds
    ``getMaximalVRandAfterThinning(..., perSliceAverage = true)``: the F-score of every slice is
    computed and averaged (``cs.fScore = fScore / labelSlices.getSize()`` in
    ``getForegroundRestrictedRandAfterThinningStats(th, perSliceAverage)``, the macro average).
    ``getForegroundRestrictedScoreAfterThinning(th)`` averages V_info per slice the same way. Both
    keep the maximum over thresholds with ``if (score > best)`` starting from best = 0 and best
    threshold = ``minThreshold``, so the *first* threshold reaching the maximum is reported, and 0 /
    the first threshold if no threshold scores above 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from unet_medical.base.errors import UNetError

FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)

# Watershed states in the padded working image (the Java's labels are > 0 and WSHED = 0 as here).
_DAM = 0
_UNSEEN = -1
_OUTSIDE = -2
_NO_LABEL = np.iinfo(np.int32).max


def java_thresholds(minimum: float = 0.0, maximum: float = 1.0, step: float = 0.1) -> List[float]:
    """The thresholds of Java's ``for (double th = minimum; th <= maximum; th += step)``.

    With the defaults: 11 values, the last one 0.9999999999999999 (accumulated rounding).
    """
    if not (step > 0 and math.isfinite(minimum) and math.isfinite(maximum)):
        raise UNetError(f"thresholds: need a positive step and finite bounds, got {minimum}, {maximum}, {step}")
    values = []
    th = float(minimum)
    while th <= maximum:
        values.append(th)
        th += step
    return values


# --- Thinning: the Java watershed on the binarised proposal --------------------------------------


def thin_proposal(interior: np.ndarray) -> np.ndarray:
    """Segment labels of one binarised proposal after Fiji's watershed thinning.

    Args:
        interior: bool (H, W), True where the proposal is cell interior (value > threshold).

    Returns:
        int32 (H, W): segment labels >= 1 (each a basin of the interior plus the membrane it won),
        0 on the 1-pixel dams. Label numbers are arbitrary; only the partition and the dams match
        ``WatershedTransform2D(binaryProposal, 4).apply()``.
    """
    interior = np.asarray(interior, dtype=bool)
    if interior.ndim != 2:
        raise ValueError(f"thin_proposal expects a 2-D mask, got shape {interior.shape}")
    h, w = interior.shape
    basins, n_basins = ndimage.label(interior, structure=FOUR_CONNECTED)
    if n_basins == 0:  # no minimum at level 0: the level-255 plateau is one new minimum
        return np.ones((h, w), dtype=np.int32)
    if interior.all():
        return basins.astype(np.int32)

    # Work on the transposed image so that C order is Java's pixel order (x outer, y inner), padded
    # by one outside pixel so that neighbours never need bounds checks.
    stride = h + 2
    lab2d = np.full((w + 2, h + 2), _OUTSIDE, dtype=np.int32)
    lab2d[1:-1, 1:-1] = np.where(interior.T, basins.T, _UNSEEN)
    lab = lab2d.ravel()
    offsets = (-stride, -1, stride, 1)  # (x-1, y), (x, y-1), (x+1, y), (x, y+1): Neighborhood2DC4

    seen = lab != _UNSEEN  # basins and padding are never queued
    membrane2d = lab2d == _UNSEEN
    basin2d = lab2d > 0
    touches = np.zeros_like(membrane2d)
    touches[1:, :] |= basin2d[:-1, :]
    touches[:-1, :] |= basin2d[1:, :]
    touches[:, 1:] |= basin2d[:, :-1]
    touches[:, :-1] |= basin2d[:, 1:]
    layer = np.flatnonzero(membrane2d & touches)  # first queue, already in pixel-list order
    seen[layer] = True
    rank_of = np.full(lab.shape, -1, dtype=np.int64)

    while layer.size:
        _flood_layer(lab, layer, offsets, rank_of)
        # Queue order of the next layer: a pixel is appended by the first popped neighbour that
        # sees it, in that neighbour's neighbour order, i.e. by the smallest (rank, direction).
        candidates = (layer[:, None] + np.asarray(offsets)[None, :]).ravel()  # increasing key order
        candidates = candidates[~seen[candidates]]
        unique, first = np.unique(candidates, return_index=True)
        layer = unique[np.argsort(first, kind="stable")]
        seen[layer] = True

    left = lab2d == _UNSEEN  # unreachable plateau pieces: new minima at level 255 (cannot happen
    if left.any():  # when a basin exists, kept for fidelity)
        extra, _ = ndimage.label(left, structure=FOUR_CONNECTED)
        lab2d[left] = extra[left] + lab.max()
    return np.ascontiguousarray(lab2d[1:-1, 1:-1].T)


def _flood_layer(lab: np.ndarray, layer: np.ndarray, offsets: Sequence[int], rank_of: np.ndarray) -> None:
    """Label one distance layer of the FIFO flooding in place (dam = 0).

    ``layer`` holds flat indices in queue order. A pixel's result depends on its lower neighbours
    (final) and on its same-layer neighbours popped before it; that dependency is acyclic in queue
    order, so iterating the rule until nothing changes reaches its unique solution.
    """
    m = layer.size
    rank = np.arange(m, dtype=np.int64)
    rank_of[layer] = rank
    lo = np.full(m, _NO_LABEL, dtype=np.int32)  # smallest / largest label seen
    hi = np.zeros(m, dtype=np.int32)
    earlier: List[Tuple[np.ndarray, np.ndarray]] = []
    for off in offsets:
        q = layer + off
        v = lab[q]  # labels of lower layers and basins are final; this layer is still _UNSEEN
        positive = v > 0
        lo = np.where(positive, np.minimum(lo, v), lo)
        hi = np.maximum(hi, v)
        rq = rank_of[q]
        before = (rq >= 0) & (rq < rank)
        if before.any():
            earlier.append((np.flatnonzero(before), rq[before]))
    result = np.where(lo == hi, lo, _DAM).astype(np.int32)
    while earlier:
        lo_it, hi_it = lo.copy(), hi.copy()
        for idx, src in earlier:
            v = result[src]
            lo_it[idx] = np.where(v > 0, np.minimum(lo_it[idx], v), lo_it[idx])
            hi_it[idx] = np.maximum(hi_it[idx], v)
        updated = np.where(lo_it == hi_it, lo_it, _DAM).astype(np.int32)
        if np.array_equal(updated, result):
            break
        result = updated
    lab[layer] = result
    rank_of[layer] = -1


def label_ground_truth(foreground: np.ndarray) -> np.ndarray:
    """4-connected components of the ground-truth foreground: int32 (H, W), 0 = membrane."""
    labels, _ = ndimage.label(np.asarray(foreground, dtype=bool), structure=FOUR_CONNECTED)
    return labels.astype(np.int32)


# --- Per-slice scores -----------------------------------------------------------------------------


def _contingency(gt: np.ndarray, proposal: np.ndarray) -> Tuple[np.ndarray, int]:
    """Pixel counts n_ij (ground-truth label i >= 1 in row i - 1, proposal label j >= 0 in column j)."""
    mask = gt > 0
    n = int(mask.sum())
    g = gt[mask].astype(np.int64) - 1
    p = proposal[mask].astype(np.int64)
    n_rows = int(g.max()) + 1 if n else 0
    n_cols = int(p.max()) + 1 if n else 1
    counts = np.bincount(g * n_cols + p, minlength=n_rows * n_cols).reshape(n_rows, n_cols)
    return counts, n


def slice_scores(gt_labels: np.ndarray, proposal_labels: np.ndarray) -> Tuple[float, float]:
    """(V_rand F-score, V_info F-score) of one slice.

    Args:
        gt_labels: int (H, W) ground-truth segments, 0 = background (excluded from counting).
        proposal_labels: int (H, W) proposal segments, 0 = dam pixels (each counted as a singleton).

    Returns:
        The two F-scores in [0, 1] (V_info may be NaN where Java's is, see the module docstring).
    """
    counts, n = _contingency(gt_labels, proposal_labels)
    if n == 0:
        return 0.0, 0.0
    return _vrand_fscore(counts), _vinfo_fscore(counts, n)


def _vrand_fscore(counts: np.ndarray) -> float:
    """``getForegroundRestrictedRandIndexStatsN2`` + ``ClassificationStatistics``, in exact integers."""
    c = counts.astype(np.int64)
    dams = int(c[:, 0].sum())
    ab2 = int((c[:, 1:] ** 2).sum()) + dams  # n^2 * sumAB2: dam pixels pair only with themselves
    a2 = int((c.sum(axis=1) ** 2).sum())  # n^2 * sumA2
    b2 = int((c[:, 1:].sum(axis=0) ** 2).sum()) + dams  # n^2 * sumB2
    precision = 1.0 if b2 == ab2 else ab2 / b2
    recall = 1.0 if a2 == ab2 else ab2 / a2
    return 2.0 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _vinfo_fscore(counts: np.ndarray, n: int) -> float:
    """``VariationOfInformation.foregroundRestrictedFscore`` (natural logarithms, n > 0)."""
    p = counts / float(n)
    a = p.sum(axis=1)
    b = p[:, 1:].sum(axis=0)
    aux = float(p[:, 0].sum())
    log_n = math.log(n)
    pij = p[:, 1:]
    sum_a = float(np.sum(a[a != 0] * np.log(a[a != 0])))
    sum_b = float(np.sum(b[b != 0] * np.log(b[b != 0]))) - aux * log_n
    sum_ab = float(np.sum(pij[pij != 0] * np.log(pij[pij != 0]))) - aux * log_n
    ha, hb = -sum_a, -sum_b
    hab, hba = sum_b - sum_ab, sum_a - sum_ab
    with np.errstate(all="ignore"):  # IEEE division like Java's doubles
        precision = np.float64(ha - hab) / np.float64(ha)
        recall = np.float64(hb - hba) / np.float64(hb)
        if ha == 0:
            precision, recall = np.float64(0.0), np.float64(1.0)
        if hb == 0:
            precision, recall = np.float64(1.0), np.float64(0.0)
        return float(2.0 * precision * recall / (precision + recall))


# --- Stacks ---------------------------------------------------------------------------------------


@dataclass
class IsbiScores:
    """Thinned ISBI 2012 scores of a stack (higher is better, 1 is perfect).

    ``v_rand`` / ``v_info`` are the maxima over ``thresholds`` of the per-slice-averaged F-scores,
    ``*_threshold`` the first threshold reaching it (Java's ``bestTh``). Per-threshold lists are
    aligned with ``thresholds``; a V_info entry may be NaN (never the maximum).
    """

    v_rand: float
    v_rand_threshold: float
    v_info: float
    v_info_threshold: float
    slices: int
    thresholds: List[float] = field(default_factory=list)
    v_rand_per_threshold: List[float] = field(default_factory=list)
    v_info_per_threshold: List[float] = field(default_factory=list)

    def as_dict(self) -> Dict[str, object]:
        """JSON-ready dict (NaN becomes None)."""
        def clean(x: float) -> Optional[float]:
            return None if math.isnan(x) else float(x)

        return {
            "v_rand_thinned": clean(self.v_rand),
            "v_rand_thinned_threshold": self.v_rand_threshold,
            "v_info_thinned": clean(self.v_info),
            "v_info_thinned_threshold": self.v_info_threshold,
            "slices": self.slices,
            "thresholds": list(self.thresholds),
            "v_rand_per_threshold": [clean(x) for x in self.v_rand_per_threshold],
            "v_info_per_threshold": [clean(x) for x in self.v_info_per_threshold],
        }


def as_stack(array: np.ndarray, name: str) -> np.ndarray:
    """View a 2-D image (H, W) or a stack (N, H, W) as a stack; UNetError naming ``name`` otherwise."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or 0 in array.shape:
        raise UNetError(f"{name}: expected a 2-D image (H, W) or a stack (N, H, W), got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool) or np.iscomplexobj(array):
        raise UNetError(f"{name}: expected real numbers, got dtype {array.dtype}")
    return array


def probabilities_as_float32(array: np.ndarray, name: str = "probabilities") -> np.ndarray:
    """Interior probabilities as float32 in [0, 1] (N, H, W): uint8 is divided by 255, floats kept.

    Raises UNetError for other dtypes, NaN or values outside [0, 1].
    """
    array = as_stack(array, name)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / np.float32(255.0)
    if not np.issubdtype(array.dtype, np.floating):
        raise UNetError(f"{name}: expected float probabilities in [0, 1] or uint8 0..255, got dtype {array.dtype}")
    probs = array.astype(np.float32)
    if np.isnan(probs).any():
        raise UNetError(f"{name}: contains NaN")
    lo, hi = float(probs.min()), float(probs.max())
    if lo < 0.0 or hi > 1.0:
        raise UNetError(f"{name}: values must lie in [0, 1] (1 = cell interior), got [{lo:g}, {hi:g}]")
    return probs


def labels_as_float32(array: np.ndarray, name: str = "labels") -> np.ndarray:
    """Ground truth as float32 (N, H, W), as ImageJ's ``convertToFloat`` sees it (255 = interior)."""
    array = as_stack(array, name)
    if np.issubdtype(array.dtype, np.floating) and np.isnan(array).any():
        raise UNetError(f"{name}: contains NaN")
    return array.astype(np.float32)


def score_stack(
    labels: np.ndarray,
    probabilities: np.ndarray,
    thresholds: Optional[Sequence[float]] = None,
) -> IsbiScores:
    """Maximal thinned V_rand and V_info of a proposal against ISBI-style ground truth.

    Args:
        labels: ground truth (H, W) or (N, H, W), ISBI train-labels style: 255 (any value above the
            threshold) = cell interior, 0 = membrane.
        probabilities: same shape, 1 = cell interior; float in [0, 1] or uint8 0..255 (divided by 255).
        thresholds: defaults to ``java_thresholds()`` (0.0 to 1.0 by 0.1, 11 values).

    Returns:
        IsbiScores with Fiji's ``getMaximalVRandAfterThinning(0.0, 1.0, 0.1, true)`` and
        ``getMaximalVInfoAfterThinning(0.0, 1.0, 0.1)`` and their best thresholds.
    """
    gt = labels_as_float32(labels, "labels").astype(np.float64)
    probs = probabilities_as_float32(probabilities, "probabilities").astype(np.float64)
    if gt.shape != probs.shape:
        raise UNetError(f"probabilities: shape {probs.shape} does not match labels shape {gt.shape}")
    ths = list(java_thresholds() if thresholds is None else thresholds)
    n_slices = gt.shape[0]

    gt_cache: List[Tuple[Optional[np.ndarray], Optional[np.ndarray]]] = [(None, None)] * n_slices
    v_rand_list: List[float] = []
    v_info_list: List[float] = []
    for th in ths:
        rand_sum = 0.0
        info_sum = 0.0
        for s in range(n_slices):
            fg = gt[s] > th
            cached_fg, cached_labels = gt_cache[s]
            if cached_fg is None or not np.array_equal(cached_fg, fg):
                cached_fg, cached_labels = fg, label_ground_truth(fg)
                gt_cache[s] = (cached_fg, cached_labels)
            rand_f, info_f = slice_scores(cached_labels, thin_proposal(probs[s] > th))
            rand_sum += rand_f
            info_sum += info_f
        v_rand_list.append(rand_sum / n_slices)
        v_info_list.append(info_sum / n_slices)

    v_rand, v_rand_th = _first_maximum(v_rand_list, ths)
    v_info, v_info_th = _first_maximum(v_info_list, ths)
    return IsbiScores(v_rand, v_rand_th, v_info, v_info_th, n_slices, ths, v_rand_list, v_info_list)


def _first_maximum(scores: Sequence[float], thresholds: Sequence[float]) -> Tuple[float, float]:
    """Java's ``if (score > best)`` scan from best = 0 at the first threshold (NaN never wins)."""
    best, best_th = 0.0, (thresholds[0] if thresholds else 0.0)
    for score, th in zip(scores, thresholds):
        if score > best:
            best, best_th = score, th
    return best, best_th
