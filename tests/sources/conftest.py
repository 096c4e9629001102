"""Fixtures of the source tests: a veth pair into a fresh network namespace."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from sources import netns


@pytest.fixture
def veth() -> Iterator[netns.VethPair]:
    """A veth pair, one end in a namespace the test owns; both gone afterwards."""
    tag = os.getpid() % 100000
    pair = netns.create(tag)
    try:
        yield pair
    finally:
        netns.destroy(pair.netns, pair.host)
    assert not netns.netns_exists(pair.netns), f"namespace {pair.netns} was not removed"
    assert not os.path.exists(f"/sys/class/net/{pair.host}"), f"{pair.host} was not removed"
