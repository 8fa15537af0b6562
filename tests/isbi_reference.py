"""A literal, slow pure-Python port of Fiji's thinned ISBI 2012 scores, used only by the tests.

It follows the Java method by method, loop by loop (Trainable_Segmentation ``RandError``,
``VariationOfInformation``, ``ClassificationStatistics``, ``WatershedTransform2D``,
``Neighborhood2DC4``, ``PixelRecord``, ``Utils.connectedComponents`` and VIB-lib's
``FindConnectedRegions``), with Java's double arithmetic (Python floats are IEEE doubles; the only
helpers are IEEE division and ``Math.log`` semantics for 0 and NaN). Images are indexed ``[x][y]``
like ImageJ processors; 16-bit label images are flat lists in raster order (``y * width + x``).

It shares no code with ``unet_medical.evaluation.isbi`` on purpose: the fast implementation floods one distance
layer at a time with NumPy, this one pops a FIFO queue pixel by pixel.

The one liberty taken: ``FindConnectedRegions`` rescans the whole image for the pixels of each new
region; here the region's pixels are remembered in a list (same result, O(pixels) instead of
O(regions * pixels)).
"""
from __future__ import annotations

import math
from collections import deque
from typing import Dict, List, Sequence, Tuple

import numpy as np

# WatershedTransform2D constants
MASK = -2
WSHED = 0
INIT = -1
INQUEUE = -3

# FindConnectedRegions point states
IN_QUEUE = 1
ADDED_TO_CURRENT_REGION = 2
IN_PREVIOUS_REGION = 3


def jdiv(a: float, b: float) -> float:
    """Java double division (IEEE: x / 0 is +-Infinity or NaN instead of an exception)."""
    if b == 0.0:
        if a == 0.0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


def jlog(x: float) -> float:
    """Java's Math.log: log(0) = -Infinity, log(negative or NaN) = NaN."""
    if math.isnan(x) or x < 0:
        return math.nan
    if x == 0:
        return -math.inf
    return math.log(x)


def java_thresholds(min_threshold: float, max_threshold: float, step: float) -> List[float]:
    """``for (double th = minThreshold; th <= maxThreshold; th += stepThreshold)``."""
    out = []
    th = min_threshold
    while th <= max_threshold:
        out.append(th)
        th += step
    return out


# --- ImageJ glue ----------------------------------------------------------------------------------


def processor_xy(image_yx: np.ndarray) -> List[List[float]]:
    """A 2-D numpy image (rows = y) as a FloatProcessor seen through getPixelValue: [x][y] floats."""
    img = np.asarray(image_yx, dtype=np.float32)
    height, width = img.shape
    return [[float(img[y, x]) for y in range(height)] for x in range(width)]


# --- Utils.connectedComponents(imp, 4) -> FindConnectedRegions.run(...) --------------------------


