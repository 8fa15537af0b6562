"""Data augmentation for segmentation on core TensorFlow ops, for use inside `tf.data.Dataset.map`.

Every transform is a pure function `(image, mask, seed) -> (image, mask)`:
- image: float32 (H, W, C) with values in [0, 1];
- mask: int32 (H, W) class ids (any integer dtype is kept as is);
- seed: int32/int64 tensor of shape [2] for the tf.random.stateless_* ops, so the same seed gives
  the same draws in eager mode, in a tf.function and in tf.data on any number of workers (a traced
  graph may round float arithmetic differently from eager mode in the last bit).
Strengths and probabilities are keyword arguments with EM-friendly defaults. Geometric transforms
move image and mask with the same field; images are resampled bilinearly with mirrored borders,
masks by nearest neighbour so no label value is invented. Output size always equals input size
(static or unknown H, W; square or not).

The U-Net paper (Ronneberger et al. 2015, arXiv:1505.04597, Sec. 3.1) trains on 30 EM slices and
credits elastic deformation above all; `build_augment_fn` chains flips, 90-degree rotations, one
combined warp (rotation by any angle + crop-and-resize + elastic deformation, resampled once:
faster and less blurry than three resamplings), intensity changes and Gaussian noise.

Usage:
    augment = build_augment_fn(AugmentConfig())
    ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)   # elements (image, mask, seed)

CLI (python -m unet_medical.cli.augment_tool):
    --preview OUT.png --data_dir DIR [--n 8 --seed 0 --slice 0]   grid of augmented ISBI slices
    --benchmark --data_dir DIR                                     augment vs. training throughput
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import tensorflow as tf

from unet_medical.base.errors import UNetError
from unet_medical.data.warp import affine_coordinates, coarse_displacement, sample_at


AugmentFn = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]



# Fixed sub-seed slots: turning one transform off does not change the random draws of the others.
_SLOT_FLIP, _SLOT_ROT90, _SLOT_WARP, _SLOT_INTENSITY, _SLOT_NOISE = range(5)



_NUM_SLOTS = 5



_SLOT_ROTATE, _SLOT_CROP, _SLOT_ELASTIC = range(3)



@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and strengths of every augmentation; defaults suit EM slices (ISBI 2012).

    Args:
        flip_h_prob: probability of a left-right flip (default 0.5).
        flip_v_prob: probability of an up-down flip (default 0.5).
        rot90_prob: probability of a rotation by k * 90 degrees, k uniform in {1, 2, 3}; 0.75 makes
            all four orientations equally likely. Non-square images only get k = 2.
        rotate_prob: probability of a rotation by an angle uniform in [-rotate_max_deg, rotate_max_deg].
        rotate_max_deg: largest rotation angle, degrees in [0, 180] (default 45: with rot90 and flips
            that reaches every angle while mirrored corners stay small).
        elastic_prob: probability of the paper's elastic deformation.
        elastic_grid: lattice points per side of the random displacement grid (paper: 3).
        elastic_sigma: standard deviation of lattice displacements, pixels (paper: 10).
        crop_resize_prob: probability of zooming about a random centre.
        scale_range: (low, high) zoom factors, uniform; > 1 zooms in, < 1 zooms out.
        intensity_prob: probability of a brightness/contrast/gamma change.
        brightness_range: (low, high) offset added to intensities.
        contrast_range: (low, high) factor scaling intensities about the image mean.
        gamma_range: (low, high) exponent applied to intensities in [0, 1].
        noise_prob: probability of additive Gaussian noise.
        noise_std: standard deviation of the noise, in intensity units ([0, 1] images).

    `AugmentConfig(**dict_from_yaml)` accepts lists for the ranges.
    """

    flip_h_prob: float = 0.5
    flip_v_prob: float = 0.5
    rot90_prob: float = 0.75
    rotate_prob: float = 0.5
    rotate_max_deg: float = 45.0
    elastic_prob: float = 0.5
    elastic_grid: int = 3
    elastic_sigma: float = 10.0
    crop_resize_prob: float = 0.5
    scale_range: tuple[float, float] = (0.8, 1.2)
    intensity_prob: float = 0.5
    brightness_range: tuple[float, float] = (-0.1, 0.1)
    contrast_range: tuple[float, float] = (0.8, 1.2)
    gamma_range: tuple[float, float] = (0.8, 1.25)
    noise_prob: float = 0.3
    noise_std: float = 0.03

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name.endswith("_range"):
                if isinstance(value, (list, tuple)) and len(value) == 2:
                    value = tuple(float(v) for v in value)
                    object.__setattr__(self, field.name, value)
                else:
                    raise UNetError(f"augment {field.name}={value!r}: expected a (low, high) pair")
                if not value[0] <= value[1]:
                    raise UNetError(f"augment {field.name}={value}: low must be <= high")
            elif field.name.endswith("_prob") and not 0.0 <= value <= 1.0:
                raise UNetError(f"augment {field.name}={value}: expected a probability in [0, 1]")
        _check_range("rotate_max_deg", self.rotate_max_deg, 0.0, 180.0)
        if isinstance(self.elastic_grid, bool) or not isinstance(self.elastic_grid, int) \
                or self.elastic_grid < 2:
            raise UNetError(f"augment elastic_grid={self.elastic_grid!r}: expected an int >= 2")
        _check_range("elastic_sigma", self.elastic_sigma, 0.0, math.inf)
        _check_range("noise_std", self.noise_std, 0.0, math.inf)
        if self.scale_range[0] <= 0:
            raise UNetError(f"augment scale_range={self.scale_range}: zoom factors must be > 0")
        if self.contrast_range[0] < 0:
            raise UNetError(f"augment contrast_range={self.contrast_range}: factors must be >= 0")
        if self.gamma_range[0] <= 0:
            raise UNetError(f"augment gamma_range={self.gamma_range}: exponents must be > 0")

    @classmethod
    def off(cls) -> "AugmentConfig":
        """No augmentation: build_augment_fn returns the inputs unchanged."""
        return cls(**{f.name: 0.0 for f in dataclasses.fields(cls) if f.name.endswith("_prob")})

    @classmethod
    def flips_only(cls) -> "AugmentConfig":
        """Left-right and up-down flips at probability 0.5; everything else off."""
        return dataclasses.replace(cls.off(), flip_h_prob=0.5, flip_v_prob=0.5)

    def flipping_only(self, axes: Sequence[int]) -> "AugmentConfig":
        """These settings for slices (I, J) of volumes whose mirror axes are `axes` (data.mirror_axes): no
        up-down flip unless I (rows) is in them, no left-right flip unless J (columns) is, and no quarter turn
        unless both are (a turn carries one axis's order onto the other)."""
        return dataclasses.replace(self, flip_v_prob=self.flip_v_prob if 0 in axes else 0.0,
                                   flip_h_prob=self.flip_h_prob if 1 in axes else 0.0,
                                   rot90_prob=self.rot90_prob if {0, 1} <= set(axes) else 0.0)

    @classmethod
    def all_on(cls) -> "AugmentConfig":
        """Every transform applied to every sample (default strengths): for benchmarks and previews."""
        return cls(**{f.name: 1.0 for f in dataclasses.fields(cls) if f.name.endswith("_prob")})



