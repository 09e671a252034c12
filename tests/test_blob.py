"""Blob: reshape keeps memory, shared buffers, and a diff allocated only when used."""
import tracemalloc

import numpy as np

from solvers.blob import Blob


def test_diff_is_allocated_on_first_use_and_starts_at_zero():
    tracemalloc.start()
    try:
        b = Blob((1000, 1000))
        b.data[...] = 1
        allocated = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert allocated < 6 * 10 ** 6     # data (4 MB) only: a forward-only blob needs no diff
    assert b.diff.shape == (1000, 1000) and b.diff.dtype == np.float32
    assert not b.diff.any()
    b.diff[...] = 2
    assert b.diff[0, 0] == 2           # the same buffer on every access


def test_reshape_within_capacity_keeps_data_and_diff_memory():
    b = Blob((4, 5))
    b.diff[...] = 3
    diff, data = b.diff, b.data
    b.reshape(2, 5)
    assert np.shares_memory(b.diff, diff) and np.shares_memory(b.data, data)
    assert b.diff.shape == (2, 5) and (b.diff == 3).all()
    b.reshape(4, 5)
    assert np.shares_memory(b.diff, diff) and (b.diff == 3).all()
    b.reshape(5, 5)                     # grows: fresh zeroed buffers, as Caffe
    assert not np.shares_memory(b.diff, diff) and not b.diff.any()


def test_reshape_to_a_smaller_shape_before_the_diff_is_used():
    b = Blob((4, 5))
    b.reshape(2, 5)
    b.diff[...] = 1
    b.reshape(4, 5)                     # back to the capacity: still one buffer
    assert b.diff.shape == (4, 5) and b.diff[:2].all()


def test_share_diff_before_and_after_first_use():
    a, b = Blob((2, 3)), Blob((6,))
    b.share_diff(a)                     # neither diff used yet
    a.diff[...] = 7
    assert (b.diff == 7).all() and b.diff.shape == (6,)
    c = Blob((3, 2))
    c.share_diff(a)
    c.diff[...] = 1
    assert (a.diff == 1).all() and (b.diff == 1).all()


def test_in_place_arithmetic_on_diff():
    b = Blob((3,))
    b.diff[...] = 2
    b.diff *= 3                         # get, multiply in place, set back
    b.diff += b.data
    np.testing.assert_array_equal(b.diff, [6, 6, 6])


def test_proto_round_trip_with_and_without_diff():
    b = Blob((2, 3))
    b.data[...] = np.arange(6).reshape(2, 3)
    assert len(b.to_proto().diff) == 0
    b.diff[...] = -1
    proto = b.to_proto(write_diff=True)
    assert list(proto.shape.dim) == [2, 3] and list(proto.diff) == [-1] * 6
    c = Blob()
    c.from_proto(proto)
    np.testing.assert_array_equal(c.data, b.data)
    np.testing.assert_array_equal(c.diff, b.diff)
