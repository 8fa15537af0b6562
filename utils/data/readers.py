"""Read one image or mask file (TIFF, PNG, GIF, BMP, JPEG) into a validated array.

Every user-fixable problem (missing or corrupt file, unsupported dtype or dimensionality, bad label
values) raises UNetError naming the file and what was expected; a decoder's own exception is
chained, never shown alone. Array conventions are those of utils.data.layouts.
"""
from __future__ import annotations

import contextlib
import logging
import os
import pathlib
from typing import Iterator

import numpy as np
import tifffile
from PIL import Image, ImageSequence

from utils.errors import UNetError
from utils.data.normalize import _MAX_VALUE


TIFF_SUFFIXES = (".tif", ".tiff")



MASK_SUFFIXES = TIFF_SUFFIXES + (".png", ".gif", ".bmp")



# JPEG is lossy: its ringing turns class ids into neighbouring values, so masks may not be JPEG.
IMAGE_SUFFIXES = MASK_SUFFIXES + (".jpg", ".jpeg")



_MAX_SHOWN = 10  # names or values listed in one error message



class DataWarning(UserWarning):
    """Suspicious but usable data (for example masks that hold a single class)."""



# --------------------------------------------------------------------------- reading files
@contextlib.contextmanager
def _tifffile_errors() -> Iterator[list[str]]:
    """Collect the errors tifffile logs instead of raising (damaged page chains, bad offsets)."""
    messages: list[str] = []

    class Collector(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collector(level=logging.ERROR)
    logger = logging.getLogger("tifffile")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)



def _require_file(path: pathlib.Path) -> None:
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise UNetError(f"{path} {what}")



def _read_tiff(path: pathlib.Path) -> np.ndarray | None:
    """All pages of a TIFF as (N, H, W) or (N, H, W, S); None for palette TIFFs (Pillow decodes those)."""
    with _tifffile_errors() as problems:
        try:
            with tifffile.TiffFile(path) as tif:
                if not tif.series:
                    raise UNetError(f"{path}: the TIFF holds no image")
                if len(tif.series) > 1:
                    shapes = ", ".join(str(s.shape) for s in tif.series[:_MAX_SHOWN])
                    raise UNetError(f"{path}: the TIFF holds {len(tif.series)} image series of different "
                                    f"shapes or types ({shapes}); expected one stack of equally sized images")
                if tif.pages.first.photometric == tifffile.PHOTOMETRIC.PALETTE:
                    return None
                series = tif.series[0]
                array, axes = series.asarray(), series.axes
        except UNetError:
            raise
        # Decoders raise a zoo of types (TiffFileError, ValueError, zlib.error, struct.error,
        # codec errors); whichever it is, the file cannot be used and the user must hear which one.
        except Exception as exc:
            raise UNetError(f"{path}: unreadable or corrupt TIFF ({type(exc).__name__}: {exc})") from exc
    if problems:
        raise UNetError(f"{path}: damaged or truncated TIFF ({problems[0]})")
    return _tiff_to_stack(array, axes, path)



def _tiff_to_stack(array: np.ndarray, axes: str, path: pathlib.Path) -> np.ndarray:
    """Reorder a tifffile series (axes like 'QYX', 'YXS', 'ZCYX') to (N, H, W) or (N, H, W, S)."""
    if "S" not in axes and axes.endswith("YXC"):  # some writers call interleaved samples C
        axes = axes[:-1] + "S"
    if "S" in axes:  # samples per pixel (RGB) go last, whether stored contiguous or planar
        array = np.moveaxis(array, axes.index("S"), -1)
        axes = axes.replace("S", "") + "S"
    core = "YXS" if axes.endswith("S") else "YX"
    if not axes.endswith(core):
        raise UNetError(f"{path}: unsupported TIFF layout with axes {axes!r} and shape {array.shape}; "
                        "expected pages of (height, width[, samples])")
    # Every axis before Y (pages, z, time, ImageJ channels) is flattened into the slice axis.
    return array.reshape((-1,) + array.shape[len(axes) - len(core):])



def _is_gray_palette(palette: np.ndarray, used: np.ndarray) -> bool:
    rows = palette[used]
    return bool(np.all(rows[:, 0] == rows[:, 1]) and np.all(rows[:, 1] == rows[:, 2]))



