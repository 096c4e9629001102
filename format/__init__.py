"""The ebcap file format: schema, writer, reader, recovery and summaries.

Everything here works on files alone; no kernel is needed to read, recover or
summarise a capture.
"""

from __future__ import annotations

from ebcap.format.info import CaptureSummary, summarize
from ebcap.format.reader import CaptureReader, open_capture
from ebcap.format.recovery import RecoveryReport, recover
from ebcap.format.schema import FORMAT_VERSION, make_schema
from ebcap.format.writer import CaptureWriter

__all__ = [
    "FORMAT_VERSION",
    "CaptureReader",
    "CaptureSummary",
    "CaptureWriter",
    "RecoveryReport",
    "make_schema",
    "open_capture",
    "recover",
    "summarize",
]
