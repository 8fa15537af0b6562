"""Export of a tiny 3-D model (Conv3D, MaxPooling3D, Conv3DTranspose) to ONNX and OpenVINO through the
registered writers and loaders (unet_medical/export/volume.py), with parity against the Keras model."""
import numpy as np
import pytest

import unet_medical  # noqa: F401
import tf_keras as keras

from unet_medical.base.errors import UNetError
from unet_medical.export.parity import compare_probabilities
from unet_medical.export.volume import export_volume_model, keras_probabilities

SIZE = 8
L = keras.layers


def tiny_unet3d() -> keras.Model:
    inputs = keras.Input((None, None, None, 1), name="volume")
    skip = L.Conv3D(4, 3, padding="same", activation="relu", name="enc")(inputs)
    x = L.MaxPooling3D(name="pool")(skip)
    x = L.Conv3D(8, 3, padding="same", activation="relu", name="bottom")(x)
    x = L.Conv3DTranspose(4, 2, strides=2, name="up")(x)
    x = L.Concatenate(name="cat")([skip, x])
    x = L.Conv3D(4, 3, padding="same", activation="relu", name="dec")(x)
    return keras.Model(inputs, L.Conv3D(3, 1, name="head")(x), name="tiny_unet3d")


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return tiny_unet3d()


@pytest.fixture(scope="module")
def patches():
    # Anisotropic patches: ONNX and OpenVINO keep depth, height and width dynamic.
    return np.random.default_rng(0).uniform(size=(2, SIZE, 2 * SIZE, SIZE, 1)).astype(np.float32)


@pytest.mark.parametrize("export_format, artefact", [
    ("onnx", "model.onnx"),
    pytest.param("openvino", "openvino_fp32", marks=pytest.mark.slow),  # seconds: the fast subset stays under 2 min
])
def test_fp32_volume_export_agrees_with_keras(model, patches, tmp_path, export_format, artefact):
    entry = export_volume_model(model, tmp_path, export_format, "fp32", patches)
    parity = entry["parity"]["patches"]
    print(f"{export_format} fp32 vs Keras on {parity['pixels']} voxels: agreement {parity['label_agreement']:.5f}, "
          f"max probability difference {parity['max_abs_prob_diff']:.2e}")
    assert entry["file"] == artefact and (tmp_path / artefact).exists() and entry["size_bytes"] > 0
    assert parity["pixels"] == 2 * SIZE * 2 * SIZE * SIZE
    assert parity["label_agreement"] == 1.0 and parity["max_abs_prob_diff"] < 1e-4
    assert [p.name for p in tmp_path.iterdir()] == [artefact]   # no staging left behind


@pytest.mark.slow
def test_int8_onnx_volume_export_passes_int8_parity(tmp_path):
    # A briefly trained model on two well-separated grey levels (as tests/test_qat.py): an untrained
    # one has near-tied class scores everywhere, where any int8 rounding flips the argmax.
    keras.utils.set_random_seed(1)
    model = tiny_unet3d()
    rng = np.random.default_rng(1)
    labels = (rng.uniform(size=(4, SIZE, SIZE, SIZE)) > 0.5).astype(np.int32)
    volumes = (0.2 + 0.6 * labels + rng.normal(scale=0.05, size=labels.shape))[..., None].astype(np.float32)
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(volumes, labels, epochs=60, verbose=0)   # confident: 0.5 % of voxels below p = 0.6
    entry = export_volume_model(model, tmp_path, "onnx", "int8", volumes[:2], volumes[2:])
    parity = entry["parity"]["patches"]
    print(f"onnx int8 vs Keras: agreement {parity['label_agreement']:.5f}")
    assert parity["threshold"] == 0.99 and parity["label_agreement"] >= 0.99


def test_volume_export_refusals(model, patches, tmp_path):
    with pytest.raises(UNetError, match="not available for 3-D models"):
        export_volume_model(model, tmp_path, "tftrt", "fp32", patches)
    with pytest.raises(UNetError, match="savedmodel of a 3-D model needs its run's normalization and patch"):
        export_volume_model(model, tmp_path, "savedmodel", "fp32", patches)
    with pytest.raises(UNetError, match="parity_patches"):
        export_volume_model(model, tmp_path, "onnx", "fp32", patches[..., 0])
    with pytest.raises(UNetError, match="cubic"):
        export_volume_model(model, tmp_path, "tflite", "fp32", patches)
    with pytest.raises(UNetError, match=r"'pool' \(MaxPooling3D\): TFLite has no builtin"):
        export_volume_model(model, tmp_path, "tflite", "fp32", patches[:, :, :SIZE])
    assert list(tmp_path.iterdir()) == []   # the staging folder is gone
    image = keras.Input((None, None, 1))
    flat = keras.Model(image, L.Conv2D(2, 1)(image))
    with pytest.raises(UNetError, match="volume export"):
        export_volume_model(flat, tmp_path, "onnx", "fp32", patches)


def test_parity_counts_voxels_of_volume_maps(model, patches):
    reference = keras_probabilities(model, patches)
    changed = [p.copy() for p in reference]
    changed[1][3, 5, 7] = np.roll(changed[1][3, 5, 7], 1)   # another class wins at one voxel
    report = compare_probabilities(reference, changed, 0.99)
    assert report.pixels == 2 * SIZE * 2 * SIZE * SIZE
    assert report.label_agreement == 1 - 1 / report.pixels
