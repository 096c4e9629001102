"""How the IPC stream of a file without its footer ends: cleanly, or inside the marker.

The writer closes the stream with the end-of-stream marker (0xFFFFFFFF, then
a 0 length) and then writes the footer. Every message starts with the same
0xFFFFFFFF, and a message whose header length is a multiple of 256 goes on
with zeros, so a file cut up to 7 bytes into the marker ends like one cut as
far into a batch. It is the marker when the last whole message is the batch
carrying the totals: the writer puts nothing but the marker and the footer
after it. Recovery and the reader decide this here, so both say the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import pyarrow as pa

from ebcap.errors import BadFileError
from ebcap.format import schema as fs
from ebcap.format.batch_checks import BatchCheck
from ebcap.format.file_checks import ARROW_MAGIC_PADDED, DAMAGE_ERRORS, check_schema

EOS_MARKER: Final = b"\xff\xff\xff\xff\x00\x00\x00\x00"
"""The end-of-stream message an IPC file writer puts before the footer."""

REASON_NO_FOOTER: Final = "the stream ends cleanly but the footer is missing"
REASON_CUT_AT_BOUNDARY: Final = "the file ends between two batches"
REASON_CUT_IN_EOS: Final = "the file is cut inside the end-of-stream marker after its last batch"
REASON_CUT_BEFORE_EOS: Final = "the file ends after its last batch, before the end-of-stream marker"


def whole_stream_end(rest: bytes, after_totals: bool) -> str | None:
    """How the stream ends when ``rest`` (up to 8 bytes after the last whole message)
    holds no message: a REASON_* whose batches are all whole, or None (one was cut).

    ``after_totals``: that message is an intact batch carrying the totals, the writer's
    last batch.
    """
    if rest == EOS_MARKER:
        return REASON_NO_FOOTER
    if not after_totals or not EOS_MARKER.startswith(rest):
        return None
    return REASON_CUT_IN_EOS if rest else REASON_CUT_BEFORE_EOS


def footerless_end(path: Path, data: pa.Buffer) -> str | None:
    """The reason :func:`whole_stream_end` gives when the stream of ``data``, a file
    without its footer, holds every batch whole; None otherwise.

    Only message headers are walked (bodies are slices of ``data``); the last
    batch is decoded only when part of the marker, or nothing, follows it.
    """
    if data.size <= len(ARROW_MAGIC_PADDED):
        return None
    stream = pa.BufferReader(data.slice(len(ARROW_MAGIC_PADDED)))
    leading: list[pa.ipc.Message] = []  # the schema and dictionaries, before any batch
    last: pa.ipc.Message | None = None
    end = 0
    try:
        for message in pa.ipc.MessageReader.open_stream(stream):
            if message.type == "record batch":
                last = message
            elif last is None:
                leading.append(message)
            else:
                last = None  # a dictionary after the batches: not the writer's last batch
            end = stream.tell()
    except DAMAGE_ERRORS:
        pass
    start = len(ARROW_MAGIC_PADDED) + end
    rest = data.slice(start, min(len(EOS_MARKER), data.size - start)).to_pybytes()
    if not EOS_MARKER.startswith(rest):  # neither the marker nor a part of it: a cut batch
        return None
    partial = rest != EOS_MARKER  # only then does the last batch decide
    after_totals = partial and last is not None and _carries_totals(path, leading, last)
    return whole_stream_end(rest, after_totals)


def _carries_totals(path: Path, leading: list[pa.ipc.Message], last: pa.ipc.Message) -> bool:
    """Whether ``last`` is an intact batch carrying totals that decode, read as the
    stream of the schema, the dictionaries and that batch alone."""
    messages = b"".join(m.serialize().to_pybytes() for m in [*leading, last])
    try:
        reader = pa.ipc.open_stream(pa.BufferReader(messages))
        metadata = check_schema(path, reader.schema)
        batch, custom = reader.read_next_batch_with_custom_metadata()
        text = (custom or {}).get(fs.TOTALS_KEY.encode())
        if text is None or BatchCheck(reader.schema, metadata).problem(batch, custom):
            return False
        fs.decode_totals(text)
    except (*DAMAGE_ERRORS, BadFileError, ValueError):
        return False
    return True
