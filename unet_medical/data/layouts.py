"""Find a data set's layout in `data_dir` and load it as validated in-memory arrays (SegmentationData).

Three training layouts are detected in `data_dir`:

1. ISBI 2012: `train-volume.tif` + `train-labels.tif` (multi-page TIFF stacks; labels 255 = cell
   interior -> class 1, 0 = membrane -> class 0).
2. Named stacks: `image_stack` + `mask_stack`, two TIFF stacks given by flags (these win over 1).
3. Folders: `images/` + `masks/` of PNG/TIFF/GIF/BMP/JPEG/WebP files, paired by identical file
   stem (`images/21_training.tif` <-> `masks/21_training.gif`).

Every user-fixable problem (missing or corrupt file, count/shape mismatch, unsupported dtype or
dimensionality, bad label values, unpaired names) raises UNetError naming the file and what was
expected; a decoder's own exception is chained, never shown alone.

Conventions of the arrays handed to the rest of the pipeline:
- images: (H, W, C) uint8 or uint16, C = 1 or 3 (RGBA loses alpha, palettes are decoded, gray
  palettes become 1 channel). Float images are accepted if every value is finite and in [0, 1]
  and are stored as uint16 (x * 65535 rounded: an error below 8e-6, far below any imaging noise),
  so that normalize_image has one rule per dtype. Signed or wider integer images are accepted if
  their values fit in 0..65535.
- masks: (H, W) uint8 class ids. What the stored values mean (binary 0/1, 0/255, 0/65535, class ids,
  instance labels, anti-aliased or lossy binary) is decided once for the whole set by
  utils.data.mask_semantics and recorded in SegmentationData.mask_format. A palette mask with a
  colour palette keeps its indices as class ids (the PASCAL VOC convention); a gray palette is
  decoded to its gray values.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import pathlib
import re
import warnings
from typing import Sequence

import numpy as np

from unet_medical.data.mask_semantics import masks_to_class_ids
from unet_medical.data.readers import (
    _MAX_SHOWN,
    IMAGE_SUFFIXES,
    MASK_SUFFIXES,
    DataWarning,
    _require_file,
    as_image,
    as_mask,
    choose_mask_channel,
    lossy_codec,
    read_image_file,
    read_stack,
)
from unet_medical.base.errors import UNetError

ISBI_TRAIN_VOLUME = "train-volume.tif"



ISBI_TRAIN_LABELS = "train-labels.tif"



ISBI_TEST_VOLUME = "test-volume.tif"



ISBI_CLASS_NAMES = ("membrane", "interior")



BINARY_CLASS_NAMES = ("background", "foreground")



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
        mask_format: one line for the run log: how the stored mask values were read ("binary 0/255
            [30 .tif]", "lossy binary (JPEG): thresholded at 127.5 ..."); "" without masks.
    """

    images: list[np.ndarray]
    masks: list[np.ndarray] | None
    names: list[str]
    class_names: tuple[str, ...]
    source: str
    mask_format: str = ""

    def __len__(self) -> int:
        return len(self.images)

    def class_fractions(self) -> np.ndarray:
        """Fraction of mask pixels in each class over the whole data set, (num_classes,) float64."""
        if self.masks is None:
            raise UNetError(f"{self.source}: unlabelled data has no class fractions")
        counts = sum(np.bincount(m.ravel(), minlength=len(self.class_names)) for m in self.masks)
        return counts / counts.sum()



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



def unify_channels(images: list[np.ndarray], names: Sequence[str], source: str) -> list[np.ndarray]:
    """All images with the same channel count: a set mixing grayscale and RGB files (common in public
    sets saved by different tools) gets its grayscale images repeated into 3 channels, with a warning."""
    counts = {image.shape[-1] for image in images}
    if len(counts) == 1:
        return images
    gray = [name for image, name in zip(images, names) if image.shape[-1] == 1]
    listed = ", ".join(gray[:_MAX_SHOWN]) + (", ..." if len(gray) > _MAX_SHOWN else "")
    warnings.warn(f"{source}: {len(gray)} grayscale image(s) among RGB ones ({listed}) are read as RGB "
                  "(gray repeated in 3 channels)", DataWarning, stacklevel=3)
    return [np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image for image in images]



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
    codec = lossy_codec(mask_path)
    channel = choose_mask_channel([raw_masks])
    mask_names = [f"{mask_path.name}[{i}]" for i in range(len(raw_masks))]
    raw = [as_mask(m, name, channel=channel, lossy=codec is not None) for m, name in zip(raw_masks, mask_names)]
    _check_mask_sizes(images, raw, names, mask_names)
    masks, meaning = masks_to_class_ids(raw, mask_names, num_classes, [codec is not None] * len(raw), source,
                                        codec or "JPEG")
    class_names = _class_names(num_classes, isbi)
    _warn_single_class(masks, names, class_names, source)
    mask_format = _mask_format(meaning, [mask_path], channel)
    return SegmentationData(images, masks, names, class_names, source, mask_format)



