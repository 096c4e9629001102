"""Output files: refusals, atomic rename, zstd, nothing half-written left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import zstandard

from ebcap.errors import OutputExistsError, UsageError
from ebcap.replay.sink import Output, inner_suffix


def test_commit_renames_into_place_with_owner_only_mode(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with Output(target) as out:
        out.write(b"hello\n")
        assert not target.exists()  # only a hidden temporary name so far
        assert len(list(tmp_path.iterdir())) == 1
    assert target.read_bytes() == b"hello\n"
    assert os.stat(target).st_mode & 0o777 == 0o600
    assert list(tmp_path.iterdir()) == [target]


def test_zst_output_decompresses_to_what_was_written(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl.zst"
    payload = b"".join(b'{"n":%d}\n' % i for i in range(10_000))
    with Output(target) as out:
        for start in range(0, len(payload), 777):
            out.write(memoryview(payload)[start : start + 777])
    compressed = target.read_bytes()
    assert len(compressed) < len(payload) // 5
    assert zstandard.ZstdDecompressor().stream_reader(compressed).read() == payload


def test_an_error_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "out.csv.zst"
    with pytest.raises(RuntimeError), Output(target) as out:
        out.write(b"partial")
        raise RuntimeError("formatter failed")
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="--force"):
        Output(target)
    assert target.read_bytes() == b"keep me"
    with Output(target, force=True) as out:
        out.write(b"new")
    assert target.read_bytes() == b"new"


def test_a_symbolic_link_to_nothing_needs_force_and_is_replaced_not_followed(
    tmp_path: Path,
) -> None:
    target = tmp_path / "out.txt"
    target.symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputExistsError, match="--force"):
        Output(target)
    with Output(target, force=True) as out:
        out.write(b"new")
    assert not target.is_symlink() and target.read_bytes() == b"new"
    assert not (tmp_path / "nowhere").exists()


def test_refuses_the_input_itself_even_through_another_name(tmp_path: Path) -> None:
    source = tmp_path / "in.arrow"
    source.write_bytes(b"capture")
    (tmp_path / "link.arrow").symlink_to(source)
    for name in ("in.arrow", "link.arrow"):
        with pytest.raises(UsageError, match="is the input"):
            Output(tmp_path / name, force=True, inputs=[source])
    assert source.read_bytes() == b"capture"


def test_missing_directory_and_directory_target(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        Output(tmp_path / "nope" / "out.txt")
    with pytest.raises(UsageError, match="is a directory"):
        Output(tmp_path)


def test_format_suffix_ignores_zst() -> None:
    assert inner_suffix("a/b.JSONL.zst") == ".jsonl"
    assert inner_suffix("b.csv") == ".csv"
    assert inner_suffix("b") == ""


@pytest.mark.parametrize("force", [False, True])
def test_a_device_is_written_in_place_not_replaced(force: bool) -> None:
    """`-o /dev/null` (with or without --force) writes to the device: renaming a finished
    temporary file over it would replace /dev/null with a regular file."""
    import stat

    with Output("/dev/null", force=force) as out:
        out.write(b"discarded\n")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_a_fifo_is_written_in_place(tmp_path: Path) -> None:
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    with Output(fifo) as out:
        out.write(b"through the pipe\n")
    reader.join(timeout=10)
    assert received == [b"through the pipe\n"]
    assert [p.name for p in tmp_path.iterdir()] == ["pipe"]  # no temporary file, no rename


@pytest.mark.parametrize("force", [False, True])
def test_a_name_of_an_open_descriptor_is_written_through_it(tmp_path: Path, force: bool) -> None:
    """`-o /dev/stdout` with stdout a regular file (`> out`, `>> log`): the name leads to
    /proc/self/fd/1, which is neither "an existing file" to refuse nor one to rename a
    temporary file over (that would replace the /dev/stdout symlink). A link of our own
    stands in for /dev/stdout; the descriptor is a file opened for appending."""
    log = tmp_path / "log.txt"
    log.write_bytes(b"before\n")
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    try:
        link = tmp_path / "stdout"
        link.symlink_to(f"/proc/self/fd/{fd}")
        for name in (link, f"/dev/fd/{fd}", f"/proc/self/fd/{fd}"):
            with Output(name, force=force) as out:
                out.write(b"written\n")
        assert os.readlink(link) == f"/proc/self/fd/{fd}"  # the link stays a link
        os.write(fd, b"after\n")  # the descriptor is still ours, and still appends
    finally:
        os.close(fd)
    assert log.read_bytes() == b"before\n" + b"written\n" * 3 + b"after\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.txt", "stdout"]


def test_a_name_of_a_closed_descriptor_is_one_line(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)
    os.close(fd)
    (tmp_path / "gone").symlink_to(f"/proc/self/fd/{fd}")
    with pytest.raises(UsageError, match="Bad file descriptor"):
        Output(tmp_path / "gone")
    assert [p.name for p in tmp_path.iterdir()] == ["gone"]
