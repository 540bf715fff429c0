"""Tests for ambiguous_digits.data.idx: IDX parsing and encoding, on hand-made headers and random bytes."""

import struct

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ambiguous_digits.data import DataError
from ambiguous_digits.data.idx import FILES, idx_bytes, read_idx
from ambiguous_digits.data.published import CANONICAL_SHAPES


@pytest.mark.parametrize("shape", [(0,), (7,), (3, 28, 28), (2, 1, 5)])
def test_idx_round_trip(shape):
    arr = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    blob = idx_bytes(arr)
    assert blob[:4] == bytes([0, 0, 8, len(shape)])
    np.testing.assert_array_equal(read_idx(blob, name="x"), arr)
    np.testing.assert_array_equal(read_idx(blob, name="x", shape=shape), arr)


def header(magic: int, *dims: int) -> bytes:
    return struct.pack(f">I{len(dims)}I", magic, *dims)


@pytest.mark.parametrize("blob, name, match", [
    (header(0x801, 10000) + bytes(10000), "t10k-images-idx3-ubyte",
     r"t10k-images-idx3-ubyte: bad IDX magic 0x00000801, expected 0x00000803"),
    (header(0x802, 2, 2) + bytes(4), "x", r"x: bad IDX magic 0x00000802, expected 0x00000801 or"),
    (header(0xD01, 3) + bytes(12), "x", r"bad IDX magic 0x00000d01"),  # float data
    (b"\x00\x00\x08", "x", r"x: 3 bytes, too short for an IDX header"),
    (header(0x803, 2, 28), "x", r"x: 12 bytes, too short for 3 IDX dims"),
    (header(0x803, 9999, 28, 28) + bytes(9999 * 784), "t10k-images-idx3-ubyte",
     r"t10k-images-idx3-ubyte: expected shape \(10000, 28, 28\), got \(9999, 28, 28\)"),
    (header(0x801, 5) + bytes(4), "lab", r"lab: 12 bytes, header \(5,\) needs 13"),  # truncated
    (header(0x801, 5) + bytes(6), "lab", r"lab: 14 bytes, header \(5,\) needs 13"),  # extra
], ids=["wrong-ndim-for-name", "ndim-2", "float-type", "short-header", "short-dims",
        "wrong-shape-for-name", "truncated", "extra-bytes"])
def test_read_idx_rejects(blob, name, match):
    with pytest.raises(DataError, match=match):
        read_idx(blob, name=name, shape=CANONICAL_SHAPES.get(name))


@pytest.mark.parametrize("arr", [np.zeros((2, 2)), np.zeros((2, 2), np.uint8), np.zeros(3, np.int8)])
def test_idx_bytes_rejects_non_uint8_or_wrong_ndim(arr):
    with pytest.raises(ValueError, match="uint8 of ndim 1 or 3"):
        idx_bytes(arr)


IDX_LIKE = st.builds(  # plausible headers, so the search reaches past the magic check
    lambda ndim, dims, body: header(0x800 | ndim, *dims[:ndim]) + body,
    st.sampled_from([1, 2, 3]), st.lists(st.integers(0, 2**32 - 1), min_size=3, max_size=3),
    st.binary(max_size=64))


@settings(max_examples=300, deadline=None)
@given(blob=st.one_of(st.binary(max_size=64), IDX_LIKE), name=st.sampled_from(["x", *FILES]))
@example(blob=b"\x00\x00\x08\x03\x00\x00\x00\x00\xb5\x04\xc4\x17\xb5\x05\"Q", name="x")  # 0 x 3e9 x 3e9
def test_read_idx_returns_array_or_raises_data_error(blob, name):
    try:
        arr = read_idx(blob, name=name, shape=CANONICAL_SHAPES.get(name))
    except DataError as e:
        assert str(e).startswith(f"{name}: ") and "\n" not in str(e)
    else:
        assert isinstance(arr, np.ndarray) and arr.dtype == np.uint8
        assert idx_bytes(arr) == blob