def find_connected_regions(binary_xy: List[List[int]], width: int, height: int) -> List[int]:
    """FindConnectedRegions.run(imp, diagonal=false, ..., valuesOver=0, minimumPoints=1, ...) on an
    8-bit 2-D image; returns the "all regions" 16-bit image as a raster list (0 = no region)."""
    depth = 1
    slice_data = [0] * (width * height)  # sliceDataBytes[0] = getPixelsCopy()
    for y in range(height):
        for x in range(width):
            slice_data[y * width + x] = binary_xy[x][y]
    values_over = 0.0
    minimum_points = 1.0
    point_state = [0] * (width * height * depth)
    all_regions = [0] * (width * height)
    region_number = 0
    ignore_before_x = ignore_before_y = ignore_before_z = 0
    while True:
        initial_x = initial_y = initial_z = -1
        found_value_int = -1
        found_point = False
        for z in range(ignore_before_z, depth):
            if found_point:
                break
            start_y = ignore_before_y if z == ignore_before_z else 0
            for y in range(start_y, height):
                if found_point:
                    break
                start_x = ignore_before_x if (z == ignore_before_z and y == ignore_before_y) else 0
                for x in range(start_x, width):
                    index = width * (z * height + y) + x
                    if point_state[index] == IN_PREVIOUS_REGION:
                        continue
                    value = slice_data[y * width + x] & 0xFF
                    if value > values_over:
                        initial_x, initial_y, initial_z = x, y, z
                        found_value_int = value
                        found_point = True
                        break
        if found_value_int == -1:
            break
        ignore_before_x = initial_x + 1
        ignore_before_z = initial_z
        ignore_before_y = initial_y

        queue = []
        index = width * (initial_z * height + initial_y) + initial_x
        point_state[index] = IN_QUEUE
        queue.append(index)
        points_in_this_region = 0
        added = []  # the liberty: remember the region instead of rescanning the image
        while queue:
            next_index = queue.pop()
            pz = next_index // (width * height)
            current_slice_index = next_index % (width * height)
            py = current_slice_index // width
            px = current_slice_index % width
            point_state[next_index] = ADDED_TO_CURRENT_REGION
            added.append(next_index)
            slice_data[current_slice_index] = 0
            points_in_this_region += 1
            x_unchecked_min, y_unchecked_min, z_unchecked_min = px - 1, py - 1, pz - 1
            x_unchecked_max, y_unchecked_max, z_unchecked_max = px + 1, py + 1, pz + 1
            x_min, y_min, z_min = max(0, x_unchecked_min), max(0, y_unchecked_min), max(0, z_unchecked_min)
            x_max = min(x_unchecked_max, width - 1)
            y_max = min(y_unchecked_max, height - 1)
            z_max = min(z_unchecked_max, depth - 1)
            for z in range(z_min, z_max + 1):
                for y in range(y_min, y_max + 1):
                    for x in range(x_min, x_max + 1):
                        x_off = 1 if (x == x_unchecked_min or x == x_unchecked_max) else 0
                        y_off = 1 if (y == y_unchecked_min or y == y_unchecked_max) else 0
                        z_off = 1 if (z == z_unchecked_min or z == z_unchecked_max) else 0
                        if x_off + y_off + z_off == 0:
                            continue
                        if x_off + y_off + z_off > 1:  # diagonal == false
                            continue
                        new_slice_index = y * width + x
                        new_point_state_index = width * (z * height + y) + x
                        neighbour_value = slice_data[new_slice_index] & 0xFF
                        if neighbour_value <= values_over:
                            continue
                        if point_state[new_point_state_index] == 0:
                            point_state[new_point_state_index] = IN_QUEUE
                            queue.append(new_point_state_index)
        if points_in_this_region < minimum_points:
            for p in added:
                point_state[p] = IN_PREVIOUS_REGION
            continue
        region_number += 1
        for p in added:
            all_regions[p] = region_number & 0xFFFF  # (short) regionNumber, read back as & 0xffff
        for p in added:
            point_state[p] = IN_PREVIOUS_REGION
    return all_regions


# --- WatershedTransform2D(binaryProposal, 4).apply() ----------------------------------------------


def neighbors_c4(x: int, y: int) -> List[Tuple[int, int]]:
    """Neighborhood2DC4.getNeighbors(): left, up, right, down."""
    return [(x - 1, y), (x, y - 1), (x + 1, y), (x, y + 1)]


