"""Tracepoint descriptions from tracefs: ``events/CAT/NAME/format`` parsed into fields.

Every tracepoint record starts with the common header (``common_type``,
``common_flags``, ``common_preempt_count``, ``common_pid``) followed by the
event's own fields, each described by one line of its ``format`` file::

    field:char prev_comm[16];	offset:8;	size:16;	signed:0;
    field:__data_loc char[] filename;	offset:8;	size:4;	signed:0;

A ``__data_loc`` field is a u32 in the fixed part: the low 16 bits are the
offset of the variable-length data from the start of the record, the high 16
bits its length (``__rel_loc``: the offset counts from the end of the field).

The ``const char *`` arguments of ``syscalls:sys_enter_*`` tracepoints
(``filename``, ``pathname``, ...) point into the calling process's memory:
they are classified :attr:`FieldKind.USER_STRING` so the program reads the
text (message buffers such as ``buf`` of write(2) and ``u_msg_ptr`` of
mq_timedsend(2) are data, not text: they stay pointers, see :data:`NOT_TEXT`).
Parsing is pure text work, so it is tested on copies of real format files;
reading and listing need a mounted tracefs (:func:`ebcap.bpf.fs.ensure_tracefs`).
"""

from __future__ import annotations

import enum
import fnmatch
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from ebcap.bpf import fs
from ebcap.errors import BadFileError, KernelError, NotSupportedError, UsageError

COMMON_PREFIX: Final = "common_"
DATA_LOC: Final = "__data_loc"
REL_LOC: Final = "__rel_loc"
LOC_OFFSET_MASK: Final = 0xFFFF
LOC_LENGTH_SHIFT: Final = 16

_NAME: Final = re.compile(r"\w+")
_FIELD_LINE: Final = re.compile(
    r"^\s*field:(?P<decl>[^;]+);\s*offset:(?P<offset>\d+);\s*size:(?P<size>\d+);"
    r"\s*signed:(?P<signed>-?\d+);"
)
_DECL: Final = re.compile(r"^(?P<type>.*?)\s*(?P<name>[A-Za-z_]\w*)\s*(?P<dims>(?:\[[^\]]*\])*)$")
_DIM: Final = re.compile(r"\[([^\]]*)\]")
_CHAR_TYPES: Final = frozenset({"char", "signed char", "const char"})
_SCALAR_SIZES: Final = frozenset({1, 2, 4, 8})
SYSCALLS_CATEGORY: Final = "syscalls"
FTRACE_CATEGORY: Final = "ftrace"
"""Events of the ftrace tracers themselves (function, print, ...): they have a format,
but no BPF program can be attached to them."""
USER_STRING_TYPE: Final = "const char *"
NOT_TEXT: Final = frozenset({"buf", "u_msg_ptr", "msgp"})
"""Names of ``const char *`` syscall arguments that are data, not strings: bytes that may
hold NULs, whose length is another argument (``buf`` of write and pwrite64, ``u_msg_ptr``
of mq_timedsend; ``msgp`` of msgsnd, should a kernel declare it so)."""

