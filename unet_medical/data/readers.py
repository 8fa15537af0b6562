"""Read one image or mask file (TIFF, PNG, GIF, BMP, JPEG) into a validated array.

Every user-fixable problem (missing or corrupt file, unsupported dtype or dimensionality, bad label
values) raises UNetError naming the file and what was expected; a decoder's own exception is
chained, never shown alone. Array conventions are those of utils.data.layouts.

What is read:
- TIFF (tifffile): uncompressed, LZW, Deflate/zlib, PackBits, JPEG (and the other codecs of the
  `imagecodecs` package, pinned in requirements.txt), with or without predictors, striped or tiled,
  single images and multi-page stacks; 1-bit, 8/16-bit integer and 16/32/64-bit float pixels; gray,
  RGB and RGBA. Palette TIFFs go through Pillow. Without imagecodecs only uncompressed, Deflate,
  LZMA and PackBits TIFFs decode; the others fail with a message saying to install it, not that the
  file is damaged. A truncated file (pixel data declared past its end) or undecodable data fails with
  "damaged or truncated" and the file name.
- PNG, GIF, BMP, JPEG (Pillow): 1-bit, 8-bit and 16-bit gray, RGB, RGBA, gray + alpha and palette
  images. Gray palettes decode to gray values; colour palettes decode to RGB for images and stay
  indices (class ids) for masks.
- RGBA and gray + alpha: the alpha channel is dropped, not composited. The colour channels hold
  the measurement; compositing would blend in a background colour that is not in the data (and
  alpha = 0 regions, such as the outside of a fundus field of view, keep the values stored there).
"""
from __future__ import annotations

import contextlib
import logging
import os
import pathlib
from typing import Iterator

import numpy as np
import tifffile
from PIL import Image, ImageSequence, UnidentifiedImageError

from unet_medical.base.errors import UNetError
from unet_medical.data.normalize import _MAX_VALUE


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



# LZW, JPEG, ZSTD, WebP, JPEG 2000 and the floating-point predictor (among others) are decoded by
# imagecodecs; without it tifffile only has zlib/Deflate, LZMA and PackBits (pure-Python fallbacks).
_MISSING_CODEC_HINT = ("decoding needs the 'imagecodecs' package, which is not installed; install it with "
                       "`pip install imagecodecs` (the version is pinned in requirements.txt); "
                       "the file itself is probably fine")


def _tiff_enum_name(enum: type, value: int) -> str:
    try:
        return enum(value).name
    except ValueError:  # a code tifffile does not know
        return str(value)


def _check_codecs(page: "tifffile.TiffPage", path: pathlib.Path) -> None:
    """Raise UNetError if the page's compression or predictor has no decoder in this installation.

    tifffile resolves decoders lazily and reports a missing one as a ValueError from the middle of
    asarray; asking its codec tables first lets the message say what is missing instead of
    suggesting that the file is corrupt.
    """
    tables = [("compression", page.compression, tifffile.TIFF.DECOMPRESSORS, tifffile.COMPRESSION)]
    if page.compression not in tifffile.TIFF.IMAGE_COMPRESSIONS:  # JPEG & co. ignore predictors
        tables.append(("predictor", page.predictor, tifffile.TIFF.UNPREDICTORS, tifffile.PREDICTOR))
    for what, code, table, enum in tables:
        if code == 1:  # none
            continue
        try:
            table[code]
        except KeyError as exc:
            name = _tiff_enum_name(enum, code)
            if "imagecodecs" in str(exc):
                raise UNetError(f"{path}: the TIFF uses {what} {name}, whose {_MISSING_CODEC_HINT}") from exc
            raise UNetError(f"{path}: the TIFF uses {what} {name}, which tifffile cannot decode; save it "
                            "uncompressed or with LZW/Deflate compression") from exc


