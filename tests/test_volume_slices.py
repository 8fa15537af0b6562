"""Volumes as 2D slices: windows (CT by data set foreground percentiles, others per case), slice
order and content, folds by case, and stacking predictions back onto the case's grid."""
from __future__ import annotations

import numpy as np
import pytest

from unet_medical.base.errors import UNetError
from unet_medical.data import synthetic_volumes as sv
from unet_medical.data import volume_slices as vs
from unet_medical.data.folds import case_fold_split
from unet_medical.data.volume_layouts import load_volume_data


@pytest.fixture(scope="module")
def ct_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct")
    sv.write_volume_kind(root, "ct", 3, seed=0)
    return load_volume_data(root)


def test_ct_slices_use_one_foreground_window(ct_set):
    slices = vs.volume_slices(ct_set)
    foreground = np.concatenate([c.image.array[..., 0][c.labels.array > 0] for c in ct_set.cases])
    lo, hi = np.percentile(foreground.astype(np.float64), (0.5, 99.5))  # < 10,000 voxels: no sampling
    assert slices.windows[0] == pytest.approx((lo, hi))
    depth = sv.SHAPE[2]
    assert len(slices.data) == 3 * depth and slices.data.class_names == ("background", "organ", "lesion")
    assert slices.data.names[depth + 5] == "case_001[5]" and slices.case_of_slice[depth + 5] == 1
    case = ct_set.cases[1]
    expected = np.round((np.clip(case.image.array[:, :, 5, 0], lo, hi) - lo) * 65535 / (hi - lo))
    assert slices.data.images[depth + 5].dtype == np.uint16
    assert np.array_equal(slices.data.images[depth + 5][..., 0], expected.astype(np.uint16))
    assert np.array_equal(slices.data.masks[depth + 5], case.labels.array[:, :, 5])
    restacked = vs.stack_slices(slices.data.masks[depth:2 * depth])
    assert np.array_equal(restacked, case.labels.array)


def test_mr_channels_use_each_cases_own_window(tmp_path):
    sv.write_volume_kind(tmp_path, "mr", 2, seed=1)
    data = load_volume_data(tmp_path)
    slices = vs.volume_slices(data)
    assert slices.windows == (None,)
    values = data.cases[0].image.array[..., 0]
    lo, hi = np.percentile(values, (0.5, 99.5))
    assert np.array_equal(slices.data.images[0][..., 0], vs.to_uint16(values[:, :, 0], (lo, hi)))


def test_folds_by_case_never_split_a_volume():
    case_of_slice = np.repeat(np.arange(5), [3, 4, 2, 5, 3])
    seen = []
    for fold in range(3):
        train, val = case_fold_split(case_of_slice, 3, fold)
        assert not set(case_of_slice[train]) & set(case_of_slice[val])
        assert sorted(np.concatenate([train, val])) == list(range(len(case_of_slice)))
        seen += sorted(set(case_of_slice[val].tolist()))
    assert sorted(seen) == [0, 1, 2, 3, 4]  # every case validated exactly once
    with pytest.raises(UNetError, match="only 5 cases"):
        case_fold_split(case_of_slice, 6, 0)


def test_to_uint16_maps_the_window_ends():
    assert vs.to_uint16(np.array([-2000, -1000, 0, 1000, 5000]), (-1000, 1000)).tolist() == [0, 0, 32768, 65535,
                                                                                               65535]
    assert vs.to_uint16(np.ones(3), (1, 1)).tolist() == [0, 0, 0]
