"""download_dataset.py: checksum verification, mirror fallback, offline behaviour, --synthetic.

The machine has no internet: downloads are exercised with file:// URLs, fake fetchers and a
monkeypatched urllib.
"""
from __future__ import annotations

import hashlib
import pathlib
import socket
import urllib.error
import urllib.request
import zipfile

import numpy as np
import pytest
import tifffile

import download_dataset as dd
from unet_medical.base.errors import UNetError
from unet_medical.data import layouts


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _stack_file(folder: pathlib.Path, name: str, seed: int, **kwargs) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    stack = np.random.default_rng(seed).integers(0, 256, (2, 16, 16), dtype=np.uint8)
    tifffile.imwrite(path, stack, photometric="minisblack", **kwargs)
    return path


def _leftovers(folder: pathlib.Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_tables_cover_every_file():
    assert set(dd.CHECKSUMS) == set(dd.ISBI_FILES)
    for name in dd.ISBI_FILES:
        assert len([s for s in dd.SOURCES if s.file == name]) >= 2
        accepted = dd.CHECKSUMS[name]
        assert all(len(h) == 64 for h in accepted.sha256 + accepted.pixel_sha256)
        assert all(len(h) == 32 for h in accepted.md5)


def test_verify_shared_isbi_copy(isbi_data_dir, capsys):
    assert dd.main(["--verify", str(isbi_data_dir)]) == 0
    out = capsys.readouterr().out
    assert out.count(": OK (") == 3


def test_pixel_checksums_match_the_shared_copy(isbi_data_dir):
    for name in dd.ISBI_FILES:
        assert dd.pixel_sha256(isbi_data_dir / name) in dd.PIXEL_SHA256[name]


def test_verify_reports_missing_and_mismatching_files(tmp_path, capsys):
    _stack_file(tmp_path, "train-volume.tif", seed=0)
    assert dd.main(["--verify", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "train-volume.tif: FAILED (SHA-256" in out and "train-labels.tif: FAILED (missing)" in out


def test_reencoded_file_is_accepted_by_its_pixels(tmp_path):
    plain = _stack_file(tmp_path / "a", "x.tif", seed=1)
    packed = _stack_file(tmp_path / "b", "x.tif", seed=1, compression="zlib")
    assert _sha256(plain) != _sha256(packed)
    accepted = dd.Accepted(sha256=(_sha256(plain),), pixel_sha256=(dd.pixel_sha256(plain),))
    assert dd.verify_file(plain, accepted) == (True, "SHA-256 matches the known copy")
    ok, detail = dd.verify_file(packed, accepted)
    assert ok and "pixels match" in detail
    assert dd.verify_file(_stack_file(tmp_path / "c", "x.tif", seed=2), accepted)[0] is False


def test_offline_gives_one_clear_message(tmp_path, monkeypatch, capsys):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    assert dd.main(["--data_dir", str(tmp_path / "isbi")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach any mirror") and "--synthetic" in err
    assert "Traceback" not in err
    assert _leftovers(tmp_path / "isbi") == []


def test_checksum_mismatch_deletes_the_file_and_names_file_and_mirror(tmp_path):
    served = _stack_file(tmp_path / "server", "wrong.tif", seed=3)
    sources = (dd.Source("train-volume.tif", "local-mirror", served.as_uri()),)
    checksums = {"train-volume.tif": dd.Accepted(sha256=("0" * 64,))}
    dest = tmp_path / "data"
    with pytest.raises(UNetError, match=r"train-volume\.tif: local-mirror .*checksum mismatch"):
        dd.download_isbi(dest, sources=sources, checksums=checksums, log=lambda line: None)
    assert _leftovers(dest) == []


def test_falls_back_to_the_next_mirror_and_skips_verified_files(tmp_path):
    good = _stack_file(tmp_path / "server", "good.tif", seed=4)
    bad = _stack_file(tmp_path / "server", "bad.tif", seed=5)
    sources = (dd.Source("train-volume.tif", "bad-mirror", bad.as_uri()),
               dd.Source("train-volume.tif", "good-mirror", good.as_uri()))
    checksums = {"train-volume.tif": dd.Accepted(sha256=(_sha256(good),))}
    lines: list[str] = []
    dest = tmp_path / "data"
    assert dd.download_isbi(dest, sources=sources, checksums=checksums, log=lines.append) == [
        dest / "train-volume.tif"]
    assert (dest / "train-volume.tif").read_bytes() == good.read_bytes()
    assert any("bad-mirror failed: checksum mismatch" in line for line in lines)
    assert _leftovers(dest) == ["train-volume.tif"]

    def must_not_fetch(url, path):
        raise AssertionError("a verified file was downloaded again")

    dd.download_isbi(dest, sources=sources, checksums=checksums, fetch=must_not_fetch, log=lines.append)
    assert "already present" in lines[-1]


def test_zip_archive_mirror_is_fetched_once(tmp_path):
    members = {name: _stack_file(tmp_path / "src", name, seed=i) for i, name in enumerate(dd.ISBI_FILES)}
    archive = tmp_path / "ISBI-2012-challenge.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, path in members.items():
            zf.write(path, f"ISBI-2012-challenge/{name}")
    sources = tuple(dd.Source(name, "zip-mirror", "https://example.invalid/isbi.zip", member=name)
                    for name in dd.ISBI_FILES)
    checksums = {name: dd.Accepted(sha256=(_sha256(path),)) for name, path in members.items()}
    fetched: list[str] = []

    def fake_fetch(url: str, dest: pathlib.Path) -> None:
        fetched.append(url)
        dest.write_bytes(archive.read_bytes())

    dest = tmp_path / "data"
    dd.download_isbi(dest, sources=sources, checksums=checksums, fetch=fake_fetch, log=lambda line: None)
    assert fetched == ["https://example.invalid/isbi.zip"]
    for name, path in members.items():
        assert (dest / name).read_bytes() == path.read_bytes()
    assert _leftovers(dest) == sorted(dd.ISBI_FILES)  # the archive went with the temporary folder


def test_http_error_is_a_mirror_failure_not_offline(tmp_path):
    def not_found(url: str, dest: pathlib.Path) -> None:
        raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)

    sources = (dd.Source("train-volume.tif", "gone-mirror", "https://example.invalid/t.tif"),)
    with pytest.raises(UNetError, match=r"could not get a verified train-volume\.tif: gone-mirror .*HTTP 404"):
        dd.download_isbi(tmp_path, sources=sources, checksums={"train-volume.tif": dd.Accepted()},
                         fetch=not_found, log=lambda line: None)


def test_synthetic_flag_writes_a_loadable_layout(tmp_path, capsys):
    out = tmp_path / "syn"
    argv = ["--synthetic", "--data_dir", str(out), "--num_slices", "2", "--size", "32", "--seed", "7"]
    assert dd.main(argv) == 0
    assert capsys.readouterr().out.count("written (synthetic") == 3
    data = layouts.load_training_data(out)
    assert len(data) == 2 and data.images[0].shape == (32, 32, 1)


def test_bad_synthetic_arguments_are_reported_without_traceback(tmp_path, capsys):
    assert dd.main(["--synthetic", "--data_dir", str(tmp_path), "--size", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: size=4") and "Traceback" not in err


def test_synthetic_never_overwrites_real_data_but_rewrites_its_own(tmp_path, capsys):
    """A real train-volume.tif (any TIFF --synthetic did not write) is kept byte for byte, with one line;
    a synthetic layout can be written again over itself."""
    import numpy as np
    import tifffile

    real = tmp_path / "train-volume.tif"
    tifffile.imwrite(real, np.full((2, 16, 16), 7, np.uint8))
    before = real.read_bytes()
    assert dd.main(["--synthetic", "--data_dir", str(tmp_path), "--size", "32"]) == 2
    err = capsys.readouterr().err
    assert "train-volume.tif exists and was not written by --synthetic" in err and "Traceback" not in err
    assert real.read_bytes() == before and not (tmp_path / "train-labels.tif").exists()
    own = tmp_path / "own"
    assert dd.main(["--synthetic", "--data_dir", str(own), "--size", "32", "--num_slices", "3"]) == 0
    assert dd.main(["--synthetic", "--data_dir", str(own), "--size", "32", "--num_slices", "3"]) == 0
