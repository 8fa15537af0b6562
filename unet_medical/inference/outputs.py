"""Writing predictions: float32 probability TIFFs, uint8 label masks (NVIDIA's test-masks.tif) and PNG
overlays a person can look at."""
from __future__ import annotations

import pathlib
import re
from typing import Sequence

import numpy as np
import tifffile
from PIL import Image

from unet_medical.base.fileio import atomic_write

# Overlay colour of each class index (class 0 is the ISBI membrane): RGB.
_PALETTE = np.array([[255, 40, 40], [40, 200, 255], [60, 220, 60], [255, 200, 0], [200, 80, 255],
                     [255, 128, 0], [0, 255, 200], [255, 0, 160]], np.float32)


def probability_maps(probs: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """What goes into a probability TIFF for one image: (H, W) for two classes, (K, H, W) otherwise.

    Two classes: the probability of class 1, which for ISBI EM data is the challenge's submission
    convention (0 = certainly membrane, 1 = certainly not membrane).
    """
    if len(class_names) == 2:
        return probs[..., 1].astype(np.float32)
    return np.moveaxis(probs, -1, 0).astype(np.float32)


def label_mask(probs: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """uint8 (H, W) mask of one image's probabilities (H, W, K).

    Two classes: 255 where class 1 wins the argmax, else 0 (NVIDIA's test-masks.tif; for ISBI EM data
    class 1 is the cell interior, so the mask follows the challenge's label convention, 0 = membrane).
    More classes: the argmax class id itself.
    """
    labels = probs.argmax(axis=-1)
    if len(class_names) == 2:
        return np.where(labels == 1, 255, 0).astype(np.uint8)
    if len(class_names) > 256:
        raise ValueError(f"{len(class_names)} classes do not fit a uint8 mask")
    return labels.astype(np.uint8)


def masks_name(stack_name: str) -> str:
    """'test-volume' -> 'test-masks.tif' (NVIDIA's name), any other stack 'foo' -> 'foo-masks.tif'."""
    return f"{stack_name.removesuffix('-volume')}-masks.tif"


def write_tiff(path: pathlib.Path, array: np.ndarray, compression: str | None = None) -> pathlib.Path:
    return atomic_write(path, lambda tmp: tifffile.imwrite(tmp, array, photometric="minisblack",
                                                           compression=compression))


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.45, skip_class: int | None = None
            ) -> np.ndarray:
    """RGB uint8 (H, W, 3): the image in grey with each predicted class tinted by its palette colour.

    `image` is normalized float (H, W, C) in [0, 1]; `labels` (H, W) class ids; `skip_class` is left
    untinted (the background / interior class).
    """
    grey = image.mean(axis=-1) if image.ndim == 3 else image
    rgb = np.repeat(grey[..., None] * 255.0, 3, axis=-1)
    colours = _PALETTE[labels % len(_PALETTE)]
    tint = np.ones(labels.shape, bool) if skip_class is None else labels != skip_class
    rgb[tint] = (1 - alpha) * rgb[tint] + alpha * colours[tint]
    return np.clip(rgb, 0, 255).astype(np.uint8)


def background_class(class_names: Sequence[str]) -> int:
    """The class left untinted in overlays: ISBI's interior (1 of membrane, interior), else class 0."""
    return 1 if tuple(class_names) == ("membrane", "interior") else 0


def comparison_panel(image: np.ndarray, predicted: np.ndarray, truth: np.ndarray, skip_class: int | None = None,
                     max_side: int = 192, gap: int = 4) -> np.ndarray:
    """RGB uint8 (h, 3 w + 2 gap, 3): the input in grey | predicted classes | true classes, side by side.

    `image` normalized float (H, W, C) in [0, 1]; `predicted`, `truth` (H, W) class ids. Every panel is
    subsampled by the smallest integer stride that brings its longer side to <= max_side pixels
    (a TensorBoard thumbnail, not a measurement).
    """
    stride = max(1, -(-max(image.shape[:2]) // max_side))
    grey = image.mean(axis=-1) if image.ndim == 3 else image
    panels = [np.repeat(np.clip(grey * 255.0, 0, 255).astype(np.uint8)[..., None], 3, axis=-1),
              overlay(image, predicted, skip_class=skip_class), overlay(image, truth, skip_class=skip_class)]
    panels = [p[::stride, ::stride] for p in panels]
    spacer = np.full((panels[0].shape[0], gap, 3), 255, np.uint8)
    return np.concatenate([panels[0], spacer, panels[1], spacer, panels[2]], axis=1)


def write_png(path: pathlib.Path, rgb: np.ndarray) -> pathlib.Path:
    return atomic_write(path, lambda tmp: Image.fromarray(rgb).save(tmp, format="PNG"))


def write_predictions(out_dir: pathlib.Path, probs: Sequence[np.ndarray], images: Sequence[np.ndarray],
                      names: Sequence[str], class_names: Sequence[str], stack_name: str | None,
                      max_overlays: int = 30) -> list[pathlib.Path]:
    """Write probabilities and label masks (when the input was a stack of equal-size slices: one
    `<stack_name>-probabilities.tif` and one multi-page mask TIFF named by `masks_name`, e.g.
    test-masks.tif; else `<stem>-probabilities.tif` and `<stem>-mask.tif` per image) and PNG
    overlays. Masks are deflate-compressed (mostly 0 and 255). Returns the written paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    maps = [probability_maps(p, class_names) for p in probs]
    masks = [label_mask(p, class_names) for p in probs]
    same_shape = len({m.shape for m in maps}) == 1
    if stack_name is not None and same_shape:
        written.append(write_tiff(out_dir / f"{stack_name}-probabilities.tif", np.stack(maps)))
        written.append(write_tiff(out_dir / masks_name(stack_name), np.stack(masks), compression="zlib"))
    else:
        for name, m, mask in zip(names, maps, masks):
            written.append(write_tiff(out_dir / f"{_stem(name)}-probabilities.tif", m))
            written.append(write_tiff(out_dir / f"{_stem(name)}-mask.tif", mask, compression="zlib"))
    # The interior/background class (1 of 2) is left untinted so membranes/foreground stand out.
    skip = background_class(class_names)
    for i, (name, p, image) in enumerate(zip(names, probs, images)):
        if i >= max_overlays:
            break
        written.append(write_png(out_dir / "overlays" / f"{_stem(name)}.png",
                                 overlay(image, p.argmax(-1), skip_class=skip)))
    return written


def _stem(name: str) -> str:
    """A file-system-safe stem: 'test-volume.tif[3]' -> 'test-volume_003', 'a/b.png' -> 'b'."""
    match = re.fullmatch(r"(.*)\[(\d+)\]", name)
    stem = f"{pathlib.Path(match.group(1)).stem}_{int(match.group(2)):03d}" if match else pathlib.Path(name).stem
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)