def _check_range(name: str, value: float, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise UNetError(f"augment {name}={value!r}: expected a number in [{low}, {high}]")



def _split(seed: tf.Tensor, num: int) -> list[tf.Tensor]:
    return tf.unstack(tf.random.experimental.stateless_split(seed, num=num))



def _coin(seed: tf.Tensor, prob: float) -> tf.Tensor:
    """Bool scalar, True with probability `prob`."""
    return tf.random.stateless_uniform([], seed=seed) < prob



def _uniform(seed: tf.Tensor, low: float, high: float, shape=()) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed=seed, minval=low, maxval=high)



def _keep_shape(image: tf.Tensor, mask: tf.Tensor, like_image: tf.Tensor, like_mask: tf.Tensor):
    """Restore the static shapes a tf.cond or tf.image op may have lost (output size = input)."""
    return tf.ensure_shape(image, like_image.shape), tf.ensure_shape(mask, like_mask.shape)



def random_flip(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor,
                h_prob: float = 0.5, v_prob: float = 0.5) -> tuple[tf.Tensor, tf.Tensor]:
    """Flip left-right (axis 1) with probability h_prob and up-down (axis 0) with v_prob. Exact."""
    out_image, out_mask = image, mask
    for axis, prob, sub_seed in zip((1, 0), (h_prob, v_prob), _split(seed, 2)):
        if prob <= 0:
            continue
        out_image, out_mask = tf.cond(
            _coin(sub_seed, prob),
            lambda i=out_image, m=out_mask, a=axis: (tf.reverse(i, [a]), tf.reverse(m, [a])),
            lambda i=out_image, m=out_mask: (i, m))
    return _keep_shape(out_image, out_mask, image, mask)



