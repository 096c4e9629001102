"""Attaching programs to raw tracepoints and tracepoints, and detaching them.

A :class:`Link` owns every fd an attachment needs (a bpf_link, and for
tracepoints also the perf event it hangs on); closing it detaches the
program. The kernel keeps a program attached only while those fds are open.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import re
from pathlib import Path
from typing import Final

from ebcap.bpf import _sys, fs, tracefs
from ebcap.bpf.asm import R0, exit_, mov64_imm
from ebcap.bpf.prog import Program
from ebcap.closing import ClosesOnExit
from ebcap.errors import (
    EbcapError,
    KernelError,
    MissingCapabilityError,
    NotSupportedError,
    UsageError,
)

_EVENT_NAME: Final = re.compile(r"\w+")
_NO_FD: Final = 0xFFFF_FFFF
"""-1 as the u32 target_fd: no perf event."""


class Link(ClosesOnExit):
    """An attachment; ``close()`` (idempotent) or the ``with`` block detaches it."""

    def __init__(self, description: str, link_fd: int | None, perf_fd: int | None = None) -> None:
        """Take ownership of the bpf_link fd and/or the perf event fd."""
        self.description = description
        self._fds = [fd for fd in (link_fd, perf_fd) if fd is not None]
        self._id: int | None = None
        if link_fd is not None:
            info = _sys.BpfLinkInfo()
            try:
                _sys.obj_get_info_by_fd(link_fd, info)
            except BaseException:
                self.close()
                raise
            self._id = info.id

    @property
    def id(self) -> int | None:
        """The bpf_link id, or None for a perf event attached with PERF_EVENT_IOC_SET_BPF."""
        return self._id

    @property
    def closed(self) -> bool:
        return not self._fds

    def close(self) -> None:
        """Detach: close the link fd first, then the perf event; again does nothing."""
        while self._fds:
            os.close(self._fds.pop(0))

    def __repr__(self) -> str:
        state = "closed" if self.closed else "attached"
        return f"<Link {self.description} id={self._id} {state}>"


def attach_raw_tracepoint(prog: Program, name: str) -> Link:
    """BPF_RAW_TRACEPOINT_OPEN: run ``prog`` (RAW_TRACEPOINT) at raw tracepoint ``name``."""
    if not _EVENT_NAME.fullmatch(name):
        raise UsageError(f"bad raw tracepoint name {name!r}")
    raw_name = ctypes.create_string_buffer(name.encode())
    attr = _sys.RawTracepointOpenAttr(name=ctypes.addressof(raw_name), prog_fd=prog.fd)
    fd = _sys.bpf(_sys.BPF_RAW_TRACEPOINT_OPEN, attr)
    return Link(f"raw_tp/{name}", fd)


def tracepoint_id(category: str, name: str, tracefs_root: str | os.PathLike[str]) -> int:
    """The perf config of tracepoint ``category:name``, from tracefs ``events/CAT/NAME/id``."""
    for part in (category, name):
        if not _EVENT_NAME.fullmatch(part):
            raise UsageError(f"bad tracepoint name {category}:{name}")
    path = Path(tracefs_root, "events", category, name, "id")
    try:
        return int(path.read_text())
    except FileNotFoundError:
        raise NotSupportedError(
            f"no tracepoint {category}:{name} in this kernel ({path} is missing)",
            f"tracepoint {category}:{name}",
        ) from None
    except (OSError, ValueError) as exc:
        raise KernelError(f"cannot read tracepoint id from {path}: {exc}") from None


def attach_tracepoint(
    prog: Program, category: str, name: str, tracefs_root: str | os.PathLike[str] | None = None
) -> Link:
    """Run ``prog`` (TRACEPOINT) at ``category:name``.

    Opens the tracepoint as a perf event, then attaches with BPF_LINK_CREATE
    (BPF_PERF_EVENT), or with PERF_EVENT_IOC_SET_BPF on kernels without
    perf links. EACCES there, with the capabilities held, is the kernel saying
    the program reads beyond the tracepoint's record. The perf event only
    counts (no sample period, no wakeups), as libbpf opens it: the program
    runs all the same, and the kernel refuses a sampling event at some
    tracepoints (irq_vectors:irq_work_exit).
    """
    root = fs.ensure_tracefs() if tracefs_root is None else tracefs_root
    attr = _sys.PerfEventAttr(
        type=_sys.PERF_TYPE_TRACEPOINT,
        size=_sys.PERF_ATTR_SIZE,
        config=tracepoint_id(category, name, root),
    )
    perf_fd = _sys.perf_event_open(attr, -1, 0, -1, _sys.PERF_FLAG_FD_CLOEXEC)
    link_fd: int | None = None
    try:
        try:
            link_fd = _attach_perf_event(prog, perf_fd)
        except KernelError as exc:
            if exc.errno != errno.EACCES or isinstance(exc, MissingCapabilityError):
                raise
            raise _reads_beyond_the_record(category, name, root, exc.errno) from None
        _sys.ioctl(perf_fd, _sys.PERF_EVENT_IOC_ENABLE, 0)
    except BaseException:
        for fd in (link_fd, perf_fd):
            if fd is not None:
                os.close(fd)
        raise
    return Link(f"tracepoint/{category}:{name}", link_fd, perf_fd)


def _attach_perf_event(prog: Program, perf_fd: int) -> int | None:
    """BPF_LINK_CREATE (the link fd), or PERF_EVENT_IOC_SET_BPF (None) only where the
    kernel has no perf links: any other refusal of the link is the error to report."""
    attr = _sys.LinkCreateAttr(prog_fd=prog.fd, target_fd=perf_fd, attach_type=_sys.BPF_PERF_EVENT)
    try:
        return _sys.bpf(_sys.BPF_LINK_CREATE, attr)
    except KernelError as exc:
        if exc.errno != errno.EINVAL or perf_links_supported():
            raise
    _sys.ioctl(perf_fd, _sys.PERF_EVENT_IOC_SET_BPF, prog.fd)
    return None


def _reads_beyond_the_record(
    category: str, name: str, root: str | os.PathLike[str], err: int
) -> KernelError:
    """EACCES from attaching a program this process may attach: the kernel refuses a
    TRACEPOINT program that reads further into its context than the record reaches."""
    try:
        size = f" of {tracefs.read_format(category, name, root).record_size} bytes"
    except EbcapError:
        size = ""
    return KernelError(
        f"tracepoint {category}:{name}: the program reads beyond the tracepoint's "
        f"record{size}, so the kernel refuses to attach it (errno {err})",
        err,
    )


@functools.cache
def perf_links_supported() -> bool:
    """Whether BPF_LINK_CREATE takes perf events (Linux 5.15), probed once as libbpf
    does: a TRACEPOINT program linked to no fd is refused with EBADF where it does, and
    with EINVAL (unknown command or attach type) where it does not."""
    with Program.load(_sys.BPF_PROG_TYPE_TRACEPOINT, [mov64_imm(R0, 0), exit_()]) as probe:
        attr = _sys.LinkCreateAttr(
            prog_fd=probe.fd, target_fd=_NO_FD, attach_type=_sys.BPF_PERF_EVENT
        )
        try:
            os.close(_sys.bpf(_sys.BPF_LINK_CREATE, attr))
        except KernelError as exc:
            return exc.errno == errno.EBADF
    return True


def loaded_link_ids() -> list[int]:
    """Ids of every bpf_link in the kernel right now."""
    ids: list[int] = []
    next_id = _sys.get_next_id(_sys.BPF_LINK_GET_NEXT_ID, 0)
    while next_id is not None:
        ids.append(next_id)
        next_id = _sys.get_next_id(_sys.BPF_LINK_GET_NEXT_ID, next_id)
    return ids
