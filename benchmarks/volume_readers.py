"""Time nibabel (+ pydicom) against SimpleITK on a NIfTI volume and a DICOM series (docs/volumes.md).

    python benchmarks/volume_readers.py [--repeats 7] [--shape 100 256 256]

Writes a random int16 CT-like volume of --shape (slices, rows, columns) once as .nii.gz and once as a
DICOM series of one file per slice into a temporary folder, then loads each --repeats times with
each library and prints the median and range in ms. Loads alternate between libraries so that a
change of CPU clock hits both alike. Both libraries must be installed (only the chosen one is a
dependency of the package).
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Callable

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from tests.dicom_fixtures import write_series  # noqa: E402


def write_nifti(path: pathlib.Path, volume: np.ndarray) -> None:
    """volume (z, y, x) int16 -> NIfTI with (x, y, z) voxel order and 0.8 x 0.8 x 2.5 mm voxels."""
    import nibabel as nib
    nib.save(nib.Nifti1Image(volume.transpose(2, 1, 0), np.diag([0.8, 0.8, 2.5, 1.0])), str(path))


def write_dicom_series(folder: pathlib.Path, volume: np.ndarray) -> None:
    """One CT slice file per z with ImagePositionPatient along z; file names shuffled against z order."""
    order = np.random.default_rng(0).permutation(volume.shape[0])
    write_series(folder, list(volume), [np.array([0.0, 0.0, 2.5 * z]) for z in range(volume.shape[0])],
                 np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), (0.8, 0.8),
                 [f"IM{order[z]:04d}.dcm" for z in range(volume.shape[0])])


def load_nibabel(path: pathlib.Path) -> np.ndarray:
    import nibabel as nib
    return np.asanyarray(nib.load(str(path)).dataobj)


def load_sitk(path: pathlib.Path) -> np.ndarray:
    import SimpleITK as sitk
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def load_pydicom_series(folder: pathlib.Path) -> np.ndarray:
    """Read every file, sort by position along the slice normal, stack (what data/volumes/dicom.py does)."""
    import pydicom
    slices = [pydicom.dcmread(p) for p in folder.iterdir()]
    normal = np.cross(*np.reshape(np.asarray(slices[0].ImageOrientationPatient, float), (2, 3)))
    slices.sort(key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))))
    return np.stack([ds.pixel_array for ds in slices])


def load_sitk_series(folder: pathlib.Path) -> np.ndarray:
    import SimpleITK as sitk
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(reader.Execute())


def median_ms(loaders: dict[str, Callable[[], np.ndarray]], repeats: int) -> dict[str, tuple[float, float, float]]:
    """Alternate the loaders `repeats` times; {name: (median, min, max) ms}."""
    times: dict[str, list[float]] = {name: [] for name in loaders}
    for _ in range(repeats):
        for name, load in loaders.items():
            start = time.perf_counter()
            load()
            times[name].append(1e3 * (time.perf_counter() - start))
    return {name: (statistics.median(t), min(t), max(t)) for name, t in times.items()}


def main() -> None:
    try:
        import SimpleITK  # noqa: F401  (the loser of the comparison: not a dependency)
    except ImportError:
        raise SystemExit("this comparison needs SimpleITK: pip install SimpleITK==2.5.7") from None
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--shape", type=int, nargs=3, default=(100, 256, 256), metavar=("Z", "Y", "X"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    # CT-like: air, soft tissue and bone values with noise, so gzip sees realistic (not constant) data
    volume = np.clip(rng.normal(40, 300, size=args.shape), -1024, 3000).astype(np.int16)
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        nifti, series = root / "ct.nii.gz", root / "series"
        series.mkdir()
        write_nifti(nifti, volume)
        write_dicom_series(series, volume)
        assert np.array_equal(load_nibabel(nifti).transpose(2, 1, 0), volume)
        assert np.array_equal(load_sitk(nifti), volume)
        assert np.array_equal(load_pydicom_series(series), volume)
        assert np.array_equal(load_sitk_series(series), volume)
        print(f"volume {tuple(args.shape)} int16; .nii.gz {nifti.stat().st_size / 1e6:.1f} MB; "
              f"{args.repeats} alternating loads each")
        for what, loaders in (("nii.gz", {"nibabel": lambda: load_nibabel(nifti), "SimpleITK": lambda: load_sitk(nifti)}),
                              ("DICOM", {"pydicom": lambda: load_pydicom_series(series),
                                         "SimpleITK": lambda: load_sitk_series(series)})):
            for name, (med, lo, hi) in median_ms(loaders, args.repeats).items():
                print(f"{what:7s} {name:10s} median {med:7.1f} ms  (min {lo:.1f}, max {hi:.1f})")


if __name__ == "__main__":
    main()
