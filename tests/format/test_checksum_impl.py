"""The checksum is plain CRC-32 whichever library computes it, so files stay portable."""

from __future__ import annotations

import zlib

import numpy as np
import pyarrow as pa
import pytest

from ebcap.format import checksum


@pytest.mark.parametrize("size", [0, 1, 7, 64, 4095, 1 << 20])
def test_the_fast_crc_is_zlibs_crc(size: int) -> None:
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    assert checksum.crc32(data) == zlib.crc32(data)
    assert checksum.crc32(data, 0x12345678) == zlib.crc32(data, 0x12345678)


def test_column_checksums_match_a_zlib_reference() -> None:
    """What a reader with only zlib computes for a column equals what the writer stored."""
    values = [bytes(range(i % 50)) for i in range(1000)]
    column = pa.array(values, pa.binary()).slice(10, 900)
    reference = 0
    lengths = np.array([len(v) for v in values[10:910]])
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    reference = zlib.crc32(offsets.tobytes(), reference)
    reference = zlib.crc32(b"".join(values[10:910]), reference)
    assert checksum.column_crc(column) == reference


def test_bool_and_list_columns_follow_the_documented_form() -> None:
    """Validity bits, then the UTF-8 of Python's repr of the values (docs/FORMAT.md)."""
    flags = pa.array([True, False, None, True])
    validity = np.packbits([1, 1, 0, 1], bitorder="little").tobytes()
    want = zlib.crc32(b"[True, False, None, True]", zlib.crc32(validity))
    assert checksum.column_crc(flags) == want
    pairs = pa.array([[1, 2], [3, 4], [5, 6]], pa.list_(pa.int64(), 2)).slice(1)
    assert checksum.column_crc(pairs) == zlib.crc32(b"[[3, 4], [5, 6]]")
