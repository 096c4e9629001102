"""`ebcap record` and `ebcap bench` allocate Arrow memory from the C library.

With pyarrow's default pool (mimalloc) the memory a long ring-buffer
recording holds kept rising with the mix of drain sizes (bench/sustained.py:
the VmRSS floor rose by about 40 MiB within a minute), while with the C
library's allocator it stays flat at the same throughput (docs/RELIABILITY.md).
Like `ebcap replay`, the commands switch to it unless ARROW_DEFAULT_MEMORY_POOL
says otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from reliability.harness import run_cli, run_record

from ebcap.replay.memory import POOL_ENVIRONMENT

pytestmark = pytest.mark.privileged


@pytest.fixture
def mimalloc_first(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Start from pyarrow's usual pool; put back whatever was in use afterwards."""
    previous = pa.default_memory_pool()
    monkeypatch.delenv(POOL_ENVIRONMENT, raising=False)
    pa.set_memory_pool(pa.mimalloc_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


@pytest.mark.parametrize(
    "argv",
    [
        ["record", "-o", "{dir}/run.arrow", "--count", "10"],
        ["bench", "-o", "{dir}/bench.arrow", "--duration", "0.2"],
    ],
    ids=["record", "bench"],
)
def test_recording_uses_the_system_allocator(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], mimalloc_first: None
) -> None:
    args = [a.format(dir=tmp_path) for a in argv]
    outcome = run_record(capsys, args[1:]) if args[0] == "record" else run_cli(capsys, args)
    assert outcome.code == 0, outcome.describe()
    assert pa.default_memory_pool().backend_name == "system"


def test_the_users_choice_stands(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    mimalloc_first: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(POOL_ENVIRONMENT, "mimalloc")
    outcome = run_record(capsys, ["-o", tmp_path / "run.arrow", "--count", "10"])
    assert outcome.code == 0, outcome.describe()
    assert pa.default_memory_pool().backend_name == "mimalloc"