def _pil_frame_to_array(frame: Image.Image, palette_as_index: bool) -> np.ndarray:
    """One Pillow frame as (H, W) or (H, W, C), palettes decoded (or kept as indices)."""
    if frame.mode == "P":
        index = np.asarray(frame)
        palette = np.asarray(frame.getpalette() or [], np.uint8).reshape(-1, 3)
        used = np.flatnonzero(np.bincount(index.ravel(), minlength=256))
        if len(palette) == 0 or used.max() >= len(palette):
            return np.asarray(frame.convert("RGB"))
        if _is_gray_palette(palette, used):
            return palette[index, 0]
        return index if palette_as_index else palette[index]
    if frame.mode in ("PA", "CMYK", "YCbCr", "LAB", "HSV"):
        return np.asarray(frame.convert("RGBA" if frame.mode == "PA" else "RGB"))
    return np.asarray(frame)



def _read_with_pillow(path: pathlib.Path, palette_as_index: bool) -> np.ndarray:
    """All frames of an image file as (N, H, W) or (N, H, W, C)."""
    try:
        with Image.open(path) as image:
            frames = [_pil_frame_to_array(frame, palette_as_index) for frame in ImageSequence.Iterator(image)]
    # Pillow raises OSError (truncated, unidentified), SyntaxError, ValueError, EOFError or
    # DecompressionBombError depending on the format and the damage.
    except Exception as exc:
        raise UNetError(f"{path}: unreadable or corrupt image ({type(exc).__name__}: {exc})") from exc
    shapes = {(f.shape, f.dtype) for f in frames}
    if len(shapes) > 1:
        raise UNetError(f"{path}: frames differ in shape or type ({sorted(map(str, shapes))})")
    return np.stack(frames)



def read_stack(path: str | os.PathLike, *, palette_as_index: bool = False) -> np.ndarray:
    """Decode every page/frame of an image file.

    TIFFs are read with tifffile (about 10x faster than Pillow on a 30x512x512 stack), everything else
    with Pillow. Axes before height and width (pages, z, time) are flattened into N.

    Args:
        path: image file.
        palette_as_index: keep the indices of a colour palette instead of decoding them (masks).
    Returns:
        (N, H, W) or (N, H, W, C) in the file's dtype.
    """
    path = pathlib.Path(path)
    _require_file(path)
    stack = _read_tiff(path) if path.suffix.lower() in TIFF_SUFFIXES else None
    if stack is None:
        stack = _read_with_pillow(path, palette_as_index)
    if stack.size == 0:
        raise UNetError(f"{path}: the file holds no pixels (shape {stack.shape})")
    return stack



def read_image_file(path: str | os.PathLike, *, palette_as_index: bool = False) -> np.ndarray:
    """Decode a single image: (H, W) or (H, W, C) in the file's dtype.

    A multi-page file is an error here (it is a stack: use read_stack or a stack flag).
    """
    stack = read_stack(path, palette_as_index=palette_as_index)
    if len(stack) != 1:
        raise UNetError(f"{path}: holds {len(stack)} images (a stack); expected a single image")
    return stack[0]



# --------------------------------------------------------------------------- validating arrays
def _value_range(array: np.ndarray) -> str:
    return f"[{array.min()}, {array.max()}]"



def as_image(array: np.ndarray, source: str) -> np.ndarray:
    """Validate a decoded image and bring it to the pipeline's form.

    Args:
        array: (H, W) or (H, W, C), C in 1..4 (2 = gray + alpha, 4 = RGBA; alpha is dropped).
        source: file name for messages.
    Returns:
        (H, W, 1) or (H, W, 3), uint8 or uint16 (see the module docstring for float and int rules).
    """
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4) or min(array.shape[:2]) < 1:
        raise UNetError(f"{source}: image of shape {array.shape}; expected (height, width) or "
                        "(height, width, channels) with 1, 3 or 4 channels")
    if array.shape[-1] in (2, 4):
        array = array[..., :-1]
    return _image_dtype(array, source)



