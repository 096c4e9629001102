"""Per-batch CRC-32 checksums, so damage Arrow and zstd cannot see is still an error.

Arrow IPC has no checksums of its own: zstd frames are written without one,
and a buffer that does not shrink when compressed (common in small batches)
is stored as is. A flipped bit there, or in a metadata string, reads back as
a different but perfectly valid value. So the writer stores, with every
record batch, a CRC-32 of the schema, of each column's contents and of the
totals; readers recompute them and refuse a batch that does not match.

Column contents are hashed in a canonical form (values of exactly the rows
of the array, offsets rebased to zero, validity as packed bits), so the CRC
does not depend on how a batch was sliced or compressed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Final

import numpy as np
import pyarrow as pa

try:  # ISA-L: the same CRC-32, ~5x faster than zlib's on this kind of machine (PCLMULQDQ)
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - a platform without isal wheels
    from zlib import crc32

from ebcap.format import schema as fs

ALGORITHM: Final = "crc32"
"""CRC-32 as zlib computes it (ISO-HDLC polynomial), written as 8 lowercase hex digits
(ISA-L computes the very same value faster; either may check a file)."""

_OFFSET_TYPES: Final = {
    pa.binary(): np.int32,
    pa.string(): np.int32,
    pa.large_binary(): np.int64,
    pa.large_string(): np.int64,
}


def schema_crc(schema: pa.Schema) -> int:
    """CRC-32 of the column names, types and nullability and of the schema metadata."""
    crc = 0
    for field in schema:
        crc = crc32(f"{field.name}\0{field.type}\0{int(field.nullable)}\0".encode(), crc)
    for key, value in sorted((schema.metadata or {}).items()):
        crc = crc32(key + b"\0" + value + b"\0", crc)
    return crc


def column_crc(array: pa.Array) -> int:
    """CRC-32 of one column's contents in canonical form (independent of slicing)."""
    crc = 0
    if array.null_count:
        valid = array.is_valid().to_numpy(zero_copy_only=False)
        crc = crc32(np.packbits(valid, bitorder="little").tobytes(), crc)
    if pa.types.is_dictionary(array.type):
        array = array.indices
    kind = array.type
    buffers = array.buffers()
    if kind in _OFFSET_TYPES:
        if buffers[1] is None:  # an empty array may come without an offsets buffer
            return crc
        dtype = np.dtype(_OFFSET_TYPES[kind])
        offsets = np.frombuffer(
            buffers[1], dtype=dtype, count=len(array) + 1, offset=array.offset * dtype.itemsize
        )
        start, end = int(offsets[0]), int(offsets[-1])
        crc = crc32((offsets - offsets[0]).tobytes(), crc)
        if buffers[2] is not None:
            crc = crc32(memoryview(buffers[2])[start:end], crc)
        return crc
    width = _byte_width(kind)
    if width:
        if buffers[1] is not None:
            crc = crc32(
                memoryview(buffers[1])[array.offset * width : (array.offset + len(array)) * width],
                crc,
            )
        return crc
    # bool (NAME_truncated), lists (tracepoint arrays): docs/FORMAT.md specifies this form
    return crc32(repr(array.to_pylist()).encode(), crc)


def _byte_width(kind: pa.DataType) -> int:
    """Bytes per value of a fixed-width primitive type, 0 for anything else."""
    try:
        bits = kind.bit_width
    except ValueError:
        return 0
    nested = pa.types.is_nested(kind) or pa.types.is_boolean(kind)
    return 0 if nested or bits % 8 else bits // 8


def batch_checksums(
    batch: pa.RecordBatch, schema_checksum: int, totals_text: str | None = None
) -> str:
    """The value stored under :data:`~ebcap.format.schema.CHECKSUMS_KEY` of a batch."""
    entry: dict[str, object] = {
        "schema": _hex(schema_checksum),
        "columns": [_hex(column_crc(column)) for column in batch.columns],
    }
    if totals_text is not None:
        entry["totals"] = _hex(crc32(totals_text.encode()))
    return json.dumps(entry, separators=(",", ":"))


def checksum_problem(
    batch: pa.RecordBatch,
    custom_metadata: Mapping[bytes, bytes] | None,
    schema: pa.Schema,
    schema_checksum: int,
    required: bool,
) -> str:
    """Why ``batch`` does not match its stored checksums ('' when it does).

    ``batch`` may hold a subset of the schema's columns (a projected read):
    those are checked. ``required`` says the file declares that every batch
    carries checksums, so a batch without them is itself damage.
    """
    custom = custom_metadata or {}
    text = custom.get(fs.CHECKSUMS_KEY.encode())
    if text is None:
        return "it has no checksums" if required else ""
    try:
        stored = json.loads(text)
        columns = [int(value, 16) for value in stored["columns"]]
        schema_value = int(stored["schema"], 16)
        totals_value = int(stored["totals"], 16) if "totals" in stored else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return "its checksums are unreadable"
    if schema_value != schema_checksum:
        return "the schema does not match its checksum"
    if len(columns) != len(schema):
        return "its checksums do not cover the schema's columns"
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        index = schema.get_field_index(name)
        if index < 0 or column_crc(column) != columns[index]:
            return f"column {name!r} does not match its checksum"
    totals = custom.get(fs.TOTALS_KEY.encode())
    if (totals is None) != (totals_value is None):
        return "the totals do not match their checksum"
    if totals is not None and crc32(totals) != totals_value:
        return "the totals do not match their checksum"
    return ""


def _hex(value: int) -> str:
    return f"{value:08x}"