def watershed_transform_2d(input_xy: List[List[int]], width: int, height: int,
                           h_min: float = 0.0, h_max: float = 255.0) -> List[List[float]]:
    """WatershedTransform2D.apply(hMin, hMax) with 4-connectivity; returns the FloatProcessor [x][y].

    ``apply()`` passes ``inputImage.getMin()`` / ``getMax()``; for the 0/255 ByteProcessor both the
    display range (0, 255) and the data range give the same flooding, so 0 and 255 are used.
    """
    size1, size2 = width, height
    tab_labels = [[INIT] * size2 for _ in range(size1)]
    current_label = 0
    flag = False

    # extractPixelValues: x outer, y inner; PixelRecord.compareTo: value, then creation order
    pixel_list = []
    seq = 0
    for x in range(size1):
        for y in range(size2):
            h = float(input_xy[x][y])
            if h_min <= h <= h_max:
                pixel_list.append((h, seq, x, y))
                seq += 1
    pixel_list.sort()

    fifo: deque = deque()
    h = h_min
    current_index = 0
    while h < h_min:
        h = pixel_list[current_index][0]
        current_index += 1
    height_index1 = current_index
    height_index2 = current_index

    while current_index < len(pixel_list) and h <= h_max:
        h = pixel_list[current_index][0]
        for pixel_index in range(height_index1, len(pixel_list)):
            value, _, i, j = pixel_list[pixel_index]
            if value != h:
                height_index1 = pixel_index
                break
            tab_labels[i][j] = MASK
            for u, v in neighbors_c4(i, j):
                if 0 <= u < size1 and 0 <= v < size2 and tab_labels[u][v] >= WSHED:
                    fifo.append((i, j))
                    tab_labels[i][j] = INQUEUE
                    break

        while fifo:
            i, j = fifo.popleft()
            for u, v in neighbors_c4(i, j):
                if 0 <= u < size1 and 0 <= v < size2:
                    if tab_labels[u][v] > 0:
                        if tab_labels[i][j] == INQUEUE or (tab_labels[i][j] == WSHED and flag):
                            tab_labels[i][j] = tab_labels[u][v]
                        elif tab_labels[i][j] > 0 and tab_labels[i][j] != tab_labels[u][v]:
                            tab_labels[i][j] = WSHED
                            flag = False
                    elif tab_labels[u][v] == WSHED:
                        if tab_labels[i][j] == INQUEUE:
                            tab_labels[i][j] = WSHED
                            flag = True
                    elif tab_labels[u][v] == MASK:
                        tab_labels[u][v] = INQUEUE
                        fifo.append((u, v))

        pixel_index = height_index2
        while pixel_index < len(pixel_list):
            value, _, i, j = pixel_list[pixel_index]
            if value != h:
                height_index2 = pixel_index
                break
            if tab_labels[i][j] == MASK:
                current_label += 1
                fifo.append((i, j))
                tab_labels[i][j] = current_label
                while fifo:
                    p2x, p2y = fifo.popleft()
                    for u, v in neighbors_c4(p2x, p2y):
                        if 0 <= u < size1 and 0 <= v < size2 and tab_labels[u][v] == MASK:
                            fifo.append((u, v))
                            tab_labels[u][v] = current_label
            pixel_index += 1
            current_index += 1

    return [[0.0 if tab_labels[i][j] == INIT else float(tab_labels[i][j]) for j in range(size2)]
            for i in range(size1)]


def convert_to_short(fp_xy: List[List[float]], width: int, height: int) -> List[int]:
    """FloatProcessor.convertToShortProcessor(false) as a raster list (clamped to 0..65535)."""
    out = [0] * (width * height)
    for y in range(height):
        for x in range(width):
            v = fp_xy[x][y]
            out[y * width + x] = int(min(max(v, 0.0), 65535.0) + 0.5)
    return out


# --- The two per-slice "after thinning" methods ---------------------------------------------------


def binarize(label_xy: List[List[float]], proposal_xy: List[List[float]], width: int, height: int,
             binary_threshold: float) -> Tuple[List[List[int]], List[List[int]]]:
    """The binarisation loop of both *AfterThinning*N2 methods (proposal inverted: interior = 0)."""
    binary_label = [[0] * height for _ in range(width)]
    binary_proposal = [[0] * height for _ in range(width)]
    for x in range(width):
        for y in range(height):
            binary_label[x][y] = 255 if label_xy[x][y] > binary_threshold else 0
            binary_proposal[x][y] = 0 if proposal_xy[x][y] > binary_threshold else 255
    return binary_label, binary_proposal


def components_after_thinning(label_xy, proposal_xy, width, height, binary_threshold):
    """(components1, components2): ground-truth regions and watershed-thinned proposal (raster)."""
    binary_label, binary_proposal = binarize(label_xy, proposal_xy, width, height, binary_threshold)
    components1 = find_connected_regions(binary_label, width, height)
    components2 = convert_to_short(watershed_transform_2d(binary_proposal, width, height), width, height)
    return components1, components2


class ClassificationStatistics:
    """trainableSegmentation.metrics.ClassificationStatistics (constructor logic)."""

    def __init__(self, tp: float, tn: float, fp: float, fn: float, metric_value: float):
        self.truePositives, self.trueNegatives = tp, tn
        self.falsePositives, self.falseNegatives = fp, fn
        self.metricValue = metric_value
        total_negatives = tn + fp
        self.specificity = jdiv(tn, total_negatives) if total_negatives > 0 else 0.0
        self.precision = 1.0 if fp == 0 else jdiv(tp, tp + fp)
        self.recall = 1.0 if fn == 0 else jdiv(tp, tp + fn)
        self.fScore = 0.0
        if (self.precision + self.recall) > 0:
            self.fScore = jdiv(2.0 * self.precision * self.recall, self.precision + self.recall)


