"""Payload layouts: parsing ``--layout`` and decoding payloads into columns."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ebcap.capture.layout import parse_layout, strings_from_bytes
from ebcap.errors import UsageError


def test_parse_offsets_sizes_and_roles() -> None:
    layout = parse_layout("ts:u64,cpu:u32,seq:u32,pad:8x,comm:char[8],raw:bytes[4],x:i16")
    assert layout.size == 8 + 4 + 4 + 8 + 8 + 4 + 2
    assert layout.ts_field == "ts" and layout.cpu_field == "cpu"
    assert layout.dtype.fields["comm"][1] == 24
    assert layout.dtype.fields["x"][1] == 36
    assert [f.name for f in layout.arrow_fields()] == ["ev_seq", "comm", "raw", "x"]
    described = json.loads(layout.to_json())
    assert described["size"] == 38
    assert [f["type"] for f in described["fields"]] == [
        "u64", "u32", "u32", "char[8]", "bytes[4]", "i16",
    ]  # fmt: skip


def test_decode_matches_bytes_written_by_struct() -> None:
    import struct

    layout = parse_layout("ts:u64,cpu:u32,seq:u32,comm:char[8],v:i32,raw:bytes[3],pad:1x")
    rows = [
        struct.pack(
            "<QII8si3sx",
            10**12 + i,
            i % 2,
            7 * i,
            f"cmd{i % 3}".encode(),
            -i,
            bytes([i, i + 1, i + 2]),
        )
        for i in range(50)
    ]
    events = np.frombuffer(b"".join(rows), dtype=layout.dtype)
    columns = layout.decode(events)
    assert columns["ev_seq"].to_pylist() == [7 * i for i in range(50)]
    assert columns["comm"].to_pylist() == [f"cmd{i % 3}" for i in range(50)]
    assert columns["v"].to_pylist() == [-i for i in range(50)]
    assert columns["raw"].to_pylist() == [bytes([i, i + 1, i + 2]) for i in range(50)]


@pytest.mark.parametrize(
    "spec",
    [
        *("", "ts", "ts:u65", "ts:u64,ts:u32", "a:char[0]", "a:bytes[99999]", "ts:f64", "9a:u8"),
        *("p:0x,a:u8", "p:3000000000x,a:u8", "p:99999999999999999999x,a:u8"),
        "a:u8,p:1048576x",
    ],
)
def test_bad_layouts_are_usage_errors(spec: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_layout(spec)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("spec", "column"),
    [("seq:u32,ev_seq:u32", "ev_seq"), ("ts_ns:u64,ev_kind:u8,kind:u8", "ev_kind")],
)
def test_fields_that_would_share_a_column_are_refused(spec: str, column: str) -> None:
    """A core column's name gets the prefix ev_: another field may already have it."""
    with pytest.raises(UsageError, match=f"both become column '{column}'"):
        parse_layout(spec)


def test_strings_stop_at_nul_and_survive_bad_utf8() -> None:
    values = np.array([b"bash\0zzz", b"\xff\xfe", b"", b"bash"], dtype="S8")
    assert strings_from_bytes(values).to_pylist() == ["bash", "\ufffd\ufffd", "", "bash"]


def test_decoding_reads_up_to_the_last_named_field_only() -> None:
    layout = parse_layout("ts:u64,pad:4x,cpu:u32,pad:240x")
    named = layout.named_dtype
    assert (layout.size, named.itemsize) == (256, 16)
    assert named.fields is not None and named.fields["cpu"][1] == 12
    assert (
        parse_layout("ts:u64,cpu:u32,seq:u32").named_dtype
        == parse_layout("ts:u64,cpu:u32,seq:u32").dtype
    )


@pytest.mark.parametrize(
    ("spec", "whole"),
    [("ts:u64,cpu:u32,seq:u32,pad:8x", True), ("ts:u64,cpu:u32,seq:u32,pad:u64", False)],
)
def test_only_trailing_padding_declares_the_whole_event(spec: str, whole: bool) -> None:
    """A layout ending in a field may name only an event's first fields."""
    assert parse_layout(spec).whole_event is whole
