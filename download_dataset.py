"""Get the ISBI 2012 EM segmentation data (or a synthetic stand-in) and verify it.

    python download_dataset.py --data_dir data/isbi2012           # download from public mirrors
    python download_dataset.py --verify data/isbi2012             # check checksums (offline)
    python download_dataset.py --synthetic --data_dir data/synthetic [--num_slices 30 --size 512 --seed 0]
    python download_dataset.py --synthetic --kind vessels --data_dir data/vessels [--num_images 20 --seed 0]
    python download_dataset.py --synthetic --kind nuclei --data_dir data/nuclei [--num_images 30 --seed 0]
    python download_dataset.py --synthetic --kind lesions --data_dir data/lesions [--num_images 40 --seed 0]
    python download_dataset.py --synthetic --kind ct --data_dir data/ct [--num_images 12 --seed 0]   # or --kind mr

The challenge host (brainiac2.mit.edu/isbi_challenge) is gone. The files are fetched from the public
mirrors in SOURCES, in order, and each file is accepted only if it matches a known checksum (see
CHECKSUMS). Downloads go to a temporary file in the destination folder that is renamed into place
only after it verified, so an interrupted or corrupt download never leaves a file with the final
name behind.

--synthetic writes a stand-in instead (utils.data.synthetic_kinds): --kind em (the default) an EM
stack pair in the ISBI layout; --kind vessels fundus photographs as images/NN.png + masks/NN.png
(+ fov/NN.png, the field-of-view masks); --kind nuclei nucleus images of mixed sizes and styles as
images/NN.png + masks/NN.png; --kind lesions dermoscopy-like images with lesions covering 20-90 % of
the image (the large-object case), in the same folders; --kind ct and --kind mr 3D volumes with two foreground classes (organ,
lesion), anisotropic voxels and oblique affines in the MSD / nnU-Net raw layout (imagesTr/CASE_0000.nii.gz,
labelsTr/CASE.nii.gz, imagesTs/, dataset.json; data.synthetic_volumes); --kind mr_small small 1 mm isotropic MR crops
with two adjacent labels (head, tail), and --kind mr_faint the same made hard (a structure nearly as bright as
its neighbours). They rehearse data shapes, they do not replace real data.

Data: Cardona et al. 2010 (serial-section TEM of the Drosophila first-instar larva ventral nerve
cord), published for the ISBI 2012 challenge by Arganda-Carreras et al., Front. Neuroanat. 2015.

Exit status: 0 on success, 1 when --verify finds a missing or mismatching file, 2 on an error.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import pathlib
import shutil
import socket
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from typing import Callable

import numpy as np

from unet_medical.data import synthetic, synthetic_kinds, synthetic_volumes
from unet_medical.base.errors import UNetError, run_cli
from unet_medical.base.fileio import atomic_write
from unet_medical.data import readers

ISBI_FILES = ("train-volume.tif", "train-labels.tif", "test-volume.tif")

_IMAGEJ_ZIP = "https://downloads.imagej.net/ISBI-2012-challenge.zip"
_GITHUB_RAW = "https://github.com/andandandand/images-for-colab-notebooks/blob/main/fruit-fly-neurons-{}?raw=true"


@dataclasses.dataclass(frozen=True)
class Source:
    """Where one file can be downloaded.

    Attributes:
        file: the ISBI file name it provides.
        mirror: short name for messages.
        url: the file itself, or a zip archive that holds it (then `member` is set).
        member: the file's name inside the archive (matched by base name, whatever its folder).
    """

    file: str
    mirror: str
    url: str
    member: str | None = None


# Tried in order for each file. ImageJ hosts the challenge's archive since the challenge server was
# decommissioned; the GitHub copy serves the three stacks one by one.
SOURCES: tuple[Source, ...] = tuple(
    source
    for name in ISBI_FILES
    for source in (Source(name, "imagej.net archive", _IMAGEJ_ZIP, member=name),
                   Source(name, "github andandandand/images-for-colab-notebooks", _GITHUB_RAW.format(name)))
)

# SHA-256 of the files in this project's shared ISBI copy (/work/shared/data/isbi2012/SHA256SUMS,
# re-checked with sha256sum). They were re-stacked into uncompressed TIFFs, so they differ from the
# official files byte-wise but not pixel-wise.
KNOWN_SHA256: dict[str, tuple[str, ...]] = {
    "train-volume.tif": ("a05df637d576b2387966b7323a34e90e2cdbf86dcaeee86c44d1fd2d616be489",),
    "train-labels.tif": ("9a9f1056ffd8bac61060b58dc84ad40295c02fc5ff15e68ddfc2f12d211c3dcf",),
    "test-volume.tif": ("046fbb869a953f1ffa63a9722849fe0aa693ad7a21aa9278a2bff2397d00b16f",),
}
# MD5 of the official challenge files as published next to the challenge URLs in public dataset
# code (a torchvision-style `ssTEM` dataset class); the challenge never published SHA-256 sums.
OFFICIAL_MD5: dict[str, tuple[str, ...]] = {
    "train-volume.tif": ("465461edbe0254630c4ec5577f1e7764",),
    "train-labels.tif": ("657fe6b728c6dd0152e295c6d800001d",),
    "test-volume.tif": ("9767660d7abe4e0ecbdd0061a16058ad",),
}
# SHA-256 of the decoded pixels (see pixel_sha256), computed from the shared copy, which was checked
# slice by slice against two independent public copies. Accepts any mirror that re-encoded the
# stacks (other compression or page layout) without changing a pixel.
PIXEL_SHA256: dict[str, tuple[str, ...]] = {
    "train-volume.tif": ("70a113f650c8ea2bfdfe46ad85346fb4600e6eb44c0a94cf65b04eb6cd3316f5",),
    "train-labels.tif": ("e4a8ab50ddfe7514662f3f6f39ce0381efe5dd056748e7bc72eae1bea81fc4d6",),
    "test-volume.tif": ("1b12a6aade30bf3dfcf1e0ffa9966120b574d23e9a9181b3f4e87e647a690c49",),
}


@dataclasses.dataclass(frozen=True)
class Accepted:
    """The checksums one file may match (any one of them suffices)."""

    sha256: tuple[str, ...] = ()
    md5: tuple[str, ...] = ()
    pixel_sha256: tuple[str, ...] = ()


CHECKSUMS: dict[str, Accepted] = {
    name: Accepted(KNOWN_SHA256[name], OFFICIAL_MD5[name], PIXEL_SHA256[name]) for name in ISBI_FILES
}

Fetch = Callable[[str, pathlib.Path], None]
Log = Callable[[str], None]


class _Unreachable(Exception):
    """The mirror could not be contacted at all (no network, DNS failure, refused, timed out)."""


class _MirrorFailed(Exception):
    """The mirror answered but did not deliver a valid file."""


def fetch_url(url: str, dest: pathlib.Path, timeout: float = 60.0) -> None:
    """Download `url` into the file `dest` (http, https or file URLs)."""
    request = urllib.request.Request(url, headers={"User-Agent": "unet-download-dataset/1.0"})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out, length=1 << 20)


def _fetch_or_classify(fetch: Fetch, url: str, dest: pathlib.Path) -> None:
    """Run `fetch`, turning network exceptions into _Unreachable / _MirrorFailed."""
    try:
        fetch(url, dest)
    except urllib.error.HTTPError as exc:  # before URLError: it is a subclass
        raise _MirrorFailed(f"HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise _Unreachable(str(exc.reason)) from exc
    except (socket.timeout, TimeoutError, ConnectionError) as exc:
        raise _Unreachable(f"{type(exc).__name__}: {exc}") from exc
    except OSError as exc:  # a broken connection mid-transfer, a full disk
        raise _MirrorFailed(f"{type(exc).__name__}: {exc}") from exc


def file_digest(path: pathlib.Path, algorithm: str) -> str:
    """Hex digest of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pixel_sha256(path: pathlib.Path) -> str:
    """SHA-256 of a stack's decoded pixels: dtype name and shape, then the C-order pixel bytes."""
    stack = readers.read_stack(path)
    digest = hashlib.sha256(f"{stack.dtype.name}{stack.shape}".encode())
    digest.update(np.ascontiguousarray(stack).tobytes())
    return digest.hexdigest()


