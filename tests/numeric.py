"""Numeric helpers the Tucker tests share: a relative closeness check and seeded random kernels."""
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
