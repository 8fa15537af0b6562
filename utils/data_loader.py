"""Read training and test data into validated in-memory arrays; contiguous k-fold splits.

Three training layouts are detected in `data_dir`:

1. ISBI 2012: `train-volume.tif` + `train-labels.tif` (multi-page TIFF stacks; labels 255 = cell
   interior -> class 1, 0 = membrane -> class 0).
2. Named stacks: `image_stack` + `mask_stack`, two TIFF stacks given by flags (these win over 1).
3. Folders: `images/` + `masks/` of PNG/TIFF/GIF/BMP files (JPEG for images only), paired by
   identical file stem (`images/21_training.tif` <-> `masks/21_training.gif`).

Every user-fixable problem (missing or corrupt file, count/shape mismatch, unsupported dtype or
dimensionality, bad label values, unpaired names) raises UNetError naming the file and what was
expected; a decoder's own exception is chained, never shown alone.

Conventions of the arrays handed to the rest of the pipeline:
- images: (H, W, C) uint8 or uint16, C = 1 or 3 (RGBA loses alpha, palettes are decoded, gray
  palettes become 1 channel). Float images are accepted if every value is finite and in [0, 1]
  and are stored as uint16 (x * 65535 rounded: an error below 8e-6, far below any imaging noise),
  so that normalize_image has one rule per dtype. Signed or wider integer images are accepted if
  their values fit in 0..65535.
- masks: (H, W) uint8 class ids. {0, 255} or {0, 1} (and bool) are binary; with num_classes=K the
  values must lie in 0..K-1. A palette mask with a colour palette keeps its indices as class ids
  (the PASCAL VOC convention); a gray palette is decoded to its gray values.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pathlib
import re
import warnings
from typing import Iterator, Sequence

import numpy as np
import tifffile
from PIL import Image, ImageSequence

from utils.errors import UNetError

ISBI_TRAIN_VOLUME = "train-volume.tif"
ISBI_TRAIN_LABELS = "train-labels.tif"
ISBI_TEST_VOLUME = "test-volume.tif"
ISBI_CLASS_NAMES = ("membrane", "interior")
BINARY_CLASS_NAMES = ("background", "foreground")

TIFF_SUFFIXES = (".tif", ".tiff")
MASK_SUFFIXES = TIFF_SUFFIXES + (".png", ".gif", ".bmp")
# JPEG is lossy: its ringing turns class ids into neighbouring values, so masks may not be JPEG.
IMAGE_SUFFIXES = MASK_SUFFIXES + (".jpg", ".jpeg")

_MAX_VALUE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}
_MAX_SHOWN = 10  # names or values listed in one error message


class DataWarning(UserWarning):
    """Suspicious but usable data (for example masks that hold a single class)."""


@dataclasses.dataclass(frozen=True, eq=False)  # eq on lists of arrays would be ambiguous
class SegmentationData:
    """Images with optional masks, validated and ready for normalize_image and the tf.data pipeline.

    Attributes:
        images: each (H, W, C) uint8 or uint16, C = 1 or 3, the same C for all.
        masks: each (H, W) uint8 class ids in 0..len(class_names)-1, same H, W as its image;
            None for unlabelled (test) data.
        names: one per image: "train-volume.tif[3]" for stack slices, the file name otherwise.
        class_names: ("membrane", "interior") for ISBI, ("background", "foreground") for other
            binary masks, ("class0", ...) for N classes.
        source: the path the data came from, for messages.
    """

    images: list[np.ndarray]
    masks: list[np.ndarray] | None
    names: list[str]
    class_names: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.images)

    def class_fractions(self) -> np.ndarray:
        """Fraction of mask pixels in each class over the whole data set, (num_classes,) float64."""
        if self.masks is None:
            raise UNetError(f"{self.source}: unlabelled data has no class fractions")
        counts = sum(np.bincount(m.ravel(), minlength=len(self.class_names)) for m in self.masks)
        return counts / counts.sum()


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


def _class_names(num_classes: int | None, isbi: bool) -> tuple[str, ...]:
    if num_classes in (None, 2):
        return ISBI_CLASS_NAMES if isbi else BINARY_CLASS_NAMES
    return tuple(f"class{i}" for i in range(num_classes))


def _check_num_classes(num_classes: int | None) -> None:
    if num_classes is not None and not (isinstance(num_classes, (int, np.integer)) and 2 <= num_classes <= 256):
        raise UNetError(f"num_classes={num_classes!r}: expected an integer in 2..256 (uint8 class ids), "
                        "or None for binary masks")


def _warn_single_class(masks: Sequence[np.ndarray], names: Sequence[str], class_names: tuple[str, ...],
                       source: str) -> None:
    counts = np.stack([np.bincount(m.ravel(), minlength=len(class_names)) for m in masks])
    present = counts > 0
    if present.any(axis=0).sum() == 1:
        only = class_names[int(np.argmax(present.any(axis=0)))]
        warnings.warn(f"{source}: every mask is all '{only}': an all-{only} data set trains an "
                      f"all-{only} model", DataWarning, stacklevel=3)
        return
    single = [n for n, row in zip(names, present) if row.sum() == 1]
    if single:
        listed = ", ".join(single[:_MAX_SHOWN]) + (", ..." if len(single) > _MAX_SHOWN else "")
        warnings.warn(f"{source}: {len(single)} of {len(masks)} masks hold a single class ({listed})",
                      DataWarning, stacklevel=3)


def _check_channels(images: Sequence[np.ndarray], names: Sequence[str], source: str) -> None:
    first = images[0].shape[-1]
    for image, name in zip(images, names):
        if image.shape[-1] != first:
            raise UNetError(f"{source}: {names[0]} has {first} channel(s) but {name} has {image.shape[-1]}; "
                            "all images must be grayscale or all RGB")


# --------------------------------------------------------------------------- layouts
def _resolve(data_dir: pathlib.Path, name: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(name)
    return path if path.is_absolute() else data_dir / path


def _stack_slices(path: pathlib.Path) -> tuple[list[np.ndarray], list[str]]:
    stack = read_stack(path)
    names = [f"{path.name}[{i}]" for i in range(len(stack))]
    return [as_image(s, name) for s, name in zip(stack, names)], names


def _load_stack_pair(image_path: pathlib.Path, mask_path: pathlib.Path, num_classes: int | None,
                     isbi: bool, source: str) -> SegmentationData:
    images, names = _stack_slices(image_path)
    raw_masks = read_stack(mask_path, palette_as_index=True)
    if len(raw_masks) != len(images):
        raise UNetError(f"{image_path.name} holds {len(images)} images but {mask_path.name} holds "
                        f"{len(raw_masks)} masks; expected one mask per image ({source})")
    masks = []
    for i, (image, raw) in enumerate(zip(images, raw_masks)):
        mask_name = f"{mask_path.name}[{i}]"
        mask = as_mask(raw, mask_name)
        if mask.shape != image.shape[:2]:
            raise UNetError(f"{names[i]} is {image.shape[:2]} but {mask_name} is {mask.shape} (height, width); "
                            "each mask must have its image's size")
        masks.append(to_class_ids(mask, num_classes, mask_name))
    class_names = _class_names(num_classes, isbi)
    _warn_single_class(masks, names, class_names, source)
    return SegmentationData(images, masks, names, class_names, source)


def _natural_key(name: str) -> list:
    """Sort key that puts slice_2 before slice_10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _list_by_stem(folder: pathlib.Path, suffixes: Sequence[str], what: str) -> dict[str, pathlib.Path]:
    if not folder.is_dir():
        raise UNetError(f"{what} folder {folder} does not exist")
    files: dict[str, pathlib.Path] = {}
    for path in folder.iterdir():
        if path.name.startswith(".") or not path.is_file():
            continue
        suffix = path.suffix.lower()
        if what == "mask" and suffix in IMAGE_SUFFIXES and suffix not in suffixes:
            raise UNetError(f"{path}: masks may not be JPEG (lossy compression changes class ids); "
                            f"use one of {', '.join(suffixes)}")
        if suffix not in suffixes:
            continue
        if path.stem in files:
            raise UNetError(f"{folder}: {files[path.stem].name} and {path.name} share the stem "
                            f"{path.stem!r}; each {what} needs a unique name")
        files[path.stem] = path
    if not files:
        raise UNetError(f"{folder}: no {what} files found (looked for {', '.join(suffixes)})")
    return files


