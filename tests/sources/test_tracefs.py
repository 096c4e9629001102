"""tracefs format files: parsed from copies of real ones, and live from this kernel."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from ebcap.bpf import fs, links, tracefs
from ebcap.bpf.programs.tracepoint import RECORD_MAX
from ebcap.bpf.tracefs import FieldKind
from ebcap.capture.tracepoint_source import list_tracepoint_sources
from ebcap.errors import BadFileError, NotSupportedError, UsageError

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> tracefs.TracepointFormat:
    category = name.split("_", 1)[0] if not name.startswith("raw_syscalls") else "raw_syscalls"
    return tracefs.parse_format((FIXTURES / f"{name}.format").read_text(), category)


def layout(fmt: tracefs.TracepointFormat) -> list[tuple[str, FieldKind, int, int, bool, int]]:
    return [(f.name, f.kind, f.offset, f.size, f.signed, f.count) for f in fmt.fields]


def test_sched_switch_fields() -> None:
    fmt = fixture("sched_sched_switch")
    assert (fmt.name, fmt.id, fmt.record_size) == ("sched_switch", 372, 64)
    assert layout(fmt) == [
        ("common_type", FieldKind.INT, 0, 2, False, 1),
        ("common_flags", FieldKind.INT, 2, 1, False, 1),
        ("common_preempt_count", FieldKind.INT, 3, 1, False, 1),
        ("common_pid", FieldKind.INT, 4, 4, True, 1),
        ("prev_comm", FieldKind.STRING, 8, 16, False, 16),
        ("prev_pid", FieldKind.INT, 24, 4, True, 1),
        ("prev_prio", FieldKind.INT, 28, 4, True, 1),
        ("prev_state", FieldKind.INT, 32, 8, True, 1),
        ("next_comm", FieldKind.STRING, 40, 16, False, 16),
        ("next_pid", FieldKind.INT, 56, 4, True, 1),
        ("next_prio", FieldKind.INT, 60, 4, True, 1),
    ]
    assert fmt.field("prev_comm").type == "char"
    assert fmt.print_fmt.startswith('"prev_comm=%s')


def test_data_loc_pointer_array_and_bytes_fields() -> None:
    fork = fixture("sched_sched_process_fork")
    parent = fork.field("parent_comm")
    assert (parent.kind, parent.offset, parent.size, parent.relative) == (
        FieldKind.DYNAMIC_STRING, 8, 4, False,
    )  # fmt: skip
    assert parent.type == "__data_loc char[]" and parent.is_dynamic
    openat = fixture("syscalls_sys_enter_openat")
    assert openat.field("filename").kind is FieldKind.USER_STRING
    dfd, mode = openat.field("dfd"), openat.field("mode")
    assert (dfd.size, dfd.signed, dfd.int_size, dfd.int_signed) == (8, False, 4, True)
    assert (mode.type, mode.int_size, mode.int_signed) == ("umode_t", 2, False)
    assert (openat.field("flags").int_size, openat.field("flags").int_signed) == (4, True)
    lseek = fixture("syscalls_sys_enter_lseek")  # "off_t offset; size:8; signed:0"
    offset, fd = lseek.field("offset"), lseek.field("fd")
    assert (offset.signed, offset.int_size, offset.int_signed) == (False, 8, True)
    assert (fd.int_size, fd.int_signed) == (4, False)
    sched = fixture("sched_sched_switch").field("prev_pid")
    assert (sched.size, sched.value_size, sched.int_signed) == (4, 0, True)
    args = fixture("raw_syscalls_sys_enter").field("args")
    assert (args.kind, args.count, args.element_size) == (FieldKind.INT_ARRAY, 6, 8)
    ipi = fixture("ipi_ipi_send_cpumask").field("cpumask")
    assert ipi.kind is FieldKind.DYNAMIC_BYTES
    sock = fixture("sock_inet_sock_set_state")
    assert (sock.field("saddr").kind, sock.field("saddr").size) == (FieldKind.BYTES, 4)
    assert sock.field("saddr_v6").size == 16 and sock.field("skaddr").kind is FieldKind.POINTER
    assert (sock.field("sport").kind, sock.field("sport").size) == (FieldKind.INT, 2)
    mq = fixture("syscalls_sys_enter_mq_timedsend")  # "const char * u_msg_ptr": a message
    assert mq.field("u_msg_ptr").kind is FieldKind.POINTER
    assert [f.name for f in mq.fields if f.kind is FieldKind.USER_STRING] == []
    buf = fixture("ftrace_bprint").field("buf")
    assert (buf.kind, buf.size) == (FieldKind.FLEXIBLE, 0)


@pytest.mark.parametrize(
    ("decl", "size", "kind", "count", "relative"),
    [
        ("__rel_loc char[] name", 4, FieldKind.DYNAMIC_STRING, 1, True),
        ("__data_loc u8[] buf", 4, FieldKind.DYNAMIC_BYTES, 1, False),
        ("const char *const * argv", 8, FieldKind.POINTER, 1, False),
        ("__u8 saddr[sizeof(struct sockaddr_in6)]", 28, FieldKind.BYTES, 28, False),
        ("char name[TASK_COMM_LEN]", 16, FieldKind.STRING, 16, False),
        ("u32 regs[4]", 16, FieldKind.INT_ARRAY, 4, False),
        ("struct blob b", 12, FieldKind.BYTES, 12, False),
        ("bool on", 1, FieldKind.INT, 1, False),
        ("void * ptrs[4]", 32, FieldKind.INT_ARRAY, 4, False),  # addresses, not one pointer
        ("char names[2][16]", 32, FieldKind.BYTES, 32, False),  # two strings: kept whole
    ],
)
def test_classify_declarations(
    decl: str, size: int, kind: FieldKind, count: int, relative: bool
) -> None:
    field = tracefs.parse_field_line(f"\tfield:{decl};\toffset:8;\tsize:{size};\tsigned:0;")
    assert field is not None
    assert (field.kind, field.count, field.relative) == (kind, count, relative)


CHARS = """name: jbd2_start_commit
ID: 1285
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:char sync_commit;\toffset:8;\tsize:1;\tsigned:0;
\tfield:char old_kernel;\toffset:9;\tsize:1;\tsigned:1;
\tfield:const char c;\toffset:10;\tsize:1;\tsigned:0;
\tfield:signed char s;\toffset:11;\tsize:1;\tsigned:1;
\tfield:unsigned char u;\toffset:12;\tsize:1;\tsigned:0;

