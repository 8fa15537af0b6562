"""utils.data.mask_semantics through the folder layout: every way masks are published, decided once per set."""
from __future__ import annotations

import pathlib
import warnings

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from unet_medical.base.errors import UNetError
from unet_medical.data import layouts, mask_semantics
from unet_medical.data.readers import DataWarning


def _truth(shape: tuple[int, int] = (48, 64), seed: int = 0) -> np.ndarray:
    """A binary mask (uint8 0/1) of a disk, a bar and a thin line, shifted by seed."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    mask = ((yy - 20 - seed) ** 2 + (xx - 22) ** 2 <= 11 ** 2)
    mask |= (yy >= 36) & (yy < 42) & (xx >= 5 + seed) & (xx < 58)
    mask |= (xx == 50) & (yy < 30)
    return mask.astype(np.uint8)


def _write_set(root: pathlib.Path, masks: dict[str, callable], shape: tuple[int, int]) -> None:
    """images/STEM.png (noise) + masks/NAME written by the given writer."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    for number, (name, write) in enumerate(masks.items()):
        write(root / "masks" / name)
        noise = np.random.default_rng(number).integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(noise).save(root / "images" / f"{pathlib.Path(name).stem}.png")


def _load(root: pathlib.Path, **kwargs) -> tuple[layouts.SegmentationData, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = layouts.load_training_data(root, **kwargs)
    return data, [str(w.message) for w in caught if issubclass(w.category, DataWarning)]


def _edges(mask: np.ndarray, within: int) -> np.ndarray:
    """Pixels within `within` px of a boundary between 0 and 1 of a binary mask."""
    boundary = ndimage.binary_dilation(mask) ^ ndimage.binary_erosion(mask, border_value=1)
    return ndimage.binary_dilation(boundary, iterations=within)


def _palette(mask: np.ndarray) -> Image.Image:
    image = Image.fromarray(mask, "P")
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    return image


def _rgba(colour_shape: bool, truth: np.ndarray) -> np.ndarray:
    rgba = np.zeros(truth.shape + (4,), np.uint8)
    if colour_shape:  # a gray mask saved as RGBA: opaque everywhere
        rgba[..., :3] = truth[..., None] * 255
        rgba[..., 3] = 255
    else:  # a shape drawn on a transparent layer: constant white, alpha carries the shape
        rgba[..., :3] = 255
        rgba[..., 3] = truth * 255
    return rgba


FORMATS = {
    "bits1.png": (lambda p, t: Image.fromarray(t.astype(bool)).save(p), "binary 0/1"),
    "palette.png": (lambda p, t: _palette(t).save(p), "binary 0/1"),
    "ids01.png": (lambda p, t: Image.fromarray(t).save(p), "binary 0/1"),
    "gray255.png": (lambda p, t: Image.fromarray(t * 255).save(p), "binary 0/255"),
    "gray16.png": (lambda p, t: Image.fromarray(t.astype(np.uint16) * 65535).save(p), "binary 0/65535"),
    "gray16.tif": (lambda p, t: tifffile.imwrite(p, t.astype(np.uint16) * 65535), "binary 0/65535"),
    "alpha.png": (lambda p, t: Image.fromarray(_rgba(False, t)).save(p), "alpha channel"),
    "colour.png": (lambda p, t: Image.fromarray(_rgba(True, t)).save(p), "binary 0/255"),
}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_each_format_reads_back_exactly_and_says_how(tmp_path, name):
    write, described = FORMATS[name]
    truths = [_truth(seed=s) for s in range(2)]
    # Two masks per set, the second empty: an empty mask on a transparent layer must stay background.
    truths[1][:] = 0
    _write_set(tmp_path, {f"a{name}": lambda p: write(p, truths[0]), f"b{name}": lambda p: write(p, truths[1])},
               truths[0].shape)
    data, _ = _load(tmp_path)
    for mask, truth in zip(data.masks, truths):
        np.testing.assert_array_equal(mask, truth)
    assert described in data.mask_format and "\n" not in data.mask_format


def _jpeg(path: pathlib.Path, array: np.ndarray, quality: int = 75) -> None:
    Image.fromarray(array).save(path, format="JPEG", quality=quality)


def test_binary_jpeg_masks_equal_the_original_except_at_edges_with_one_warning(tmp_path):
    truths = [_truth(seed=s) for s in range(3)]
    writers = {f"m{i}.jpg": (lambda p, t=t: _jpeg(p, t * 255)) for i, t in enumerate(truths)}
    _write_set(tmp_path, writers, truths[0].shape)
    decoded = np.asarray(Image.open(tmp_path / "masks" / "m0.jpg"))
    assert len(np.unique(decoded)) > 2  # the codec really spread the two levels
    data, messages = _load(tmp_path)
    for mask, truth in zip(data.masks, truths):
        wrong = mask != truth
        assert wrong.sum() <= 0.01 * truth.size
        assert not np.any(wrong & ~_edges(truth, 2))  # disagreement only within 2 px of an edge
    lossy = [m for m in messages if "JPEG" in m]
    assert len(lossy) == 1 and "3 JPEG mask(s)" in lossy[0] and "thresholded" in lossy[0]
    assert data.mask_format.startswith("lossy binary (JPEG)")


def test_colour_jpeg_of_a_binary_mask_reads_through_its_luminance(tmp_path):
    truth = _truth()
    red = np.zeros(truth.shape + (3,), np.uint8)
    red[truth > 0] = (220, 30, 20)  # red on black: luminance about 89 against 0
    _write_set(tmp_path, {"red.jpg": lambda p: _jpeg(p, red)}, truth.shape)
    data, messages = _load(tmp_path)
    assert not np.any((data.masks[0] != truth) & ~_edges(truth, 2))
    assert len(messages) == 1 and "midpoint" in messages[0]


def test_jpeg_mask_with_three_levels_names_the_file_and_the_flag(tmp_path):
    truth = _truth()
    three = truth * 255
    three[2:14, 40:60] = 128  # a third level, a region of its own
    _write_set(tmp_path, {"a.jpg": lambda p: _jpeg(p, truth * 255), "b.jpg": lambda p: _jpeg(p, three)}, truth.shape)
    with pytest.raises(UNetError) as info:
        layouts.load_training_data(tmp_path)
    message = str(info.value)
    assert message.startswith("b.jpg: ") and "num_classes" in message and "lossless" in message
    assert "\n" not in message
    # Told there are 3 classes, the equally spaced levels 0, 127.5, 255 map back to them.
    data, _ = _load(tmp_path, num_classes=3)
    ids = np.where(three == 128, 1, np.where(three == 255, 2, 0))
    wrong = data.masks[1] != ids
    assert wrong.sum() <= 0.02 * ids.size
    assert not np.any(wrong & ~_edges(ids > 0, 2) & ~_edges(ids == 1, 2))


@pytest.mark.parametrize("num_classes", [None, 3])
def test_class_ids_saved_as_jpeg_are_refused(tmp_path, num_classes):
    # Ids 0, 1, 2 lie closer together than JPEG noise: even values that look valid may have moved.
    ids = (np.arange(48 * 64).reshape(48, 64) // 1000 % 3).astype(np.uint8)
    _write_set(tmp_path, {"c.jpg": lambda p: _jpeg(p, ids)}, ids.shape)
    with pytest.raises(UNetError, match=r"^c\.jpg: JPEG mask .*lossless"):
        layouts.load_training_data(tmp_path, num_classes=num_classes)


def test_lossy_and_lossless_webp_masks(tmp_path):
    truth = _truth()
    _write_set(tmp_path, {"a.webp": lambda p: Image.fromarray(truth * 255).save(p, quality=60),
                          "b.webp": lambda p: Image.fromarray(truth).save(p, lossless=True)}, truth.shape)
    data, messages = _load(tmp_path)
    np.testing.assert_array_equal(data.masks[1], truth)  # lossless 0/1: read exactly, no threshold guessed
    assert not np.any((data.masks[0] != truth) & ~_edges(truth, 2))
    assert "lossy binary (WebP)" in data.mask_format


def test_anti_aliased_png_masks_are_thresholded_not_dilated(tmp_path):
    big = np.kron(_truth(), np.ones((4, 4), np.uint8)) * 255
    small = np.asarray(Image.fromarray(big).resize((64, 48), Image.LANCZOS))  # soft edges, 0..255
    assert len(np.unique(small)) > 10
    _write_set(tmp_path, {"aa.png": lambda p: Image.fromarray(small).save(p)}, small.shape)
    data, _ = _load(tmp_path)
    np.testing.assert_array_equal(data.masks[0], (small > 127.5).astype(np.uint8))
    np.testing.assert_array_equal(data.masks[0], _truth())  # the mask drawn, not its blurred hull
    assert data.mask_format.startswith("anti-aliased binary 0/255")


def _instances(shape: tuple[int, int], count: int, seed: int) -> np.ndarray:
    """An instance label image: `count` separate squares with ids 1..count."""
    labels = np.zeros(shape, np.uint16)
    for k in range(count):
        y, x = divmod(k, 6)
        labels[2 + 7 * y: 7 + 7 * y, 2 + 7 * x + seed: 7 + 7 * x + seed] = k + 1
    return labels


def test_instance_labels_are_decided_for_the_set_not_per_file(tmp_path):
    # One image with 3 objects would look like 3 classes on its own; the set says instances.
    sets = {"many.png": _instances((48, 48), 20, 0), "few.png": _instances((48, 48), 3, 1)}
    _write_set(tmp_path, {n: (lambda p, a=a: Image.fromarray(a).save(p)) for n, a in sets.items()}, (48, 48))
    data, _ = _load(tmp_path)
    for mask, name in zip(data.masks, sorted(sets, key=lambda n: n)):
        np.testing.assert_array_equal(mask, (sets[name] > 0).astype(np.uint8))
    assert data.mask_format.startswith("instance labels (20 ids")


def test_a_nine_class_set_without_num_classes_is_refused_not_binarised(tmp_path):
    # Class ids are not one blob each: every class appears in several separate places.
    ids = (np.add.outer(np.arange(48) // 6, np.arange(48) // 6) % 9).astype(np.uint8)
    _write_set(tmp_path, {"k.png": lambda p: Image.fromarray(ids).save(p)}, ids.shape)
    with pytest.raises(UNetError, match=r"^k\.png: .*num_classes=9$"):
        layouts.load_training_data(tmp_path)
    data, _ = _load(tmp_path, num_classes=9)
    np.testing.assert_array_equal(data.masks[0], ids)


def test_two_means_modes_of_a_ringing_histogram():
    histogram = np.zeros(256)
    histogram[[0, 1, 2]] = [900, 50, 10]
    histogram[[250, 254, 255]] = [20, 60, 400]
    histogram[60:200] = 1  # ringing between the levels
    assert mask_semantics.two_means_modes(histogram) == (0.0, 255.0)
    single = np.zeros(256)
    single[3] = 100
    assert mask_semantics.two_means_modes(single) == (3.0, 3.0)
