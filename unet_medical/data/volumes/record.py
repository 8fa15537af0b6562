"""The Volume record: voxels and where they are in the patient (conventions: data.volumes)."""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Volume:
    """One image or label volume and where its voxels are in the patient.

    Attributes:
        array: voxels, (I, J, K) or (I, J, K, C) for several channels in one file, file index order.
        affine: (4, 4) float64, voxel index (i, j, k, 1) -> RAS+ world mm.
        spacing: (3,) voxel centre distances along i, j, k in mm.
        path: the file or folder read.
        qform, sform: NIfTI only, the header's two transforms (4, 4), None when the code is 0.
        qform_code, sform_code: NIfTI header codes (0 = unset); for DICOM both 0.
        zooms: NIfTI only, the header's voxel sizes (pixdim 1-3): a file with both codes 0 is placed by
            them alone (the standard's method 1), and a prediction must keep them.
    """

    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    path: str = ""
    qform: np.ndarray | None = None
    sform: np.ndarray | None = None
    qform_code: int = 0
    sform_code: int = 0
    zooms: tuple[float, float, float] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape (I, J, K), without the channel axis."""
        return tuple(int(n) for n in self.array.shape[:3])  # type: ignore[return-value]


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel spacing in mm along i, j, k: the lengths of the affine's first three columns."""
    norms = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    return (float(norms[0]), float(norms[1]), float(norms[2]))
