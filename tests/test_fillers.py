"""Fillers behave as Caffe's filler.hpp defines them."""
import math

import numpy as np
import pytest

from netspec import caffe_pb2
from netspec.errors import CaffeError, LayerError
from solvers.blob import Blob
from solvers.fillers import fill
from solvers.rng import set_random_seed


def filled(shape, **fields):
    blob = Blob(shape)
    fill(blob, caffe_pb2.FillerParameter(**fields))
    return blob.data


def test_default_is_constant_zero():
    blob = Blob((3, 4))
    blob.data[...] = 7
    fill(blob, caffe_pb2.FillerParameter())
    assert blob.data.dtype == np.float32
    assert np.all(blob.data == 0)


def test_constant_value():
    assert np.all(filled((2, 3, 4), type="constant", value=2.5) == np.float32(2.5))


def test_uniform_range_and_mean():
    set_random_seed(3)
    d = filled((200, 500), type="uniform", min=-2, max=4)
    assert d.dtype == np.float32
    assert d.min() >= -2 and d.max() <= 4
    assert abs(d.mean() - 1.0) < 0.03
    assert abs(d.std() - 6 / math.sqrt(12)) < 0.02


def test_gaussian_mean_std():
    set_random_seed(4)
    d = filled((300, 400), type="gaussian", mean=1.5, std=0.5)
    assert abs(d.mean() - 1.5) < 0.005
    assert abs(d.std() - 0.5) < 0.005


def test_gaussian_sparse_fraction():
    # sparse = mean number of non-zero inputs per output; shape[0] is the output count.
    set_random_seed(5)
    d = filled((50, 4000), type="gaussian", std=1, sparse=5)
    frac = np.count_nonzero(d) / d.size
    assert abs(frac - 5 / 50) < 0.005
    # The kept weights are still N(0, 1).
    assert abs(d[d != 0].std() - 1.0) < 0.03


def test_positive_unitball_rows_sum_to_one():
    set_random_seed(6)
    d = filled((7, 3, 4, 5), type="positive_unitball")
    assert np.all(d >= 0) and np.all(d <= 1)
    np.testing.assert_allclose(d.reshape(7, -1).sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("norm,n", [("FAN_IN", 32 * 9), ("FAN_OUT", 64 * 9), ("AVERAGE", (32 * 9 + 64 * 9) / 2)])
def test_xavier_scale(norm, n):
    set_random_seed(7)
    d = filled((64, 32, 3, 3), type="xavier",
               variance_norm=caffe_pb2.FillerParameter.VarianceNorm.Value(norm))
    bound = math.sqrt(3.0 / n)
    assert d.min() >= -bound and d.max() <= bound
    assert d.max() > 0.98 * bound and d.min() < -0.98 * bound
    assert abs(d.std() - bound / math.sqrt(3)) < 0.03 * bound


@pytest.mark.parametrize("norm,n", [("FAN_IN", 32 * 9), ("FAN_OUT", 64 * 9), ("AVERAGE", (32 * 9 + 64 * 9) / 2)])
def test_msra_scale(norm, n):
    set_random_seed(8)
    d = filled((64, 32, 3, 3), type="msra",
               variance_norm=caffe_pb2.FillerParameter.VarianceNorm.Value(norm))
    std = math.sqrt(2.0 / n)
    assert abs(d.mean()) < 0.03 * std
    assert abs(d.std() - std) < 0.03 * std


def test_xavier_on_inner_product_shape_uses_count_over_num():
    set_random_seed(9)
    d = filled((10, 1000), type="xavier")
    assert np.abs(d).max() <= math.sqrt(3.0 / 1000)


def test_bilinear_exact_kernel():
    d = filled((2, 3, 4, 4), type="bilinear")
    ramp = np.array([0.25, 0.75, 0.75, 0.25], dtype=np.float32)
    for k in range(2):
        for c in range(3):
            np.testing.assert_array_equal(d[k, c], np.outer(ramp, ramp))
    d5 = filled((1, 1, 5, 5), type="bilinear")
    ramp5 = np.array([1 / 3, 2 / 3, 1, 2 / 3, 1 / 3])
    np.testing.assert_allclose(d5[0, 0], np.outer(ramp5, ramp5), rtol=1e-6)


def test_bilinear_needs_square_4d():
    with pytest.raises(LayerError, match="square"):
        filled((1, 1, 3, 4), type="bilinear")
    with pytest.raises(LayerError, match="4-axis"):
        filled((3, 4), type="bilinear")


def test_seed_makes_fills_repeatable():
    for kind in ("uniform", "gaussian", "xavier", "msra", "positive_unitball"):
        set_random_seed(42)
        a = filled((8, 3, 3, 3), type=kind).copy()
        b = filled((8, 3, 3, 3), type=kind).copy()
        set_random_seed(42)
        c = filled((8, 3, 3, 3), type=kind)
        np.testing.assert_array_equal(a, c)
        assert not np.array_equal(a, b)


def test_unknown_type_names_it_and_the_known_ones():
    with pytest.raises(CaffeError) as err:
        filled((2, 2), type="gausian")
    msg = str(err.value)
    assert "gausian" in msg and "gaussian" in msg and "xavier" in msg


def test_sparse_rejected_where_caffe_rejects_it():
    with pytest.raises(LayerError, match="sparse"):
        filled((4, 4), type="xavier", sparse=2)


def test_bad_ranges_are_errors():
    with pytest.raises(LayerError, match="min"):
        filled((4,), type="uniform", min=1, max=0)
    with pytest.raises(LayerError, match="std"):
        filled((4,), type="gaussian", std=-1)