_SIGNED: Final = {"char": 1, "short": 2, "int": 4, "long": 8, "long long": 8}
C_INTEGERS: Final[dict[str, tuple[int, bool | None]]] = {
    **{name: (size, True) for name, size in _SIGNED.items()},
    "char": (1, None),
    **{f"signed {name}": (size, True) for name, size in _SIGNED.items()},
    **{f"unsigned {name}": (size, False) for name, size in _SIGNED.items()},
    **{
        f"{p}{sign}{bits}": (bits // 8, sign == "s")
        for p in ("", "__")
        for sign in "su"
        for bits in (8, 16, 32, 64)
    },
    "signed": (4, True),
    "unsigned": (4, False),
    "bool": (1, False),
    "_Bool": (1, False),
    "pid_t": (4, True),
    "uid_t": (4, False),
    "gid_t": (4, False),
    "qid_t": (4, False),
    "umode_t": (2, False),
    "mode_t": (4, False),
    "key_serial_t": (4, True),
    "clockid_t": (4, True),
    "timer_t": (4, True),
    "rwf_t": (4, True),
    "mqd_t": (4, True),
    "size_t": (8, False),
    "ssize_t": (8, True),
    "off_t": (8, True),
    "loff_t": (8, True),
}
"""Integer C types by name: (bytes, signed) on x86-64. A syscall tracepoint stores every
argument in an 8-byte slot (``int dfd; size:8; signed:0``) holding the register as the
caller left it: an ``int`` -100 arrives as 0xffffff9c from one program and as
0xffffffffffffff9c from another. Its value is the declared type's low bytes. Plain
``char`` has no sign of its own (None): the kernel is built with -funsigned-char since
6.2 and was signed on x86 before, and the format's ``signed`` says which."""


class FieldKind(enum.Enum):
    """How a field's bytes are to be read."""

    INT = "int"
    """An integer of 1, 2, 4 or 8 bytes (``signed`` says which)."""
    POINTER = "pointer"
    """An address; kept as an unsigned 64-bit number."""
    STRING = "string"
    """A fixed ``char x[N]``: NUL-terminated text."""
    INT_ARRAY = "int_array"
    """A fixed array of integers, ``count`` elements of ``element_size`` bytes."""
    BYTES = "bytes"
    """Raw bytes: arrays of u8 and anything without an integer size."""
    DYNAMIC_STRING = "dynamic_string"
    """``__data_loc char[]`` / ``__rel_loc char[]``: text stored after the fixed part."""
    DYNAMIC_BYTES = "dynamic_bytes"
    """Any other ``__data_loc`` / ``__rel_loc``: bytes stored after the fixed part."""
    FLEXIBLE = "flexible"
    """A trailing ``x[]`` of size 0: no fixed bytes to read."""
    USER_STRING = "user_string"
    """A pointer to a string in user memory (a ``const char *`` syscall argument)."""


@dataclass(frozen=True)
class TracepointField:
    """One line of a format file."""

    name: str
    type: str
    """The C type as written, without the name and array dimensions."""
    offset: int
    size: int
    signed: bool
    kind: FieldKind
    count: int = 1
    """Elements of an array field; 1 otherwise."""
    relative: bool = False
    """A ``__rel_loc`` field: the data offset counts from the end of this field."""
    value_size: int = 0
    """Bytes of an integer's value when its declared C type is narrower than its slot
    (see :data:`C_INTEGERS`); 0: the whole slot."""

    @property
    def int_size(self) -> int:
        """Bytes of an integer field's value (the low bytes of its slot)."""
        return self.value_size or self.size

    @property
    def int_signed(self) -> bool:
        """Whether an integer field's value is signed: by its declared type where known
        (a syscall tracepoint says ``signed:0`` for every argument, ``off_t`` too), else
        (plain ``char`` too) by the format's ``signed``."""
        declared = C_INTEGERS.get(self.type.removeprefix("const "))
        if declared is None or declared[1] is None or declared[0] != self.int_size:
            return self.signed
        return declared[1]

    @property
    def is_common(self) -> bool:
        return self.name.startswith(COMMON_PREFIX)

    @property
    def is_dynamic(self) -> bool:
        return self.kind in (FieldKind.DYNAMIC_STRING, FieldKind.DYNAMIC_BYTES)

    @property
    def has_slot(self) -> bool:
        """Whether the event carries data copied from elsewhere (dynamic or user memory)."""
        return self.is_dynamic or self.kind is FieldKind.USER_STRING

    @property
    def element_size(self) -> int:
        return self.size // self.count if self.count else self.size

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True)
class TracepointFormat:
    """A parsed ``format`` file: the record layout of one tracepoint."""

    category: str
    name: str
    id: int
    fields: tuple[TracepointField, ...]
    print_fmt: str = ""

    @property
    def spec(self) -> str:
        return f"{self.category}:{self.name}"

    @property
    def record_size(self) -> int:
        """Bytes of the fixed part: common header and every fixed field."""
        return max((f.end for f in self.fields), default=0)

    def field(self, name: str) -> TracepointField:
        for candidate in self.fields:
            if candidate.name == name:
                return candidate
        raise UsageError(f"tracepoint {self.spec} has no field {name!r}")


def classify(ctype: str, dims: str, size: int) -> tuple[FieldKind, int, bool]:
    """(kind, element count, relative) of a declaration split into type and dimensions."""
    ctype = " ".join(ctype.split())
    for marker, relative in ((DATA_LOC, False), (REL_LOC, True)):
        if ctype.startswith(marker + " "):
            inner = ctype[len(marker) :].strip()
            is_text = inner.removesuffix("[]").strip() in _CHAR_TYPES
            kind = FieldKind.DYNAMIC_STRING if is_text else FieldKind.DYNAMIC_BYTES
            return kind, 1, relative
    if "*" in ctype and not dims:
        return FieldKind.POINTER, 1, False
    if dims:  # an array of pointers is one of 8-byte integers (addresses)
        if size == 0:
            return FieldKind.FLEXIBLE, 0, False
        count = _array_count(dims)
        if ctype in _CHAR_TYPES and len(_DIM.findall(dims)) == 1:
            return FieldKind.STRING, size, False
        if count is None or count == 0 or size % count:
            return FieldKind.BYTES, size, False
        element = size // count
        if element == 1 or element not in _SCALAR_SIZES:
            return FieldKind.BYTES, size, False
        return FieldKind.INT_ARRAY, count, False
    if size in _SCALAR_SIZES:
        return FieldKind.INT, 1, False
    return FieldKind.BYTES, size, False


def _array_count(dims: str) -> int | None:
    """Elements of ``[a][b]...`` when every dimension is a number (some are C expressions)."""
    count = 1
    for dim in _DIM.findall(dims):
        if not dim.strip().isdigit():
            return None
        count *= int(dim)
    return count


