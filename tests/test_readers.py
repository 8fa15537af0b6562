"""utils.data.readers: compressed TIFFs, 16-bit/float/RGBA/palette files, missing codecs, damaged files."""
from __future__ import annotations

import importlib
import pathlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from unet_medical.data import layouts, readers
from unet_medical.base.errors import UNetError

_tifffile_module = importlib.import_module("tifffile.tifffile")


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _smooth_uint8(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A smooth image (gradients plus a low-frequency bump) that JPEG reproduces closely."""
    yy, xx = np.mgrid[0:shape[-2], 0:shape[-1]] if len(shape) == 2 else np.mgrid[0:shape[0], 0:shape[1]]
    base = 60 + 0.8 * xx + 0.5 * yy + 25 * np.sin(xx / 9.0 + seed) * np.cos(yy / 11.0)
    if len(shape) == 3:
        base = base[..., None] + np.array([0.0, 20.0, -20.0])[: shape[2]]
    return np.clip(base, 0, 255).astype(np.uint8)


def _write_tiff(path: pathlib.Path, data: np.ndarray, **kwargs) -> None:
    photometric = "rgb" if data.ndim == 3 and data.shape[-1] == 3 else "minisblack"
    tifffile.imwrite(path, data, photometric=photometric, **kwargs)


# --------------------------------------------------------------------------- compressed TIFF
@pytest.mark.parametrize("compression", ["lzw", "zlib", "adobe_deflate", "packbits"])
def test_lossless_compressed_tiff_stacks_round_trip(tmp_path, compression):
    stack = _rng(1).integers(0, 256, (3, 40, 48), dtype=np.uint8)
    stack[:, :10] = 7  # runs, so that PackBits and LZW really compress something
    path = tmp_path / f"{compression}.tif"
    _write_tiff(path, stack, compression=compression)
    with tifffile.TiffFile(path) as tif:  # the file really is compressed
        assert tif.pages.first.compression != tifffile.COMPRESSION.NONE
    np.testing.assert_array_equal(readers.read_stack(path), stack)


@pytest.mark.parametrize("compression,predictor", [("lzw", True), ("zlib", True), ("zlib", False),
                                                   ("packbits", False)])
def test_compressed_uint16_rgb_and_tiled_tiffs_round_trip(tmp_path, compression, predictor):
    gray16 = _rng(2).integers(0, 65536, (33, 45), dtype=np.uint16)
    rgb16 = _rng(3).integers(0, 65536, (20, 26, 3), dtype=np.uint16)
    _write_tiff(tmp_path / "g.tif", gray16, compression=compression, predictor=predictor)
    _write_tiff(tmp_path / "c.tif", rgb16, compression=compression, predictor=predictor)
    _write_tiff(tmp_path / "t.tif", gray16[:32, :32], compression=compression, predictor=predictor, tile=(16, 16))
    image = readers.as_image(readers.read_image_file(tmp_path / "g.tif"), "g.tif")
    assert image.dtype == np.uint16 and image.shape == (33, 45, 1)
    np.testing.assert_array_equal(image[..., 0], gray16)
    np.testing.assert_array_equal(readers.read_image_file(tmp_path / "c.tif"), rgb16)
    np.testing.assert_array_equal(readers.read_image_file(tmp_path / "t.tif"), gray16[:32, :32])


@pytest.mark.parametrize("shape", [(64, 80), (64, 80, 3)])
def test_jpeg_compressed_tiff_reads_close_to_the_original(tmp_path, shape):
    image = _smooth_uint8(shape, seed=4)
    path = tmp_path / "j.tif"
    _write_tiff(path, image, compression="jpeg", compressionargs={"level": 90})
    with tifffile.TiffFile(path) as tif:
        assert tif.pages.first.compression == tifffile.COMPRESSION.JPEG
    decoded = readers.read_image_file(path)
    assert decoded.shape == image.shape and decoded.dtype == np.uint8
    error = np.abs(decoded.astype(np.int16) - image.astype(np.int16))
    assert error.mean() < 2.0 and error.max() < 30
    assert not np.array_equal(decoded, image)  # it went through the lossy codec


def test_float_tiffs_with_and_without_the_floating_point_predictor(tmp_path):
    image = _rng(5).random((30, 34)).astype(np.float32)
    _write_tiff(tmp_path / "plain.tif", image)
    _write_tiff(tmp_path / "pred.tif", image, compression="zlib", predictor=True)
    with tifffile.TiffFile(tmp_path / "pred.tif") as tif:
        assert tif.pages.first.predictor == tifffile.PREDICTOR.FLOATINGPOINT
    expected = np.rint(image.astype(np.float64) * 65535.0).astype(np.uint16)
    for name in ("plain.tif", "pred.tif"):
        raw = readers.read_image_file(tmp_path / name)
        assert raw.dtype == np.float32
        np.testing.assert_array_equal(readers.as_image(raw, name)[..., 0], expected)
    _write_tiff(tmp_path / "raw.tif", image * 4000.0)
    with pytest.raises(UNetError, match=r"raw\.tif: float image with values in .*expected values in \[0, 1\]"):
        readers.as_image(readers.read_image_file(tmp_path / "raw.tif"), "raw.tif")


# --------------------------------------------------------------------------- 16-bit, RGBA, palettes
def test_uint16_png_and_tiff_keep_their_values(tmp_path):
    image = _rng(6).integers(0, 65536, (21, 19), dtype=np.uint16)
    Image.fromarray(image).save(tmp_path / "a.png")
    _write_tiff(tmp_path / "a.tif", image)
    for name in ("a.png", "a.tif"):
        out = readers.as_image(readers.read_image_file(tmp_path / name), name)
        assert out.dtype == np.uint16
        np.testing.assert_array_equal(out[..., 0], image)


def test_rgba_drops_alpha_without_compositing(tmp_path):
    rgb = _rng(7).integers(0, 256, (16, 18, 3), dtype=np.uint8)
    alpha = _rng(8).integers(0, 256, (16, 18, 1), dtype=np.uint8)
    alpha[:4] = 0  # fully transparent rows keep their stored colours
    rgba = np.concatenate([rgb, alpha], axis=-1)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "a.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    Image.fromarray(rgb[..., 0]).convert("LA").save(tmp_path / "la.png")
    for name in ("a.png", "a.tif"):
        np.testing.assert_array_equal(readers.as_image(readers.read_image_file(tmp_path / name), name), rgb)
    np.testing.assert_array_equal(readers.as_image(readers.read_image_file(tmp_path / "la.png"), "la.png"),
                                  rgb[..., :1])


def _palette_image(indices: np.ndarray, colours: list[tuple[int, int, int]]) -> Image.Image:
    image = Image.fromarray(indices.astype(np.uint8), "P")
    flat = [c for colour in colours for c in colour]
    image.putpalette(flat + [0] * (768 - len(flat)))
    return image


def test_masks_in_every_format_through_the_folder_layout(tmp_path):
    """PNG/GIF/BMP/TIFF masks: palette, gray, 1-bit and 16-bit, all read as class ids 0/1."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    truth = (_rng(9).random((24, 30)) < 0.4).astype(np.uint8)
    truth[0, 0], truth[0, 1] = 0, 1
    writers = {
        "pal_colour.png": lambda p: _palette_image(truth, [(0, 0, 0), (255, 0, 0)]).save(p),
        "pal_colour.gif": lambda p: _palette_image(truth, [(0, 0, 0), (0, 200, 0)]).save(p),
        "pal_gray.gif": lambda p: _palette_image(truth * 255, [(i, i, i) for i in range(256)]).save(p),
        "pal_gray.png": lambda p: Image.fromarray(truth * 255).convert("P").save(p),
        "gray8.bmp": lambda p: Image.fromarray(truth * 255).save(p),
        "bits1.bmp": lambda p: Image.fromarray(truth.astype(bool)).save(p),
        "bits1.png": lambda p: Image.fromarray(truth.astype(bool)).save(p),
        "gray16.png": lambda p: Image.fromarray(truth.astype(np.uint16) * 65535).save(p),
        "lzw.tif": lambda p: tifffile.imwrite(p, truth * 255, compression="lzw"),
        "pal_lzw.tif": lambda p: _palette_image(truth, [(0, 0, 0), (0, 0, 255)]).save(p, compression="tiff_lzw"),
    }
    for number, (name, write) in enumerate(writers.items()):
        stem = pathlib.Path(name).stem + "_" + pathlib.Path(name).suffix[1:]
        write(tmp_path / "masks" / f"{stem}{pathlib.Path(name).suffix}")
        Image.fromarray(_rng(number).integers(0, 256, truth.shape, dtype=np.uint8)).save(
            tmp_path / "images" / f"{stem}.png")
    data = layouts.load_training_data(tmp_path)
    assert len(data) == len(writers)
    for name, mask in zip(data.names, data.masks):
        assert mask.dtype == np.uint8, name
        np.testing.assert_array_equal(mask, truth, err_msg=name)


def test_colour_palette_png_image_decodes_to_rgb(tmp_path):
    indices = _rng(10).integers(0, 3, (12, 13))
    colours = [(10, 20, 30), (200, 100, 50), (0, 255, 0)]
    _palette_image(indices, colours).save(tmp_path / "p.png")
    image = readers.as_image(readers.read_image_file(tmp_path / "p.png"), "p.png")
    np.testing.assert_array_equal(image, np.array(colours, np.uint8)[indices])


# --------------------------------------------------------------------------- missing codecs
@pytest.fixture
def without_imagecodecs(monkeypatch):
    """tifffile as installed without imagecodecs: its pure-Python fallback module and fresh codec tables."""
    monkeypatch.setattr(_tifffile_module, "imagecodecs", importlib.import_module("tifffile._imagecodecs"))
    monkeypatch.setattr(tifffile.TIFF, "DECOMPRESSORS", _tifffile_module.CompressionCodec(encode=False))
    monkeypatch.setattr(tifffile.TIFF, "UNPREDICTORS", _tifffile_module.PredictorCodec(encode=False))


@pytest.mark.parametrize("compression,dtype,predictor", [("lzw", np.uint8, False), ("jpeg", np.uint8, False),
                                                         ("zlib", np.float32, True)])
def test_missing_codec_says_install_imagecodecs_not_corrupt(tmp_path, without_imagecodecs, compression, dtype,
                                                            predictor):
    # Written before the fixture's tables are used for reading (writing resolves encoders separately).
    path = tmp_path / f"needs_{compression}.tif"
    _write_tiff(path, (_smooth_uint8((32, 32), 0) / 255).astype(dtype) if dtype == np.float32
                else _smooth_uint8((32, 32), 0), compression=compression, predictor=predictor)
    with pytest.raises(UNetError) as info:
        readers.read_stack(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert "imagecodecs" in message and "pip install imagecodecs" in message and "requirements.txt" in message
    assert "damaged" not in message.replace("not damaged", "") and "corrupt" not in message
    assert "\n" not in message


def test_deflate_and_packbits_still_read_without_imagecodecs(tmp_path, without_imagecodecs):
    stack = _rng(11).integers(0, 256, (2, 20, 20), dtype=np.uint8)
    for compression in ("zlib", "packbits"):
        _write_tiff(tmp_path / f"{compression}.tif", stack, compression=compression)
        np.testing.assert_array_equal(readers.read_stack(tmp_path / f"{compression}.tif"), stack)


def test_codec_error_raised_while_decoding_is_reported_as_missing_codec(tmp_path, monkeypatch):
    # The codec tables say yes but the decoder reports the missing package mid-way (as tifffile does
    # for codecs it resolves lazily).
    path = tmp_path / "late.tif"
    _write_tiff(path, _smooth_uint8((16, 16), 1), compression="lzw")

    def fail(self, *args, **kwargs):
        raise ValueError("<COMPRESSION.LZW: 5> requires the 'imagecodecs' package")

    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", fail)
    with pytest.raises(UNetError, match=r"late\.tif: decoding needs the 'imagecodecs' package.*pip install "
                                        r"imagecodecs"):
        readers.read_stack(path)


# --------------------------------------------------------------------------- damaged files
@pytest.mark.parametrize("compression", [None, "lzw", "zlib", "packbits", "jpeg"])
@pytest.mark.parametrize("keep", [0.1, 0.6, 0.95])
def test_truncated_tiff_says_damaged_or_truncated_and_names_it(tmp_path, compression, keep):
    path = tmp_path / "cut.tif"
    _write_tiff(path, np.stack([_smooth_uint8((64, 64), s) for s in range(3)]), compression=compression)
    content = path.read_bytes()
    path.write_bytes(content[:int(len(content) * keep)])
    with pytest.raises(UNetError) as info:
        readers.read_stack(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "damaged or truncated" in message and "\n" not in message
    assert "imagecodecs" not in message


@pytest.mark.parametrize("fmt,suffix", [("PNG", ".png"), ("GIF", ".gif"), ("BMP", ".bmp"), ("JPEG", ".jpg")])
@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_truncated_pillow_formats_say_damaged_or_truncated(tmp_path, fmt, suffix, keep):
    path = tmp_path / f"cut{suffix}"
    Image.fromarray(_rng(12).integers(0, 256, (48, 48), dtype=np.uint8)).save(path, format=fmt)
    content = path.read_bytes()
    path.write_bytes(content[:int(len(content) * keep)])
    with pytest.raises(UNetError, match=rf"^{path}: damaged or truncated image file"):
        readers.read_stack(path)


def test_files_that_are_not_images(tmp_path):
    (tmp_path / "noise.tif").write_bytes(_rng(13).bytes(3000))
    (tmp_path / "noise.png").write_bytes(_rng(14).bytes(3000))
    with pytest.raises(UNetError, match=r"noise\.tif: not a TIFF file, or its header is damaged or truncated"):
        readers.read_stack(tmp_path / "noise.tif")
    with pytest.raises(UNetError, match=r"noise\.png: not a readable image: the file is damaged or not of a "
                                        r"supported format"):
        readers.read_stack(tmp_path / "noise.png")


def test_bools_stored_as_byte_255_are_class_1():
    # Pillow hands out 1-bit images as bools whose byte is 255; a byte view of them must not leak.
    mask = np.array([[0, 255], [255, 0]], np.uint8).view(np.bool_)
    np.testing.assert_array_equal(readers.to_class_ids(mask, None, "m"), [[0, 1], [1, 0]])
    np.testing.assert_array_equal(readers.mask_values(mask), [0, 1])


def test_uint16_binary_masks_use_65535_and_other_values_still_fail():
    mask = np.array([[0, 65535], [65535, 0]], np.uint16)
    np.testing.assert_array_equal(readers.to_class_ids(mask, None, "m16"), [[0, 1], [1, 0]])
    np.testing.assert_array_equal(readers.to_class_ids(mask // 257, None, "m16"), [[0, 1], [1, 0]])  # 0/255
    with pytest.raises(UNetError, match=r"m16: mask values \{0, 65535\}"):
        readers.to_class_ids(mask.astype(np.int32), None, "m16")  # only uint16 masks use 65535
    with pytest.raises(UNetError, match=r"m16: mask values \{0, 65535\}"):
        readers.to_class_ids(mask, 3, "m16")


def test_instance_label_masks_read_as_foreground_and_few_ids_still_ask_for_num_classes():
    from unet_medical.data.readers import INSTANCE_VALUES, to_class_ids

    instances = np.zeros((20, 20), np.uint16)
    for k in range(INSTANCE_VALUES + 1):
        instances[k * 2, :5] = 300 + k  # ids above 255, as 16-bit label images hold them
    np.testing.assert_array_equal(to_class_ids(instances, None, "m.png"), (instances > 0).astype(np.uint8))
    with pytest.raises(UNetError, match="num_classes=3"):
        to_class_ids(np.array([[0, 1, 2]], np.uint8), None, "c.png")
