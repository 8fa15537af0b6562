"""Writing predictions: float32 probability TIFFs, uint8 label masks (NVIDIA's test-masks.tif) and PNG
overlays a person can look at."""
from __future__ import annotations

import os
import pathlib
import re
from typing import Sequence

import numpy as np
import tifffile
from PIL import Image

from unet_medical.base.errors import UNetError
from unet_medical.base.fileio import atomic_write
from unet_medical.inference.decision import decide_labels

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


def label_mask(probs: np.ndarray, class_names: Sequence[str], threshold: float | None = None) -> np.ndarray:
    """uint8 (H, W) mask of one image's probabilities (H, W, K), decided by inference.decision (argmax
    when `threshold` is None) with background_class(class_names) as the background.

    Two classes: 255 where class 1 wins, else 0 (NVIDIA's test-masks.tif; for ISBI EM data class 1 is
    the cell interior, so the mask follows the challenge's label convention, 0 = membrane).
    More classes: the class id itself.
    """
    labels = decide_labels(probs, threshold, background_class(class_names))
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
    """PredictionWriter over lists already in memory. Returns the written paths."""
    with PredictionWriter(out_dir, names, class_names, stack_name, max_overlays) as writer:
        for name, p, image in zip(names, probs, images):
            writer.add(name, p, image)
    return writer.written


def check_unique_stems(names: Sequence[str], source: str) -> None:
    """Refuse inputs whose output files would collide: 'a.png' and 'a.tif' both write a-mask.tif."""
    seen: dict[str, str] = {}
    for name in names:
        stem = _stem(name)
        if stem in seen:
            raise UNetError(f"{source}: {seen[stem]} and {name} would both write {stem}-*.tif; "
                            f"rename one or predict them separately")
        seen[stem] = name


class PredictionWriter:
    """Writes each image's probabilities and label mask as it is predicted, so a run that stops half-way
    (out of memory, killed) keeps what it made and never holds more than one probability map.

    A stack (`stack_name` given): one `<stack_name>-probabilities.tif` and one multi-page mask TIFF named
    by `masks_name` (e.g. test-masks.tif), appended page by page to temporary files that are moved into
    place on a clean close. Otherwise `<stem>-probabilities.tif` and `<stem>-mask.tif` per image. Masks
    are deflate-compressed (mostly 0 and 255); the first `max_overlays` images get a PNG overlay.
    """

    def __init__(self, out_dir: pathlib.Path, names: Sequence[str], class_names: Sequence[str],
                 stack_name: str | None, max_overlays: int = 30, threshold: float | None = None):
        check_unique_stems(names, str(out_dir))
        self.threshold = threshold  # the run's decision (inference.decision): masks and overlays agree
        self.out_dir, self.class_names, self.stack_name = pathlib.Path(out_dir), tuple(class_names), stack_name
        self.max_overlays, self.count, self.written = max_overlays, 0, []
        # The interior/background class (1 of 2) is left untinted so membranes/foreground stand out.
        self.skip = background_class(class_names)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._stacks: list[tuple[pathlib.Path, pathlib.Path, tifffile.TiffWriter]] = []
        if stack_name is not None:
            for final in (f"{stack_name}-probabilities.tif", masks_name(stack_name)):
                tmp = self.out_dir / f".{final}.partial"
                self._stacks.append((tmp, self.out_dir / final, tifffile.TiffWriter(tmp)))

    def add(self, name: str, probs: np.ndarray, image: np.ndarray) -> None:
        maps, mask = probability_maps(probs, self.class_names), label_mask(probs, self.class_names, self.threshold)
        if self._stacks:
            for (_, _, tif), array, compression in zip(self._stacks, (maps, mask), (None, "zlib")):
                # metadata=None: pages of one shape read back as one (N, H, W) series
                tif.write(array, photometric="minisblack", compression=compression, metadata=None)
        else:
            self.written.append(write_tiff(self.out_dir / f"{_stem(name)}-probabilities.tif", maps))
            self.written.append(write_tiff(self.out_dir / f"{_stem(name)}-mask.tif", mask, compression="zlib"))
        if self.count < self.max_overlays:
            self.written.append(write_png(self.out_dir / "overlays" / f"{_stem(name)}.png",
                                          overlay(image, decide_labels(probs, self.threshold, self.skip),
                                                  skip_class=self.skip)))
        self.count += 1

    def __enter__(self) -> "PredictionWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        finals = []
        for tmp, final, tif in self._stacks:
            tif.close()
            if exc_type is None:
                finals.append(pathlib.Path(os.replace(tmp, final) or final))
            else:
                tmp.unlink(missing_ok=True)
        self.written = finals + self.written  # the stack's two files first, as the PREDICT log line reads them


def _stem(name: str) -> str:
    """A file-system-safe stem: 'test-volume.tif[3]' -> 'test-volume_003', 'a/b.png' -> 'b'."""
    match = re.fullmatch(r"(.*)\[(\d+)\]", name)
    stem = f"{pathlib.Path(match.group(1)).stem}_{int(match.group(2)):03d}" if match else pathlib.Path(name).stem
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)