def verify_file(path: pathlib.Path, accepted: Accepted) -> tuple[bool, str]:
    """Check a file against its accepted checksums. Returns (ok, what matched or what was found)."""
    sha256 = file_digest(path, "sha256")
    if sha256 in accepted.sha256:
        return True, "SHA-256 matches the known copy"
    if accepted.md5 and file_digest(path, "md5") in accepted.md5:
        return True, "MD5 matches the official file"
    if accepted.pixel_sha256:
        try:
            pixels = pixel_sha256(path)
        except UNetError as exc:
            return False, f"SHA-256 {sha256} is unknown and the file is not a readable stack ({exc})"
        if pixels in accepted.pixel_sha256:
            return True, "pixels match the official volume (file bytes differ)"
    return False, f"SHA-256 {sha256} matches no known checksum"


def verify_dir(data_dir: str | os.PathLike, checksums: dict[str, Accepted] = CHECKSUMS,
               log: Log = print) -> bool:
    """Verify every file of `checksums` in data_dir, logging one line per file. True if all pass."""
    root = pathlib.Path(data_dir)
    if not root.is_dir():
        raise UNetError(f"--verify {root}: directory does not exist")
    all_ok = True
    for name, accepted in checksums.items():
        path = root / name
        if not path.is_file():
            ok, detail = False, "missing"
        else:
            ok, detail = verify_file(path, accepted)
        log(f"{path}: {'OK' if ok else 'FAILED'} ({detail})")
        all_ok &= ok
    return all_ok


