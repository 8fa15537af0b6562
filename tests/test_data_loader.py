"""utils.data.layouts: layouts, decoding, validation errors, folds and normalization."""
from __future__ import annotations

import pathlib
import warnings

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from unet_medical.base.errors import UNetError
from unet_medical.data import folds
from unet_medical.data import layouts
from unet_medical.data import normalize
from unet_medical.data import readers


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _binary_mask(shape: tuple[int, int], seed: int, high: int = 255) -> np.ndarray:
    mask = np.where(_rng(seed).random(shape) < 0.3, 0, high).astype(np.uint8)
    mask[0, 0], mask[0, 1] = 0, high  # both classes present whatever the draw
    return mask


def _imwrite_stack(path: pathlib.Path, stack: np.ndarray) -> None:
    # Without photometric, tifffile stores a (3, H, W) or (4, H, W) array as one planar RGB(A) image.
    tifffile.imwrite(path, stack, photometric="minisblack")


def _write_stack_pair(folder: pathlib.Path, n_images: int = 4, n_masks: int = 4, size: int = 24,
                      names: tuple[str, str] = ("train-volume.tif", "train-labels.tif")) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _imwrite_stack(folder / names[0], _rng(1).integers(0, 256, (n_images, size, size), dtype=np.uint8))
    _imwrite_stack(folder / names[1], np.stack([_binary_mask((size, size), i) for i in range(n_masks)]))


# --------------------------------------------------------------------------- ISBI on the real data
def test_isbi_layout_on_real_data(isbi_data_dir):
    data = layouts.load_training_data(isbi_data_dir)
    assert len(data) == 30 and len(data.masks) == 30 and len(data.names) == 30
    assert all(im.shape == (512, 512, 1) and im.dtype == np.uint8 for im in data.images)
    assert all(m.shape == (512, 512) and m.dtype == np.uint8 for m in data.masks)
    assert set(np.unique(np.stack(data.masks)).tolist()) == {0, 1}
    assert data.class_names == ("membrane", "interior")
    assert data.names[3] == "train-volume.tif[3]"
    assert data.class_fractions()[0] == pytest.approx(0.22, abs=0.01)
    # Independent reader: Pillow, page by page.
    with Image.open(isbi_data_dir / "train-labels.tif") as labels, \
            Image.open(isbi_data_dir / "train-volume.tif") as volume:
        labels.seek(7)
        volume.seek(7)
        np.testing.assert_array_equal(data.masks[7], (np.asarray(labels) == 255).astype(np.uint8))
        np.testing.assert_array_equal(data.images[7][..., 0], np.asarray(volume))


def test_isbi_test_volume_on_real_data(isbi_data_dir):
    data = layouts.load_test_data(isbi_data_dir)
    assert len(data) == 30 and data.masks is None
    assert data.images[0].shape == (512, 512, 1) and data.names[-1] == "test-volume.tif[29]"
    assert data.source.endswith("test-volume.tif")