def _load_folders(data_dir: pathlib.Path, images_dir: str, masks_dir: str,
                  num_classes: int | None) -> SegmentationData:
    image_files = _list_by_stem(_resolve(data_dir, images_dir), IMAGE_SUFFIXES, "image")
    mask_files = _list_by_stem(_resolve(data_dir, masks_dir), MASK_SUFFIXES, "mask")
    lonely_images = sorted(set(image_files) - set(mask_files), key=_natural_key)
    lonely_masks = sorted(set(mask_files) - set(image_files), key=_natural_key)
    if lonely_images or lonely_masks:
        parts = []
        for label, stems, files in (("images without a mask", lonely_images, image_files),
                                    ("masks without an image", lonely_masks, mask_files)):
            if stems:
                listed = ", ".join(files[s].name for s in stems[:_MAX_SHOWN])
                parts.append(f"{label}: {listed}" + (", ..." if len(stems) > _MAX_SHOWN else ""))
        raise UNetError(f"{data_dir}: unpaired files ({'; '.join(parts)}); images and masks are paired by "
                        "identical file name without extension")
    images, masks, names = [], [], []
    for stem in sorted(image_files, key=_natural_key):
        image_path, mask_path = image_files[stem], mask_files[stem]
        image = as_image(read_image_file(image_path), image_path.name)
        mask = as_mask(read_image_file(mask_path, palette_as_index=True), mask_path.name)
        if mask.shape != image.shape[:2]:
            raise UNetError(f"{image_path.name} is {image.shape[:2]} but {mask_path.name} is {mask.shape} "
                            "(height, width); each mask must have its image's size")
        images.append(image)
        masks.append(to_class_ids(mask, num_classes, mask_path.name))
        names.append(image_path.name)
    source = str(data_dir)
    _check_channels(images, names, source)
    class_names = _class_names(num_classes, isbi=False)
    _warn_single_class(masks, names, class_names, source)
    return SegmentationData(images, masks, names, class_names, source)