def _overlap(pixels1: List[int], pixels2: List[int]) -> Tuple[float, List[List[float]]]:
    """n (ground-truth non-zero pixels) and pij = counts / n, sized by the max labels."""
    n = 0.0
    for v in pixels1:
        if v != 0:
            n += 1
    n_labels_a = max(pixels1)
    n_labels_b = max(pixels2)
    pij = [[0.0] * (n_labels_b + 1) for _ in range(n_labels_a + 1)]
    for i in range(len(pixels1)):
        pij[pixels1[i] & 0xFFFF][pixels2[i] & 0xFFFF] += 1
    for i in range(n_labels_a + 1):
        for j in range(n_labels_b + 1):
            pij[i][j] = jdiv(pij[i][j], n)
    return n, pij


def foreground_restricted_rand_index_stats_n2(pixels1: List[int], pixels2: List[int]) -> ClassificationStatistics:
    """RandError.getForegroundRestrictedRandIndexStatsN2(ShortProcessor, ShortProcessor)."""
    n, pij = _overlap(pixels1, pixels2)
    ai = [0.0] * len(pij)
    for i in range(1, len(pij)):
        for j in range(len(pij[0])):
            ai[i] += pij[i][j]
    bj = [0.0] * len(pij[0])
    for j in range(1, len(pij[0])):
        for i in range(1, len(pij)):
            bj[j] += pij[i][j]
    pi0 = [0.0] * len(pij)
    aux = 0.0
    for i in range(1, len(pij)):
        pi0[i] = pij[i][0]
        aux += pi0[i]
    sum_a2 = 0.0
    for i in range(len(ai)):
        sum_a2 += ai[i] * ai[i]
    sum_b2 = 0.0
    for j in range(len(bj)):
        sum_b2 += bj[j] * bj[j]
    sum_b2 += jdiv(aux, n)
    sum_ab2 = 0.0
    for i in range(1, len(pij)):
        for j in range(1, len(pij[0])):
            sum_ab2 += pij[i][j] * pij[i][j]
    sum_ab2 += jdiv(aux, n)
    n2 = n * n
    tp = n2 * sum_ab2
    fp = n2 * sum_b2 - tp
    fn = n2 * sum_a2 - tp
    tn = n2 - tp - fp - fn
    rand_error = jdiv(fp + fn, n2)
    return ClassificationStatistics(tp, tn, fp, fn, 1 - rand_error)


def foreground_restricted_fscore(pixels1: List[int], pixels2: List[int]) -> float:
    """VariationOfInformation.foregroundRestrictedFscore(ShortProcessor, ShortProcessor)."""
    n, pij = _overlap(pixels1, pixels2)
    ai = [0.0] * len(pij)
    for i in range(1, len(pij)):
        for j in range(len(pij[0])):
            ai[i] += pij[i][j]
    bj = [0.0] * len(pij[0])
    for j in range(1, len(pij[0])):
        for i in range(1, len(pij)):
            bj[j] += pij[i][j]
    pi0 = [0.0] * len(pij)
    aux = 0.0
    for i in range(1, len(pij)):
        pi0[i] = pij[i][0]
        aux += pi0[i]
    sum_a = 0.0
    for i in range(len(ai)):
        if ai[i] != 0:
            sum_a += ai[i] * jlog(ai[i])
    sum_b = 0.0
    for j in range(len(bj)):
        if bj[j] != 0:
            sum_b += bj[j] * jlog(bj[j])
    sum_b -= _jmul(aux, jlog(n))
    sum_ab = 0.0
    for i in range(1, len(pij)):
        for j in range(1, len(pij[0])):
            if pij[i][j] != 0:
                sum_ab += pij[i][j] * jlog(pij[i][j])
    sum_ab -= _jmul(aux, jlog(n))
    ha = -sum_a
    hb = -sum_b
    hab = sum_b - sum_ab
    hba = sum_a - sum_ab
    prec = jdiv(ha - hab, ha)
    rec = jdiv(hb - hba, hb)
    if ha == 0:
        prec, rec = 0.0, 1.0
    if hb == 0:
        prec, rec = 1.0, 0.0
    return jdiv(2.0 * prec * rec, prec + rec)


def _jmul(a: float, b: float) -> float:
    """a * b with Java's 0 * Infinity = NaN (Python agrees, kept explicit for readability)."""
    if (a == 0 and math.isinf(b)) or (b == 0 and math.isinf(a)):
        return math.nan
    return a * b


# --- Stack loops ----------------------------------------------------------------------------------


