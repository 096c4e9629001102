"""Without the capabilities recording needs: one line naming the missing one, a non-zero
exit, nothing loaded or attached, no file created.

The real entry point (``python -m ebcap``) runs under ``setpriv`` as user
nobody, as root stripped of every capability, and with only some of them.
All cases start together (each is a whole interpreter start) and are
checked one by one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kernel_helpers import ebcap_programs, ebcap_programs_left

from ebcap.bpf.links import loaded_link_ids

pytestmark = pytest.mark.privileged

NOBODY = 65534


def _readable_by_others(path: Path) -> bool:
    """Whether a user without privileges can reach ``path`` (x on every parent directory)."""
    return all(os.stat(p).st_mode & 0o001 for p in [*reversed(path.parents)])


def _as_nobody() -> list[str]:
    keep = []
    if not _readable_by_others(Path(sys.executable).resolve()):
        # The interpreter and its packages live where only root may look (/root here):
        # keep CAP_DAC_READ_SEARCH to load them, none of what recording needs.
        keep = ["--inh-caps=-all,+dac_read_search", "--ambient-caps=+dac_read_search"]
    else:
        keep = ["--inh-caps=-all"]
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *keep]


WHO = {
    "nobody": (_as_nobody(), "CAP_BPF"),
    "root-without-capabilities": (["setpriv", "--bounding-set=-all", "--inh-caps=-all"], "CAP_BPF"),
    "only-cap-bpf": (["setpriv", "--bounding-set=-all,+bpf", "--inh-caps=-all"], "CAP_PERFMON"),
    "only-cap-perfmon": (["setpriv", "--bounding-set=-all,+perfmon", "--inh-caps=-all"], "CAP_BPF"),
}
"""How the command is started, and the capability its error must name."""

COMMANDS = {
    "syscalls": ["record", "-o", "{dir}/run.arrow", "--duration", "1"],
    "ringbuf": ["record", "-o", "{dir}/run.arrow", "-t", "ringbuf", "--duration", "1"],
    "tracepoint": ["record", "-o", "{dir}/run.arrow", "-s", "tracepoint:sched:sched_switch"],
    "xdp": ["record", "-o", "{dir}/run.arrow", "-s", "xdp:lo", "--xdp-mode", "generic"],
    "tc": ["record", "-o", "{dir}/run.arrow", "-s", "tc:lo:ingress"],
    "bench": ["bench", "-o", "{dir}/bench.arrow", "--duration", "1"],
}

CASES = [
    ("nobody", "syscalls"),
    ("nobody", "tracepoint"),
    ("nobody", "xdp"),
    ("nobody", "bench"),
    ("root-without-capabilities", "ringbuf"),
    ("root-without-capabilities", "tc"),
    ("only-cap-bpf", "syscalls"),
    ("only-cap-perfmon", "syscalls"),
]
"""Each command and each way of lacking rights at least once (each case is an interpreter
start, so not every pair)."""


@dataclass
class Result:
    returncode: int
    stderr: str
    directory: Path


@dataclass
class Kernel:
    """What the kernel had loaded before the cases started."""

    programs: set[tuple[int, str]]
    links: set[int]


@pytest.fixture(scope="module")
def before() -> Kernel:
    return Kernel(ebcap_programs(), set(loaded_link_ids()))


@pytest.fixture(scope="module")
def results(before: Kernel) -> Iterator[dict[tuple[str, str], Result]]:
    with tempfile.TemporaryDirectory(prefix="ebcap-unprivileged-") as root:
        running = {}
        for who, what in CASES:
            directory = Path(root) / f"{who}-{what}"
            directory.mkdir()
            directory.chmod(0o777)  # writable for nobody: a missing file proves a refusal
            argv = [a.format(dir=directory) for a in COMMANDS[what]]
            command = [*WHO[who][0], sys.executable, "-m", "ebcap", *argv]
            proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=directory)
            running[(who, what)] = (proc, directory)
        done = {}
        for key, (proc, directory) in running.items():
            _, stderr = proc.communicate(timeout=60)
            done[key] = Result(proc.returncode, stderr, directory)
        yield done


@pytest.mark.parametrize(("who", "what"), CASES)
def test_refused_naming_the_missing_capability(
    results: dict[tuple[str, str], Result], who: str, what: str
) -> None:
    result = results[(who, what)]
    capability = WHO[who][1]
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"ebcap: error: recording needs {capability} "), result.stderr
    assert list(result.directory.iterdir()) == [], "a file was created without rights"


def test_nothing_loaded_or_attached(results: dict[tuple[str, str], Result], before: Kernel) -> None:
    """Checked once every case has ended."""
    assert len(results) == len(CASES)
    assert ebcap_programs_left(before.programs) == set(), "a program was loaded without rights"
    assert set(loaded_link_ids()) <= before.links, "a link was made without rights"
