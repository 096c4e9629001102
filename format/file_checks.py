"""Is this input an ebcap file ebcap can read? The checks made before any batch is read.

The path must name a readable, non-empty regular file; its bytes must start
like an Arrow IPC file; its schema must carry ebcap's metadata, a format
version this ebcap knows, and the core columns first, in order, of their
types. The reader and recovery both ask these questions, with the same
one-line answers. Output names are checked for one thing here: whether they
lead to an open descriptor (``/dev/stdout``), which no file may be renamed
over.
"""

from __future__ import annotations

import os
import re
import stat
from collections import Counter
from pathlib import Path
from typing import Any, Final

import pyarrow as pa

from ebcap.errors import (
    BadFileError,
    NotAnArrowFileError,
    NotAnEbcapFileError,
    UnsupportedVersionError,
)
from ebcap.format import checksum
from ebcap.format import schema as fs

ARROW_MAGIC = b"ARROW1"
"""Opens and closes every Arrow IPC file; at the start it is padded to 8 bytes."""
ARROW_MAGIC_PADDED = ARROW_MAGIC + b"\0\0"
FOOTER_LENGTH_SIZE = 4
"""The int32 footer length that sits just before the closing magic."""

DAMAGE_ERRORS = (pa.ArrowException, OSError, UnicodeDecodeError)
"""What pyarrow raises on damaged bytes; turned into BadFileError, never passed on."""


def recover_command(path: Path | str) -> str:
    """The command that makes a valid file of what ``path`` holds intact."""
    return f"`ebcap recover {path} -o FIXED`"


