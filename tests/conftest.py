"""Shared test setup: the ``privileged`` marker and helpers.

Tests marked ``privileged`` need root and a BPF-capable kernel. On a normal
machine they skip with the reason; with ``EBCAP_REQUIRE_PRIVILEGED=1`` (CI)
they fail instead, so a kernel test can never pass by not running.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

REQUIRE_PRIVILEGED = os.environ.get("EBCAP_REQUIRE_PRIVILEGED") == "1"


def _privilege_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN)"
    if not os.path.exists("/sys/kernel/btf/vmlinux") and not os.path.exists("/proc/kallsyms"):
        return "no kernel BPF support visible"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    problem = _privilege_problem()
    if problem is None:
        return
    for item in items:
        if item.get_closest_marker("privileged") or item.get_closest_marker("network"):
            if REQUIRE_PRIVILEGED:
                item.add_marker(pytest.mark.usefixtures("_require_privileged"))
            else:
                item.add_marker(pytest.mark.skip(reason=f"privileged test: {problem}"))


@pytest.fixture
def _require_privileged() -> None:
    problem = _privilege_problem()
    if problem is not None:
        pytest.fail(f"EBCAP_REQUIRE_PRIVILEGED=1 but {problem}")


@pytest.fixture(autouse=True)
def _run_outside_the_source_tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Run every test from an empty directory.

    ``python -m ebcap`` puts the working directory first on sys.path; from the
    repository root, the source folder ``ebcap/`` would shadow the installed
    package (whose subpackages live in other folders of the tree).
    """
    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    try:
        yield
    finally:
        os.chdir(here)
