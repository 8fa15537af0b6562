"""Helpers the Tucker tests share: a relative closeness check, seeded random kernels and a small U-Net."""
import numpy as np

RTOL = 1e-4


def assert_close(actual, expected, rtol=RTOL):
    """Max abs difference within rtol of the expected output's max magnitude."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    assert np.max(np.abs(actual - expected)) <= rtol * np.max(np.abs(expected))


def rng(seed=0):
    return np.random.default_rng(seed)


def random_kernel(shape, seed=0):
    return rng(seed).standard_normal(shape).astype(np.float32)


def small_unet(dims: int, widths: tuple[int, int, int, int] = (4, 4, 8, 4)):
    """A small U-Net of 2-D or 3-D layers: two levels, a skip connection, transposed-conv up-sampling and a
    1x1 head of 2 classes. widths: filters of enc_conv1, enc_conv2, mid_conv, and of up and dec_conv."""
    import tf_keras as keras

    L = keras.layers
    conv, pool, up = ((L.Conv2D, L.MaxPooling2D, L.Conv2DTranspose) if dims == 2
                      else (L.Conv3D, L.MaxPooling3D, L.Conv3DTranspose))
    first, second, middle, decoder = widths
    inputs = keras.Input((None,) * dims + (1,), name="image" if dims == 2 else "volume")
    a = L.ReLU(name="enc_relu1")(conv(first, 3, padding="same", name="enc_conv1")(inputs))
    a = L.ReLU(name="enc_relu2")(conv(second, 3, padding="same", name="enc_conv2")(a))
    b = pool(name="pool")(a)
    b = L.ReLU(name="mid_relu")(conv(middle, 3, padding="same", name="mid_conv")(b))
    u = up(decoder, 2, strides=2, name="up")(b)
    x = L.Concatenate(name="cat")([a, u])
    x = L.ReLU(name="dec_relu")(conv(decoder, 3, padding="same", name="dec_conv")(x))
    return keras.Model(inputs, conv(2, 1, name="head")(x), name="unet_like" if dims == 2 else "unet3d_like")
