"""Any tracepoint as a source: every field of its record becomes a typed column.

The tracefs ``format`` file says where each field sits; the generated program
(:mod:`ebcap.bpf.programs.tracepoint`) copies the record and the dynamic
strings behind the standard header, and this module turns the copies into
columns: integers of their own width and sign (``bool`` as bool), pointers as uint64, char
arrays and ``__data_loc`` strings as text, other arrays as fixed-size lists
or bytes. A field named like a core column gets the ``ev_`` prefix
(``cpu`` -> ``ev_cpu``); a trailing flexible array (``x[]``) has no column.

Copied strings (``__data_loc``/``__rel_loc`` text and the ``const char *``
arguments of syscall tracepoints) are cut to ``string_bytes - 1`` bytes
(255 by default), other ``__data_loc`` fields to ``string_bytes``:
``NAME_truncated`` says whether a value was cut, and a value that could not
be read is null in both. A user string also keeps its
pointer as ``NAME_ptr``. (An extra column whose name another field already
has is left out.)
Of the common header only ``common_pid`` is kept: BPF never sees the others
(see :mod:`ebcap.bpf.programs.tracepoint`).
"""

from __future__ import annotations

import math
import os
from contextlib import ExitStack
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ebcap.bpf import _sys, tracefs
from ebcap.bpf.maps import Map
from ebcap.bpf.programs import tracepoint as program
from ebcap.bpf.tracefs import FieldKind, TracepointField, TracepointFormat
from ebcap.capture.layout import PayloadLayout, strings_from_bytes
from ebcap.capture.sources import KernelSide, Source, create_counter_map, create_events_map
from ebcap.errors import UsageError
from ebcap.format.schema import CORE_COLUMNS

SPEC_PREFIX: Final = "tracepoint:"
PROGRAM_NAME: Final = "ebcap_tp"
HEAD_SUFFIX: Final = ".head"
"""Layout name of a slot's head (not a C identifier: cannot clash)."""
POINTER_SUFFIX: Final = ".ptr"
TRUNCATED_COLUMN: Final = "_truncated"
POINTER_COLUMN: Final = "_ptr"
_RENAMED: Final = "ev_"


def column_name(field: TracepointField) -> str:
    return _RENAMED + field.name if field.name in CORE_COLUMNS else field.name


def list_tracepoint_sources(
    pattern: str = "*", tracefs_root: str | os.PathLike[str] | None = None
) -> list[str]:
    """``tracepoint:CAT:NAME`` of the tracepoints matching a glob (as ``list_tracepoints``)."""
    pattern = pattern.removeprefix(SPEC_PREFIX)
    return [SPEC_PREFIX + spec for spec in tracefs.list_tracepoints(pattern, tracefs_root)]


def _int_dtype(size: int, signed: bool) -> str:
    return f"<{'i' if signed else 'u'}{size}"


def _int_type(size: int, signed: bool) -> pa.DataType:
    return pa.from_numpy_dtype(np.dtype(_int_dtype(size, signed)).newbyteorder("="))


