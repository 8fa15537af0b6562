"""The one inference path: overlap-tile prediction at native resolution, with optional TTA.

Used by evaluation during training, `evaluate`, `predict`, `benchmark` and every exported format:
a model is anything that maps a batch of tiles (B, T, T, C) float32 to class probabilities
(B, O, O, K) float32 (see `keras_predictor`).

Overlap-tile (Ronneberger et al. 2015, Fig. 2): the image is mirror-padded, cut into tiles whose
valid outputs cover it exactly, and the outputs are pasted together. A valid-padding U-Net loses
`margin` pixels per side (92 for the paper net), which the mirror padding supplies. A same-padding
U-Net sees zero padding at tile borders, so `context` extra pixels per side are predicted and thrown
away. Memory is bounded by the tile size, whatever the image size.

With an input scale s != 1 (the run's --input_scale), each image is resampled to s times its size
before tiling and the probabilities back to its own size (data.resample), so outputs, and the scores
computed from them, are always at the input's resolution.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from unet_medical.model.unet import UNetSpec, is_valid_input_size, margin as model_margin, output_size
from unet_medical.base.errors import UNetError
from unet_medical.base.progress import Progress
from unet_medical.data.resample import resize_image, scaled_shape

Predictor = Callable[[np.ndarray], np.ndarray]

DEFAULT_SAME_PADDING_CONTEXT = 16
# Images cut into more tiles than this show a progress of their own (a 512 x 512 slice is one tile).
TILE_PROGRESS_MIN = 16


@dataclasses.dataclass(frozen=True)
class TilePlan:
    """Tile geometry in pixels: input tile, model margin per side, discarded context per side."""

    tile_size: int
    margin: int
    context: int

    @property
    def core(self) -> int:
        """Side of the region each tile contributes to the output."""
        return self.tile_size - 2 * (self.margin + self.context)


def _largest_valid_at_most(spec: UNetSpec, limit: int) -> int:
    for size in range(limit, 0, -1):
        if is_valid_input_size(spec, size) and output_size(spec, size) > 0:
            return size
    raise UNetError(f"no valid tile size <= {limit} for this network")


def _smallest_valid_at_least(spec: UNetSpec, size: int) -> int:
    while not is_valid_input_size(spec, size):
        size += 1
    return size


def plan_tiles(spec: UNetSpec, image_hw: tuple[int, int], *, tile_size: int | None = None,
               max_tile_size: int = 1024, context: int | None = None) -> TilePlan:
    """Choose the tile for an image: the smallest valid tile covering it, capped at max_tile_size."""
    m = model_margin(spec)
    if context is None:
        context = DEFAULT_SAME_PADDING_CONTEXT if spec.padding == "same" else 0
    if tile_size is None:
        wanted = _smallest_valid_at_least(spec, max(image_hw) + 2 * (m + context))
        tile_size = wanted if wanted <= max_tile_size else _largest_valid_at_most(spec, max_tile_size)
    elif not is_valid_input_size(spec, tile_size):
        lower = _largest_valid_at_most(spec, tile_size)
        upper = _smallest_valid_at_least(spec, tile_size)
        raise UNetError(f"--tile_size={tile_size} is not a valid input size for this network "
                        f"(nearest valid: {lower} or {upper})")
    plan = TilePlan(tile_size=tile_size, margin=m, context=context)
    if plan.core < 1:
        raise UNetError(f"--tile_size={tile_size} leaves no output after discarding {context} context "
                        f"pixels per side; use a larger tile or a smaller --tile_context")
    return plan


def tile_starts(length: int, core: int) -> list[int]:
    """Start offsets of cores of size `core` covering [0, length); the last tile is aligned to the end."""
    if length <= core:
        return [0]
    starts = list(range(0, length - core, core))
    return starts + [length - core]


def _dihedral(x: np.ndarray, k: int) -> np.ndarray:
    """The k-th of the 8 flips/rotations of (B, H, W, C) tiles (k in 0..7)."""
    x = np.rot90(x, k % 4, axes=(1, 2))
    return x[:, :, ::-1] if k >= 4 else x


def _dihedral_inverse(x: np.ndarray, k: int) -> np.ndarray:
    x = x[:, :, ::-1] if k >= 4 else x
    return np.rot90(x, -(k % 4), axes=(1, 2))


def predict_tiles(predictor: Predictor, tiles: np.ndarray, tta: bool) -> np.ndarray:
    """Probabilities for a batch of tiles, averaged over the 8 dihedral transforms if `tta`."""
    if not tta:
        return np.asarray(predictor(tiles), np.float32)
    total = None
    for k in range(8):
        probs = _dihedral_inverse(np.asarray(predictor(np.ascontiguousarray(_dihedral(tiles, k))), np.float32), k)
        total = probs if total is None else total + probs
    return total / 8.0


def tiled_predict(predictor: Predictor, image: np.ndarray, plan: TilePlan, *, batch_size: int = 1,
                  tta: bool = False, logger: Any = None, label: str = "predict") -> np.ndarray:
    """Class probabilities (H, W, K) float32 for one normalized image (H, W, C) float32.

    With a `logger`, an image of more than TILE_PROGRESS_MIN tiles shows its own tile progress.
    """
    h, w = image.shape[:2]
    pad = plan.margin + plan.context
    core = plan.core
    extra_h, extra_w = max(0, core - h), max(0, core - w)
    padded = np.pad(image, ((pad, pad + extra_h), (pad, pad + extra_w), (0, 0)), mode="reflect")
    positions = [(y, x) for y in tile_starts(h, core) for x in tile_starts(w, core)]
    result: np.ndarray | None = None
    with Progress(len(positions), f"{label} tiles", logger, unit="tile", leave=False,
                  enabled=logger is not None and len(positions) > TILE_PROGRESS_MIN) as progress:
        for batch in _chunks(positions, batch_size):
            tiles = np.stack([padded[y:y + plan.tile_size, x:x + plan.tile_size] for y, x in batch])
            probs = predict_tiles(predictor, tiles, tta)
            if result is None:
                result = np.zeros((h, w, probs.shape[-1]), np.float32)
            c = plan.context
            for (y, x), p in zip(batch, probs):
                region = p[c:c + core, c:c + core]
                result[y:y + core, x:x + core] = region[:min(core, h - y), :min(core, w - x)]
            progress.update(len(batch))
    assert result is not None
    return result


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def keras_predictor(model) -> Predictor:
    """Wrap a Keras model returning logits as a Predictor returning float32 softmax probabilities."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def probabilities(x):
        return tf.nn.softmax(tf.cast(model(x, training=False), tf.float32), axis=-1)

    return lambda batch: probabilities(tf.convert_to_tensor(batch, tf.float32)).numpy()


