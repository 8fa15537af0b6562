"""Reliability: bit-identical --deterministic runs, and hostile files and arrays that may only ever
produce the project's own error type (property-based with hypothesis)."""
import pytest
import io
import pathlib
import subprocess
import sys

import numpy as np
import tifffile
from hypothesis import HealthCheck, example, given, settings, strategies as st
from PIL import Image

from unet_medical.data.readers import as_image, as_mask, read_image_file, read_stack, to_class_ids
from unet_medical.data.layouts import load_training_data
from unet_medical.base.errors import UNetError

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_deterministic_runs_give_identical_checkpoints(tmp_path, isbi_data_dir):
    args = ["--exec_mode", "train", "--data_dir", str(isbi_data_dir), "--max_steps", "6",
            "--checkpoint_every", "3", "--padding", "same", "--base_filters", "4", "--depth", "2",
            "--batch_norm", "--dropout", "0.3", "--crop_size", "64", "--batch_size", "2", "--augment",
            "--deterministic", "--seed", "11", "--no-saved_model"]  # the checkpoints are compared
    for name in ("a", "b"):
        proc = subprocess.run([sys.executable, str(REPO / "main.py"), *args, "--model_dir", str(tmp_path / name)],
                              cwd=REPO, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(tmp_path / "a" / "checkpoints" / "last.npz") as a, \
            np.load(tmp_path / "b" / "checkpoints" / "last.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _tiff_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, array)
    return buf.getvalue()


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@st.composite
def damaged_files(draw):
    """A valid TIFF or PNG, then truncated, bit-flipped, or replaced by junk."""
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    array = np.arange(h * w, dtype=np.uint8).reshape(h, w)
    kind = draw(st.sampled_from(["tif", "png"]))
    data = bytearray(_tiff_bytes(array) if kind == "tif" else _png_bytes(array))
    damage = draw(st.sampled_from(["truncate", "flip", "junk", "empty"]))
    if damage == "truncate":
        data = data[:draw(st.integers(0, max(0, len(data) - 1)))]
    elif damage == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
    elif damage == "junk":
        data = bytearray(draw(st.binary(min_size=1, max_size=200)))
    else:
        data = bytearray()
    return kind, bytes(data)


# Found by this test: a strip offset past the end makes tifffile log a failed decode and return no pixels.
EMPTY_STRIP_TIFF = bytes.fromhex(
    "49492a00080000000e0000010400010000000100000001010400010000000100000002010300010000000801000003010300"
    "01000000010000000601030001000000010000000e01020012000000b6000000110104000100000000010000150103000100"
    "0000010000001601040001000000010000001701040001000000010000001a01050001000000d80000001b01050001000000"
    "e0000000280103000100000001000000310102000c000000e8000000000000007b227368617065223a205b312c20315d7d00"
    "00000000000000000000000000000000010000000100000001000000010000007469666666696c652e707900000000000000"
    "00000000000000")


# Found by this test (it ran for minutes): one flipped bit in ImageLength declares 285 million rows of 1-bit
# pixels, 71 million strips, in a 288-byte uncompressed file.
HUGE_DECLARED_TIFF = bytes.fromhex(
    "49492a00080000000e0000010400010000000800000001010400010000000400001102010300010000020800000003010300"
    "01000000010000000601030001000000010000000e01020012000000b4000000110104000100000000010000150103000100"
    "0000010000001601040001000000040000001701040001000000200000001a00050001000000d80000401a01050001000000"
    "e0000000280103000100000001000000310102000c000000e8000000000000007b227368617065223a205b342c20385d7d00"
    "00000000000000000000000000000000010000000100020001000000010000007469666666696c652e707900000000000000"
    "000000000000000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=damaged_files())
@example(case=("tif", EMPTY_STRIP_TIFF))
@example(case=("tif", HUGE_DECLARED_TIFF))
def test_damaged_files_raise_only_unet_error(tmp_path, case):
    kind, data = case
    path = tmp_path / f"image.{kind}"
    path.write_bytes(data)
    for reader in (read_image_file, read_stack):
        try:
            out = reader(path)
        except UNetError as exc:
            assert path.name in str(exc)
        else:  # a flip may leave a decodable file: then it must be a real array
            assert isinstance(out, np.ndarray) and out.size > 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=damaged_files())
def test_damaged_training_folder_raises_only_unet_error(tmp_path, case):
    kind, data = case
    folder = tmp_path / "data"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    (folder / "images" / f"a.{kind}").write_bytes(data)
    (folder / "masks" / "a.png").write_bytes(_png_bytes(np.zeros((4, 4), np.uint8)))
    try:
        load_training_data(folder)
    except UNetError:
        pass


dtypes = st.sampled_from([np.uint8, np.uint16, np.int8, np.int32, np.int64, np.float32, np.float64,
                          np.bool_, np.complex64])


@settings(max_examples=200, deadline=None)
@given(shape=st.lists(st.integers(0, 5), min_size=0, max_size=4), dtype=dtypes,
       fill=st.sampled_from([0, 1, 255, -1, 70000, np.nan, np.inf, 0.5]))
def test_arbitrary_arrays_raise_only_unet_error(shape, dtype, fill):
    with np.errstate(all="ignore"):
        try:
            array = np.full(shape, fill).astype(dtype)
        except (ValueError, OverflowError, TypeError):
            return
    for check in (lambda a: as_image(a, "x.tif"), lambda a: as_mask(a, "x.png"),
                  lambda a: to_class_ids(a, None, "x.png"), lambda a: to_class_ids(a, 3, "x.png")):
        try:
            check(array)
        except UNetError as exc:
            assert "x." in str(exc)
