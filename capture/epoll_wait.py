"""Waiting for ring data: one epoll over every fd a reader watches.

Both readers block the same way (perf: one fd per CPU; ring buffer: the map
fd), and both expose the epoll fd so a caller can fold a reader into its own
event loop.
"""

from __future__ import annotations

import select
from types import TracebackType
from typing import Self

from ebcap.errors import ClosedError


class EpollSet:
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

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
