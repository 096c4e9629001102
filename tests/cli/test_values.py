"""Command-line value parsers."""

from __future__ import annotations

import math
import mmap
from pathlib import Path

import pytest

from ebcap.capture.ring_settings import (
    DEFAULT_PERF_BUFFER_BYTES,
    DEFAULT_RINGBUF_BYTES,
    DEFAULT_WAKEUP_EVENTS,
)
from ebcap.cli._values import (
    check_watermark,
    file_name,
    output_file,
    parse_buffer_size,
    parse_size,
    parse_wakeup,
    positive_seconds,
    unused_wakeup,
)
from ebcap.errors import UsageError


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4096", 4096), ("64K", 65536), ("8MiB", 8 << 20), ("1g", 1 << 30), ("2 MB", 2 << 20)],
)
def test_sizes(text: str, expected: int) -> None:
    assert parse_size(text, "--buffer-size") == expected


@pytest.mark.parametrize("text", ["", "0", "-1", "1.5M", "12 parsecs", "M"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(UsageError, match="--buffer-size"):
        parse_size(text, "--buffer-size")


def test_wakeup_events_or_watermark() -> None:
    assert parse_wakeup(None) == (DEFAULT_WAKEUP_EVENTS, None)
    assert parse_wakeup("64") == (64, None)
    assert parse_wakeup("256K") == (None, 256 << 10)
    with pytest.raises(UsageError):
        parse_wakeup("0")


def test_output_names_must_not_be_empty() -> None:
    assert output_file("run.arrow") == Path("run.arrow")
    for empty in ("", "  "):
        with pytest.raises(UsageError, match=r"^-o/--output: the file name is empty$"):
            output_file(empty)
    with pytest.raises(UsageError, match=r"^--ready-file: the file name is empty$"):
        file_name("--ready-file")("")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 0.0, -1.0])
def test_durations_must_be_finite_and_positive(value: float) -> None:
    with pytest.raises(UsageError, match=r"^--duration must be a finite number of seconds"):
        positive_seconds(value, "--duration")


def test_good_durations_pass() -> None:
    assert positive_seconds(None, "--duration") is None
    assert positive_seconds(0.25, "--duration") == 0.25


def test_perf_buffer_sizes_round_up_to_a_power_of_two_of_pages_and_say_so() -> None:
    page = mmap.PAGESIZE
    rounded = parse_buffer_size("5000", "perf")
    assert (rounded.requested, rounded.bytes, rounded.pages) == (5000, 2 * page, 2)
    assert rounded.note == (
        f"rounded up to {2 * page} bytes per CPU (a perf ring is a power of two of pages)"
    )
    exact = parse_buffer_size("64K", "perf")
    assert exact.bytes == 64 << 10 and exact.note is None
    default = parse_buffer_size(None, "perf")
    assert default.bytes == DEFAULT_PERF_BUFFER_BYTES and default.note is None
    assert parse_buffer_size(None, "ringbuf").bytes == DEFAULT_RINGBUF_BYTES


@pytest.mark.parametrize(
    ("text", "transport", "message"),
    [
        ("3", "perf", "needs at least one page"),
        ("64G", "perf", "the kernel allocates at most 1073741824 bytes"),
        ("2G", "perf", "the kernel allocates at most"),
        ("3", "ringbuf", "below the kernel's minimum of one page"),
        ("12288", "ringbuf", "power of two"),
        ("4G", "ringbuf", "above the kernel's maximum of 2147483648 bytes"),
        ("8G", "ringbuf", "above the kernel's maximum"),
    ],
)
def test_buffer_sizes_out_of_the_kernels_bounds(text: str, transport: str, message: str) -> None:
    with pytest.raises(UsageError, match=f"^--buffer-size {text}: .*{message}"):
        parse_buffer_size(text, transport)


def test_largest_buffers_the_kernel_takes() -> None:
    assert parse_buffer_size("1G", "perf").bytes == 1 << 30
    assert parse_buffer_size("2G", "ringbuf").bytes == 1 << 31


def test_a_wakeup_a_ring_buffer_does_not_use_is_said() -> None:
    assert unused_wakeup(None, "ringbuf") is None
    assert unused_wakeup("8", "perf") is None
    assert unused_wakeup("8", "ringbuf") == (
        "--wakeup 8 is not used: a ring buffer wakes its reader by its own rule "
        "(when the reader has caught up)"
    )


def test_watermark_must_be_below_the_ring() -> None:
    check_watermark("4K", 4096, 8192)
    check_watermark("64", None, 4096)
    with pytest.raises(UsageError, match=r"^--wakeup 8K: a watermark of 8192 bytes must be below"):
        check_watermark("8K", 8192, 8192)


def test_a_ready_file_left_by_an_earlier_run_is_removed_first(tmp_path: Path) -> None:
    """A script waiting for it must not start its producer before the rings are in place."""
    from ebcap.cli.record import check_ready_file, remove_old_ready_file

    ready = tmp_path / "ready"
    ready.touch()
    check_ready_file(ready, tmp_path / "run.arrow")
    assert list(tmp_path.iterdir()) == [ready]  # the writability probe leaves nothing
    remove_old_ready_file(ready)
    assert list(tmp_path.iterdir()) == []
    remove_old_ready_file(ready)  # none there: nothing to do


@pytest.mark.parametrize("refused", [["-b", "3"], ["--pid", "-4"], "existing output"])
def test_a_refused_run_leaves_the_ready_file(tmp_path: Path, refused: object) -> None:
    """Bad values change nothing: not even the ready file is removed."""
    from ebcap.cli import run

    ready, out = tmp_path / "ready", tmp_path / "run.arrow"
    ready.write_text("keep")
    extra = refused if isinstance(refused, list) else []
    if refused == "existing output":
        out.write_text("earlier")
    assert run(["record", "-o", str(out), "--ready-file", str(ready), "-d", "1", *extra]) == 2
    assert ready.read_text() == "keep"