# --------------------------------------------------------------------------- folder layout
def test_folder_layout_grayscale_png_tiff_gif_of_different_sizes(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    gray8 = _rng(2).integers(0, 256, (20, 30), dtype=np.uint8)
    gray16 = _rng(3).integers(0, 65536, (25, 18), dtype=np.uint16)
    gif = _rng(4).integers(0, 256, (16, 16), dtype=np.uint8)
    Image.fromarray(gray8).save(tmp_path / "images" / "slice2.png")
    tifffile.imwrite(tmp_path / "images" / "slice10.tif", gray16)
    Image.fromarray(gif).convert("P").save(tmp_path / "images" / "slice1.gif")
    m2, m10, m1 = _binary_mask((20, 30), 5), _binary_mask((25, 18), 6, high=1), _binary_mask((16, 16), 7)
    Image.fromarray(m2).save(tmp_path / "masks" / "slice2.gif")
    tifffile.imwrite(tmp_path / "masks" / "slice10.tiff", m10)
    Image.fromarray(m1).save(tmp_path / "masks" / "slice1.png")

    data = layouts.load_training_data(tmp_path)
    assert data.names == ["slice1.gif", "slice2.png", "slice10.tif"]  # natural order
    assert data.class_names == ("background", "foreground")
    assert [im.shape for im in data.images] == [(16, 16, 1), (20, 30, 1), (25, 18, 1)]
    assert [im.dtype for im in data.images] == [np.uint8, np.uint8, np.uint16]
    np.testing.assert_array_equal(data.images[1][..., 0], gray8)
    np.testing.assert_array_equal(data.images[2][..., 0], gray16)
    # The GIF went through a palette; decoding it must give back gray values, not indices.
    decoded_gif = np.asarray(Image.open(tmp_path / "images" / "slice1.gif").convert("L"))
    np.testing.assert_array_equal(data.images[0][..., 0], decoded_gif)
    np.testing.assert_array_equal(data.masks[0], m1 // 255)
    np.testing.assert_array_equal(data.masks[1], m2 // 255)
    np.testing.assert_array_equal(data.masks[2], m10)


def test_folder_layout_rgb_rgba_palette_and_jpeg_images(tmp_path):
    images, masks = tmp_path / "imgs", tmp_path / "labels"
    images.mkdir()
    masks.mkdir()
    rgb = _rng(8).integers(0, 256, (12, 14, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((12, 14, 1), 128, np.uint8)], axis=-1)
    Image.fromarray(rgb).save(images / "a.png")
    Image.fromarray(rgba).save(images / "b.png")
    tifffile.imwrite(images / "c.tif", rgb, photometric="rgb")
    Image.fromarray(rgb).save(images / "d.jpg", quality=95)
    palette_image = Image.fromarray(rgb).quantize(colors=16)
    palette_image.save(images / "e.png")
    for stem in "abcde":
        Image.fromarray(_binary_mask((12, 14), ord(stem))).save(masks / f"{stem}.png")

    data = layouts.load_training_data(tmp_path, images_dir="imgs", masks_dir="labels")
    assert all(im.shape == (12, 14, 3) and im.dtype == np.uint8 for im in data.images)
    np.testing.assert_array_equal(data.images[0], rgb)
    np.testing.assert_array_equal(data.images[1], rgb)  # alpha dropped
    np.testing.assert_array_equal(data.images[2], rgb)
    np.testing.assert_array_equal(data.images[3], np.asarray(Image.open(images / "d.jpg").convert("RGB")))
    np.testing.assert_array_equal(data.images[4], np.asarray(palette_image.convert("RGB")))


def test_n_class_masks_need_num_classes(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    ids = _rng(9).integers(0, 4, (10, 10), dtype=np.uint8)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "images" / "x.png")
    Image.fromarray(ids).save(tmp_path / "masks" / "x.png")
    data = layouts.load_training_data(tmp_path, num_classes=4)
    assert data.class_names == ("class0", "class1", "class2", "class3")
    np.testing.assert_array_equal(data.masks[0], ids)
    with pytest.raises(UNetError, match=r"x\.png.*num_classes=4"):
        layouts.load_training_data(tmp_path)
    with pytest.raises(UNetError, match=r"x\.png.*0\.\.2"):
        layouts.load_training_data(tmp_path, num_classes=3)


def test_colour_palette_mask_keeps_indices_as_class_ids(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    ids = _rng(10).integers(0, 3, (9, 11), dtype=np.uint8)
    mask = Image.fromarray(ids, mode="P")
    mask.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9))  # PASCAL VOC style colours
    mask.save(tmp_path / "masks" / "voc.png")
    Image.fromarray(np.zeros((9, 11), np.uint8)).save(tmp_path / "images" / "voc.jpg")
    data = layouts.load_training_data(tmp_path, num_classes=3)
    np.testing.assert_array_equal(data.masks[0], ids)


def test_named_stacks_and_float_and_bool_inputs(tmp_path):
    images = _rng(11).random((3, 8, 8)).astype(np.float32)
    _imwrite_stack(tmp_path / "em.tif", images)
    _imwrite_stack(tmp_path / "em_masks.tif", _rng(12).random((3, 8, 8)) < 0.5)
    data = layouts.load_training_data(tmp_path, image_stack="em.tif", mask_stack="em_masks.tif")
    assert data.names == ["em.tif[0]", "em.tif[1]", "em.tif[2]"]
    assert data.images[0].dtype == np.uint16  # float in [0, 1] is stored as uint16
    np.testing.assert_allclose(normalize.normalize_image(data.images[1])[..., 0], images[1], atol=1 / 65535)
    assert data.class_names == ("background", "foreground")


# --------------------------------------------------------------------------- errors
def test_missing_data_dir_and_empty_dir(tmp_path):
    with pytest.raises(UNetError, match="nowhere"):
        layouts.load_training_data(tmp_path / "nowhere")
    with pytest.raises(UNetError, match=r"train-volume\.tif.*images/"):
        layouts.load_training_data(tmp_path)


def test_isbi_layout_with_one_file_missing(tmp_path):
    _write_stack_pair(tmp_path)
    (tmp_path / "train-labels.tif").unlink()
    with pytest.raises(UNetError, match=r"train-volume\.tif but not train-labels\.tif"):
        layouts.load_training_data(tmp_path)


def test_missing_named_stack_and_half_given_flags(tmp_path):
    _write_stack_pair(tmp_path, names=("em.tif", "em_masks.tif"))
    with pytest.raises(UNetError, match=r"gone\.tif"):
        layouts.load_training_data(tmp_path, image_stack="em.tif", mask_stack="gone.tif")
    with pytest.raises(UNetError, match="mask_stack"):
        layouts.load_training_data(tmp_path, image_stack="em.tif")


def test_corrupt_tiff_of_random_bytes(tmp_path):
    _write_stack_pair(tmp_path)
    (tmp_path / "train-volume.tif").write_bytes(_rng(13).bytes(5000))
    with pytest.raises(UNetError, match=r"train-volume\.tif: not a TIFF file"):
        layouts.load_training_data(tmp_path)


@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_truncated_tiff(tmp_path, keep):
    _write_stack_pair(tmp_path, size=64)
    path = tmp_path / "train-labels.tif"
    content = path.read_bytes()
    path.write_bytes(content[:int(len(content) * keep)])
    with pytest.raises(UNetError, match=r"train-labels\.tif: damaged or truncated TIFF"):
        layouts.load_training_data(tmp_path)


def test_truncated_png(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(_rng(14).integers(0, 256, (64, 64), dtype=np.uint8)).save(tmp_path / "images" / "p.png")
    content = (tmp_path / "images" / "p.png").read_bytes()
    (tmp_path / "images" / "p.png").write_bytes(content[:len(content) // 2])
    Image.fromarray(_binary_mask((64, 64), 15)).save(tmp_path / "masks" / "p.png")
    with pytest.raises(UNetError, match=r"p\.png: damaged or truncated image file"):
        layouts.load_training_data(tmp_path)


def test_count_mismatch_names_both_stacks(tmp_path):
    _write_stack_pair(tmp_path, n_images=4, n_masks=3)
    with pytest.raises(UNetError, match=r"train-volume\.tif holds 4 .*train-labels\.tif holds 3"):
        layouts.load_training_data(tmp_path)


def test_shape_mismatch_names_both_files(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "images" / "s.png")
    Image.fromarray(_binary_mask((32, 30), 16)).save(tmp_path / "masks" / "s.tif")
    with pytest.raises(UNetError, match=r"s\.png is \(32, 32\) but s\.tif is \(32, 30\)"):
        layouts.load_training_data(tmp_path)


def test_bad_label_values_name_file_and_values(tmp_path):
    _write_stack_pair(tmp_path)
    labels = np.stack([_binary_mask((24, 24), i) for i in range(4)])
    labels[2, 5:9, 5:9] = 7  # a region of its own value: a third class, not an anti-aliased edge
    _imwrite_stack(tmp_path / "train-labels.tif", labels)
    with pytest.raises(UNetError, match=r"train-labels\.tif\[2\].*\{0, 7, 255\}"):
        layouts.load_training_data(tmp_path)


def test_unpaired_names_are_listed(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for stem in ("a", "b"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "images" / f"{stem}.png")
    for stem in ("a", "c"):
        Image.fromarray(_binary_mask((8, 8), 17)).save(tmp_path / "masks" / f"{stem}.png")
    with pytest.raises(UNetError, match=r"images without a mask: b\.png.*masks without an image: c\.png"):
        layouts.load_training_data(tmp_path)


def test_folder_layout_rejections(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "images" / "g.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "h.png")
    Image.fromarray(_binary_mask((8, 8), 18)).save(tmp_path / "masks" / "g.png")
    Image.fromarray(_binary_mask((8, 8), 19)).save(tmp_path / "masks" / "h.png")
    with pytest.warns(layouts.DataWarning, match=r"1 grayscale image\(s\) among RGB ones \(g\.png\)"):
        mixed = layouts.load_training_data(tmp_path)
    assert [im.shape[-1] for im in mixed.images] == [3, 3]
    np.testing.assert_array_equal(mixed.images[0][..., 0], mixed.images[0][..., 2])
    Image.fromarray(_binary_mask((8, 8), 20)).save(tmp_path / "masks" / "h.jpg")  # JPEG masks are read now
    with pytest.raises(UNetError, match=r"h\.(jpg|png) and h\.(jpg|png) share the stem"):
        layouts.load_training_data(tmp_path)
    (tmp_path / "masks" / "h.jpg").unlink()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "images" / "g.tif")
    with pytest.raises(UNetError, match=r"g\.(png|tif) and g\.(png|tif) share the stem"):
        layouts.load_training_data(tmp_path)


def test_image_validation_rules():
    with pytest.raises(UNetError, match="img.tif.*shape"):
        readers.as_image(np.zeros((4, 4, 5), np.uint8), "img.tif")
    with pytest.raises(UNetError, match="img.tif.*shape"):
        readers.as_image(np.zeros((2, 4, 4, 1), np.uint8), "img.tif")
    with pytest.raises(UNetError, match=r"img.tif.*\[-0.5, 1.0\]"):
        readers.as_image(np.array([[-0.5, 1.0]], np.float32), "img.tif")
    with pytest.raises(UNetError, match="img.tif.*NaN"):
        readers.as_image(np.array([[np.nan, 0.5]]), "img.tif")
    with pytest.raises(UNetError, match="img.tif.*complex"):
        readers.as_image(np.zeros((3, 3), np.complex64), "img.tif")
    with pytest.raises(UNetError, match="img.tif.*0..65535"):
        readers.as_image(np.array([[70000, 1]], np.int32), "img.tif")
    assert readers.as_image(np.array([[0, 300]], np.int32), "i").dtype == np.uint16  # Pillow's 'I' mode
    assert readers.as_image(np.ones((2, 2), bool), "b").max() == 255
    with pytest.raises(UNetError, match="m.png.*colour"):
        readers.as_mask(np.stack([np.zeros((3, 3)), np.ones((3, 3)), np.zeros((3, 3))], -1).astype(np.uint8), "m.png")
    gray_as_rgb = np.repeat(_binary_mask((3, 3), 21)[..., None], 3, axis=-1)
    np.testing.assert_array_equal(readers.as_mask(gray_as_rgb, "m.png"), gray_as_rgb[..., 0])


def test_to_class_ids_reference_mapping():
    np.testing.assert_array_equal(readers.to_class_ids(np.array([[0, 255]], np.uint8), None, "m"), [[0, 1]])
    np.testing.assert_array_equal(readers.to_class_ids(np.array([[0, 1]], np.uint16), 2, "m"), [[0, 1]])
    np.testing.assert_array_equal(readers.to_class_ids(np.array([[True, False]]), None, "m"), [[1, 0]])
    np.testing.assert_array_equal(readers.to_class_ids(np.array([[0.0, 1.0]]), None, "m"), [[0, 1]])
    with pytest.raises(UNetError, match=r"m: .*\{0.0, 0.5\}"):
        readers.to_class_ids(np.array([[0.0, 0.5]]), None, "m")
    with pytest.raises(UNetError, match=r"m: .*\{-1, 0\}"):
        readers.to_class_ids(np.array([[-1, 0]], np.int16), 3, "m")
    with pytest.raises(UNetError, match="num_classes"):
        layouts.load_training_data(".", num_classes=1)


def test_single_class_masks_warn(tmp_path):
    _write_stack_pair(tmp_path)
    _imwrite_stack(tmp_path / "train-labels.tif", np.full((4, 24, 24), 255, np.uint8))
    with pytest.warns(readers.DataWarning, match="all-interior"):
        layouts.load_training_data(tmp_path)
    labels = np.stack([_binary_mask((24, 24), i) for i in range(4)])
    labels[1] = 0
    _imwrite_stack(tmp_path / "train-labels.tif", labels)
    with pytest.warns(readers.DataWarning, match=r"1 of 4 masks.*train-volume\.tif\[1\]"):
        layouts.load_training_data(tmp_path)
    _imwrite_stack(tmp_path / "train-labels.tif", np.stack([_binary_mask((24, 24), i) for i in range(4)]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", readers.DataWarning)
        layouts.load_training_data(tmp_path)


# --------------------------------------------------------------------------- test data, readers
def test_load_test_data_from_file_folder_and_stack(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in (10, 2, 1):
        Image.fromarray(np.full((6, 7), i, np.uint8)).save(folder / f"img{i}.png")
    (folder / "notes.txt").write_text("not an image")
    data = layouts.load_test_data(tmp_path, input_path=folder)
    assert data.names == ["img1.png", "img2.png", "img10.png"] and data.masks is None
    assert [int(im[0, 0, 0]) for im in data.images] == [1, 2, 10]
    single = layouts.load_test_data(tmp_path, input_path=folder / "img2.png")
    assert single.names == ["img2.png"] and single.images[0].shape == (6, 7, 1)
    rgb = _rng(22).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    rgb_data = layouts.load_test_data(tmp_path, input_path="rgb.tif")  # relative: found inside data_dir
    np.testing.assert_array_equal(rgb_data.images[0], rgb)
    _imwrite_stack(tmp_path / "test-volume.tif", np.zeros((3, 6, 6), np.uint8))
    assert layouts.load_test_data(tmp_path).names == ["test-volume.tif[0]", "test-volume.tif[1]", "test-volume.tif[2]"]
    with pytest.raises(UNetError, match="missing.png"):
        layouts.load_test_data(tmp_path, input_path="missing.png")
    with pytest.raises(UNetError, match="other.tif"):
        layouts.load_test_data(tmp_path, test_stack="other.tif")


def test_read_image_file_rejects_a_stack(tmp_path):
    _imwrite_stack(tmp_path / "s.tif", np.zeros((2, 4, 4), np.uint8))
    assert readers.read_stack(tmp_path / "s.tif").shape == (2, 4, 4)
    with pytest.raises(UNetError, match=r"s\.tif.*2 images"):
        readers.read_image_file(tmp_path / "s.tif")
    with pytest.raises(UNetError, match="nothing.png"):
        readers.read_image_file(tmp_path / "nothing.png")


# --------------------------------------------------------------------------- folds, normalization
@settings(max_examples=60, deadline=None)
@given(st.integers(2, 60).flatmap(lambda n: st.tuples(st.just(n), st.integers(2, n))))
def test_fold_split_properties(n_and_k):
    num_items, num_folds = n_and_k
    validated = []
    sizes = []
    for fold in range(num_folds):
        train_idx, val_idx = folds.fold_split(num_items, num_folds, fold)
        assert len(val_idx) > 0 and np.all(np.diff(val_idx) == 1)  # one contiguous block
        assert not set(train_idx) & set(val_idx)
        assert sorted(np.concatenate([train_idx, val_idx]).tolist()) == list(range(num_items))
        np.testing.assert_array_equal(val_idx, np.array_split(np.arange(num_items), num_folds)[fold])
        validated.extend(val_idx.tolist())
        sizes.append(len(val_idx))
    assert sorted(validated) == list(range(num_items))  # every item validated exactly once
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("args, match", [((10, 1, 0), "num_folds"), ((10, 5, 5), "fold=5"),
                                         ((10, 5, -1), "fold=-1"), ((3, 4, 0), "only 3 images")])
def test_fold_split_errors(args, match):
    with pytest.raises(UNetError, match=match):
        folds.fold_split(*args)


def test_normalize_image():
    u8 = np.array([[0, 128, 255]], np.uint8)
    u16 = np.array([[0, 32768, 65535]], np.uint16)
    for image, scale in ((u8, 255.0), (u16, 65535.0)):
        out = normalize.normalize_image(image)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, image / scale, rtol=1e-6)
    assert normalize.normalize_image(np.array([0.25], np.float64)).dtype == np.float32
    with pytest.raises(TypeError):
        normalize.normalize_image(np.array([1], np.int64))
