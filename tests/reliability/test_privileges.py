"""Without the capabilities a recording needs: one line naming exactly the missing ones,
a non-zero exit, nothing loaded or attached, no file created; with them, it records.

The real entry point (``python -m ebcap``) runs under ``setpriv`` as user
nobody, as root stripped of every capability, and as root with a bounding
set of only some (per source family: syscalls, tracepoint, tc, xdp, pinned
maps, bench). xdp and tc use the host end of a veth pair into a namespace
of the test's own. All cases start together (each is a whole interpreter
start) and are checked one by one.
"""

from __future__ import annotations

import mmap
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kernel_helpers import ebcap_programs, ebcap_programs_left
from sources import netns

from ebcap.bpf import _sys
from ebcap.bpf.cpus import online_cpus, possible_cpus
from ebcap.bpf.fs import ensure_bpffs
from ebcap.bpf.links import loaded_link_ids
from ebcap.bpf.maps import Map
from ebcap.capture.privileges import memlock_budget
from ebcap.capture.ring_settings import DEFAULT_PERF_BUFFER_BYTES

pytestmark = [pytest.mark.privileged, pytest.mark.network]

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


def _bounding(*caps: str) -> list[str]:
    """Root whose capabilities are exactly ``caps`` (setpriv names: bpf, perfmon, ...)."""
    return ["setpriv", f"--bounding-set={','.join(['-all', *(f'+{c}' for c in caps)])}"]


WHO = {
    "nobody": _as_nobody(),
    "root-without-capabilities": [*_bounding(), "--inh-caps=-all"],
    "only-cap-bpf": [*_bounding("bpf"), "--inh-caps=-all"],
    "only-cap-perfmon": [*_bounding("perfmon"), "--inh-caps=-all"],
    "bpf+perfmon": [*_bounding("bpf", "perfmon"), "--inh-caps=-all"],
    "bpf+net_admin": [*_bounding("bpf", "net_admin"), "--inh-caps=-all"],
    "bpf+perfmon+net_admin": [*_bounding("bpf", "perfmon", "net_admin"), "--inh-caps=-all"],
}
"""How the command is started."""

OUT = ["-o", "{dir}/run.arrow"]
COMMANDS = {
    "syscalls": ["record", *OUT, "--duration", "1"],
    "syscalls 2M": ["record", *OUT, "-b", "2M", "--duration", "0.5"],
    "syscalls 2M realtime": ["record", *OUT, "-b", "2M", "--realtime", "1", "-d", "0.5"],
    "ringbuf": ["record", *OUT, "-t", "ringbuf", "--duration", "1"],
    "tracepoint": ["record", *OUT, "-s", "tracepoint:sched:sched_switch", "-d", "0.5"],
    "xdp": ["record", *OUT, "-s", "xdp:{veth}", "--xdp-mode", "generic", "-d", "0.5"],
    "xdp ringbuf": [
        *("record", *OUT, "-s", "xdp:{veth}", "--xdp-mode", "generic", "-t", "ringbuf"),
        *("-d", "0.5"),
    ],
    "tc": ["record", *OUT, "-s", "tc:{veth}:ingress", "-d", "0.5"],
    "tc 4K": ["record", *OUT, "-s", "tc:{veth}:ingress", "-b", "4K", "-d", "0.5"],
    "tc ringbuf": ["record", *OUT, "-s", "tc:{veth}:ingress", "-t", "ringbuf", "-d", "0.5"],
    "pinned perf": ["record", *OUT, "--pin", "{pins}/perf", "-d", "0.5"],
    "pinned ringbuf": ["record", *OUT, "--pin", "{pins}/ringbuf", "-d", "0.5"],
    "bench": ["bench", "-o", "{dir}/bench.arrow", "--duration", "1"],
    "bench perf": ["bench", "-o", "{dir}/bench.arrow", "-t", "perf", "--duration", "1"],
    "bench 0.3": ["bench", "-o", "{dir}/bench.arrow", "--duration", "0.3"],
}

ENOUGH = ""
"""Expected when the capabilities given are all the command needs: it must succeed."""

DEFAULT_RINGS_NEED_IPC_LOCK = not memlock_budget().fits(
    DEFAULT_PERF_BUFFER_BYTES // mmap.PAGESIZE, len(online_cpus())
)
"""Whether the default perf rings lock more than this machine lets a process without
CAP_IPC_LOCK (8 MiB of RLIMIT_MEMLOCK here: they do)."""


def named(capabilities: str) -> str:
    """``capabilities`` as the error names them: CAP_IPC_LOCK only where it is needed."""
    if DEFAULT_RINGS_NEED_IPC_LOCK:
        return capabilities
    return capabilities.replace(" + CAP_IPC_LOCK", "").replace("CAP_IPC_LOCK", ENOUGH)


