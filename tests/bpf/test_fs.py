"""bpffs and tracefs: found when mounted, mounted when not."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ebcap.bpf import fs
from ebcap.errors import UsageError


def test_mount_table_unescapes_paths() -> None:
    assert fs._unescape(r"/mnt/a\040b\011c\134d") == "/mnt/a b\tc\\d"
    assert ("/proc", "proc") in fs.mounts()
    assert fs.filesystem_type("/proc/self/status") == "proc"


@pytest.mark.privileged
def test_ensure_bpffs_is_idempotent() -> None:
    path = fs.ensure_bpffs()
    assert path == "/sys/fs/bpf"
    assert fs.filesystem_type(path) == "bpf"
    count = fs.mounts().count(("/sys/fs/bpf", "bpf"))
    assert fs.ensure_bpffs() == path
    assert fs.mounts().count(("/sys/fs/bpf", "bpf")) == count >= 1


@pytest.mark.privileged
def test_ensure_bpffs_mounts_where_there_is_none(tmp_path: Path) -> None:
    target = tmp_path / "bpf"
    target.mkdir()
    assert fs.filesystem_type(target) != "bpf"
    assert fs.ensure_bpffs(str(target)) == str(target)
    try:
        assert (str(target), "bpf") in fs.mounts()
        assert fs.filesystem_type(target / "some-pin") == "bpf"
    finally:
        subprocess.run(["umount", str(target)], check=True)
    assert fs.filesystem_type(target) != "bpf"


@pytest.mark.privileged
def test_ensure_bpffs_needs_a_directory(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a directory"):
        fs.ensure_bpffs(str(tmp_path / "missing"))


@pytest.mark.privileged
def test_ensure_tracefs_gives_a_tree_with_tracepoint_ids() -> None:
    root = fs.ensure_tracefs()
    assert root in fs.TRACEFS_CANDIDATES
    assert (os.path.realpath(root), "tracefs") in fs.mounts()
    sched_switch_id = int(Path(root, "events", "sched", "sched_switch", "id").read_text())
    assert sched_switch_id > 0
    assert fs.ensure_tracefs() == root
