"""The allocator chosen for streaming replays, and the user's own choice left alone."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pyarrow as pa
import pytest

from ebcap.replay.memory import POOL_ENVIRONMENT, use_streaming_pool


@pytest.fixture
def restore_pool() -> Iterator[None]:
    before = pa.default_memory_pool()
    yield
    pa.set_memory_pool(before)


def test_the_system_allocator_by_default(
    restore_pool: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(POOL_ENVIRONMENT, raising=False)
    pa.set_memory_pool(pa.mimalloc_memory_pool())
    assert use_streaming_pool() == "system"
    assert pa.default_memory_pool().backend_name == "system"


def test_a_pool_the_user_chose_stays(restore_pool: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(POOL_ENVIRONMENT, "mimalloc")
    pa.set_memory_pool(pa.mimalloc_memory_pool())
    assert use_streaming_pool() == "mimalloc"
    assert pa.default_memory_pool().backend_name == "mimalloc"


_AFTER_FAULT_IN = """
import resource, sys
import numpy as np
from ebcap.replay.memory import fault_in, use_recording_memory
use_recording_memory()
fault_in(64 << 20)
def faults():
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
before, kept = faults(), []
for i in range(40):  # batch-sized arrays, a few alive at a time, as a drain makes them
    array = np.empty((6 + i * 7 % 5) << 20, dtype=np.uint8)
    array.fill(1)
    kept = [*kept[-3:], array]
print(faults() - before)
"""


@pytest.mark.parametrize("pool", [None, "system", "mimalloc"])
def test_memory_faulted_in_first_is_what_later_batches_reuse(pool: str | None) -> None:
    """glibc maps one block as large as the warm-up on its own and unmaps it when freed,
    so warming up in one piece left nothing behind: later batches faulted ~3,000 pages
    in again (each costing up to tens of microseconds on a VM). In pieces, they stay,
    also when the user chose Arrow's pool (no priming of the mmap threshold then)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop(POOL_ENVIRONMENT, None)
    if pool is not None:
        env[POOL_ENVIRONMENT] = pool
    done = subprocess.run(
        [sys.executable, "-c", _AFTER_FAULT_IN], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    pages = 40 * (8 << 20) // 4096
    assert int(done.stdout) < pages // 100, f"{done.stdout.strip()} page faults"
