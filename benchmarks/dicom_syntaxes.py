"""Load time of one DICOM series stored in each transfer syntax the reader decodes (docs/volumes.md).

    python benchmarks/dicom_syntaxes.py [--repeats 5] [--shape 100 256 256]

Writes a random int16 CT-like series of --shape (slices, rows, columns), one file per slice, uncompressed
and in each lossless compressed syntax of tests/dicom_fixtures.py (encoded by imagecodecs, or pydicom for
RLE), checks that every copy reads back to the same voxels, then times `data.volumes.read_volume` on each,
alternating, and prints the median and range in ms, the size on disk and the CPU.
"""
from __future__ import annotations

import argparse
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from tests.dicom_fixtures import COMPRESSED_SYNTAXES, compress_series, write_series  # noqa: E402
from unet_medical.base.cpu import describe, read_cpu_info  # noqa: E402
from unet_medical.data.volumes import read_volume  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shape", type=int, nargs=3, default=(100, 256, 256), metavar=("Z", "Y", "X"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    # CT-like stored values (HU + 1024): smooth anatomy-scale structure plus noise, as scanners store them
    z, y, x = args.shape
    base = np.add.outer(np.add.outer(np.linspace(0, 600, z), np.linspace(0, 400, y)), np.linspace(0, 300, x))
    volume = np.clip(base + rng.normal(0, 30, size=args.shape) + 500, 0, 4000).astype(np.int16)
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        plain = root / "uncompressed"
        write_series(plain, list(volume), [np.array([0.0, 0.0, 2.5 * k]) for k in range(z)],
                     np.array([[1.0, 0, 0], [0, 1.0, 0]]), (0.8, 0.8), [f"IM{k:04d}.dcm" for k in range(z)])
        folders = {"uncompressed": plain}
        for name in COMPRESSED_SYNTAXES:
            folders[name] = root / name.replace(" ", "_")
            shutil.copytree(plain, folders[name])
            compress_series(folders[name], name)
        reference = read_volume(plain).array
        for name, folder in folders.items():
            assert np.array_equal(read_volume(folder).array, reference), name
        times: dict[str, list[float]] = {name: [] for name in folders}
        for _ in range(args.repeats):
            for name, folder in folders.items():
                start = time.perf_counter()
                read_volume(folder)
                times[name].append(1e3 * (time.perf_counter() - start))
        print(f"CPU: {describe(read_cpu_info())}")
        print(f"series {tuple(args.shape)} int16, {args.repeats} alternating loads each (data.volumes.read_volume)")
        for name, folder in folders.items():
            size = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
            t = times[name]
            print(f"{name:20s} {size:6.1f} MB  median {statistics.median(t):7.1f} ms  (min {min(t):.1f}, max {max(t):.1f})")


if __name__ == "__main__":
    main()