def random_rot90(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor,
                 prob: float = 0.75) -> tuple[tf.Tensor, tf.Tensor]:
    """Rotate counter-clockwise by k * 90 degrees (as np.rot90), k uniform in {1, 2, 3} with
    probability `prob`, else k = 0. Exact.

    A non-square image may only turn by 180 degrees (k = 2 whenever k > 0) so its size is kept.
    """
    if prob <= 0:
        return image, mask
    coin_seed, k_seed = _split(seed, 2)
    k = tf.random.stateless_uniform([], seed=k_seed, minval=1, maxval=4, dtype=tf.int32)
    k = tf.where(_coin(coin_seed, prob), k, 0)
    shape = tf.shape(image)
    k = tf.where(tf.equal(shape[0], shape[1]), k, tf.where(k > 0, 2, 0))
    out_image = tf.image.rot90(image, k)
    out_mask = tf.image.rot90(mask[..., None], k)[..., 0]
    return _keep_shape(out_image, out_mask, image, mask)



def rotation_matrix(shape_hw, angle: tf.Tensor) -> tf.Tensor:
    """(2, 3) float32 affine pull map rotating an (H, W) image about its centre.

    angle: radians, counter-clockwise as displayed (rows grow downwards), so pi/2 equals np.rot90.
    """
    size = tf.cast(tf.convert_to_tensor(shape_hw), tf.float32)
    centre = (size - 1.0) / 2.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    linear = tf.stack([tf.stack([cos, sin]), tf.stack([-sin, cos])])
    # src = centre + R (p - centre)  =>  offset = centre - R centre
    offset = centre - tf.linalg.matvec(linear, centre)
    return tf.concat([linear, offset[:, None]], axis=1)



def crop_resize_matrix(shape_hw, scale: tf.Tensor, offset_yx: tf.Tensor) -> tf.Tensor:
    """(2, 3) float32 affine pull map cropping a window of size (H, W) / scale and resizing it to (H, W).

    scale: zoom factor (> 1 zooms in); offset_yx: float32 [2], window centre minus image centre,
    pixels. Pixel centres follow tf.image.resize's half-pixel convention: output pixel p samples
    input position centre + offset + (p - centre) / scale.
    """
    size = tf.cast(tf.convert_to_tensor(shape_hw), tf.float32)
    centre = (size - 1.0) / 2.0
    inv = 1.0 / tf.cast(scale, tf.float32)
    linear = tf.linalg.diag(tf.stack([inv, inv]))
    offset = centre + tf.cast(offset_yx, tf.float32) - centre * inv
    return tf.concat([linear, offset[:, None]], axis=1)



def _compose(outer: tf.Tensor, inner: tf.Tensor) -> tf.Tensor:
    """(2, 3) map equal to applying `inner` to output coordinates, then `outer`."""
    return tf.concat([outer[:, :2] @ inner[:, :2],
                      (outer[:, :2] @ inner[:, 2:]) + outer[:, 2:]], axis=1)