class TracepointSource(Source):
    """Records tracepoint ``category:name`` with every field decoded."""

    def __init__(
        self,
        category: str,
        name: str,
        *,
        string_bytes: int = program.STRING_BYTES_DEFAULT,
        tracefs_root: str | os.PathLike[str] | None = None,
        fmt: TracepointFormat | None = None,
    ) -> None:
        """Reads the tracepoint's format now (the schema is needed before start);
        ``fmt`` gives it instead (decoding alone needs no tracefs)."""
        if fmt is None:
            fmt = tracefs.read_format(category, name, tracefs_root)
        elif (fmt.category, fmt.name) != (category, name):
            raise UsageError(f"format of {fmt.spec} given for tracepoint {category}:{name}")
        self.format = fmt
        self.spec = SPEC_PREFIX + fmt.spec
        self.event = program.event_layout(fmt, string_bytes)
        self._tracefs_root = tracefs_root
        dtype, self.fields = _event_dtype(fmt, self.event)
        self.layout = PayloadLayout(dtype, "ts_ns", "cpu")

        taken = {column_name(f) for f in fmt.fields}
        self._extras = {
            f.name: [suffix for suffix in _extra_columns(f) if column_name(f) + suffix not in taken]
            for f in self.fields
        }

    def arrow_fields(self) -> list[pa.Field]:
        out = []
        for f in self.fields:
            out.append(pa.field(column_name(f), _arrow_type(f)))
            out += [pa.field(column_name(f) + x, _EXTRA_TYPES[x]) for x in self._extras[f.name]]
        return out

    def decode(self, events: np.ndarray) -> dict[str, pa.Array]:
        columns: dict[str, pa.Array] = {}
        for f in self.fields:
            decoded = _decode_field(f, events)
            columns[column_name(f)] = decoded[""]
            for suffix in self._extras[f.name]:
                columns[column_name(f) + suffix] = decoded[suffix]
        return columns

    def start(self, transport: str, buffer_bytes: int, stack: ExitStack) -> KernelSide:
        from ebcap.bpf import links
        from ebcap.bpf.prog import Program

        events = create_events_map(transport, buffer_bytes, stack)
        drops = create_counter_map("ebcap_drops", 8, stack)
        scratch = Map.create(
            _sys.BPF_MAP_TYPE_PERCPU_ARRAY, 4, self.event.scratch_size, 1, name="ebcap_tp_buf"
        )
        stack.callback(scratch.close)
        insns = program.build_tracepoint_program(
            self.format, self.event, transport, events.fd, drops.fd, scratch.fd
        )
        prog = Program.load(_sys.BPF_PROG_TYPE_TRACEPOINT, insns, name=PROGRAM_NAME)
        stack.callback(prog.close)
        kernel = KernelSide(events, drops)

        def attach() -> None:
            link = links.attach_tracepoint(
                prog, self.format.category, self.format.name, self._tracefs_root
            )
            stack.callback(link.close)
            kernel.detach = link.close

        kernel.attach = attach
        return kernel


def _event_dtype(
    fmt: TracepointFormat, event: program.TracepointEventLayout
) -> tuple[np.dtype, list[TracepointField]]:
    """The event's structured dtype (named by column) and the fields that get a column."""
    slots = {slot.name: slot for slot in event.slots}
    names: list[str] = ["ts_ns", "cpu"]
    formats: list[object] = ["<u8", "<u4"]
    offsets: list[int] = [program.HEADER_TS, program.HEADER_CPU]
    kept: list[TracepointField] = []
    for field in fmt.fields:
        if field.kind is FieldKind.FLEXIBLE or field.end > event.record_bytes:
            continue
        if field.is_common and field.name != program.COMMON_PID:
            continue
        column = column_name(field)
        if not field.has_slot:
            names.append(column)
            formats.append(_field_format(field))
            offsets.append(event.record_offset + field.offset)
            kept.append(field)
            continue
        slot = slots[field.name]
        names += [column, column + HEAD_SUFFIX]
        formats += [f"S{slot.size}" if slot.text else (np.uint8, (slot.size,)), "<u4"]
        offsets += [slot.data_offset, slot.offset]
        if field.kind is FieldKind.USER_STRING:
            names.append(column + POINTER_SUFFIX)
            formats.append("<u8")
            offsets.append(event.record_offset + field.offset)
        kept.append(field)
    dtype = np.dtype(
        {"names": names, "formats": formats, "offsets": offsets, "itemsize": event.size}
    )
    return dtype, kept


def _field_format(field: TracepointField) -> object:
    """The numpy format of a fixed field's bytes."""
    if field.kind is FieldKind.INT:
        return _int_dtype(field.int_size, field.int_signed)
    if field.kind is FieldKind.POINTER:
        return "<u8"
    if field.kind is FieldKind.STRING:
        return f"S{field.size}"
    if field.kind is FieldKind.INT_ARRAY:
        return (_int_dtype(field.element_size, field.signed), (field.count,))
    return (np.uint8, (field.size,))


_TEXT_SLOTS: Final = (FieldKind.DYNAMIC_STRING, FieldKind.USER_STRING)
BOOL_TYPES: Final = frozenset({"bool", "_Bool"})