def _is_missing_codec(exc: BaseException) -> bool:
    """True if a decoder failed because a codec package is missing, not because the data is bad."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ImportError) or "imagecodecs" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _check_complete(tif: "tifffile.TiffFile", series: "tifffile.TiffPageSeries", path: pathlib.Path) -> None:
    """Raise UNetError if pixel data is declared beyond the end of the file (a truncated copy).

    Some decoders (libjpeg) return a partly grey image for a cut strip instead of failing, so the
    strip table is checked against the file size before decoding.
    """
    size = tif.filehandle.size
    ends = [(i, int(np.max(np.add(page.dataoffsets, page.databytecounts))))
            for i, page in enumerate(tif.pages) if page is not None and len(page.dataoffsets)]
    if series.dataoffset is not None:  # contiguous stacks (ImageJ) may list only their first page
        ends.append((0, int(series.dataoffset) + int(series.nbytes)))
    for index, end in ends:
        if end > size:
            raise UNetError(f"{path}: damaged or truncated TIFF: the data of page {index} ends at byte {end} "
                            f"but the file has only {size} bytes")


def _read_tiff(path: pathlib.Path) -> np.ndarray | None:
    """All pages of a TIFF as (N, H, W) or (N, H, W, S); None for palette TIFFs (Pillow decodes those)."""
    with _tifffile_errors() as problems:
        try:
            tif = tifffile.TiffFile(path)
        except Exception as exc:  # TiffFileError, struct.error, OSError: the header is unusable
            raise UNetError(f"{path}: not a TIFF file, or its header is damaged or truncated "
                            f"({type(exc).__name__}: {exc})") from exc
        try:
            with tif:
                if not tif.series:
                    raise UNetError(f"{path}: the TIFF holds no image")
                if len(tif.series) > 1:
                    shapes = ", ".join(str(s.shape) for s in tif.series[:_MAX_SHOWN])
                    raise UNetError(f"{path}: the TIFF holds {len(tif.series)} image series of different "
                                    f"shapes or types ({shapes}); expected one stack of equally sized images")
                if tif.pages.first.photometric == tifffile.PHOTOMETRIC.PALETTE:
                    return None
                _check_codecs(tif.pages.first, path)
                series = tif.series[0]
                _check_complete(tif, series, path)
                array, axes = series.asarray(), series.axes
        except UNetError:
            raise
        # Decoders raise a zoo of types (TiffFileError, ValueError, zlib.error, struct.error,
        # imagecodecs errors); whichever it is, the user must hear whether a codec is missing (the
        # file is fine, the installation is not) or the file is damaged.
        except Exception as exc:
            if _is_missing_codec(exc):
                raise UNetError(f"{path}: {_MISSING_CODEC_HINT} ({type(exc).__name__}: {exc})") from exc
            raise UNetError(f"{path}: damaged or truncated TIFF, its pixels cannot be decoded "
                            f"({type(exc).__name__}: {exc})") from exc
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
    if frame.mode == "1":  # Pillow exposes 1-bit pixels as bools whose byte is 0 or 255; make them 0/1
        return np.asarray(frame).view(np.uint8) != 0
    if frame.mode in ("PA", "CMYK", "YCbCr", "LAB", "HSV"):
        return np.asarray(frame.convert("RGBA" if frame.mode == "PA" else "RGB"))
    return np.asarray(frame)



def _read_with_pillow(path: pathlib.Path, palette_as_index: bool) -> np.ndarray:
    """All frames of an image file as (N, H, W) or (N, H, W, C)."""
    try:
        with Image.open(path) as image:
            frames = [_pil_frame_to_array(frame, palette_as_index) for frame in ImageSequence.Iterator(image)]
    except UnidentifiedImageError as exc:  # no format recognised the header
        raise UNetError(f"{path}: not a readable image: the file is damaged or not of a supported format "
                        f"({', '.join(IMAGE_SUFFIXES)})") from exc
    except Image.DecompressionBombError as exc:
        raise UNetError(f"{path}: image too large to decode safely ({exc})") from exc
    # Pillow raises OSError ("image file is truncated"), SyntaxError, ValueError or EOFError
    # depending on the format and where the damage is.
    except Exception as exc:
        raise UNetError(f"{path}: damaged or truncated image file, its pixels cannot be decoded "
                        f"({type(exc).__name__}: {exc})") from exc
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
    if mask.dtype == np.bool_:  # astype, not view: a bool's byte may be 255 (Pillow's 1-bit images)
        return np.flatnonzero(np.bincount(mask.ravel().astype(np.uint8), minlength=2))
    if mask.dtype == np.uint8:
        return np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    return np.unique(mask)



# More distinct values than this in a mask without --num_classes: instance ids, read as foreground.
INSTANCE_VALUES = 8


def to_class_ids(mask: np.ndarray, num_classes: int | None, source: str) -> np.ndarray:
    """Map mask values to class ids.

    Args:
        mask: (H, W) (or any shape) bool, integer or integral float values.
        num_classes: None or 2 for binary masks ({0, 255} -> 255 is class 1, likewise {0, 65535}
            for uint16 masks; {0, 1} kept; None also reads an instance label image, 0 plus more than
            INSTANCE_VALUES object ids, as foreground = id > 0);
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
    # 16-bit binary masks (ImageJ, some PNG exporters) use 65535 where 8-bit ones use 255.
    for high in (255, 65535) if mask.dtype == np.uint16 else (255,):
        if binary and set(values.tolist()) <= {0, high}:
            return (mask == high).astype(np.uint8)
    limit = 2 if binary else int(num_classes)
    integral = np.all(np.mod(values, 1) == 0) if np.issubdtype(values.dtype, np.floating) else True
    if num_classes is None and integral and values.min() == 0 and len(values) > INSTANCE_VALUES:
        # Many distinct ids: an instance label image (each object its own id, as nuclei sets ship):
        # foreground is every labelled object. A few ids are more likely classes: those need --num_classes.
        return (mask > 0).astype(np.uint8)
    if integral and values.min() >= 0 and values.max() < limit:
        return mask.astype(np.uint8)
    shown = ", ".join(str(v) for v in values[:_MAX_SHOWN].tolist()) + (", ..." if len(values) > _MAX_SHOWN else "")
    expected = ("{0, 255} or {0, 1} for binary masks" if binary
                else f"class ids 0..{limit - 1} (num_classes={limit})")
    hint = ""
    if binary and integral and values.min() >= 0 and values.max() < 64:  # looks like class ids
        hint = f"; for {int(values.max()) + 1} classes set num_classes={int(values.max()) + 1}"
    raise UNetError(f"{source}: mask values {{{shown}}} are not valid labels: expected {expected}{hint}")

