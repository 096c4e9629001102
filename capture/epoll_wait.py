"""Waiting for ring data: one epoll over every fd a reader watches.

Both readers block the same way (perf: one fd per CPU; ring buffer: the map
fd), release what they hold the same way, and both expose the epoll fd so a
caller can fold a reader into its own event loop.
"""

from __future__ import annotations

import select
from contextlib import ExitStack
from typing import ClassVar

from ebcap.closing import ClosesOnExit
from ebcap.errors import ClosedError


class EpollSet(ClosesOnExit):
    """An epoll instance watching fds for EPOLLIN; ``wait`` says whether any is ready."""

    def __init__(self, owner: str) -> None:
        self._owner = owner
        self._epoll: select.epoll | None = select.epoll()  # O_CLOEXEC

    def _live(self) -> select.epoll:
        if self._epoll is None:
            raise ClosedError(f"{self._owner} is closed")
        return self._epoll

    def add(self, fd: int) -> None:
        self._live().register(fd, select.EPOLLIN)

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds (negative: no limit); True if an fd is ready."""
        return bool(self._live().poll(timeout if timeout >= 0 else -1))

    def fileno(self) -> int:
        return self._live().fileno()

    @property
    def closed(self) -> bool:
        return self._epoll is None

    def close(self) -> None:
        """Close the epoll fd; calling it again does nothing."""
        if self._epoll is not None:
            epoll, self._epoll = self._epoll, None
            epoll.close()


class EpollReader(ClosesOnExit):
    """What both ring readers share: one exit stack owns every fd and mapping
    (the single cleanup path, also when a constructor fails halfway), and one
    epoll waits for the kernel's wakeups."""

    name: ClassVar[str] = "reader"
    """Said in errors: "perf buffer reader is closed"."""

    def __init__(self) -> None:
        self._stack = ExitStack()
        self._epoll = self._stack.enter_context(EpollSet(self.name))

    @property
    def closed(self) -> bool:
        return self._epoll.closed

    def _check_open(self) -> None:
        if self.closed:
            raise ClosedError(f"{self.name} is closed")

    def fileno(self) -> int:
        """The epoll fd, readable when the kernel woke the reader (for a caller's own loop)."""
        return self._epoll.fileno()

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a wakeup; True if one came."""
        return self._epoll.wait(timeout)

    def close(self) -> None:
        """Release everything the reader holds; calling it again does nothing."""
        self._stack.close()
