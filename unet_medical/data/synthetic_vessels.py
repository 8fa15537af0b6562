"""Synthetic colour fundus photographs with vessel masks (shapes and statistics like DRIVE).

Rehearsal data, not a substitute: the images exercise the folder layout, RGB input, a thin minority
class and a field-of-view border with the shapes real retinal data sets have (DRIVE: 565 x 584 RGB,
vessels ~9 % of the pixels). Nothing learned on them says anything about real fundus images, whose
vessel appearance, pathology and camera artefacts are far richer.

What an image holds, in its own random generator:
- a round field of view (FOV), slightly off-centre, dark outside, with radial vignetting, a smooth
  uneven illumination and a fine choroidal texture;
- an optic disc (bright, yellowish) on the left or right and a darker macula on the other side;
- vessel trees grown from the disc: four arcades (5-8 px wide at the disc) plus 4-6 smaller trunks,
  tapering and splitting by Murray's law (w^3 = w1^3 + w2^3) down to 1 px, curving at random and
  kept out of the fovea; darker than the background mostly in the green channel (as in real fundus
  images, where haemoglobin absorbs green), more so for wide vessels; one connected tree per image;
- a random global gain and contrast stretch per image, a slight blur and noise.
The mask is the union of discs of diameter max(width, 1.5 px) along every vessel centre line
(0/255, ~8-12 % of the pixels), inside the FOV; the FOV mask is returned too.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage

from unet_medical.data.synthetic import SmoothField

# (height, width) of a DRIVE image.
FUNDUS_SHAPE = (584, 565)

_STEP_PX = 2.0  # centre-line step while growing a vessel
_MIN_WIDTH_PX = 1.0
# Upper edges (px) of the width classes rasterised separately (see _rasterise): a pixel is assigned
# to the nearest centre-line sample of each class, so widths within a class must be close.
_WIDTH_CLASSES = (1.5, 2.5, 4.0, 6.0, 9.0)
# Contrast of a wide vessel per channel (R, G, B): green carries most of it.
_VESSEL_CONTRAST = ((0.08, 0.15), (0.55, 0.70), (0.25, 0.40))


@dataclasses.dataclass
class Vessel:
    """One vessel from the disc or its parent to its end: centre line (n, 2) (y, x) px, widths (n,) px."""

    points: np.ndarray
    widths: np.ndarray


@dataclasses.dataclass(frozen=True)
class _Eye:
    centre: np.ndarray  # FOV centre (y, x) px
    radius: float  # FOV radius px
    disc: np.ndarray  # optic disc centre (y, x) px
    disc_radius: float
    macula: np.ndarray  # fovea centre (y, x) px
    fovea_radius: float  # avascular zone px


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2.0 * math.pi) - math.pi


def _grow(rng: np.random.Generator, eye: _Eye, start: np.ndarray, heading: float, width: float,
          bend_target: float | None) -> list[Vessel]:
    """Grow one vessel tree from `start`; returns its segments (parents before children).

    A vessel walks in steps of _STEP_PX with a slowly wandering turn rate (radius of curvature
    typically ~100 px), narrows by 0.1 % per px and sheds a child every (8..15) x max(width, 2) px:
    child width = parent x U(0.45, 0.75), the parent keeps (w^3 - w_child^3)^(1/3) (Murray's law),
    the child leaves at 30-75 degrees on alternating sides. It stops at the FOV border, in the fovea,
    below 1 px, or (children only) after (50..95) x its starting width px, so thin vessels are short.
    `bend_target` (radians) is a heading the main arcades turn towards (around the macula).
    """
    # Python floats, not numpy scalars: this loop runs ~10^4 times per image.
    cy, cx, limit = float(eye.centre[0]), float(eye.centre[1]), eye.radius - 3.0
    my, mx = float(eye.macula[0]), float(eye.macula[1])
    vessels: list[Vessel] = []
    pending = [(float(start[0]), float(start[1]), heading, width, bend_target, math.inf)]
    while pending:
        y, x, heading, width, bend, budget = pending.pop()
        points, widths = [(y, x)], [width]
        turn, side = 0.0, float(rng.choice((-1.0, 1.0)))
        noise = rng.normal(0.0, 0.006, 4096).tolist()  # enough for the longest segment
        next_branch = rng.uniform(0.3, 1.0) * rng.uniform(8.0, 15.0) * max(width, 2.0)
        travelled = 0.0
        for step in range(len(noise)):
            turn = 0.95 * turn + noise[step]
            heading += turn
            if bend is not None:
                heading += 0.015 * _wrap(bend - heading)
            distance = math.hypot(y - my, x - mx)
            keep_out = eye.fovea_radius * (3.5 if width > 3.0 else 1.5)
            if distance < keep_out:  # turn away from the macula, harder the closer
                away = math.atan2(y - my, x - mx)
                heading += 0.25 * (1.0 - distance / keep_out) * _wrap(away - heading)
            y += _STEP_PX * math.sin(heading)
            x += _STEP_PX * math.cos(heading)
            width *= 1.0 - 0.001 * _STEP_PX
            travelled += _STEP_PX
            if (math.hypot(y - cy, x - cx) > limit or distance < eye.fovea_radius or width < _MIN_WIDTH_PX
                    or travelled > budget):
                break
            points.append((y, x))
            widths.append(width)
            if travelled >= next_branch:
                child = width * rng.uniform(0.45, 0.75)
                if child >= _MIN_WIDTH_PX:
                    side = -side
                    pending.append((y, x, heading + side * rng.uniform(0.5, 1.3), child, None,
                                    rng.uniform(50.0, 95.0) * child))
                    width = math.cbrt(width ** 3 - child ** 3)
                next_branch = travelled + rng.uniform(8.0, 15.0) * max(width, 2.0)
        if len(points) >= 2:
            vessels.append(Vessel(np.array(points), np.array(widths)))
    return vessels


def _make_eye(rng: np.random.Generator, shape: tuple[int, int]) -> _Eye:
    height, width = shape
    centre = np.array([height / 2.0, width / 2.0]) + rng.uniform(-6.0, 6.0, 2)
    radius = 0.475 * min(shape) * rng.uniform(0.97, 1.0)
    side = rng.choice((-1.0, 1.0))  # optic disc left or right of the centre (left or right eye)
    disc = centre + radius * np.array([rng.uniform(-0.12, 0.12), side * rng.uniform(0.52, 0.62)])
    macula = disc + np.array([rng.uniform(0.0, 0.15), -side * rng.uniform(0.6, 0.7)]) * radius
    return _Eye(centre, radius, disc, rng.uniform(0.12, 0.15) * radius, macula, 0.08 * radius)


def vessel_trees(rng: np.random.Generator, eye: _Eye) -> list[Vessel]:
    """The vessel segments of one eye: four arcades bending around the macula and 4-6 other trunks."""
    axis = float(np.arctan2(*(eye.macula - eye.disc)))  # heading from the disc to the macula
    vessels: list[Vessel] = []
    for sign in (-1.0, 1.0):  # temporal arcades above and below the macula, then nasal ones
        vessels += _grow(rng, eye, eye.disc, axis + sign * rng.uniform(1.2, 1.5), rng.uniform(6.0, 8.0),
                         bend_target=axis + sign * rng.uniform(0.1, 0.3))
        vessels += _grow(rng, eye, eye.disc, axis + np.pi - sign * rng.uniform(0.7, 1.1), rng.uniform(5.0, 7.0),
                         bend_target=None)
    for _ in range(rng.integers(4, 7)):
        vessels += _grow(rng, eye, eye.disc, rng.uniform(-np.pi, np.pi), rng.uniform(2.5, 5.0), bend_target=None)
    return vessels


def _resample(vessels: list[Vessel]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centre-line samples every 0.5 px.

    Returns:
        points (n, 2) (y, x) px, widths (n,) px, and for each sample the index of the previous and
        of the next sample on its vessel (its own index at a vessel's ends).
    """
    samples, widths, previous, following = [], [], [], []
    offset = 0
    for vessel in vessels:
        arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(vessel.points, axis=0).T))])
        grid = np.arange(0.0, arc[-1] + 1e-9, 0.5)
        samples.append(np.stack([np.interp(grid, arc, vessel.points[:, 0]),
                                 np.interp(grid, arc, vessel.points[:, 1])], axis=1))
        widths.append(np.interp(grid, arc, vessel.widths))
        index = offset + np.arange(len(grid))
        previous.append(np.maximum(index - 1, offset))
        following.append(np.minimum(index + 1, offset + len(grid) - 1))
        offset += len(grid)
    return tuple(np.concatenate(parts) for parts in (samples, widths, previous, following))