def predict_images(predictor: Predictor, spec: UNetSpec, images: Sequence[np.ndarray], *,
                   tile_size: int | None = None, max_tile_size: int = 1024, context: int | None = None,
                   batch_size: int = 1, tta: bool = False, logger: Any = None,
                   label: str = "predict", input_scale: float = 1.0) -> list[np.ndarray]:
    """tiled_predict over a list of normalized images; the tile is planned per (scaled) image size.

    Returns (H, W, K) float32 probabilities per image at its own size H x W, whatever `input_scale`.

    With a `logger` (a dllogger.Logger), the loop shows its progress (utils.progress) under `label`:
    per image, and per tile for big images.
    """
    return list(iter_predictions(predictor, spec, images, tile_size=tile_size, max_tile_size=max_tile_size,
                                 context=context, batch_size=batch_size, tta=tta, logger=logger, label=label,
                                 input_scale=input_scale))


def iter_predictions(predictor: Predictor, spec: UNetSpec, images: Sequence[np.ndarray], *,
                     tile_size: int | None = None, max_tile_size: int = 1024, context: int | None = None,
                     batch_size: int = 1, tta: bool = False, logger: Any = None,
                     label: str = "predict", input_scale: float = 1.0) -> Iterator[np.ndarray]:
    """predict_images one image at a time: a caller that writes each map as it comes holds one in memory."""
    with Progress(len(images), label, logger, unit="img", enabled=logger is not None) as progress:
        for image in images:
            seen = resize_image(image, scaled_shape(image.shape[:2], input_scale)) if input_scale != 1 else image
            plan = plan_tiles(spec, seen.shape[:2], tile_size=tile_size, max_tile_size=max_tile_size,
                              context=context)
            probs = tiled_predict(predictor, seen, plan, batch_size=batch_size, tta=tta, logger=logger,
                                  label=label)
            yield resize_image(probs, image.shape[:2]) if input_scale != 1 else probs
            progress.update()