def _warp_pair(image: tf.Tensor, mask: tf.Tensor, rows: tf.Tensor,
               cols: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Sample image (bilinear) and mask (nearest) at the same (H, W) positions, mirrored borders."""
    out_image = sample_at(image, rows, cols, mode="reflect", interpolation="bilinear")
    out_mask = sample_at(mask[..., None], rows, cols, mode="reflect", interpolation="nearest")
    return out_image, out_mask[..., 0]



def _random_warp(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor, *,
                 rotate_prob: float = 0.0, rotate_max_deg: float = 0.0,
                 crop_resize_prob: float = 0.0, scale_range: tuple[float, float] = (1.0, 1.0),
                 elastic_prob: float = 0.0, elastic_grid: int = 3, elastic_sigma: float = 0.0,
                 ) -> tuple[tf.Tensor, tf.Tensor]:
    """Rotation, crop-and-resize and elastic deformation folded into one field and one resample.

    Equivalent to rotating, then cropping/resizing, then deforming elastically (each with its own
    sub-seed slot and probability), but resampled once. Skips the resample when nothing is drawn.
    """
    shape_hw = tf.shape(image)[:2]
    seeds = _split(seed, 3)
    matrix = tf.constant([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    applied = tf.constant(False)
    if rotate_prob > 0:
        coin_seed, angle_seed = _split(seeds[_SLOT_ROTATE], 2)
        on = _coin(coin_seed, rotate_prob)
        max_rad = math.radians(rotate_max_deg)
        angle = tf.where(on, _uniform(angle_seed, -max_rad, max_rad), 0.0)
        matrix = rotation_matrix(shape_hw, angle)
        applied |= on
    if crop_resize_prob > 0:
        coin_seed, scale_seed, offset_seed = _split(seeds[_SLOT_CROP], 3)
        on = _coin(coin_seed, crop_resize_prob)
        scale = tf.where(on, _uniform(scale_seed, *scale_range), 1.0)
        # Window centre anywhere that keeps the window inside the image (zoom in) or the image
        # inside the window (zoom out).
        reach = tf.abs(tf.cast(shape_hw, tf.float32) * (1.0 - 1.0 / scale)) / 2.0
        offset = _uniform(offset_seed, -1.0, 1.0, shape=[2]) * reach
        # The crop acts on the rotated image, so it is applied to output coordinates first.
        matrix = _compose(matrix, crop_resize_matrix(shape_hw, scale, offset))
        applied |= on
    elastic_on = tf.constant(False)
    if elastic_prob > 0:
        coin_seed, field_seed = _split(seeds[_SLOT_ELASTIC], 2)
        elastic_on = _coin(coin_seed, elastic_prob)
        applied |= elastic_on

    def warp() -> tuple[tf.Tensor, tf.Tensor]:
        if elastic_prob > 0:
            field = tf.cond(
                elastic_on,
                lambda: coarse_displacement(shape_hw, elastic_grid, elastic_sigma, field_seed),
                lambda: tf.zeros(tf.concat([shape_hw, [2]], 0)))
            rows, cols = affine_coordinates(shape_hw, matrix, field)
        else:
            rows, cols = affine_coordinates(shape_hw, matrix)
        return _warp_pair(image, mask, rows, cols)

    out_image, out_mask = tf.cond(applied, warp, lambda: (image, mask))
    return _keep_shape(out_image, out_mask, image, mask)



def random_rotate(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor,
                  prob: float = 0.5, max_deg: float = 45.0) -> tuple[tf.Tensor, tf.Tensor]:
    """Rotate about the centre by an angle uniform in [-max_deg, max_deg] with probability `prob`.

    Image bilinear with mirrored fill, mask nearest (no invented labels).
    """
    return _random_warp(image, mask, seed, rotate_prob=prob, rotate_max_deg=max_deg)



def random_crop_resize(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor, prob: float = 0.5,
                       scale_range: tuple[float, float] = (0.8, 1.2)) -> tuple[tf.Tensor, tf.Tensor]:
    """Zoom by a factor uniform in scale_range about a random centre, with probability `prob`.

    Equivalent to cropping a window of size (H, W) / scale and resizing it back to (H, W); a zoom
    out (scale < 1) fills with the mirrored image. Image bilinear, mask nearest.
    """
    return _random_warp(image, mask, seed, crop_resize_prob=prob, scale_range=scale_range)



def elastic_deform(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor, prob: float = 0.5,
                   grid: int = 3, sigma: float = 10.0) -> tuple[tf.Tensor, tf.Tensor]:
    """The U-Net paper's elastic deformation (see utils.data.warp.coarse_displacement), probability `prob`.

    Image bilinear, mask nearest, same field, mirrored borders.
    """
    return _random_warp(image, mask, seed, elastic_prob=prob, elastic_grid=grid,
                        elastic_sigma=sigma)



def random_intensity(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor, prob: float = 0.5,
                     brightness_range: tuple[float, float] = (-0.1, 0.1),
                     contrast_range: tuple[float, float] = (0.8, 1.2),
                     gamma_range: tuple[float, float] = (0.8, 1.25)) -> tuple[tf.Tensor, tf.Tensor]:
    """With probability `prob`: x ** gamma, then contrast about the image mean, then + brightness.

    Each parameter is uniform in its range; the result is clipped to [0, 1]. Mask unchanged.
    """
    if prob <= 0:
        return image, mask
    coin_seed, b_seed, c_seed, g_seed = _split(seed, 4)

    def change() -> tf.Tensor:
        gamma = _uniform(g_seed, *gamma_range)
        contrast = _uniform(c_seed, *contrast_range)
        brightness = _uniform(b_seed, *brightness_range)
        # Clip before the power: a negative base would give NaN.
        x = tf.pow(tf.clip_by_value(image, 0.0, 1.0), gamma)
        mean = tf.reduce_mean(x)
        x = (x - mean) * contrast + mean + brightness
        return tf.clip_by_value(x, 0.0, 1.0)

    out = tf.cond(_coin(coin_seed, prob), change, lambda: image)
    return tf.ensure_shape(out, image.shape), mask



def random_noise(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor, prob: float = 0.3,
                 std: float = 0.03) -> tuple[tf.Tensor, tf.Tensor]:
    """With probability `prob` add Gaussian noise N(0, std) per pixel, clipped to [0, 1]."""
    if prob <= 0:
        return image, mask
    coin_seed, noise_seed = _split(seed, 2)

    def noisy() -> tf.Tensor:
        noise = tf.random.stateless_normal(tf.shape(image), seed=noise_seed, stddev=std)
        return tf.clip_by_value(image + noise, 0.0, 1.0)

    out = tf.cond(_coin(coin_seed, prob), noisy, lambda: image)
    return tf.ensure_shape(out, image.shape), mask



def build_augment_fn(config: AugmentConfig) -> AugmentFn:
    """The function (image, mask, seed) -> (image, mask) applying every enabled transform.

    Order: flips, rot90 (exact), one combined warp (rotate, crop-resize, elastic), intensity,
    noise. Each transform draws from its own fixed slot of stateless_split(seed), so disabling
    one leaves the others' draws unchanged. Transforms with probability 0 add no ops.
    """
    if not isinstance(config, AugmentConfig):
        raise UNetError(f"build_augment_fn needs an AugmentConfig, got {type(config).__name__}")
    c = config
    warp_on = c.rotate_prob > 0 or c.crop_resize_prob > 0 or c.elastic_prob > 0

    def augment(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.convert_to_tensor(image, tf.float32)
        mask = tf.convert_to_tensor(mask)
        seeds = _split(seed, _NUM_SLOTS)
        image, mask = random_flip(image, mask, seeds[_SLOT_FLIP], c.flip_h_prob, c.flip_v_prob)
        image, mask = random_rot90(image, mask, seeds[_SLOT_ROT90], c.rot90_prob)
        if warp_on:
            image, mask = _random_warp(
                image, mask, seeds[_SLOT_WARP],
                rotate_prob=c.rotate_prob, rotate_max_deg=c.rotate_max_deg,
                crop_resize_prob=c.crop_resize_prob, scale_range=c.scale_range,
                elastic_prob=c.elastic_prob, elastic_grid=c.elastic_grid,
                elastic_sigma=c.elastic_sigma)
        image, mask = random_intensity(image, mask, seeds[_SLOT_INTENSITY], c.intensity_prob,
                                       c.brightness_range, c.contrast_range, c.gamma_range)
        image, mask = random_noise(image, mask, seeds[_SLOT_NOISE], c.noise_prob, c.noise_std)
        return image, mask

    return augment
