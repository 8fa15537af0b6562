"""Time resampling one case to a target spacing and its probabilities back (data.volume_resample, docs/volumes.md).

    python benchmarks/volume_resample.py [--shape 512,512,100] [--spacing 0.8,0.8,2.5] [--target 1,1,2.5]
                                         [--classes 3] [--repeats 3]

A CT-like int16 volume (smooth anatomy plus noise) with a label map of --classes classes is resampled as
training does (image by cubic spline, labels one-hot per class, data.volume_resample), then the target
grid's class probabilities go back onto the case's grid as evaluate and predict do. The image step is
also timed with a linear spline (order 1), the cheaper choice nnU-Net does not make, and as scipy's
ndimage.zoom does it in one call per slice (per volume without a slice axis), the route the package's
axis-by-axis sparse matrices replace. The image and probabilities steps are also timed as a resampled 3-D
run's SavedModel runs them: data.volume_resample_graph in one traced graph of unknown shape, building its
dense weights on every call. The steps alternate, so a change of CPU clock hits all alike.
Prints the median and range in seconds and the ratios per repeat.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import numpy as np
from scipy import ndimage  # noqa: F401  imported here so its start-up is not timed as the first step

from unet_medical.data.volume_resample import (axis_weights, out_of_plane_axis, probabilities_to_labels, resample_image,
                                               resample_labels, resample_to_shape, resampled_shape)


def triple(text: str, kind: type) -> tuple:
    values = tuple(kind(v) for v in text.split(","))
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: expected three comma-separated values")
    return values


def ct_case(shape: tuple[int, int, int], classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(int16 HU-like image, uint8 labels) of `shape`: nested ellipsoids, noise sd 12."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    radius = sum(g * g for g in grid)
    labels = np.zeros(shape, np.uint8)
    for c in range(1, classes):
        labels[radius < 0.8 / c] = c
    image = np.where(labels > 0, 40.0 + 20 * labels, -100.0) + rng.normal(0, 12, shape)
    return image.astype(np.int16), labels


def zoom_per_slice(image: np.ndarray, shape: tuple[int, int, int], slice_axis: int | None) -> np.ndarray:
    """The reference route: scipy.ndimage.zoom, cubic, in plane slice by slice and nearest along slice_axis."""
    def zoom(x: np.ndarray, to: tuple[int, ...], order: int) -> np.ndarray:
        return ndimage.zoom(x, [n / m for n, m in zip(to, x.shape)], order=order, mode="reflect", grid_mode=True,
                            output=np.float32)

    if slice_axis is None:
        return zoom(image.astype(np.float32), shape, 3)
    moved = np.moveaxis(image.astype(np.float32), slice_axis, 0)
    in_plane = tuple(n for a, n in enumerate(shape) if a != slice_axis)
    moved = np.stack([zoom(s, in_plane, 3) for s in moved])
    return np.moveaxis(zoom(moved, (shape[slice_axis],) + in_plane, 0), 0, slice_axis)


def timed(step: Callable[[], object]) -> float:
    axis_weights.cache_clear()  # cases differ in shape: each pays for its own axis weights
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def graph_steps(image: np.ndarray, probs: list[np.ndarray], spacing: tuple, target: tuple) -> dict[str, Callable]:
    """The image there and the probabilities back, in the serving graph's traced resampling (warmed up here)."""
    import tensorflow as tf

    from unet_medical.data.volume_resample import IMAGE_ORDER, PROBABILITY_ORDER
    from unet_medical.data.volume_resample_graph import (out_of_plane_axis_graph, resample_volumes_graph,
                                                         resampled_shape_graph)

    volume_spec = tf.TensorSpec((None, None, None, None, None), tf.float32)

    @tf.function(input_signature=[volume_spec, tf.TensorSpec((3,), tf.float64)])
    def there(volumes, spacing_mm):
        shape = resampled_shape_graph(tf.shape(volumes)[1:4], spacing_mm, target)
        return resample_volumes_graph(volumes, shape, IMAGE_ORDER, out_of_plane_axis_graph(spacing_mm, target))

    @tf.function(input_signature=[volume_spec, tf.TensorSpec((3,), tf.int32), tf.TensorSpec((3,), tf.float64)])
    def back(probabilities, shape, spacing_mm):
        return resample_volumes_graph(probabilities, shape, PROBABILITY_ORDER, out_of_plane_axis_graph(spacing_mm, target))

    x = tf.constant(image.astype(np.float32)[None, ..., None])
    p = tf.constant(np.stack(probs, -1)[None])
    mm, shape = tf.constant(spacing, tf.float64), tf.constant(image.shape, tf.int32)
    steps = {"image cubic, graph": lambda: there(x, mm).numpy(),
             "probabilities back, graph": lambda: tf.argmax(back(p, shape, mm), -1).numpy()}
    for step in steps.values():
        step()  # traced once, as a loaded SavedModel is
    return steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=lambda t: triple(t, int), default=(512, 512, 100))
    parser.add_argument("--spacing", type=lambda t: triple(t, float), default=(0.8, 0.8, 2.5))
    parser.add_argument("--target", type=lambda t: triple(t, float), default=(1.0, 1.0, 2.5))
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    image, labels = ct_case(args.shape, args.classes)
    new_shape = resampled_shape(args.shape, args.spacing, args.target)
    axis = out_of_plane_axis(args.spacing, args.target)
    probs = [np.random.default_rng(c).random(new_shape, dtype=np.float32) for c in range(args.classes)]
    steps = {
        "image cubic": lambda: resample_image(image, args.spacing, args.target),
        "image linear": lambda: resample_to_shape(image, new_shape, 1, axis),
        "image cubic, zoom": lambda: zoom_per_slice(image, new_shape, axis),
        "labels per class": lambda: resample_labels(labels, args.spacing, args.target, args.classes),
        "probabilities back": lambda: probabilities_to_labels(iter(probs), args.shape, args.spacing, args.target),
        **graph_steps(image, probs, args.spacing, args.target),
    }
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():  # alternating: cubic and linear see the same clock
            times[name].append(timed(step))
    print(f"{'x'.join(map(str, args.shape))} at {'x'.join(map(str, args.spacing))} mm -> "
          f"{'x'.join(map(str, new_shape))} at {'x'.join(map(str, args.target))} mm, {args.classes} classes, "
          f"slice axis {axis}")
    for name, values in times.items():
        print(f"  {name:25s} median {statistics.median(values):7.3f} s  (min {min(values):.3f}, max {max(values):.3f})")
    for a, b in (("image cubic", "image linear"), ("image cubic, zoom", "image cubic"),
                 ("image cubic, graph", "image cubic"), ("probabilities back, graph", "probabilities back")):
        ratios = [x / y for x, y in zip(times[a], times[b])]
        print(f"  {a} / {b}, per repeat: {', '.join(f'{r:.2f}' for r in ratios)}")
    same = np.abs(resample_image(image, args.spacing, args.target) - zoom_per_slice(image, new_shape, axis)).max()
    print(f"  largest difference between the two cubic routes: {same:.3g} (image range {np.ptp(image)})")


if __name__ == "__main__":
    main()