def _existing_dir(data_dir: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(data_dir)
    if not path.is_dir():
        raise UNetError(f"data directory {path} does not exist" if not path.exists()
                        else f"data directory {path} is a file, not a directory")
    return path


def load_training_data(data_dir: str | os.PathLike, *, image_stack: str | None = None,
                       mask_stack: str | None = None, images_dir: str = "images", masks_dir: str = "masks",
                       num_classes: int | None = None) -> SegmentationData:
    """Load labelled training data, detecting the layout (see the module docstring).

    Args:
        data_dir: folder holding the data.
        image_stack, mask_stack: TIFF stacks inside data_dir (or absolute paths); when given they
            are used whatever else data_dir holds.
        images_dir, masks_dir: folder names of the folder layout, inside data_dir.
        num_classes: None (or 2) for binary masks, K > 2 for class ids 0..K-1.
    Returns:
        SegmentationData with masks.
    """
    _check_num_classes(num_classes)
    root = _existing_dir(data_dir)
    if image_stack is not None or mask_stack is not None:
        if image_stack is None or mask_stack is None:
            given, missing = ("image_stack", "mask_stack") if mask_stack is None else ("mask_stack", "image_stack")
            raise UNetError(f"{given} is set but {missing} is not; the stack layout needs both")
        image_path, mask_path = _resolve(root, image_stack), _resolve(root, mask_stack)
        for path in (image_path, mask_path):
            _require_file(path)
        isbi = (image_path.name, mask_path.name) == (ISBI_TRAIN_VOLUME, ISBI_TRAIN_LABELS)
        return _load_stack_pair(image_path, mask_path, num_classes, isbi, str(image_path))
    volume, labels = root / ISBI_TRAIN_VOLUME, root / ISBI_TRAIN_LABELS
    if volume.exists() or labels.exists():
        for path in (volume, labels):
            if not path.is_file():
                raise UNetError(f"{root}: found {volume.name if path is labels else labels.name} but not "
                                f"{path.name}; the ISBI layout needs both")
        return _load_stack_pair(volume, labels, num_classes, isbi=True, source=str(root))
    if _resolve(root, images_dir).exists() or _resolve(root, masks_dir).exists():
        return _load_folders(root, images_dir, masks_dir, num_classes)
    raise UNetError(f"{root}: no training data found; looked for {ISBI_TRAIN_VOLUME} + {ISBI_TRAIN_LABELS} "
                    f"(ISBI layout), {images_dir}/ + {masks_dir}/ folders, or image_stack/mask_stack flags "
                    "(tip: `python download_dataset.py --synthetic --data_dir DIR` writes a synthetic set)")


def load_test_data(data_dir: str | os.PathLike, *, test_stack: str = ISBI_TEST_VOLUME,
                   input_path: str | os.PathLike | None = None) -> SegmentationData:
    """Load unlabelled images for prediction.

    Args:
        data_dir: folder holding `test_stack` (used when input_path is None).
        test_stack: TIFF stack inside data_dir.
        input_path: a TIFF stack, a single image file or a folder of images (read in natural name
            order: slice_2 before slice_10). A relative path that does not exist is also tried
            inside data_dir.
    Returns:
        SegmentationData with masks None and class_names ().
    """
    if input_path is None:
        path = _resolve(_existing_dir(data_dir), test_stack)
        _require_file(path)
    else:
        path = pathlib.Path(input_path)
        if not path.exists() and not path.is_absolute() and (pathlib.Path(data_dir) / path).exists():
            path = pathlib.Path(data_dir) / path
        if not path.exists():
            raise UNetError(f"input {input_path} does not exist (also looked in {data_dir})")
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                        and p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: _natural_key(p.name))
        if not files:
            raise UNetError(f"{path}: no image files found (looked for {', '.join(IMAGE_SUFFIXES)})")
        images = [as_image(read_image_file(p), p.name) for p in files]
        names = [p.name for p in files]
    else:
        stack = read_stack(path)
        # A single RGB image reads as (1, H, W, 3); a stack of N gray slices as (N, H, W).
        names = [path.name] if len(stack) == 1 else [f"{path.name}[{i}]" for i in range(len(stack))]
        images = [as_image(s, name) for s, name in zip(stack, names)]
    _check_channels(images, names, str(path))
    return SegmentationData(images, None, names, (), str(path))


