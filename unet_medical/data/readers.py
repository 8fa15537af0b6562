"""Read one image or mask file (TIFF, PNG, GIF, BMP, JPEG, WebP) into a validated array.

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
  Masks are the exception: a mask whose colour is constant and whose alpha varies is a shape drawn
  on a transparent layer, and its alpha is the mask (choose_mask_channel, decided per data set).
- Masks may be lossy (JPEG, lossy WebP, JPEG-compressed TIFF): utils.data.mask_semantics reads them
  back where that is unambiguous; colour JPEG masks become their luminance.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import pathlib
from typing import Iterator

import numpy as np
import tifffile
from PIL import Image, ImageSequence, UnidentifiedImageError

from unet_medical.base.errors import UNetError
from unet_medical.data.mask_semantics import (  # noqa: F401  (DataWarning, mask_values: public here too)
    _MAX_SHOWN,
    INSTANCE_VALUES,
    DataWarning,
    decide_lossless,
    mask_values,
)
from unet_medical.data.normalize import _MAX_VALUE


TIFF_SUFFIXES = (".tif", ".tiff")
# Lossy formats: their ringing turns class ids into clouds of neighbouring values, which
# utils.data.mask_semantics reads back only where that is unambiguous (two levels, or K given).
LOSSY_SUFFIXES = (".jpg", ".jpeg", ".webp")
MASK_SUFFIXES = TIFF_SUFFIXES + (".png", ".gif", ".bmp") + LOSSY_SUFFIXES
IMAGE_SUFFIXES = MASK_SUFFIXES


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
    """Raise UNetError if pixel data is declared beyond the end of the file (a truncated copy), or an
    uncompressed page declares more pixels than the file holds (a damaged header).

    Some decoders (libjpeg) return a partly grey image for a cut strip instead of failing, and a flipped
    bit in ImageLength declared 285 million rows in a 288-byte file, which tifffile then decoded strip by
    strip for minutes; so the page table is checked against the file size before decoding.
    """
    size = tif.filehandle.size
    for index, page in enumerate(tif.pages):
        if page is None:
            continue
        declared = math.prod(page.shape) * page.bitspersample // 8
        if page.compression == 1 and declared > size:
            raise UNetError(f"{path}: damaged or truncated TIFF: page {index} declares {page.shape} pixels "
                            f"({declared} bytes uncompressed) but the file has only {size} bytes")
        if len(page.dataoffsets):
            _check_end(index, int(np.max(np.add(page.dataoffsets, page.databytecounts))), size, path)
    if series.dataoffset is not None:  # contiguous stacks (ImageJ) may list only their first page
        _check_end(0, int(series.dataoffset) + int(series.nbytes), size, path)


def _check_end(index: int, end: int, size: int, path: pathlib.Path) -> None:
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
                if problems:  # a damaged header can declare millions of strips: refuse before decoding them
                    raise UNetError(f"{path}: damaged or truncated TIFF ({problems[0]})")
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
    if array.size == 0:  # tifffile logs a failed decode and hands back an empty array instead of raising
        raise UNetError(f"{path}: damaged or truncated TIFF, no pixels could be decoded (shape {array.shape})")
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



# ITU-R BT.601 luma weights: a colour JPEG of a binary mask keeps its two levels in luminance.
_LUMA = np.array([0.299, 0.587, 0.114])

# TIFF compressions that lose information (JPEG, old-style JPEG, WebP).
_LOSSY_TIFF = {6: "JPEG", 7: "JPEG", 50001: "WebP"}


def lossy_codec(path: str | os.PathLike) -> str | None:
    """The lossy codec a mask file was stored with ("JPEG", "WebP"), or None for lossless files.

    WebP has a lossless mode (a 'VP8L' bitstream); JPEG-compressed TIFFs are lossy too.
    """
    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        return "JPEG"
    if suffix == ".webp":
        with open(path, "rb") as handle:
            header = handle.read(64)
        return None if b"VP8L" in header else "WebP"
    if suffix in TIFF_SUFFIXES:
        try:
            with tifffile.TiffFile(path) as tif:
                return _LOSSY_TIFF.get(int(tif.pages.first.compression))
        except Exception:  # an unreadable file fails with its own message when it is read
            return None
    return None


def choose_mask_channel(arrays: list[np.ndarray]) -> str:
    """Whether the masks of a data set with an alpha channel carry their shape in "colour" or "alpha".

    A publisher who draws a mask as a shape on a transparent layer leaves the colour constant and
    puts the shape in alpha; a gray mask saved as RGBA has opaque (constant) alpha. Decided for the
    set, not per file: an empty mask on a transparent layer has constant colour and constant alpha.

    Args:
        arrays: decoded masks, (H, W), (H, W, C) or (N, H, W, C).
    Returns:
        "alpha" if every mask with alpha has constant colour and at least one has varying alpha.
    """
    with_alpha = [a for a in arrays if a.ndim >= 3 and a.shape[-1] in (2, 4) and a.size]
    if not with_alpha:
        return "colour"
    def varies(x: np.ndarray) -> bool:  # any dtype (np.ptp refuses bools)
        return bool(np.any(x != x.flat[0]))

    colour_varies = any(varies(a[..., :-1]) for a in with_alpha)
    alpha_varies = any(varies(a[..., -1]) for a in with_alpha)
    return "alpha" if alpha_varies and not colour_varies else "colour"


def as_mask(array: np.ndarray, source: str, *, channel: str = "auto", lossy: bool = False) -> np.ndarray:
    """Validate a decoded mask's shape: (H, W), (H, W, 1), gray(+alpha) or RGB(A) -> (H, W).

    Args:
        array: the decoded mask.
        source: file name for messages.
        channel: for masks with alpha: "colour", "alpha" or "auto" (choose_mask_channel on this mask).
        lossy: the file is lossy (JPEG): a colour mask becomes its luminance (uint8) instead of an error,
            since compression makes the channels of even a gray mask differ.
    """
    if channel == "auto":
        channel = choose_mask_channel([array])
    if array.ndim == 3 and array.shape[-1] in (2, 4) and channel == "alpha":
        array = array[..., -1]
    elif array.ndim == 3 and array.shape[-1] in (1, 2):
        array = array[..., 0]  # 2 = gray + alpha
    elif array.ndim == 3 and array.shape[-1] in (3, 4):
        color = array[..., :3]
        if np.array_equal(color[..., 0], color[..., 1]) and np.array_equal(color[..., 1], color[..., 2]):
            array = color[..., 0]
        elif lossy:
            array = np.clip(np.rint(color.astype(np.float64) @ _LUMA), 0, 255).astype(np.uint8)
        else:
            raise UNetError(f"{source}: colour mask (its RGB channels differ); expected a single-channel "
                            "mask of class ids (grayscale or palette PNG/TIFF/GIF)")
    if array.ndim != 2 or min(array.shape) < 1:
        raise UNetError(f"{source}: mask of shape {array.shape}; expected (height, width)")
    if not (array.dtype == np.bool_ or np.issubdtype(array.dtype, np.integer)
            or np.issubdtype(array.dtype, np.floating)):
        raise UNetError(f"{source}: unsupported mask dtype {array.dtype}; expected integer class ids")
    return array


def to_class_ids(mask: np.ndarray, num_classes: int | None, source: str) -> np.ndarray:
    """Map one losslessly stored mask's values to class ids (a data set: mask_semantics.masks_to_class_ids).

    Args:
        mask: (H, W) (or any shape) bool, integer or integral float values.
        num_classes: None or 2 for binary masks ({0, 255} -> 255 is class 1, likewise {0, 65535}
            for uint16 masks; {0, 1} kept; None also reads an instance label image, 0 plus more than
            INSTANCE_VALUES object ids each a connected blob, as foreground = id > 0, and an
            anti-aliased 0/255 mask thresholded at mid-level);
            K > 2 for class ids that must lie in 0..K-1.
        source: file name for messages.
    Returns:
        uint8 class ids, same shape.
    """
    return decide_lossless([mask], [source], num_classes).class_ids(mask)
