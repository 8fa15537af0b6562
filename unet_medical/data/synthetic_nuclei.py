"""Synthetic nucleus images with foreground masks in three microscopy styles of mixed sizes.

Rehearsal data, not a substitute: the set exercises what public nucleus collections (for example
the 2018 Data Science Bowl) throw at a model - images of different sizes, dark-field and
bright-field polarity, gray and stained RGB, nuclei of different sizes, shapes and contrast that
touch - with the file layout they use. Nothing learned on it transfers to real micrographs.

Styles (each image draws one; write_nuclei cycles through them so every set mixes all three):
- "fluorescence": dark background, bright nuclei with chromatin texture, out-of-focus blur,
  gray (stored as RGB with equal channels, as such collections store them);
- "brightfield": light, unevenly lit background, darker nuclei with a faint bright halo, gray;
- "tissue": an H&E-like stained section by the Beer-Lambert law: eosin-pink stroma with fibres
  and pale gaps, hematoxylin-purple nuclei (stain vectors of Ruifrok & Johnston 2001).
Nuclei are ellipses (axis ratio 0.55-1) with a wavy outline, radius 4-25 px (each image has its
own typical size), placed at random or touching a neighbour. Masks: 255 = nucleus, 0 = background,
the union of all nuclei (touching nuclei merge, as in semantic masks).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage

STYLES = ("fluorescence", "brightfield", "tissue")
# (height, width) choices, 256x256 up to 640x512.
SHAPES = ((256, 256), (256, 320), (320, 256), (360, 360), (400, 300), (512, 512), (512, 640), (640, 512))
RADIUS_RANGE_PX = (4.0, 25.0)
# Optical density per unit stain (R, G, B), Ruifrok & Johnston 2001.
_HEMATOXYLIN = np.array([0.650, 0.704, 0.286], np.float32)
_EOSIN = np.array([0.072, 0.990, 0.105], np.float32)
# Fraction of the image the nuclei are meant to cover, per style.
_COVERAGE = {"fluorescence": (0.08, 0.28), "brightfield": (0.08, 0.25), "tissue": (0.18, 0.38)}


@dataclasses.dataclass(frozen=True)
class Nucleus:
    """One nucleus: centre (y, x) px, semi-axes a >= b px, orientation (rad), outline ripple, strength."""

    y: float
    x: float
    a: float
    b: float
    angle: float
    ripple: tuple[tuple[float, float], ...]  # (amplitude, phase) of harmonics 2, 3, 4 of the outline
    strength: float  # relative signal (fluorescence), absorbance or stain amount, 0.15..1


def place_nuclei(rng: np.random.Generator, shape: tuple[int, int], style: str) -> list[Nucleus]:
    """Draw the nuclei of one image: size, shape, position (random or touching) and strength."""
    low, high = RADIUS_RANGE_PX
    typical = math.exp(rng.uniform(math.log(5.0), math.log(16.0)))
    coverage = rng.uniform(*_COVERAGE[style])
    count = max(1, int(round(coverage * shape[0] * shape[1] / (math.pi * typical ** 2 * 0.8))))
    touching = rng.uniform(0.2, 0.6)  # share of nuclei placed against an earlier one
    nuclei: list[Nucleus] = []
    for _ in range(count):
        radius = float(np.clip(typical * math.exp(rng.normal(0.0, 0.25)), low, high))
        ratio = rng.uniform(0.55, 1.0)
        a, b = radius / math.sqrt(ratio), radius * math.sqrt(ratio)  # same area as the circle
        a, b = min(a, high), max(b, low)
        if nuclei and rng.random() < touching:
            other = nuclei[int(rng.integers(len(nuclei)))]
            direction = rng.uniform(-math.pi, math.pi)
            gap = (math.sqrt(other.a * other.b) + math.sqrt(a * b)) * rng.uniform(0.8, 1.0)
            y, x = other.y + gap * math.sin(direction), other.x + gap * math.cos(direction)
        else:
            y, x = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        ripple = tuple((float(rng.uniform(0.0, 0.06)), float(rng.uniform(0.0, 2 * math.pi))) for _ in range(3))
        # A fifth of the nuclei are faint: the contrast a threshold would miss.
        strength = rng.uniform(0.15, 0.4) if rng.random() < 0.2 else rng.uniform(0.5, 1.0)
        nuclei.append(Nucleus(y, x, a, b, rng.uniform(0.0, math.pi), ripple, float(strength)))
    return nuclei


def rasterise_nuclei(nuclei: list[Nucleus], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Mask and soft strength map of the nuclei.

    Inside a nucleus, the normalised radius rho = sqrt((u/a)^2 + (v/b)^2) (u, v along its axes) is at
    most the outline 1 + sum_k A_k cos(k phi + p_k). The soft edge spans ~1 px (rho scaled by b).

    Returns:
        mask: (H, W) bool union of the nuclei.
        strength: (H, W) float32, per pixel the largest of strength x soft coverage x a centre-bright
            profile (1 at the centre, 0.75 at the edge).
    """
    mask = np.zeros(shape, bool)
    strength = np.zeros(shape, np.float32)
    for nucleus in nuclei:
        reach = nucleus.a * 1.3 + 2.0
        y0, y1 = max(int(nucleus.y - reach), 0), min(int(nucleus.y + reach) + 1, shape[0])
        x0, x1 = max(int(nucleus.x - reach), 0), min(int(nucleus.x + reach) + 1, shape[1])
        if y0 >= y1 or x0 >= x1:
            continue
        dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(nucleus.y)
        dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(nucleus.x)
        cos, sin = np.float32(math.cos(nucleus.angle)), np.float32(math.sin(nucleus.angle))
        u = (dx * cos + dy * sin) / np.float32(nucleus.a)
        v = (dy * cos - dx * sin) / np.float32(nucleus.b)
        rho = np.sqrt(u * u + v * v)
        phi = np.arctan2(v, u)
        outline = np.ones_like(rho)
        for harmonic, (amplitude, phase) in enumerate(nucleus.ripple, start=2):
            outline += np.float32(amplitude) * np.cos(harmonic * phi + np.float32(phase))
        margin = (outline - rho) * np.float32(nucleus.b)  # ~ px inside the outline
        mask[y0:y1, x0:x1] |= margin >= 0.0
        soft = np.clip(margin + 0.5, 0.0, 1.0) * (1.0 - 0.25 * np.minimum(rho, 1.0) ** 2)
        np.maximum(strength[y0:y1, x0:x1], np.float32(nucleus.strength) * soft,
                   out=strength[y0:y1, x0:x1])
    return mask, strength


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float | tuple) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation, float32."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return field / (field.std() + np.float32(1e-12))