print fmt: "sync %d", REC->sync_commit
"""
"""A kernel since 6.2 (-funsigned-char) says ``signed:0`` for a plain char; before, x86
said ``signed:1``."""


def test_plain_char_takes_its_sign_from_the_format() -> None:
    from ebcap.capture.tracepoint_source import TracepointSource

    fmt = tracefs.parse_format(CHARS, "jbd2")
    signs = {f.name: (f.int_size, f.int_signed) for f in fmt.fields if not f.is_common}
    assert signs == {
        "sync_commit": (1, False), "old_kernel": (1, True), "c": (1, False),
        "s": (1, True), "u": (1, False),
    }  # fmt: skip
    source = TracepointSource("jbd2", fmt.name, fmt=fmt)
    types = {f.name: f.type for f in source.arrow_fields()}
    assert (types["sync_commit"], types["old_kernel"]) == (pa.uint8(), pa.int8())
    lseek = fixture("syscalls_sys_enter_lseek").field("offset")  # signed:0, declared off_t
    assert (lseek.signed, lseek.int_signed) == (False, True)


@pytest.mark.privileged
def test_live_plain_chars_follow_their_format() -> None:
    """This kernel's plain char fields (e.g. jbd2_start_commit's sync_commit) are
    recorded with the format's sign: uint8 on a kernel built with -funsigned-char."""
    from ebcap.capture.tracepoint_source import TracepointSource

    chars = 0
    for spec in tracefs.list_tracepoints():
        fmt = tracefs.read_format(*tracefs.split_spec(spec))
        for field in fmt.fields:
            if field.kind is FieldKind.INT and field.type in ("char", "const char"):
                assert field.int_signed == field.signed, (spec, field.name)
                chars += 1
    assert chars
    if "jbd2:jbd2_start_commit" in tracefs.list_tracepoints("jbd2:*"):
        source = TracepointSource("jbd2", "jbd2_start_commit")
        types = {f.name: f.type for f in source.arrow_fields()}
        assert types["sync_commit"] == pa.uint8()


@pytest.mark.parametrize(
    "text",
    ["", "name: x\nID: 1\nformat:\n", "name: x\nID: one\n", "name: x\nID: 3\n\tfield:int;\tbad\n"],
)
def test_not_a_format_file(text: str) -> None:
    with pytest.raises(BadFileError):
        tracefs.parse_format(text)


