"""Payload layouts: how the bytes an eBPF program emits map to typed columns.

A layout is a packed little-endian numpy structured dtype plus the names of
the fields that carry the kernel timestamp and the CPU (they fill the core
``ts_ns``/``cpu`` columns). Built-in sources define theirs next to their BPF
program; ``ebcap record --pin`` takes one on the command line, e.g.
``ts:u64,cpu:u32,seq:u32,pad:8x``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ebcap.errors import UsageError
from ebcap.format.schema import CORE_COLUMNS, UNKNOWN_CPU

_SCALARS: dict[str, str] = {
    "u8": "<u1", "u16": "<u2", "u32": "<u4", "u64": "<u8",
    "i8": "<i1", "i16": "<i2", "i32": "<i4", "i64": "<i8",
    "f32": "<f4", "f64": "<f8",
}  # fmt: skip
_FIELD = re.compile(r"^(?P<name>[A-Za-z_]\w*):(?P<type>u8|u16|u32|u64|i8|i16|i32|i64|f32|f64"
                    r"|char\[(?P<clen>\d+)\]|bytes\[(?P<blen>\d+)\]|(?P<pad>\d+)x)$")  # fmt: skip
MAX_LAYOUT_BYTES = 1 << 20
"""Larger than any event a perf sample can carry (its size is a u32 in a u16 record)."""
TS_NAMES = ("ts_ns", "ts")
CPU_NAMES = ("cpu",)
RENAMED_PREFIX = "ev_"
"""Prefix of a payload field whose name is a core column (e.g. ``seq`` -> ``ev_seq``)."""


@dataclass(frozen=True)
class PayloadLayout:
    """A fixed-size event layout: a packed structured dtype and its roles."""

    dtype: np.dtype
    ts_field: str | None = None
    cpu_field: str | None = None
    whole_event: bool = True
    """Whether events are exactly this size. A perf sample's raw size tells the event's
    size only to 8 bytes, so only then may its padding be cut to this size."""

    @property
    def size(self) -> int:
        return int(self.dtype.itemsize)

    @property
    def named_dtype(self) -> np.dtype:
        """The layout cut after its last named field: what decoding reads.

        Trailing padding (``pad:240x`` after a 16-byte header) is never looked at,
        so it is not copied out of each payload either.
        """
        fields = _fields(self.dtype)
        end = max((f[1] + f[0].itemsize for f in fields.values()), default=0)
        if end == self.size:
            return self.dtype
        return np.dtype(
            {
                "names": list(fields),
                "formats": [f[0] for f in fields.values()],
                "offsets": [f[1] for f in fields.values()],
                "itemsize": end,
            }
        )

    @property
    def column_fields(self) -> list[str]:
        """Payload fields that become their own columns (ts/cpu go to the core ones)."""
        names = self.dtype.names or ()
        return [n for n in names if n not in (self.ts_field, self.cpu_field)]

    def column_name(self, field: str) -> str:
        return RENAMED_PREFIX + field if field in CORE_COLUMNS else field

    def arrow_fields(self) -> list[pa.Field]:
        out = []
        for name in self.column_fields:
            out.append(pa.field(self.column_name(name), _arrow_type(_fields(self.dtype)[name][0])))
        return out

    def decode(self, events: np.ndarray) -> dict[str, pa.Array]:
        """Columns for a structured array of events of this layout."""
        columns: dict[str, pa.Array] = {}
        for name in self.column_fields:
            columns[self.column_name(name)] = _to_arrow(events[name])
        return columns

    def description(self) -> dict[str, Any]:
        """What ``ebcap.source_layout`` stores (docs/FORMAT.md): size, roles, fields."""
        fields = []
        for name in self.dtype.names or ():
            sub, offset = _fields(self.dtype)[name][:2]
            fields.append({"name": name, "type": _type_name(sub), "offset": offset})
        return {"size": self.size, "ts": self.ts_field, "cpu": self.cpu_field, "fields": fields}

    def to_json(self) -> str:
        return json.dumps(self.description())


def parse_layout(spec: str) -> PayloadLayout:
    """Parse ``name:type,...`` (types u8..u64, i8..i64, f32, f64, char[N], bytes[N], Nx pad)."""
    names: list[str] = []
    formats: list[object] = []
    offsets: list[int] = []
    offset = 0
    ends_in_padding = False
    for part in (p.strip() for p in spec.split(",")):
        match = _FIELD.match(part)
        if match is None:
            raise UsageError(
                f"bad layout field {part!r}: expected NAME:TYPE with TYPE one of "
                "u8..u64, i8..i64, f32, f64, char[N], bytes[N] or Nx (padding)"
            )
        ends_in_padding = bool(match["pad"])
        if ends_in_padding:
            padding = int(match["pad"])
            if not 0 < padding <= MAX_LAYOUT_BYTES:
                raise UsageError(
                    f"bad layout field {part!r}: padding must be 1..{MAX_LAYOUT_BYTES}"
                )
            offset += padding
            continue
        name = match["name"]
        if name in names:
            raise UsageError(f"bad layout: field {name!r} appears twice")
        if match["clen"] or match["blen"]:
            length = int(match["clen"] or match["blen"])
            if not 0 < length <= 4096:
                raise UsageError(f"bad layout field {part!r}: length must be 1..4096")
            fmt: object = f"S{length}" if match["clen"] else (np.uint8, (length,))
        else:
            fmt = _SCALARS[match["type"]]
        names.append(name)
        formats.append(fmt)
        offsets.append(offset)
        offset += np.dtype(fmt).itemsize  # type: ignore[call-overload]
    if not names:
        raise UsageError("bad layout: no fields")
    if offset > MAX_LAYOUT_BYTES:
        raise UsageError(f"bad layout: it spans {offset} bytes, more than {MAX_LAYOUT_BYTES}")
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": offset})
    ts = next((n for n in TS_NAMES if n in names), None)
    cpu = next((n for n in CPU_NAMES if n in names), None)
    for role, field in (("timestamp", ts), ("cpu", cpu)):
        if field is not None and _fields(dtype)[field][0].kind not in "ui":
            raise UsageError(f"bad layout: the {role} field {field!r} must be an integer")
    # Trailing padding declares the whole event; a layout ending in a field may name
    # only an event's first fields.
    layout = PayloadLayout(dtype, ts, cpu, whole_event=ends_in_padding)
    _check_column_names(layout)
    return layout


def _check_column_names(layout: PayloadLayout) -> None:
    """Refuse two fields that become one column once core names get their prefix."""
    seen: dict[str, str] = {}
    for field in layout.column_fields:
        column = layout.column_name(field)
        if column in seen:
            raise UsageError(
                f"bad layout: fields {seen[column]!r} and {field!r} both become column "
                f"{column!r} (a field named like a core column gets the prefix {RENAMED_PREFIX})"
            )
        seen[column] = field


def _fields(dtype: np.dtype) -> Mapping[str, tuple[Any, ...]]:
    """The fields of a structured dtype (layouts are always structured)."""
    if dtype.fields is None:
        raise TypeError(f"{dtype} is not a structured dtype")
    return dtype.fields


def _type_name(sub: np.dtype) -> str:
    if sub.kind == "S":
        return f"char[{sub.itemsize}]"
    if sub.subdtype is not None:
        return f"bytes[{sub.itemsize}]"
    return next(name for name, code in _SCALARS.items() if np.dtype(code) == sub)


def _arrow_type(sub: np.dtype) -> pa.DataType:
    if sub.kind == "S":
        return pa.string()
    if sub.subdtype is not None:
        return pa.binary()
    return pa.from_numpy_dtype(sub.newbyteorder("="))


def _to_arrow(values: np.ndarray) -> pa.Array:
    if values.dtype.kind == "S":
        return strings_from_bytes(values)
    if values.dtype.subdtype is not None or values.ndim == 2:
        flat = np.ascontiguousarray(values).view(np.uint8).reshape(len(values), -1)
        width = flat.shape[1]
        return pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(width), len(values), [None, pa.py_buffer(flat.tobytes())]
        ).cast(pa.binary())
    return pa.array(np.ascontiguousarray(values).astype(values.dtype.newbyteorder("=")))


def strings_from_bytes(values: np.ndarray) -> pa.Array:
    """NUL-terminated fixed char arrays to an Arrow string column.

    Decodes each distinct value once (commands and names repeat a lot), bytes
    after the first NUL ignored, invalid UTF-8 replaced.
    """
    if len(values) == 0:
        return pa.array([], pa.string())
    unique, inverse = np.unique(values, return_inverse=True)
    texts = [bytes(u).split(b"\0", 1)[0].decode("utf-8", "replace") for u in unique]
    return pa.array(texts, pa.string()).take(pa.array(inverse.astype(np.int32)))


def unnamed_roles(layout: PayloadLayout | None) -> str | None:
    """What a pinned ring buffer's capture lacks when its layout names no timestamp or
    cpu field (a record carries neither), said once; None when it names both."""
    said = []
    if layout is None or layout.ts_field is None:
        said.append("ts_ns is when each event was read (the layout names no ts field)")
    if layout is None or layout.cpu_field is None:
        said.append(f"cpu is {UNKNOWN_CPU}, unknown (the layout names no cpu field)")
    return "; ".join(said) or None
