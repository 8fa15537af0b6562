"""Synthetic dermoscopy-like images with one or two large lesions: the large-object case of the recipe.

Rehearsal data, not a substitute: the set has what public lesion and polyp sets throw at a depth-4 U-Net -
objects covering 20-90 % of the image, some cut by the image border, soft low-contrast outlines and a
textured background - so the recipe's depth and scale rules (data.recipe) can be checked offline. Nothing
learned on it transfers to real photographs.

Each image: skin of a random tone with pores (fine noise), blotches (coarse noise), uneven light and a few
hairs and pigmented blotches; one lesion (two in a third of the images) darker and browner than the skin,
with a pigment network, pale patches inside and an outline blurred by 2-6 px. A lesion is a wavy ellipse: normalised radius
rho = sqrt((u/a)^2 + (v/b)^2) against the outline 1 + sum_k A_k cos(k phi + p_k), k = 2..4. Masks: 255 = lesion.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

SHAPES = ((256, 320), (256, 288), (288, 320))
COVERAGE_RANGE = (0.25, 1.3)  # drawn area / image area; the border cuts the large ones to 20-90 % cover
# RGB reflectance of skin and of lesion pigment, 0..1 (light to dark brown; the dark end of each tone range).
_SKIN = np.array([0.86, 0.68, 0.58], np.float32)
_PIGMENT = np.array([0.42, 0.26, 0.18], np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation, (H, W) float32."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return field / (field.std() + np.float32(1e-12))


def lesion_mask(rng: np.random.Generator, shape: tuple[int, int], area: float) -> np.ndarray:
    """(H, W) bool wavy ellipse of about `area` px^2 (before the border cuts it), centred anywhere in the
    middle 80 % of the image, so large ones run off the border."""
    h, w = shape
    ratio = rng.uniform(0.6, 1.0)
    radius = math.sqrt(area / math.pi)
    a, b = radius / math.sqrt(ratio), radius * math.sqrt(ratio)
    cy, cx = rng.uniform(0.1 * h, 0.9 * h), rng.uniform(0.1 * w, 0.9 * w)
    angle = rng.uniform(0.0, math.pi)
    dy = np.arange(h, dtype=np.float32)[:, None] - np.float32(cy)
    dx = np.arange(w, dtype=np.float32)[None, :] - np.float32(cx)
    u = (dx * math.cos(angle) + dy * math.sin(angle)) / a
    v = (dy * math.cos(angle) - dx * math.sin(angle)) / b
    rho, phi = np.sqrt(u * u + v * v), np.arctan2(v, u)
    outline = np.ones_like(rho)
    for k in (2, 3, 4):
        outline += np.float32(rng.uniform(0.0, 0.12 / (k - 1))) * np.cos(k * phi + np.float32(rng.uniform(0, 2 * np.pi)))
    return rho <= outline


def _hairs(rng: np.random.Generator, shape: tuple[int, int], count: int) -> np.ndarray:
    """(H, W) float32 in [0, 1]: `count` thin dark curved hairs (1 where a hair covers the pixel)."""
    h, w = shape
    canvas = np.zeros(shape, np.float32)
    for _ in range(count):
        y, x, heading = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0, 2 * math.pi)
        for _ in range(int(rng.uniform(0.3, 1.0) * max(h, w))):
            heading += rng.normal(0.0, 0.03)
            y, x = y + math.sin(heading), x + math.cos(heading)
            if 0 <= y < h and 0 <= x < w:
                canvas[int(y), int(x)] = 1.0
    return np.clip(ndimage.gaussian_filter(canvas, 0.6) * 3.0, 0.0, 1.0)


def make_lesion_image(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic lesion image.

    Args:
        rng: the image's own generator (equal states give identical images).
        shape: (height, width) px.
    Returns:
        image: (H, W, 3) uint8 RGB.
        mask: (H, W) uint8, 255 = lesion.
    """
    h, w = shape
    coverage = rng.uniform(*COVERAGE_RANGE)
    count = 2 if rng.random() < 1 / 3 else 1
    mask = np.zeros(shape, bool)
    for share in rng.dirichlet(np.full(count, 3.0)):
        mask |= lesion_mask(rng, shape, coverage * share * h * w)
    yy = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    xx = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
    light = 1.0 - np.float32(rng.uniform(0.1, 0.3)) * (yy ** 2 + xx ** 2) / 2  # dermoscope vignetting
    skin = _SKIN * np.float32(rng.uniform(0.85, 1.1)) * rng.uniform(0.95, 1.05, 3).astype(np.float32)
    texture = 1.0 + 0.04 * _smooth_noise(rng, shape, 1.0) + 0.06 * _smooth_noise(rng, shape, 12.0)
    # Pigment: a darker core fading to the edge, with a network of dots; some lesions are faint.
    inside = ndimage.gaussian_filter(mask.astype(np.float32), rng.uniform(2.0, 6.0))
    depth = np.clip(ndimage.distance_transform_edt(mask) / 30.0, 0.0, 1.0).astype(np.float32)
    network = np.clip(0.7 + 0.3 * _smooth_noise(rng, shape, 2.0) + 0.3 * depth, 0.0, 1.2)
    # Pale patches inside (regression) and pigmented blotches outside: locally, a patch of lesion and of
    # skin can look alike, so only context wider than the patch tells them apart.
    pale = np.clip(0.6 + 0.5 * _smooth_noise(rng, shape, 20.0), 0.15, 1.0)
    blotches = np.float32(rng.uniform(0.1, 0.3)) * np.clip(_smooth_noise(rng, shape, 16.0), 0.0, None)
    strength = np.float32(rng.uniform(0.35, 0.9)) * inside * network * pale + (1.0 - inside) * blotches
    colour = skin[None, None, :] * (1.0 - strength[..., None]) + _PIGMENT * strength[..., None]
    rgb = colour * (light * texture)[..., None]
    rgb *= 1.0 - 0.7 * _hairs(rng, shape, int(rng.integers(0, 4)))[..., None]
    rgb += np.float32(0.01) * rng.standard_normal(rgb.shape, dtype=np.float32)
    image = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    return image, mask.astype(np.uint8) * np.uint8(255)