# --------------------------------------------------------------------------- normalization, folds
def normalize_image(image: np.ndarray) -> np.ndarray:
    """Scale an image to float32 in [0, 1]: uint8 / 255, uint16 / 65535 (float passes through).

    The one normalization used by training, evaluation, prediction and export alike.
    """
    image = np.asarray(image)
    if image.dtype in _MAX_VALUE:
        return image.astype(np.float32) / np.float32(_MAX_VALUE[image.dtype])
    if np.issubdtype(image.dtype, np.floating):
        return image.astype(np.float32, copy=False)
    raise TypeError(f"normalize_image expects uint8, uint16 or float, got {image.dtype}")


def fold_split(num_items: int, num_folds: int, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous k-fold split: fold f validates on the f-th of num_folds contiguous blocks.

    Adjacent EM slices are 50 nm apart and strongly correlated, so validating on slices interleaved
    with training slices would measure memorisation; a contiguous block does not. Blocks follow
    np.array_split (sizes differ by at most 1, larger blocks first); across folds every item is
    validated exactly once.

    Returns:
        (train_idx, val_idx), int64 arrays in increasing order.
    """
    if num_folds < 2:
        raise UNetError(f"num_folds={num_folds}: expected at least 2 (one block to train, one to validate)")
    if not 0 <= fold < num_folds:
        raise UNetError(f"fold={fold}: expected 0..{num_folds - 1} for num_folds={num_folds}")
    if num_folds > num_items:
        raise UNetError(f"num_folds={num_folds} but there are only {num_items} images; "
                        "expected at most one fold per image")
    blocks = np.array_split(np.arange(num_items, dtype=np.int64), num_folds)
    val_idx = blocks[fold]
    train_idx = np.concatenate([b for i, b in enumerate(blocks) if i != fold])
    return train_idx, val_idx
