"""Shared test setup: the ``privileged`` marker and helpers.

Tests marked ``privileged`` need root and a BPF-capable kernel. On a normal
machine they skip with the reason; with ``EBCAP_REQUIRE_PRIVILEGED=1`` (CI)
they fail instead, so a kernel test can never pass by not running.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest


def _privilege_problem() -> str | None:
    from ebcap.bpf.caps import CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN, effective_capabilities

    if os.geteuid() != 0:
        return "needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN)"
    caps = effective_capabilities()
    if not caps & (1 << CAP_SYS_ADMIN) and not (
        caps & (1 << CAP_BPF) and caps & (1 << CAP_PERFMON)
    ):
        return "root without CAP_SYS_ADMIN (or CAP_BPF and CAP_PERFMON)"
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return "no kernel BTF (/sys/kernel/btf/vmlinux): not a BPF-capable kernel"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a kernel test with the reason, or fail it when CI requires kernel tests."""
    if not (item.get_closest_marker("privileged") or item.get_closest_marker("network")):
        return
    problem = _privilege_problem()
    if problem is None:
        return
    if os.environ.get("EBCAP_REQUIRE_PRIVILEGED") == "1":
        pytest.fail(f"EBCAP_REQUIRE_PRIVILEGED=1 but {problem}", pytrace=False)
    pytest.skip(f"privileged test: {problem}")


@pytest.fixture(scope="session", autouse=True)
def _session_outside_the_source_tree(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[None]:
    """The same for session fixtures (they run before any test's own directory)."""
    with contextlib.chdir(tmp_path_factory.mktemp("session-cwd")):
        yield


@pytest.fixture(autouse=True)
def _run_outside_the_source_tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Run every test from an empty directory.

    ``python -m ebcap`` puts the working directory first on sys.path; from the
    repository root, the source folder ``ebcap/`` would shadow the installed
    package (whose subpackages live in other folders of the tree).
    """
    with contextlib.chdir(tmp_path_factory.mktemp("cwd")):
        yield