def test_unparsable_format_names_the_tracepoint_and_the_file(tmp_path: Path) -> None:
    event = tmp_path / "events" / "sched" / "broken"
    event.mkdir(parents=True)
    (event / "format").write_text("name: broken\nID: 7\nformat:\n")
    with pytest.raises(BadFileError) as raised:
        tracefs.read_format("sched", "broken", tmp_path)
    assert str(raised.value) == (
        f"tracepoint sched:broken: {event / 'format'}: "
        "not a tracepoint format file: it lacks name, ID or fields"
    )
    assert raised.value.exit_code == 2


@pytest.mark.parametrize("spec", ["sched", "sched:", ":x", "a:b:c", "sched:sched switch", "../x:y"])
def test_bad_specs(spec: str) -> None:
    with pytest.raises(UsageError):
        tracefs.split_spec(spec)


def test_listing_and_globs_on_a_tree(tmp_path: Path) -> None:
    for category, name in [
        ("sched", "sched_switch"),
        ("sched", "sched_wakeup"),
        ("irq", "softirq_entry"),
        ("irq", "no_id"),
        ("ftrace", "function"),
        ("ftrace", "bprint"),
    ]:
        event = tmp_path / "events" / category / name
        event.mkdir(parents=True)
        (event / "format").write_text((FIXTURES / "sched_sched_switch.format").read_text())
        if name not in ("no_id", "bprint"):
            (event / "id").write_text("372\n")
    (tmp_path / "events" / "sched" / "enable").write_text("0")
    assert tracefs.list_tracepoints("*", tmp_path) == [
        "irq:softirq_entry", "sched:sched_switch", "sched:sched_wakeup",
    ]  # fmt: skip
    assert tracefs.list_tracepoints("sched", tmp_path) == [
        "sched:sched_switch",
        "sched:sched_wakeup",
    ]
    assert tracefs.list_tracepoints("*wake*", tmp_path) == ["sched:sched_wakeup"]
    assert tracefs.list_tracepoints("irq:*", tmp_path) == ["irq:softirq_entry"]
    assert tracefs.list_tracepoints("nothing", tmp_path) == []
    assert tracefs.list_tracepoints("ftrace:*", tmp_path) == []
    assert tracefs.list_tracepoints("function", tmp_path) == []
    assert tracefs.read_format("sched", "sched_wakeup", tmp_path).id == 372
    with pytest.raises(NotSupportedError, match="no tracepoint sched:nope"):
        tracefs.read_format("sched", "nope", tmp_path)


@pytest.mark.privileged
def test_every_live_format_parses() -> None:
    specs = tracefs.list_tracepoints()
    assert "sched:sched_switch" in specs and "syscalls:sys_enter_openat" in specs
    root = Path(fs.ensure_tracefs())
    for spec in specs:
        fmt = tracefs.read_format(*tracefs.split_spec(spec))
        assert fmt.spec == spec
        assert fmt.record_size <= RECORD_MAX, spec
        assert [f.name for f in fmt.fields][:4] == [
            "common_type", "common_flags", "common_preempt_count", "common_pid",
        ]  # fmt: skip
        assert all(f.end <= fmt.record_size for f in fmt.fields)
    for spec in (
        "sched:sched_switch",
        "sched:sched_process_fork",
        "syscalls:sys_enter_openat",
        "syscalls:sys_enter_mq_timedsend",
    ):
        category, name = tracefs.split_spec(spec)
        fmt = tracefs.read_format(category, name)
        assert fmt.id == links.tracepoint_id(category, name, root)
        saved = fixture(f"{category}_{name}")
        assert layout(fmt) == layout(saved)  # the fixtures are this kernel's files
    assert list_tracepoint_sources("sched_sw*") == [
        "tracepoint:sched:sched_swap_numa", "tracepoint:sched:sched_switch",
    ]  # fmt: skip
    assert list_tracepoint_sources("tracepoint:syscalls:sys_enter_openat") == [
        "tracepoint:syscalls:sys_enter_openat"
    ]
    assert list_tracepoint_sources("ftrace:*") == []
    assert all((root / "events" / s.replace(":", "/") / "id").is_file() for s in specs)


@pytest.mark.privileged
def test_every_live_tracepoint_layout_describes_itself() -> None:
    """The recorder stores ``layout.to_json()`` as metadata: it must work for every tracepoint."""
    from ebcap.capture.tracepoint_source import TracepointSource

    for spec in tracefs.list_tracepoints():
        source = TracepointSource(*tracefs.split_spec(spec))
        described = json.loads(source.layout.to_json())
        assert described["size"] == source.event.size