class _Archives:
    """Zip archives downloaded at most once per run, kept in a temporary folder next to the data."""

    def __init__(self, workdir: pathlib.Path, fetch: Fetch):
        self._workdir, self._fetch, self._paths = workdir, fetch, {}
        self._failures: dict[str, Exception] = {}

    def get(self, url: str) -> pathlib.Path:
        if url in self._failures:  # do not retry a mirror that already failed for a previous file
            raise self._failures[url]
        if url not in self._paths:
            path = self._workdir / f"archive{len(self._paths)}.zip"
            try:
                _fetch_or_classify(self._fetch, url, path)
            except (_Unreachable, _MirrorFailed) as exc:
                self._failures[url] = exc
                raise
            self._paths[url] = path
        return self._paths[url]


def _extract_member(archive: pathlib.Path, member: str, dest: pathlib.Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist()
                     if pathlib.PurePosixPath(n).name == member and not n.startswith("__MACOSX")]
            if not names:
                raise _MirrorFailed(f"the archive has no {member}")
            with zf.open(names[0]) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, length=1 << 20)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as exc:
        raise _MirrorFailed(f"damaged zip archive ({type(exc).__name__}: {exc})") from exc


def _download_one(source: Source, dest: pathlib.Path, accepted: Accepted, fetch: Fetch,
                  archives: _Archives) -> str:
    """Fetch one file from one mirror into dest, atomically; returns what its checksum matched."""
    outcome: list[str] = []

    def write(tmp: str) -> None:
        if source.member is None:
            _fetch_or_classify(fetch, source.url, pathlib.Path(tmp))
        else:
            _extract_member(archives.get(source.url), source.member, pathlib.Path(tmp))
        ok, detail = verify_file(pathlib.Path(tmp), accepted)
        if not ok:  # raising makes atomic_write delete the temporary file
            raise _MirrorFailed(f"checksum mismatch: {detail}; the partial file was deleted")
        outcome.append(detail)

    atomic_write(dest, write)
    return outcome[0]


