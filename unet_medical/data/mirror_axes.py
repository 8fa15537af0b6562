"""Which voxel axes of a volume set may be mirrored: those along which its labelled structures keep no order.

nnU-Net mirrors every axis, in training and at test time, and trains for 250,000 steps on a GPU, enough to
learn that a mirrored case is still a case. Anatomy often has an order along an axis: in a set of crops in
one orientation, a hippocampus's head lies in front of its tail in every case. A mirror along that axis
shows the network cases that never occur, and a CPU budget of a few thousand steps is better spent on the
cases that do. The order is measured from the labels: for two foreground classes, the sign of the
offset between their centroids along an axis. Where it is the same in (nearly) every case, the axis is
ordered, and neither training nor test-time mirroring flips it. A set with one foreground class, cases in
mixed orientations, or too few cases leaves every axis mirrored, as nnU-Net does.
"""
from __future__ import annotations

import itertools
from typing import Any, Sequence

import numpy as np

from unet_medical.base.errors import UNetError

AXES = (0, 1, 2)
ORDER_AGREEMENT = 0.95  # share of the cases that must put two classes in the same order along an axis
MIN_OFFSET_VOXELS = 1.0  # a smaller centroid offset counts as no order in that case
MIN_CASES = 10  # fewer cases holding both classes say nothing about a set


def class_centroids(labels: np.ndarray, classes: Sequence[int]) -> dict[int, np.ndarray]:
    """class id -> (3,) centroid in voxels (I, J, K) of each class in `classes` present in `labels` (I, J, K)."""
    found = {}
    for cls in classes:
        where = np.argwhere(labels == cls)
        if len(where):
            found[int(cls)] = where.mean(axis=0)
    return found


def axis_order_agreement(label_maps: Sequence[np.ndarray], classes: Sequence[int]) -> list[dict[str, Any]]:
    """Per axis (I, J, K), how consistently two foreground classes are ordered along it over the cases.

    For each pair (a, b) of `classes` present together in at least MIN_CASES cases: the share of those
    cases whose centroid of b lies at least MIN_OFFSET_VOXELS on the majority's side of a's. Returns one
    dict per axis: `agreement` (the largest share over pairs, 0.0 without such a pair), `pair` (a, b) or
    None, `cases` (how many cases held the pair) and `offset_voxels` (the median signed offset b - a).
    """
    centroids = [class_centroids(np.asarray(labels), classes) for labels in label_maps]
    result = [{"agreement": 0.0, "pair": None, "cases": 0, "offset_voxels": 0.0} for _ in AXES]
    for a, b in itertools.combinations(sorted(int(c) for c in classes), 2):
        offsets = np.array([found[b] - found[a] for found in centroids if a in found and b in found])
        if len(offsets) < MIN_CASES:
            continue
        for axis in AXES:
            along = offsets[:, axis]
            share = max(np.mean(along >= MIN_OFFSET_VOXELS), np.mean(along <= -MIN_OFFSET_VOXELS))
            if share > result[axis]["agreement"]:
                result[axis] = {"agreement": round(float(share), 4), "pair": (a, b), "cases": int(len(offsets)),
                                "offset_voxels": round(float(np.median(along)), 2)}
    return result


def choose_mirror_axes(agreement: Sequence[dict[str, Any]], class_names: Sequence[str],
                       slices: bool = False) -> tuple[tuple[int, ...], str]:
    """(axes to mirror, the reason) from axis_order_agreement: every axis whose order agreement is below
    ORDER_AGREEMENT. `slices`: for a network on (I, J) slices, whose training flips follow the axes while its
    test-time flips stay the 2-D ones (kept only where they gain on validation)."""
    ordered = [axis for axis in AXES if agreement[axis]["agreement"] >= ORDER_AGREEMENT]
    axes = tuple(axis for axis in AXES if axis not in ordered)
    if not ordered:
        return axes, (f"no axis keeps two foreground classes in one order in {ORDER_AGREEMENT:.0%} of the cases "
                      "(or the set has one foreground class): every axis is mirrored, as nnU-Net does")
    described = []
    for axis in ordered:
        a, b = agreement[axis]["pair"]
        described.append(f"{'IJK'[axis]}: {class_names[b]} lies {abs(agreement[axis]['offset_voxels']):g} voxels "
                         f"{'after' if agreement[axis]['offset_voxels'] > 0 else 'before'} {class_names[a]} in "
                         f"{agreement[axis]['agreement']:.0%} of {agreement[axis]['cases']} cases")
    kept = ", ".join("IJK"[axis] for axis in axes) or "none"
    if slices:
        in_plane = ", ".join("IJ"[axis] for axis in axes if axis < 2) or "neither in-plane axis"
        return axes, (f"{'; '.join(described)}: a mirror there shows cases that never occur, so training flips "
                      f"slices only along {in_plane}, without quarter turns")
    return axes, (f"{'; '.join(described)}: a mirror there shows cases that never occur, so training and "
                  f"test-time mirroring flip only {kept}")


def parse_mirror_axes(text: str | None) -> tuple[int, ...] | None:
    """--mirror_axes: None for auto (or unset), () for none, else the axes of e.g. '0,2' (0 = I, 1 = J, 2 = K)."""
    if text is None or text == "auto":
        return None
    if text == "none":
        return ()
    try:
        axes = tuple(sorted({int(part) for part in text.split(",")}))
    except ValueError:
        axes = ()
    if not axes or not set(axes) <= set(AXES):
        raise UNetError(f"--mirror_axes {text!r}: expected auto, none, or voxel axes 0 (I), 1 (J), 2 (K) separated "
                        "by commas, e.g. 0,2")
    return axes


def mirror_axes_in_effect(text: str | None) -> tuple[int, ...]:
    """The axes a --dims 3 run flips in training and mirrors at test time for a --mirror_axes value as
    resolved: auto left unresolved (a run recorded before the flag existed) flips all three."""
    axes = parse_mirror_axes(text)
    return AXES if axes is None else axes


def format_mirror_axes(axes: Sequence[int]) -> str:
    """The --mirror_axes spelling of `axes`: '0,1,2', '0,2' or 'none'."""
    return ",".join(str(int(a)) for a in sorted(axes)) or "none"