def _check_mask_sizes(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], names: Sequence[str],
                      mask_names: Sequence[str]) -> None:
    for image, mask, name, mask_name in zip(images, masks, names, mask_names):
        if mask.shape != image.shape[:2]:
            raise UNetError(f"{name} is {image.shape[:2]} but {mask_name} is {mask.shape} (height, width); "
                            "each mask must have its image's size")


def _mask_format(meaning: str, paths: Sequence[pathlib.Path], channel: str) -> str:
    """The log line of a set's masks: the interpretation, then the files it was read from."""
    suffixes = collections.Counter(path.suffix.lower() for path in paths)
    files = ", ".join(f"{n} {suffix}" for suffix, n in sorted(suffixes.items()))
    return f"{meaning} [{files}{', shape in the alpha channel' if channel == 'alpha' else ''}]"


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
    stems = sorted(image_files, key=_natural_key)
    names = [image_files[stem].name for stem in stems]
    mask_paths = [mask_files[stem] for stem in stems]
    images = [as_image(read_image_file(image_files[stem]), image_files[stem].name) for stem in stems]
    # Every mask is read before any is interpreted: what the values mean is decided for the whole set.
    decoded = [read_image_file(path, palette_as_index=True) for path in mask_paths]
    codecs = [lossy_codec(path) for path in mask_paths]
    channel = choose_mask_channel(decoded)
    mask_names = [path.name for path in mask_paths]
    raw = [as_mask(m, name, channel=channel, lossy=codec is not None)
           for m, name, codec in zip(decoded, mask_names, codecs)]
    _check_mask_sizes(images, raw, names, mask_names)
    codec = next((c for c in codecs if c is not None), "JPEG")
    source = str(data_dir)
    masks, meaning = masks_to_class_ids(raw, mask_names, num_classes, [c is not None for c in codecs], source, codec)
    images = unify_channels(images, names, source)
    class_names = _class_names(num_classes, isbi=False)
    _warn_single_class(masks, names, class_names, source)
    return SegmentationData(images, masks, names, class_names, source, _mask_format(meaning, mask_paths, channel))



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



def load_training_images(data_dir: str | os.PathLike, *, image_stack: str | None = None,
                         images_dir: str = "images") -> SegmentationData | None:
    """The images of data_dir's training layout, without reading (or needing) any mask.

    For what needs images but no labels (export: int8 calibration, parity with the Keras model).
    The layouts are those of load_training_data, images side only: `image_stack` if given, else
    train-volume.tif (ISBI), else the `images_dir` folder. Returns None if data_dir holds none of them.
    """
    root = _existing_dir(data_dir)
    if image_stack is not None:
        path = _resolve(root, image_stack)
        _require_file(path)
        images, names = _stack_slices(path)
        source = str(path)
    elif (root / ISBI_TRAIN_VOLUME).exists():
        _require_file(root / ISBI_TRAIN_VOLUME)
        images, names = _stack_slices(root / ISBI_TRAIN_VOLUME)
        source = str(root / ISBI_TRAIN_VOLUME)
    elif _resolve(root, images_dir).is_dir():
        files = _list_by_stem(_resolve(root, images_dir), IMAGE_SUFFIXES, "image")
        paths = [files[stem] for stem in sorted(files, key=_natural_key)]
        images = [as_image(read_image_file(path), path.name) for path in paths]
        names = [path.name for path in paths]
        source = str(_resolve(root, images_dir))
    else:
        return None
    images = unify_channels(images, names, source)
    return SegmentationData(images, None, names, (), source)


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
    images = unify_channels(images, names, str(path))
    return SegmentationData(images, None, names, (), str(path))

