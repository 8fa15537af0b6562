"""``python -m unet_medical.evaluation LABELS.tif PROBABILITIES.tif``: print the official ISBI 2012 scores as JSON.
``python -m unet_medical.evaluation LABELS_DIR PREDICTIONS_DIR [--nsd_tolerance MM]``: score predicted label
volumes per case (Dice, HD95 mm, NSD; evaluation.volume_folders) and print them as JSON.

LABELS: ISBI train-labels style ground truth (255 = cell interior, 0 = membrane), 2-D or (N, H, W).
PROBABILITIES: same shape, 1 = cell interior; float in [0, 1] or uint8 0..255 (divided by 255).

Prints one JSON object: ``v_rand_thinned``, ``v_info_thinned`` (Fiji's maximal scores after border
thinning over the thresholds 0.0, 0.1, ..., 0.9999999999999999), the first threshold reaching each,
``slices`` and the per-threshold values (NaN as null). Bad input prints one line
``score: <file>: <cause>`` on stderr and exits with status 2.
"""
from __future__ import annotations

import json
import pathlib
import sys
from typing import List, Optional

import unet_medical  # noqa: F401  (package environment first, as every entry point does)

import tifffile

from unet_medical.base.errors import UNetError
from unet_medical.evaluation.isbi import as_stack, labels_as_float32, probabilities_as_float32, score_stack
from unet_medical.evaluation.volume_folders import score_folders

USAGE = ("usage: python -m unet_medical.evaluation LABELS.tif PROBABILITIES.tif | LABELS_DIR PREDICTIONS_DIR "
         "[--nsd_tolerance MM]")


def _read_tiff(path: str):
    """The TIFF's pixels as a NumPy array; UNetError "<path>: <cause>" if it cannot be read."""
    p = pathlib.Path(path)
    if not p.exists():
        raise UNetError(f"{path}: no such file")
    if not p.is_file():
        raise UNetError(f"{path}: not a file")
    try:
        return tifffile.imread(str(p))
    except Exception as exc:  # tifffile raises several types for non-TIFF or truncated files
        cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UNetError(f"{path}: not a readable TIFF ({cause})") from None


def main(argv: Optional[List[str]] = None) -> int:
    """Score PROBABILITIES against LABELS; return the exit status (0, or 2 for bad input)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__.strip())
        return 0
    if args and pathlib.Path(args[0]).is_dir():
        return _score_folders(args)
    if len(args) != 2:
        print(f"score: expected 2 arguments, got {len(args)} ({USAGE})", file=sys.stderr)
        return 2
    labels_path, probs_path = args
    try:
        labels = labels_as_float32(as_stack(_read_tiff(labels_path), labels_path), labels_path)
        probs = probabilities_as_float32(_read_tiff(probs_path), probs_path)
        if probs.shape != labels.shape:
            raise UNetError(f"{probs_path}: shape {probs.shape} does not match {labels_path} shape {labels.shape}")
        scores = score_stack(labels, probs)
    except UNetError as exc:
        print(f"score: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(scores.as_dict()))
    return 0


def _score_folders(args: List[str]) -> int:
    """LABELS_DIR PREDICTIONS_DIR [--nsd_tolerance MM]: volume scores as JSON, per-case scores included."""
    tolerance = 2.0
    args = [part for arg in args for part in (arg.split("=", 1) if arg.startswith("--nsd_tolerance=") else [arg])]
    if len(args) == 4 and args[2] == "--nsd_tolerance":
        try:
            tolerance = float(args[3])
        except ValueError:
            print(f"score: --nsd_tolerance={args[3]}: expected a distance in mm", file=sys.stderr)
            return 2
        args = args[:2]
    if len(args) != 2:
        print(f"score: expected LABELS_DIR PREDICTIONS_DIR [--nsd_tolerance MM], got {args} ({USAGE})",
              file=sys.stderr)
        return 2
    try:
        scores = score_folders(args[0], args[1], tolerance)
    except UNetError as exc:
        print(f"score: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(scores, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