def _segment_distance(py: np.ndarray, px: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from points (py, px) to the segments a-b ((..., 2) (y, x) arrays), float32."""
    ay, ax = a[..., 0], a[..., 1]
    ey, ex = b[..., 0] - ay, b[..., 1] - ax
    length2 = np.maximum(ey * ey + ex * ex, np.float32(1e-12))
    t = np.clip(((py - ay) * ey + (px - ax) * ex) / length2, 0.0, 1.0)
    return np.hypot(py - ay - t * ey, px - ax - t * ex)


def _rasterise(vessels: list[Vessel], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Vessel mask and opacity from the centre lines.

    For each width class, a Euclidean distance transform finds every pixel's nearest centre-line
    sample (samples are 0.5 px apart); the pixel's distance to the centre line is its exact distance
    to the two 1 px centre-line pieces on either side of that sample, and it is inside if that is at most
    half the local width. Classes are combined by union (mask) and maximum (opacity), so a thin
    vessel crossing or leaving a wide one does not notch it. Work is limited to each class's
    bounding box.

    Returns:
        mask: (H, W) bool, the union of discs of diameter max(width, 1.5 px) centred on the centre
            lines (8-connected down to the thinnest vessels).
        opacity: (H, W) float32 in [0, 1]: a Gaussian-like cross profile (half its peak at the
            vessel edge) scaled by width (1 px vessels reach 0.35, >= 5 px ones 1).
    """
    points, width, previous, following = _resample(vessels)
    exact = points.astype(np.float32)
    pixel = np.rint(points).astype(np.int64)
    in_image = np.all((pixel >= 0) & (pixel < np.array(shape)), axis=1)
    mask = np.zeros(shape, bool)
    opacity = np.zeros(shape, np.float32)
    lower = 0.0
    for upper in _WIDTH_CLASSES:
        chosen = np.flatnonzero((width > lower) & (width <= upper) & in_image)
        lower = upper
        if not len(chosen):
            continue
        margin = int(math.ceil(upper)) + 2
        low = np.maximum(pixel[chosen].min(axis=0) - margin, 0)
        high = np.minimum(pixel[chosen].max(axis=0) + margin + 1, shape)
        local = pixel[chosen] - low
        box = (slice(low[0], high[0]), slice(low[1], high[1]))
        box_shape = tuple(int(n) for n in high - low)
        not_centre = np.ones(box_shape, bool)
        not_centre[local[:, 0], local[:, 1]] = False
        lookup = np.zeros(box_shape, np.int64)
        lookup[local[:, 0], local[:, 1]] = chosen
        iy, ix = ndimage.distance_transform_edt(not_centre, return_distances=False, return_indices=True)
        nearest = lookup[iy, ix]
        py = np.arange(low[0], high[0], dtype=np.float32)[:, None]
        px = np.arange(low[1], high[1], dtype=np.float32)[None, :]
        centre = exact[nearest]
        # Pieces of 1 px (two samples) on either side: several samples round to the same pixel and
        # only one is kept, so the foot of the perpendicular may lie up to ~1 px from it.
        distance = np.minimum(_segment_distance(py, px, exact[previous[previous[nearest]]], centre),
                              _segment_distance(py, px, centre, exact[following[following[nearest]]]))
        radius = (width / 2.0).astype(np.float32)[nearest]
        # At least 0.75 px: a disc of radius 0.5 can miss every pixel centre (a sample midway
        # between four pixels), which would break 1 px vessels into pieces.
        mask[box] |= distance <= np.maximum(radius, np.float32(0.75))
        depth = np.minimum(np.float32(1.0), np.float32(0.35) + np.float32(0.65 / 4.0) * (2.0 * radius - 1.0))
        profile = np.exp(np.float32(-math.log(2.0)) * np.square(distance / (radius + np.float32(0.25))))
        np.maximum(opacity[box], depth * profile, out=opacity[box])
    return mask, opacity


def smooth_field_2d(rng: np.random.Generator, shape: tuple[int, int], min_wavelength: float,
                    max_wavelength: float) -> np.ndarray:
    """A smooth zero-mean, unit-variance random field (H, W) float32 with wavelengths in px.

    Evaluated every 8 px (the shortest wavelength used is >= 100 px) and interpolated bilinearly,
    ~60x fewer operations than on the full grid.
    """
    coarse = SmoothField.random(rng, min_wavelength, max_wavelength, num_waves=8).on_grid(
        8.0 * np.arange(shape[1] // 8 + 2), 8.0 * np.arange(shape[0] // 8 + 2), np.zeros(1))[0]
    return ndimage.zoom(coarse, 8.0, order=1, grid_mode=False)[:shape[0], :shape[1]]


def make_fundus_image(rng: np.random.Generator, shape: tuple[int, int] = FUNDUS_SHAPE
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic fundus photograph.

    Args:
        rng: the image's own generator (equal states give identical images).
        shape: (height, width) px, each >= 64.
    Returns:
        image: (H, W, 3) uint8 RGB.
        vessels: (H, W) uint8, 255 = vessel, 0 = background (0 outside the FOV).
        fov: (H, W) uint8, 255 inside the field of view.
    """
    eye = _make_eye(rng, shape)
    vessel_mask, opacity = _rasterise(vessel_trees(rng, eye), shape)
    # The optics blur the vessel edges; blurring the opacity alone is 3x cheaper than the RGB image.
    opacity = ndimage.gaussian_filter(opacity, 0.8)
    yy, xx = np.indices(shape, dtype=np.float32)
    radial = np.hypot(yy - np.float32(eye.centre[0]), xx - np.float32(eye.centre[1])) / np.float32(eye.radius)
    fov = radial <= 1.0
    vessel_mask &= fov

    # Background luminance: vignetting, uneven illumination, choroidal texture, darker macula.
    texture = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), rng.uniform(1.5, 3.0))
    texture *= np.float32(rng.uniform(0.025, 0.045)) / (texture.std() + np.float32(1e-12))
    luminance = (1.0 - np.float32(rng.uniform(0.3, 0.5)) * radial ** 2) * (
        1.0 + np.float32(0.08) * smooth_field_2d(rng, shape, 200.0, 600.0)) * (1.0 + texture)
    macula_distance = np.hypot(yy - np.float32(eye.macula[0]), xx - np.float32(eye.macula[1]))
    luminance *= 1.0 - np.float32(0.3) * np.exp(-np.square(macula_distance / np.float32(2.5 * eye.fovea_radius)))
    disc_distance = np.hypot(yy - np.float32(eye.disc[0]), xx - np.float32(eye.disc[1])) / np.float32(eye.disc_radius)
    disc = 1.0 / (1.0 + np.exp(np.clip(6.0 * (disc_distance - 1.0), -30.0, 30.0)))

    colour = (rng.uniform(0.70, 0.90), rng.uniform(0.33, 0.45), rng.uniform(0.10, 0.20))
    disc_colour = (0.20, 0.35, 0.25)
    contrast = [rng.uniform(*span) for span in _VESSEL_CONTRAST]
    # Per-image exposure: a gain and a contrast stretch about the FOV's mean.
    gain, stretch = rng.uniform(0.65, 1.25), rng.uniform(0.75, 1.3)
    edge = np.clip((1.0 - radial) * np.float32(eye.radius / 2.0) + 0.5, 0.0, 1.0)  # ~2 px soft FOV border
    noise = rng.standard_normal((3,) + shape, dtype=np.float32)
    image = np.empty(shape + (3,), np.uint8)
    for channel in range(3):
        plane = (np.float32(colour[channel]) * luminance + np.float32(disc_colour[channel]) * disc) * (
            1.0 - np.float32(contrast[channel]) * opacity)
        mean = plane[fov].mean()
        plane = np.float32(gain) * (mean + np.float32(stretch) * (plane - mean))
        plane = (plane + np.float32(0.012) * noise[channel]) * edge + np.float32(0.01) * np.abs(noise[channel])
        image[..., channel] = np.clip(np.rint(plane * 255.0), 0, 255)
    as255 = np.uint8(255)
    return image, vessel_mask.astype(np.uint8) * as255, fov.astype(np.uint8) * as255