def _image_dtype(array: np.ndarray, source: str) -> np.ndarray:
    if array.dtype in _MAX_VALUE:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * np.uint8(255)
    if np.issubdtype(array.dtype, np.integer):
        if array.min() >= 0 and array.max() <= 65535:
            return array.astype(np.uint8 if array.dtype.itemsize == 1 else np.uint16)
        raise UNetError(f"{source}: {array.dtype} image with values in {_value_range(array)}; expected "
                        "values in 0..65535 (store it as uint8 or uint16)")
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise UNetError(f"{source}: float image contains NaN or infinite values")
        if array.min() < 0.0 or array.max() > 1.0:
            raise UNetError(f"{source}: float image with values in {_value_range(array)}; expected values "
                            "in [0, 1] (or store it as uint8 or uint16)")
        return np.rint(array.astype(np.float64) * 65535.0).astype(np.uint16)
    raise UNetError(f"{source}: unsupported image dtype {array.dtype}; expected uint8, uint16, "
                    "another integer type with values in 0..65535, or float in [0, 1]")



def as_mask(array: np.ndarray, source: str) -> np.ndarray:
    """Validate a decoded mask's shape: (H, W), (H, W, 1) or a gray mask saved as RGB(A) -> (H, W)."""
    if array.ndim == 3 and array.shape[-1] in (1, 2):
        array = array[..., 0]  # 2 = gray + alpha
    elif array.ndim == 3 and array.shape[-1] in (3, 4):
        color = array[..., :3]
        if not (np.array_equal(color[..., 0], color[..., 1]) and np.array_equal(color[..., 1], color[..., 2])):
            raise UNetError(f"{source}: colour mask (its RGB channels differ); expected a single-channel "
                            "mask of class ids (grayscale or palette PNG/TIFF/GIF)")
        array = color[..., 0]
    if array.ndim != 2 or min(array.shape) < 1:
        raise UNetError(f"{source}: mask of shape {array.shape}; expected (height, width)")
    if not (array.dtype == np.bool_ or np.issubdtype(array.dtype, np.integer)
            or np.issubdtype(array.dtype, np.floating)):
        raise UNetError(f"{source}: unsupported mask dtype {array.dtype}; expected integer class ids")
    return array



def mask_values(mask: np.ndarray) -> np.ndarray:
    """Sorted distinct values of a mask (bincount for uint8: ~10x faster than np.unique)."""
    if mask.dtype == np.bool_ or mask.dtype == np.uint8:
        return np.flatnonzero(np.bincount(mask.ravel().view(np.uint8), minlength=256))
    return np.unique(mask)



def to_class_ids(mask: np.ndarray, num_classes: int | None, source: str) -> np.ndarray:
    """Map mask values to class ids.

    Args:
        mask: (H, W) (or any shape) bool, integer or integral float values.
        num_classes: None or 2 for binary masks ({0, 255} -> 255 is class 1; {0, 1} kept);
            K > 2 for class ids that must lie in 0..K-1.
        source: file name for messages.
    Returns:
        uint8 class ids, same shape.
    """
    if mask.size == 0:
        raise UNetError(f"{source}: empty mask (shape {mask.shape}); expected a labelled image")
    if not (mask.dtype == np.bool_ or np.issubdtype(mask.dtype, np.integer)
            or np.issubdtype(mask.dtype, np.floating)):
        raise UNetError(f"{source}: unsupported mask dtype {mask.dtype}; expected integer class ids")
    values = mask_values(mask)
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        raise UNetError(f"{source}: mask holds NaN or infinite values; expected integer class ids")
    binary = num_classes in (None, 2)
    if binary and set(values.tolist()) <= {0, 255}:
        return (mask == 255).astype(np.uint8)
    limit = 2 if binary else int(num_classes)
    integral = np.all(np.mod(values, 1) == 0) if np.issubdtype(values.dtype, np.floating) else True
    if integral and values.min() >= 0 and values.max() < limit:
        return mask.astype(np.uint8)
    shown = ", ".join(str(v) for v in values[:_MAX_SHOWN].tolist()) + (", ..." if len(values) > _MAX_SHOWN else "")
    expected = ("{0, 255} or {0, 1} for binary masks" if binary
                else f"class ids 0..{limit - 1} (num_classes={limit})")
    hint = ""
    if binary and integral and values.min() >= 0 and values.max() < 64:  # looks like class ids
        hint = f"; for {int(values.max()) + 1} classes set num_classes={int(values.max()) + 1}"
    raise UNetError(f"{source}: mask values {{{shown}}} are not valid labels: expected {expected}{hint}")

