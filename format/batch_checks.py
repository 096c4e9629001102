"""What every record batch must pass before its values reach a caller.

Arrow's own validation (structure, and for unchecksummed batches every
offset, UTF-8 string and dictionary index), the fixed ``kind`` dictionary,
no nulls in the core columns, ``seq`` increasing, and the CRC-32 checksums
(:mod:`ebcap.format.checksum`). The reader applies this to every batch it
hands out; recovery to every batch it considers saving.

Batches are numbered from 1 in every message ("batch 6 of 15"); the Python
API (:meth:`CaptureReader.batch`) indexes them from 0, as Python does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from ebcap.format import checksum
from ebcap.format import schema as fs
from ebcap.format.file_checks import DAMAGE_ERRORS, one_line


def batch_label(index: int, total: int | None) -> str:
    """The batch at 0-based ``index`` as messages name it: "batch 6 of 15".

    Without a known count (a file cut before its footer): "batch 6 (counting from 1)".
    """
    if total is None:
        return f"batch {index + 1} (counting from 1)"
    return f"batch {index + 1} of {total}"


def batch_problem(batch: pa.RecordBatch, *, full: bool = True) -> str:
    """Why a batch that parsed must still not be trusted ('' when it is fine).

    ``full`` validates every value (offsets, UTF-8, dictionary indices);
    without it only the structure (buffer sizes) is checked, for batches
    whose checksums vouch for the values.
    """
    try:
        batch.validate(full=full)
    except DAMAGE_ERRORS as exc:
        return one_line(exc)
    names = batch.schema.names
    for name in fs.CORE_COLUMNS:
        if name in names and batch.column(name).null_count:
            return f"the core column {name!r} holds nulls"
    if "kind" in names:
        kind = batch.column("kind")
        dictionary = kind.dictionary
        try:
            dictionary.validate(full=True)  # a few values: always checked before reading them
        except DAMAGE_ERRORS as exc:
            return one_line(exc)
        if dictionary.type != pa.string() or dictionary.to_pylist() != list(fs.KINDS):
            return f"the kind dictionary is not {'|'.join(fs.KINDS)}"
        codes = kind.indices.to_numpy(zero_copy_only=False)
        if not full and len(codes) and (codes.min() < 0 or codes.max() >= len(fs.KINDS)):
            return "a kind is not in its dictionary"
    if "seq" in names and batch.num_rows > 1:
        seq = batch.column("seq").to_numpy()
        if not bool(np.all(seq[1:] > seq[:-1])):
            return "seq does not increase"
    return ""


class BatchCheck:
    """Everything a batch of one schema must pass: Arrow validation, kinds, checksums.

    With ``trust_checksums``, a batch whose column checksums match gets the
    structural validation only: the values are the ones the writer wrote.
    """

    def __init__(
        self, schema: pa.Schema, metadata: dict[str, Any], *, trust_checksums: bool = False
    ) -> None:
        self.schema = schema
        self.schema_crc = checksum.schema_crc(schema)
        self.required = fs.META_CHECKSUM in metadata
        self.trust_checksums = trust_checksums

    def problem(self, batch: pa.RecordBatch, custom_metadata: pa.KeyValueMetadata | None) -> str:
        """Why ``batch`` (all columns or a projection) must not be trusted; '' if it may."""
        vouched = self.trust_checksums and fs.CHECKSUMS_KEY.encode() in (custom_metadata or {})
        return batch_problem(batch, full=not vouched) or self.checksum_problem(
            batch, custom_metadata
        )

    def checksum_problem(
        self, batch: pa.RecordBatch, custom_metadata: pa.KeyValueMetadata | None
    ) -> str:
        """Why ``batch`` or its totals do not match the stored checksums; '' if they do."""
        return checksum.checksum_problem(
            batch, custom_metadata, self.schema, self.schema_crc, self.required
        )