def download_isbi(data_dir: str | os.PathLike, *, sources: tuple[Source, ...] = SOURCES,
                  checksums: dict[str, Accepted] = CHECKSUMS, fetch: Fetch = fetch_url,
                  log: Log = print) -> list[pathlib.Path]:
    """Download and verify every file named in `checksums` into data_dir.

    Files already present that verify are kept. For each missing file the mirrors in `sources` are
    tried in order; a download whose checksum does not match is deleted and the next mirror tried.

    Args:
        data_dir: destination folder (created if needed).
        sources: the mirror table (rows for files not in `checksums` are ignored).
        checksums: accepted checksums per file name.
        fetch: downloads a URL into a path; injectable for tests.
        log: receives one progress line at a time.
    Returns:
        The paths of the verified files.
    Raises:
        UNetError: no mirror is reachable (the message suggests --synthetic), or every mirror failed
            for some file (the message names the file, each mirror and why).
    """
    root = pathlib.Path(data_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UNetError(f"--data_dir {root}: cannot create it ({exc.strerror or exc})") from exc
    done = []
    with tempfile.TemporaryDirectory(prefix=".download-", dir=root) as workdir:
        archives = _Archives(pathlib.Path(workdir), fetch)
        for name, accepted in checksums.items():
            dest = root / name
            if dest.is_file():
                ok, detail = verify_file(dest, accepted)
                if ok:
                    log(f"{dest}: already present ({detail})")
                    done.append(dest)
                    continue
                log(f"{dest}: present but {detail}; downloading it again")
            done.append(_download_from_mirrors(name, dest, accepted,
                                               [s for s in sources if s.file == name], fetch, archives, log))
    return done


def _download_from_mirrors(name: str, dest: pathlib.Path, accepted: Accepted, sources: list[Source],
                           fetch: Fetch, archives: _Archives, log: Log) -> pathlib.Path:
    if not sources:
        raise UNetError(f"no mirror is known for {name}")
    failures: list[tuple[Source, Exception]] = []
    for source in sources:
        log(f"{name}: downloading from {source.mirror} ({source.url})")
        try:
            detail = _download_one(source, dest, accepted, fetch, archives)
        except (_Unreachable, _MirrorFailed) as exc:
            log(f"{name}: {source.mirror} failed: {exc}")
            failures.append((source, exc))
            continue
        log(f"{dest}: OK ({detail})")
        return dest
    listed = "; ".join(f"{s.mirror} ({s.url}): {exc}" for s, exc in failures)
    if all(isinstance(exc, _Unreachable) for _, exc in failures):
        raise UNetError(f"cannot reach any mirror of the ISBI 2012 data (no network?): {listed}. Without a "
                        "network, `python download_dataset.py --synthetic --data_dir DIR` writes a synthetic "
                        "EM data set in the same layout")
    raise UNetError(f"could not get a verified {name}: {listed}")


def write_synthetic(data_dir: str | os.PathLike, num_slices: int, size: int, seed: int,
                    log: Log = print) -> list[pathlib.Path]:
    """Write the synthetic ISBI layout (utils.data.synthetic) and log the files written."""
    written = list(synthetic.write_isbi_layout(data_dir, num_slices=num_slices, size=size, seed=seed).values())
    for path in written:
        log(f"{path}: written (synthetic, {num_slices}x{size}x{size}, seed {seed})")
    return written


def write_synthetic_folders(data_dir: str | os.PathLike, kind: str, num_images: int | None, seed: int,
                            log: Log = print) -> list[pathlib.Path]:
    """Write a folder-layout synthetic kind (utils.data.synthetic_kinds) and log one line per folder."""
    written = synthetic_kinds.write_folder_kind(data_dir, kind, num_images, seed)
    _log_per_folder(written, f"PNG files written (synthetic {kind}, seed {seed})", log)
    return written


def write_synthetic_volumes(data_dir: str | os.PathLike, kind: str, num_training: int | None, seed: int,
                            log: Log = print) -> list[pathlib.Path]:
    """Write a volume kind (data.synthetic_volumes) and log one line per folder."""
    written = synthetic_volumes.write_volume_kind(data_dir, kind, num_training, seed)
    _log_per_folder(written, f"file(s) written (synthetic {kind}, seed {seed})", log)
    return written


def _log_per_folder(written: list[pathlib.Path], what: str, log: Log) -> None:
    """One line per folder: 'FOLDER: N <what>'."""
    by_folder: dict[pathlib.Path, int] = {}
    for path in written:
        by_folder[path.parent] = by_folder.get(path.parent, 0) + 1
    for folder, count in by_folder.items():
        log(f"{folder}: {count} {what}")


def _check_synthetic_flags(args: argparse.Namespace) -> None:
    """One-line errors for flags that do not fit the chosen --kind (or a download)."""
    if not args.synthetic:
        for flag in ("kind", "num_images"):
            if getattr(args, flag) is not None:
                raise UNetError(f"--{flag} needs --synthetic (a download always gets the ISBI 2012 EM data)")
        return
    kind = args.kind or "em"
    if kind not in synthetic_kinds.KINDS:
        raise UNetError(f"--kind {kind}: unknown kind; expected one of {', '.join(synthetic_kinds.KINDS)}")
    if kind == "em" and args.num_images is not None:
        others = [k for k in synthetic_kinds.KINDS if k != "em"]
        raise UNetError(f"--num_images is for --kind {', '.join(others[:-1])} or {others[-1]}; "
                        "--kind em uses --num_slices and --size")
    if kind != "em":
        for flag in ("num_slices", "size"):
            if getattr(args, flag) is not None:
                raise UNetError(f"--{flag} is for --kind em; --kind {kind} has a fixed image size per style, "
                                "use --num_images for the count")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", help="destination folder for the three TIFF stacks")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--verify", metavar="DIR", help="only check the files in DIR against known checksums")
    mode.add_argument("--synthetic", action="store_true",
                      help="write a synthetic data set instead of downloading (see --kind)")
    parser.add_argument("--kind", help=f"synthetic: {' | '.join(synthetic_kinds.KINDS)} (default em: EM stacks "
                        "in the ISBI layout; vessels, nuclei, lesions: images/ + masks/ PNG folders; ct, mr, mr_small, "
                        "mr_faint: NIfTI volumes "
                        "in the MSD layout)")
    parser.add_argument("--num_slices", type=int, help="synthetic em: slices per stack (default 30)")
    parser.add_argument("--size", type=int, help="synthetic em: slice height and width in px (default 512)")
    parser.add_argument("--num_images", type=int, help="synthetic vessels/nuclei/lesions: number of images; volumes: training "
                        "cases (default " + ", ".join(f"{n} for {k}" for k, n in synthetic_kinds.DEFAULT_NUM_IMAGES.items()) + ")")
    parser.add_argument("--seed", type=int, default=0, help="synthetic: random seed (the test volume uses "
                        f"seed + {synthetic.TEST_SEED_OFFSET})")
    parser.add_argument("--timeout", type=float, default=60.0, help="download: seconds without data before "
                        "a mirror is abandoned")
    return parser


def main(argv: list[str] | None = None, *, fetch: Fetch | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verify is None and args.data_dir is None:
        parser.error("--data_dir is required (or use --verify DIR)")

    def run() -> int:
        if args.verify is not None:
            return 0 if verify_dir(args.verify) else 1
        _check_synthetic_flags(args)
        if args.synthetic and (args.kind or "em") == "em":
            write_synthetic(args.data_dir, 30 if args.num_slices is None else args.num_slices,
                            512 if args.size is None else args.size, args.seed)
        elif args.synthetic and args.kind in synthetic_volumes.VOLUME_KINDS:
            write_synthetic_volumes(args.data_dir, args.kind, args.num_images, args.seed)
        elif args.synthetic:
            write_synthetic_folders(args.data_dir, args.kind, args.num_images, args.seed)
        else:
            timeout = args.timeout
            download_isbi(args.data_dir, fetch=fetch or (lambda url, dest: fetch_url(url, dest, timeout)))
        return 0

    return run_cli(run)

if __name__ == "__main__":
    sys.exit(main())