CASES = {
    ("nobody", "syscalls"): named("CAP_BPF + CAP_PERFMON + CAP_IPC_LOCK"),
    ("nobody", "tracepoint"): named("CAP_BPF + CAP_PERFMON + CAP_IPC_LOCK"),
    ("nobody", "xdp"): named("CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON + CAP_IPC_LOCK"),
    ("nobody", "bench"): "CAP_BPF",
    ("root-without-capabilities", "ringbuf"): "CAP_BPF + CAP_PERFMON",
    ("root-without-capabilities", "tc"): named(
        "CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON + CAP_IPC_LOCK"
    ),
    ("root-without-capabilities", "pinned perf"): named("CAP_PERFMON + CAP_IPC_LOCK"),
    ("root-without-capabilities", "pinned ringbuf"): ENOUGH,
    ("only-cap-bpf", "syscalls"): named("CAP_PERFMON + CAP_IPC_LOCK"),
    ("only-cap-bpf", "bench 0.3"): ENOUGH,
    ("only-cap-perfmon", "syscalls"): named("CAP_BPF + CAP_IPC_LOCK"),
    ("only-cap-perfmon", "bench perf"): named("CAP_BPF + CAP_IPC_LOCK"),
    ("bpf+perfmon", "syscalls"): named("CAP_IPC_LOCK"),
    ("bpf+perfmon", "syscalls 2M"): ENOUGH,  # the drain at normal priority, not refused
    ("bpf+perfmon", "syscalls 2M realtime"): "CAP_SYS_NICE",
    ("bpf+perfmon", "tracepoint"): named("CAP_IPC_LOCK"),
    ("bpf+perfmon", "tc ringbuf"): "CAP_NET_ADMIN",
    ("bpf+perfmon", "xdp ringbuf"): "CAP_NET_ADMIN",
    ("bpf+net_admin", "xdp ringbuf"): ENOUGH,
    ("bpf+net_admin", "tc 4K"): "CAP_PERFMON",
    ("bpf+net_admin", "tc ringbuf"): ENOUGH,
}
"""(who, command) -> exactly the capabilities the error must name, in the order named.

Measured with these bounding sets on this kernel (perf_event_paranoid 2): the
default 8 MiB perf rings on every CPU lock more than perf_event_mlock_kb and
RLIMIT_MEMLOCK (8 MiB) allow without CAP_IPC_LOCK; 2 MiB ones fit in RLIMIT_MEMLOCK
alone (the perf_event_mlock_kb share is the user's: root's other processes, these
cases among them, may hold it)."""


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
def veth() -> Iterator[str]:
    """The host end of a veth pair into a namespace of its own (no traffic is sent)."""
    pair = netns.create((os.getpid() + 50_000) % 100_000)
    try:
        yield pair.host
    finally:
        netns.destroy(pair.netns, pair.host)


@pytest.fixture(scope="module")
def pins() -> Iterator[Path]:
    """A pinned ring buffer and perf event array, made with every capability."""
    directory = Path(tempfile.mkdtemp(prefix="ebcap-test-", dir=ensure_bpffs()))
    try:
        with Map.create(_sys.BPF_MAP_TYPE_RINGBUF, 0, 0, 1 << 16, name="ebcap_t_priv") as ring:
            ring.pin(directory / "ringbuf")
        ncpus = len(possible_cpus())
        with Map.create(_sys.BPF_MAP_TYPE_PERF_EVENT_ARRAY, 4, 4, ncpus) as perf:
            perf.pin(directory / "perf")
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def results(before: Kernel, veth: str, pins: Path) -> Iterator[dict[tuple[str, str], Result]]:
    with tempfile.TemporaryDirectory(prefix="ebcap-unprivileged-") as root:
        running = {}
        for who, what in CASES:
            directory = Path(root) / f"{who}-{what}".replace(" ", "-")
            directory.mkdir()
            directory.chmod(0o777)  # writable for nobody: a missing file proves a refusal
            argv = [a.format(dir=directory, veth=veth, pins=pins) for a in COMMANDS[what]]
            command = [*WHO[who], sys.executable, "-m", "ebcap", *argv]
            proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=directory)
            running[(who, what)] = (proc, directory)
        done = {}
        for key, (proc, directory) in running.items():
            _, stderr = proc.communicate(timeout=120)
            done[key] = Result(proc.returncode, stderr, directory)
        yield done


REFUSED = [case for case, needs in CASES.items() if needs != ENOUGH]


@pytest.mark.parametrize(("who", "what"), REFUSED, ids=[f"{w}-{c}" for w, c in REFUSED])
def test_refused_naming_exactly_the_missing_capabilities(
    results: dict[tuple[str, str], Result], who: str, what: str
) -> None:
    result = results[(who, what)]
    command = "bench" if what.startswith("bench") else "recording"
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"ebcap: error: {command} needs {CASES[(who, what)]} ("), (
        result.stderr
    )
    assert list(result.directory.iterdir()) == [], "a file was created without rights"


ALLOWED = [case for case, needs in CASES.items() if needs == ENOUGH]


@pytest.mark.parametrize(("who", "what"), ALLOWED, ids=[f"{w}-{c}" for w, c in ALLOWED])
def test_enough_capabilities_record(
    results: dict[tuple[str, str], Result], who: str, what: str
) -> None:
    """What the check accepts is really enough: the recording runs to the end."""
    result = results[(who, what)]
    assert result.returncode == 0, result.stderr
    assert "error" not in result.stderr
    assert [p.suffix for p in result.directory.iterdir()] == [".arrow"]


def test_nothing_loaded_or_attached(results: dict[tuple[str, str], Result], before: Kernel) -> None:
    """Checked once every case has ended."""
    assert len(results) == len(CASES)
    assert ebcap_programs_left(before.programs) == set(), "a program was loaded without rights"
    assert set(loaded_link_ids()) <= before.links, "a link was made without rights"


def test_no_xdp_program_left_on_the_interface(
    results: dict[tuple[str, str], Result], veth: str
) -> None:
    """An XDP capture with CAP_BPF and CAP_NET_ADMIN only detaches what it attached: it
    holds its program, so it needs no CAP_SYS_ADMIN to find it again by id."""
    from pyroute2 import IPRoute

    from ebcap.capture import netlink_hooks

    assert results[("bpf+net_admin", "xdp ringbuf")].returncode == 0
    with IPRoute() as ipr:
        index = netlink_hooks.interface_index(ipr, veth)
        assert netlink_hooks.xdp_programs(ipr, index) == []
