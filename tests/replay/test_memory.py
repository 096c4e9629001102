"""The allocator chosen for streaming replays, and the user's own choice left alone."""

from __future__ import annotations

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