def recover_hint(path: Path | str) -> str:
    return f"run {recover_command(path)}"


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message, for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_input_path(path: str | os.PathLike[str]) -> Path:
    """The path of a readable, non-empty regular file, or a BadFileError saying why not."""
    if os.fspath(path) in ("", b""):
        raise BadFileError("the input path is empty")
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise BadFileError(f"{p}: no such file") from None
    except OSError as exc:
        raise BadFileError(f"cannot read {p}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise BadFileError(f"{p} is a directory, not an ebcap file")
    if not stat.S_ISREG(st.st_mode):
        raise BadFileError(f"{p} is not a regular file (a device, pipe or socket)")
    if st.st_size == 0:
        raise BadFileError(f"{p} is empty")
    if not os.access(p, os.R_OK):
        raise BadFileError(f"cannot read {p}: permission denied")
    return p


def check_magic(path: Path, head: bytes, size: int) -> None:
    """Reject what is not the start of an Arrow IPC file (or a prefix of one)."""
    expected = ARROW_MAGIC_PADDED[: min(size, len(ARROW_MAGIC_PADDED))]
    if head[: len(expected)] == expected:
        return
    if head[:4] == b"\xff\xff\xff\xff":
        raise NotAnArrowFileError(f"{path} is an Arrow IPC stream, not an Arrow IPC file")
    raise NotAnArrowFileError(f"{path} is not an Arrow IPC file (it does not start with ARROW1)")


def check_message_layout(path: Path, data: pa.Buffer, num_batches: int) -> None:
    """Check that the IPC messages fill the file from the magic to the footer, exactly, and
    that they hold as many record batches as the footer indexes.

    Only message headers are read (bodies are slices of ``data``), so this is cheap; it
    finds bytes inserted, deleted or shifted anywhere, even where the columns a
    command reads come out whole (``info`` reads the core columns only).
    """
    size = data.size
    tail = len(ARROW_MAGIC) + FOOTER_LENGTH_SIZE
    footer_length = int.from_bytes(
        data.slice(size - tail, FOOTER_LENGTH_SIZE).to_pybytes(), "little", signed=True
    )
    footer_start = size - tail - footer_length
    problem = ""
    if not len(ARROW_MAGIC_PADDED) <= footer_start <= size - tail:
        problem = "its footer length is wrong"
    else:
        stream = pa.BufferReader(data.slice(len(ARROW_MAGIC_PADDED), footer_start - 8))
        batches = 0
        try:
            for message in pa.ipc.MessageReader.open_stream(stream):
                batches += message.type == "record batch"
        except DAMAGE_ERRORS as exc:
            problem = f"a message does not read back: {one_line(exc)}"
        else:
            gap = stream.size() - stream.tell()
            if gap:
                problem = f"its messages end {gap} bytes before its footer"
            elif batches != num_batches:
                problem = f"it holds {batches} record batches, its footer indexes {num_batches}"
    if problem:
        raise BadFileError(f"{path} is damaged ({problem}): {recover_hint(path)}")


def check_schema(path: Path, schema: pa.Schema) -> dict[str, Any]:
    """The decoded ``ebcap.*`` metadata of a schema that ebcap can read, or why it cannot."""
    try:
        names = schema.names
    except UnicodeDecodeError:
        raise BadFileError(f"{path}: the schema is damaged (column names are not UTF-8)") from None
    raw = schema.metadata or {}
    if raw.get(fs.MAGIC_KEY.encode()) != fs.MAGIC_VALUE.encode():
        raise NotAnEbcapFileError(f"{path} is an Arrow file but not an ebcap capture")
    version_text = raw.get(fs.VERSION_KEY.encode(), b"").decode("utf-8", "replace")
    if not version_text.isdecimal():
        raise UnsupportedVersionError(f"{path} has an unknown format version {version_text!r}")
    version = int(version_text)
    if version < 1 or version > fs.FORMAT_VERSION:
        raise UnsupportedVersionError(
            f"{path} is format version {version}; this ebcap reads up to {fs.FORMAT_VERSION}"
        )
    try:
        metadata = fs.decode_metadata(raw)
    except ValueError as exc:
        raise BadFileError(f"{path}: {exc}") from None
    algorithm = metadata.get(fs.META_CHECKSUM, checksum.ALGORITHM)
    if algorithm != checksum.ALGORITHM:
        raise UnsupportedVersionError(f"{path} uses an unknown checksum {algorithm!r}")
    missing = [key for key in fs.REQUIRED_META if key not in metadata]
    if missing:
        raise NotAnEbcapFileError(f"{path} lacks ebcap metadata {', '.join(missing)}")
    _check_columns(path, schema, names)
    return metadata


def _check_columns(path: Path, schema: pa.Schema, names: list[str]) -> None:
    """Core columns first, in their order and types; no column name twice."""
    for name in fs.CORE_COLUMNS:
        if name not in names:
            raise NotAnEbcapFileError(f"{path} lacks the core column {name!r}")
    twice = [name for name, n in Counter(names).items() if n > 1]
    if twice:
        raise BadFileError(f"{path}: the column name {twice[0]!r} appears more than once")
    leading = tuple(names[: len(fs.CORE_COLUMNS)])
    if leading != fs.CORE_COLUMNS:
        raise BadFileError(
            f"{path}: the core columns are not first in order "
            f"(found {', '.join(leading)}; expected {', '.join(fs.CORE_COLUMNS)})"
        )
    for index, want in enumerate(fs.CORE_FIELDS):
        got = schema.field(index).type
        if got != want.type:
            raise BadFileError(f"{path}: column {want.name!r} is {got}, expected {want.type}")


def descriptor_link(path: str | os.PathLike[str]) -> Path | None:
    """The entry of a ``/proc/PID/fd`` directory that ``path`` leads to through its
    symlinks (``/dev/stdout`` -> ``/proc/self/fd/1``), or None."""
    current = os.path.abspath(path)
    for _ in range(_MAX_LINKS):
        if _DESCRIPTOR_DIR.fullmatch(os.path.realpath(os.path.dirname(current))):
            return Path(current)
        try:
            target = os.readlink(current)
        except OSError:  # not a symlink (or not there): the chain ends elsewhere
            return None
        current = os.path.normpath(os.path.join(os.path.dirname(current), target))
    return None


_DESCRIPTOR_DIR: Final = re.compile(r"/proc/\d+(/task/\d+)?/fd")
"""Where ``/proc/self/fd``, ``/proc/thread-self/fd`` and ``/dev/fd`` lead."""
_MAX_LINKS: Final = 40
"""Symlinks followed at most (the kernel's own limit)."""