def parse_field_line(line: str) -> TracepointField | None:
    """The field a ``field:...`` line describes, or None for any other line."""
    match = _FIELD_LINE.match(line)
    if match is None:
        return None
    decl = " ".join(match["decl"].split())
    parts = _DECL.match(decl)
    if parts is None:
        raise BadFileError(f"cannot parse field declaration {decl!r}")
    size = int(match["size"])
    ctype = " ".join(parts["type"].split())
    kind, count, relative = classify(ctype, parts["dims"], size)
    declared = C_INTEGERS.get(ctype.removeprefix("const ")) if kind is FieldKind.INT else None
    return TracepointField(
        name=parts["name"],
        type=ctype,
        offset=int(match["offset"]),
        size=size,
        signed=match["signed"] == "1",
        kind=kind,
        count=count,
        relative=relative,
        value_size=declared[0] if declared is not None and declared[0] < size else 0,
    )


def _user_string(field: TracepointField, category: str) -> TracepointField:
    """``field`` as a USER_STRING if it is a string argument of a syscall tracepoint."""
    if (
        category == SYSCALLS_CATEGORY
        and field.kind is FieldKind.POINTER
        and field.type == USER_STRING_TYPE
        and field.name not in NOT_TEXT
    ):
        return replace(field, kind=FieldKind.USER_STRING)
    return field


def parse_format(text: str, category: str = "") -> TracepointFormat:
    """Parse the text of a ``format`` file (BadFileError, saying why, if it is not one)."""
    name = ""
    event_id: int | None = None
    fields: list[TracepointField] = []
    print_fmt = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("name:"):
            name = stripped.removeprefix("name:").strip()
        elif stripped.startswith("ID:"):
            try:
                event_id = int(stripped.removeprefix("ID:"))
            except ValueError:
                raise BadFileError(f"bad ID line {stripped!r}") from None
        elif stripped.startswith("print fmt:"):
            print_fmt = stripped.removeprefix("print fmt:").strip()
        elif stripped.startswith("field:"):
            field = parse_field_line(stripped)
            if field is None:
                raise BadFileError(f"cannot parse field line {stripped!r}")
            fields.append(_user_string(field, category))
    if not name or event_id is None or not fields:
        raise BadFileError("not a tracepoint format file: it lacks name, ID or fields")
    return TracepointFormat(category, name, event_id, tuple(fields), print_fmt)


def split_spec(spec: str) -> tuple[str, str]:
    """``"CAT:NAME"`` as (category, name); UsageError if it is not that."""
    category, sep, name = spec.partition(":")
    if not sep or not _NAME.fullmatch(category) or not _NAME.fullmatch(name):
        raise UsageError(
            f"bad tracepoint {spec!r}: expected CATEGORY:NAME, e.g. sched:sched_switch"
        )
    return category, name


def _root(tracefs_root: str | os.PathLike[str] | None) -> Path:
    return Path(fs.ensure_tracefs() if tracefs_root is None else tracefs_root)


def read_format(
    category: str, name: str, tracefs_root: str | os.PathLike[str] | None = None
) -> TracepointFormat:
    """The format of tracepoint ``category:name`` on this kernel."""
    split_spec(f"{category}:{name}")
    if category == FTRACE_CATEGORY:
        raise UsageError(
            f"{category}:{name} is an event of ftrace's own tracers: "
            "it takes no BPF program, so ebcap cannot record it"
        )
    path = _root(tracefs_root) / "events" / category / name / "format"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise NotSupportedError(
            f"no tracepoint {category}:{name} in this kernel "
            "(ebcap record --list-sources PATTERN lists them)",
            f"tracepoint {category}:{name}",
        ) from None
    except OSError as exc:
        raise KernelError(f"cannot read {path}: {exc.strerror}", exc.errno or 0) from None
    try:
        return parse_format(text, category)
    except BadFileError as exc:
        raise BadFileError(f"tracepoint {category}:{name}: {path}: {exc}") from None


def list_tracepoints(
    pattern: str = "*", tracefs_root: str | os.PathLike[str] | None = None
) -> list[str]:
    """Sorted ``CAT:NAME`` of the tracepoints matching a shell glob that can be recorded.

    A pattern with a colon is matched against ``CAT:NAME``; one without is
    matched against either part, so ``sched_*`` and ``sched`` both work. An
    event without an ``id`` (no perf event can be opened on it) and the
    :data:`FTRACE_CATEGORY` are left out.
    """
    events = _root(tracefs_root) / "events"
    try:
        categories = sorted(p for p in events.iterdir() if p.is_dir() and p.name != FTRACE_CATEGORY)
    except OSError as exc:
        raise KernelError(f"cannot list {events}: {exc.strerror}", exc.errno or 0) from None
    found = []
    for category in categories:
        for event in sorted(category.iterdir()):
            if not ((event / "format").is_file() and (event / "id").is_file()):
                continue
            spec = f"{category.name}:{event.name}"
            if ":" in pattern:
                hit = fnmatch.fnmatchcase(spec, pattern)
            else:
                hit = fnmatch.fnmatchcase(event.name, pattern) or fnmatch.fnmatchcase(
                    category.name, pattern
                )
            if hit:
                found.append(spec)
    return found
