"""The ``privileged`` marker: a reasoned skip on a normal machine, a failure in CI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).with_name("conftest.py")
KERNEL_TEST = """
import pytest

@pytest.mark.privileged
def test_needs_the_kernel():
    pass

def test_plain():
    pass
"""


@pytest.mark.parametrize("required", [False, True])
def test_unprivileged_machine(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, required: bool
) -> None:
    pytester.makeconftest(CONFTEST.read_text(encoding="utf-8"))
    pytester.makeini("[pytest]\nmarkers =\n    privileged: kernel\n    network: veth\n")
    pytester.makepyfile(KERNEL_TEST)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("EBCAP_REQUIRE_PRIVILEGED", "1" if required else "0")
    result = pytester.runpytest_inprocess("-rs", "-p", "no:cacheprovider")
    if required:
        result.assert_outcomes(passed=1, errors=1)  # failed in setup: an error, never a pass
        result.stdout.fnmatch_lines(["*EBCAP_REQUIRE_PRIVILEGED=1 but needs root*"])
    else:
        result.assert_outcomes(passed=1, skipped=1)
        result.stdout.fnmatch_lines(["*privileged test: needs root*"])