def _is_bool(field: TracepointField) -> bool:
    return field.kind is FieldKind.INT and field.size == 1 and field.type in BOOL_TYPES


_EXTRA_TYPES: Final = {TRUNCATED_COLUMN: pa.bool_(), POINTER_COLUMN: pa.uint64()}


def _extra_columns(field: TracepointField) -> list[str]:
    """Suffixes of the columns a field adds to its own: truncation, pointer."""
    if field.kind is FieldKind.USER_STRING:
        return [POINTER_COLUMN, TRUNCATED_COLUMN]
    if field.kind in (FieldKind.DYNAMIC_STRING, FieldKind.DYNAMIC_BYTES):
        return [TRUNCATED_COLUMN]
    return []


def _arrow_type(field: TracepointField) -> pa.DataType:
    if _is_bool(field):
        return pa.bool_()
    if field.kind is FieldKind.INT:
        return _int_type(field.int_size, field.int_signed)
    if field.kind is FieldKind.POINTER:
        return pa.uint64()
    if field.kind in (FieldKind.STRING, *_TEXT_SLOTS):
        return pa.string()
    if field.kind is FieldKind.INT_ARRAY:
        return pa.list_(_int_type(field.element_size, field.signed), field.count)
    return pa.binary()


def _decode_field(field: TracepointField, events: np.ndarray) -> dict[str, pa.Array]:
    """The field's column (key "") and its extra columns (keyed by suffix)."""
    name = column_name(field)
    values = events[name]
    if _is_bool(field):
        return {"": pa.array(values != 0)}
    if field.kind in (FieldKind.INT, FieldKind.POINTER):
        return {"": pa.array(np.ascontiguousarray(values).astype(values.dtype.newbyteorder("=")))}
    if field.kind is FieldKind.STRING:
        return {"": strings_from_bytes(values)}
    if field.kind in _TEXT_SLOTS:
        status = events[name + HEAD_SUFFIX]
        unreadable = status == program.STRING_UNREADABLE
        text = strings_from_bytes(values)
        out = {
            "": pc.if_else(unreadable, pa.scalar(None, pa.string()), text),
            TRUNCATED_COLUMN: pa.array(status == program.STRING_TRUNCATED, mask=unreadable),
        }
        if field.kind is FieldKind.USER_STRING:
            pointers = events[name + POINTER_SUFFIX]
            out[POINTER_COLUMN] = pa.array(pointers.astype(pointers.dtype.newbyteorder("=")))
        return out
    if field.kind is FieldKind.INT_ARRAY:
        flat = np.ascontiguousarray(values).astype(values.dtype.newbyteorder("=")).reshape(-1)
        return {"": pa.FixedSizeListArray.from_arrays(pa.array(flat), field.count)}
    data = np.ascontiguousarray(values).reshape(len(events), math.prod(values.shape[1:]))
    if field.kind is FieldKind.DYNAMIC_BYTES:
        return _dynamic_bytes(data, events[name + HEAD_SUFFIX].astype(np.int64))
    return {"": _binary(data, np.full(len(events), data.shape[1], dtype=np.int64))}


def _dynamic_bytes(data: np.ndarray, heads: np.ndarray) -> dict[str, pa.Array]:
    """A bytes slot's column and ``_truncated``, from each head: the field's whole
    length, or unreadable (null in both)."""
    unreadable = heads == program.BYTES_UNREADABLE
    lengths = np.where(unreadable, 0, np.minimum(heads, data.shape[1]))
    values = _binary(data, lengths)
    if unreadable.any():
        values = pc.if_else(pa.array(unreadable), pa.scalar(None, pa.binary()), values)
    cut = pa.array(heads > data.shape[1], mask=unreadable)
    return {"": values, TRUNCATED_COLUMN: cut}


def _binary(data: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """Rows of ``data`` cut to ``lengths`` as one Arrow binary column."""
    keep = np.arange(data.shape[1])[None, :] < lengths[:, None]
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.BinaryArray.from_buffers(
        pa.binary(),
        len(lengths),
        [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(data[keep].tobytes())],
    )
