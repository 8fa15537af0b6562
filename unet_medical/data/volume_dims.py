"""How a volume becomes network inputs (--dims): a registry of slicing modes, one entry per mode.

    "2"    each slice k of the third voxel axis alone: (I, J, C)
    "2.5"  slice k with `context` neighbours on each side as extra channels: (I, J, (2 * context + 1) * C),
           neighbours ordered k - context .. k + context, channels of one slice kept together
    "3"    a 3D network (model.unet, UNetSpec dims 3): each case whole, (I, J, K, C), trained on patches
           (data.patches3d) and predicted by sliding windows (inference.sliding_window)

"auto" picks 2 or 3 from the data (choose_dims: the voxel spacing's anisotropy) when the volumes are read.

A new mode is one SliceMode entry in DIMS; every consumer (training slices, evaluation, prediction)
asks the registry for the channel count and the per-slice input, so it needs no other change.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from unet_medical.base.errors import UNetError


@dataclasses.dataclass(frozen=True)
class SliceMode:
    """One --dims value.

    Attributes:
        dims: the flag value.
        description: one line for the RECIPE log.
        uses_context: True if neighbouring slices become channels (--context_slices applies).
        built: False for a mode that is designed but not implemented yet.
        volumetric: True if the network takes whole volumes (I, J, K, C) instead of slices.
    """

    dims: str
    description: str
    uses_context: bool = False
    built: bool = True
    volumetric: bool = False

    def context(self, context_slices: int) -> int:
        """Neighbours taken on each side of a slice: context_slices for 2.5D, 0 otherwise."""
        return context_slices if self.uses_context else 0

    def channels(self, volume_channels: int, context_slices: int) -> int:
        """Input channels of the 2D network for volumes of `volume_channels` channels."""
        return (2 * self.context(context_slices) + 1) * volume_channels


DIMS: dict[str, SliceMode] = {
    "2": SliceMode("2", "2D network on single slices of the in-plane axes (I, J), one per K"),
    "2.5": SliceMode("2.5", "2D network on a slice with its neighbours along K as channels", uses_context=True),
    "3": SliceMode("3", "3D network on volume patches, sliding-window prediction", volumetric=True),
}


AUTO = "auto"
ANISOTROPY_3D_MAX = 3.0
"""nnU-Net's threshold: a median spacing whose largest / smallest ratio exceeds 3 is anisotropic."""
MIN_3D_SIDE = 16
"""Shortest side (voxels) of the median case below which a 3D patch is not useful: under 16 voxels the 3D
recipe (data.patches3d.choose_depth_3d) gets a single pooling, a network that sees little more context
than a 2D one on slices, at the cost of the 3D convolutions."""

DEFAULT_DIMS = AUTO
"""--dims when none is given. For volumes auto: at equal training time on the 1 mm isotropic rehearsal set
(download_dataset.py --kind mr_small, benchmarks/volume_dims.py, README "Medical volumes") the 3D network
scored at least as well as 2D slices, as nnU-Net's maintainers report for 3-D data sets; anisotropic sets
keep 2D slices (choose_dims). 2-D image folders have no slicing: dims does not apply to them."""


def dims_choices() -> tuple[str, ...]:
    """The values --dims takes: the registry's modes and "auto"."""
    return (*DIMS, AUTO)


def choose_dims(anisotropy: float, shortest_side: int | None = None, no_3d: str = "") -> tuple[str, str]:
    """(--dims, reason) for --dims auto: 3 or 2 from the volumes' median geometry and the run's settings.

    Args:
        anisotropy: the median spacing's largest / smallest ratio (1 = isotropic voxels).
        shortest_side: the median case's shortest side in voxels (None: not checked).
        no_3d: why the run's other flags rule the 3D network out ("" when they do not), e.g. --padding valid.

    Near-isotropic voxels (<= ANISOTROPY_3D_MAX) get the 3D network, nnU-Net's default configuration, which
    sees context along every axis; anisotropic ones get 2D slices, because the 3D U-Net here pools every
    axis alike (no anisotropic pooling yet) and would coarsen the thick-slice axis as fast as the fine
    in-plane ones. nnU-Net itself settles the choice by cross-validating both; this is its prior.
    """
    if anisotropy > ANISOTROPY_3D_MAX:
        return "2", (f"median spacing anisotropy {anisotropy:.3g} > {ANISOTROPY_3D_MAX:g}: the 3D U-Net pools "
                     "every axis alike (no anisotropic pooling), so single slices keep the in-plane detail")
    if no_3d:
        return "2", f"median spacing anisotropy {anisotropy:.3g} <= {ANISOTROPY_3D_MAX:g}, but the 3D U-Net is ruled out: {no_3d}"
    if shortest_side is not None and shortest_side < MIN_3D_SIDE:
        return "2", (f"median spacing anisotropy {anisotropy:.3g} <= {ANISOTROPY_3D_MAX:g}, but the median case's "
                     f"shortest side is {shortest_side} voxels < {MIN_3D_SIDE}: too thin for a useful 3D patch")
    return "3", (f"median spacing anisotropy {anisotropy:.3g} <= {ANISOTROPY_3D_MAX:g}: near-isotropic voxels, "
                 "a 3D U-Net sees context along every axis (nnU-Net's default; at equal time it scored at least "
                 "as well as 2D slices on the isotropic rehearsal set, benchmarks/volume_dims.py)")


def slice_mode(dims: str) -> SliceMode:
    """The registry entry of --dims, refusing unknown and unbuilt modes with one line."""
    mode = DIMS.get(str(dims))
    if mode is None:
        raise UNetError(f"--dims={dims!r}: expected one of {', '.join(DIMS)}")
    if not mode.built:
        raise UNetError(f"--dims={dims}: {mode.description}: not built yet; use --dims "
                        f"{' or '.join(d for d, m in DIMS.items() if m.built)}")
    return mode


def slice_input(volume: np.ndarray, k: int, context: int) -> np.ndarray:
    """Network input for slice k of `volume` (I, J, K, C): (I, J, (2 * context + 1) * C).

    Neighbours beyond the first or last slice repeat the edge slice (replicate padding along K), so the
    edge slices get inputs of the same channel count and a plausible content instead of zeros.
    """
    depth = volume.shape[2]
    if not 0 <= k < depth:
        raise UNetError(f"slice {k} outside a volume of {depth} slices")
    ks = np.clip(np.arange(k - context, k + context + 1), 0, depth - 1)
    return np.ascontiguousarray(np.concatenate([volume[:, :, j, :] for j in ks], axis=-1))


def volume_inputs(volume: np.ndarray, context: int) -> list[np.ndarray]:
    """slice_input for every k = 0..K-1 of `volume` (I, J, K, C)."""
    return [slice_input(volume, k, context) for k in range(volume.shape[2])]