class ReferenceEvaluation:
    """RandError / VariationOfInformation on a stack, with the per-(slice, threshold) components
    cached so that the two metrics do not flood the same image twice."""

    def __init__(self, labels: np.ndarray, probabilities: np.ndarray):
        labels = np.asarray(labels)
        probabilities = np.asarray(probabilities)
        if labels.ndim == 2:
            labels, probabilities = labels[None], probabilities[None]
        self.n_slices, self.height, self.width = labels.shape
        self.label_slices = [processor_xy(s) for s in labels]  # getProcessor(i).convertToFloat()
        self.proposal_slices = [processor_xy(s) for s in probabilities]
        self._cache: Dict[Tuple[int, float], Tuple[List[int], List[int]]] = {}

    def components(self, s: int, th: float) -> Tuple[List[int], List[int]]:
        key = (s, th)
        if key not in self._cache:
            self._cache[key] = components_after_thinning(
                self.label_slices[s], self.proposal_slices[s], self.width, self.height, th)
        return self._cache[key]

    # RandError.getForegroundRestrictedRandAfterThinningStats(th, perSliceAverage)
    def rand_after_thinning_stats(self, th: float, per_slice_average: bool) -> ClassificationStatistics:
        rand_index = tp = tn = fp = fn = f_score = 0.0
        for s in range(self.n_slices):
            cs = foreground_restricted_rand_index_stats_n2(*self.components(s, th))
            rand_index += cs.metricValue
            tp += cs.truePositives
            tn += cs.trueNegatives
            fp += cs.falsePositives
            fn += cs.falseNegatives
            f_score += cs.fScore
        cs = ClassificationStatistics(tp, tn, fp, fn, rand_index / self.n_slices)
        if per_slice_average:
            cs.fScore = f_score / self.n_slices
        return cs

    # RandError.getMaximalVRandAfterThinning(min, max, step, perSliceAverage)
    def maximal_vrand_after_thinning(self, min_t: float, max_t: float, step: float,
                                     per_slice_average: bool) -> Dict[str, object]:
        stats, best, best_th = [], 0.0, min_t
        for th in java_thresholds(min_t, max_t, step):
            stats.append(self.rand_after_thinning_stats(th, per_slice_average))
            if stats[-1].fScore > best:
                best, best_th = stats[-1].fScore, th
        max_f = 0.0
        for stat in stats:
            if stat.fScore > max_f:
                max_f = stat.fScore
        return {"value": max_f, "threshold": best_th, "per_threshold": [st.fScore for st in stats]}

    # VariationOfInformation.getForegroundRestrictedScoreAfterThinning(th)
    def vinfo_score_after_thinning(self, th: float) -> float:
        f_score = 0.0
        for s in range(self.n_slices):
            f_score += foreground_restricted_fscore(*self.components(s, th))
        return f_score / self.n_slices

    # VariationOfInformation.getMaximalVInfoAfterThinning(min, max, step)
    def maximal_vinfo_after_thinning(self, min_t: float, max_t: float, step: float) -> Dict[str, object]:
        scores, best, best_th = [], 0.0, min_t
        for th in java_thresholds(min_t, max_t, step):
            scores.append(self.vinfo_score_after_thinning(th))
            if scores[-1] > best:
                best, best_th = scores[-1], th
        max_score = 0.0
        for f in scores:
            if f > max_score:
                max_score = f
        return {"value": max_score, "threshold": best_th, "per_threshold": scores}


def reference_scores(labels: np.ndarray, probabilities: np.ndarray,
                     thresholds: Sequence[float] = (0.0, 1.0, 0.1)) -> Dict[str, Dict[str, object]]:
    """Both Fiji calls of the challenge script: getMaximalVRandAfterThinning(0, 1, 0.1, true) and
    getMaximalVInfoAfterThinning(0, 1, 0.1). Probabilities must already be float32-representable."""
    ev = ReferenceEvaluation(labels, probabilities)
    lo, hi, step = thresholds
    return {"v_rand": ev.maximal_vrand_after_thinning(lo, hi, step, True),
            "v_info": ev.maximal_vinfo_after_thinning(lo, hi, step)}


def reference_thinning(interior_yx: np.ndarray) -> np.ndarray:
    """The Java watershed of one binarised proposal, as an (H, W) int array (0 = dam)."""
    interior = np.asarray(interior_yx, dtype=bool)
    height, width = interior.shape
    binary = [[0 if interior[y, x] else 255 for y in range(height)] for x in range(width)]
    short = convert_to_short(watershed_transform_2d(binary, width, height), width, height)
    return np.asarray(short, dtype=np.int64).reshape(height, width)
