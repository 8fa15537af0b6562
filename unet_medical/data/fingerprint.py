"""A data set's fingerprint: the measurements the adaptive recipe (utils.data.recipe) decides from.

The idea is nnU-Net's automatic configuration (Isensee et al. 2021, Nature Methods 18:203): measure
the data, then derive the preprocessing and training settings from rules instead of hand-tuning.
Everything here is a pure function of the images and masks (NumPy/SciPy), so it can be tested
on synthetic sets whose answer is known.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from unet_medical.data.normalize import normalize_image

# Object shapes are measured on at most this many images (evenly spaced): sizes and widths of a large
# set are stable long before every image is read, and the fingerprint stays a few seconds long.
MAX_OBJECT_IMAGES = 64


def _summary(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return {"min": 0.0, "p10": 0.0, "median": 0.0, "p90": 0.0, "max": 0.0}
    return {"min": float(v.min()), "p10": float(np.percentile(v, 10)), "median": float(np.median(v)),
            "p90": float(np.percentile(v, 90)), "max": float(v.max())}


def _cv(values: np.ndarray) -> float:
    """Coefficient of variation (sd / |mean|); 0 for a constant or empty list."""
    mean = float(np.mean(values)) if len(values) else 0.0
    return float(np.std(values) / abs(mean)) if mean else 0.0


def intensity_statistics(images: Sequence[np.ndarray]) -> list[dict[str, Any]]:
    """Per channel, on the global [0, 1] scale: the median over images of each image's 0.5 / 50 / 99.5
    percentiles, how much images differ (coefficient of variation of their medians and of their
    0.5-99.5 spreads) and their polarity (bright objects on dark: mean > median; dark on bright: mean < median).
    """
    per_image = []
    for image in images:
        x = normalize_image(image).reshape(-1, image.shape[-1])
        p = np.percentile(x, (0.5, 50.0, 99.5), axis=0)  # (3, C)
        per_image.append((p, x.mean(axis=0)))
    out = []
    for c in range(images[0].shape[-1]):
        lows = np.array([p[0, c] for p, _ in per_image])
        medians = np.array([p[1, c] for p, _ in per_image])
        highs = np.array([p[2, c] for p, _ in per_image])
        means = np.array([m[c] for _, m in per_image])
        spreads = highs - lows
        # Skew sign with a dead zone of 1 % of the image's spread: near-symmetric images have no polarity.
        skew = (means - medians) / np.maximum(spreads, 1e-6)
        out.append({"p0_5": float(np.median(lows)), "p50": float(np.median(medians)),
                    "p99_5": float(np.median(highs)), "median_cv": _cv(medians), "spread_cv": _cv(spreads),
                    "bright_on_dark": int(np.sum(skew > 0.01)), "dark_on_bright": int(np.sum(skew < -0.01))})
    return out


def distance_to_background(region: np.ndarray) -> np.ndarray:
    """Euclidean distance (pixels) of each pixel of a (H, W) bool region to the nearest background pixel,
    the image border counting as background; 0 outside the region.

    Without the padding, distance_transform_edt measures only to background inside the image, and an
    object touching the border gets the distance to its far side: widths of 985 px in 620 px images.
    """
    padded = np.pad(region, 1, constant_values=False)
    return ndimage.distance_transform_edt(padded)[1:-1, 1:-1]


def max_per_label(values: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    """(count,) the largest of `values` over the pixels of each label 1..count of `labels` (same shape;
    0 = none), 0 for a label with no pixel: ndimage.maximum(values, labels, 1..count), which sorts the
    whole image (40x slower on a 512 x 512 slice; most of a fingerprint's time)."""
    out = np.full(count + 1, -np.inf)
    np.maximum.at(out, labels.ravel(), values.ravel())
    return np.where(np.isneginf(out[1:]), 0.0, out[1:])


def object_statistics(masks: Sequence[np.ndarray], class_id: int) -> dict[str, Any]:
    """Connected components (8-connected) of one class: count per image, area (pixels), width (pixels:
    twice the largest distance to the background inside each component: a blob's diameter, a tree's
    thickest trunk) and thickness (pixels: twice the distance to the background along the class's
    skeleton, one value per skeleton pixel: how thick the structure is along its length).

    Outside the image counts as background: an object cut by the border is measured as the part that
    is visible, so no width exceeds the image (about 1 px over for odd sizes, by the 2 x distance rule)."""
    from skimage.morphology import skeletonize

    counts, areas, widths, thickness = [], [], [], []
    for mask in masks:
        region = mask == class_id
        labels, n = ndimage.label(region, structure=np.ones((3, 3)))
        counts.append(n)
        if n == 0:
            continue
        areas.extend(np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.float64))
        distance = distance_to_background(region)
        widths.extend(2.0 * max_per_label(distance, labels, n))
        thickness.extend(2.0 * distance[skeletonize(region)])
    return {"per_image": _summary(counts), "area": _summary(areas), "width": _summary(widths),
            "thickness": _summary(thickness)}


def measure_fingerprint(images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                        class_names: Sequence[str]) -> dict[str, Any]:
    """The fingerprint of a labelled set: images (H, W, C) uint8/uint16/float, masks (H, W) class ids.

    Returns a JSON-ready dict: images, channels, dtype, height/width summaries (pixels), intensity
    statistics per channel, the fraction of pixels of each class, and object statistics per class.
    """
    heights = [im.shape[0] for im in images]
    widths = [im.shape[1] for im in images]
    counts = np.zeros(len(class_names), np.float64)
    for mask in masks:
        counts += np.bincount(mask.ravel(), minlength=len(class_names))[:len(class_names)]
    step = max(1, len(masks) // MAX_OBJECT_IMAGES)
    sampled = list(masks[::step])
    return {
        "images": len(images), "channels": int(images[0].shape[-1]), "dtype": str(images[0].dtype),
        "height": _summary(heights), "width": _summary(widths), "smallest_side": int(min(heights + widths)),
        "intensity": intensity_statistics(images),
        "class_fraction": {name: float(c / counts.sum()) for name, c in zip(class_names, counts)},
        "objects": {name: object_statistics(sampled, k) for k, name in enumerate(class_names)},
        "objects_measured_on": len(sampled),
    }