def _uneven_light(rng: np.random.Generator, shape: tuple[int, int], amount: float) -> np.ndarray:
    """1 + a smooth tilt and bump across the image of relative size `amount`, (H, W) float32."""
    yy = np.linspace(-1.0, 1.0, shape[0], dtype=np.float32)[:, None]
    xx = np.linspace(-1.0, 1.0, shape[1], dtype=np.float32)[None, :]
    gy, gx, cy, cx = rng.uniform(-1.0, 1.0, 4).astype(np.float32)
    return 1.0 + np.float32(amount) * (0.5 * (gy * yy + gx * xx) - 0.5 * ((yy - cy) ** 2 + (xx - cx) ** 2))


def make_nuclei_image(rng: np.random.Generator, style: str,
                      shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic nucleus image.

    Args:
        rng: the image's own generator (equal states give identical images).
        style: one of STYLES.
        shape: (height, width) px.
    Returns:
        image: (H, W, 3) uint8 RGB (equal channels for the gray styles).
        mask: (H, W) uint8, 255 = nucleus.
    """
    if style not in STYLES:
        raise ValueError(f"style {style!r}: expected one of {', '.join(STYLES)}")
    mask, strength = rasterise_nuclei(place_nuclei(rng, shape, style), shape)
    chromatin = 1.0 + np.float32(rng.uniform(0.1, 0.25)) * _smooth_noise(rng, shape, 1.0)
    noise = rng.standard_normal(shape, dtype=np.float32)
    if style == "fluorescence":
        background = np.float32(rng.uniform(0.02, 0.08)) * _uneven_light(rng, shape, 0.5)
        signal = np.float32(rng.uniform(0.6, 1.0)) * strength * chromatin
        gray = ndimage.gaussian_filter(background + signal, rng.uniform(0.5, 1.5))
        gray += np.float32(rng.uniform(0.005, 0.03)) * noise
        rgb = np.repeat(gray[..., None], 3, axis=-1)
    elif style == "brightfield":
        light = np.float32(rng.uniform(0.7, 0.92)) * _uneven_light(rng, shape, 0.3)
        absorbance = np.float32(rng.uniform(0.35, 0.7)) * strength * chromatin
        halo = np.clip(ndimage.gaussian_filter(mask.astype(np.float32), 2.0) - mask, 0.0, None)
        gray = light * (1.0 - absorbance + np.float32(0.25) * halo)
        gray = ndimage.gaussian_filter(gray, 0.7) + np.float32(rng.uniform(0.005, 0.02)) * noise
        rgb = np.repeat(gray[..., None], 3, axis=-1) * np.float32(rng.uniform(0.95, 1.05, 3))
    else:  # tissue: optical density of the two stains, then Beer-Lambert
        fibres = _smooth_noise(rng, shape, (rng.uniform(1.0, 2.0), rng.uniform(4.0, 8.0)))
        fibres = ndimage.rotate(fibres, rng.uniform(0.0, 180.0), reshape=False, mode="reflect")
        stroma = np.clip(0.6 + 0.35 * fibres + 0.3 * _smooth_noise(rng, shape, 12.0), 0.05, None)
        eosin = np.float32(rng.uniform(0.12, 0.28)) * stroma
        hematoxylin = np.float32(rng.uniform(0.6, 1.1)) * strength * chromatin + np.float32(0.04)
        density = eosin[..., None] * _EOSIN + hematoxylin[..., None] * _HEMATOXYLIN
        rgb = np.exp(-np.float32(math.log(10.0)) * density)
        rgb = ndimage.gaussian_filter(rgb, (0.6, 0.6, 0.0)) + np.float32(0.015) * noise[..., None]
    image = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    return image, mask.astype(np.uint8) * np.uint8(255)
