"""A failed kernel call turned into the matching ``ebcap.errors`` class, in one place.

EPERM/EACCES names the capabilities the call checks that this process
really lacks (CAP_NET_ADMIN for an XDP program, not CAP_BPF it has); when
it holds them all, something else refused and the message says so (a caller
that knows what, such as a tracepoint attach in ``links.py``, says that). Only
ENOSYS, EOPNOTSUPP and the kernel's ENOTSUPP mean "not supported"; EINVAL
does only where the caller knows it (``feature``): elsewhere it is the
arguments.
"""

from __future__ import annotations

import errno as _errno
import os
from collections.abc import Sequence
from typing import Final

from ebcap.bpf.caps import missing_capabilities
from ebcap.errors import KernelError, MissingCapabilityError, NotSupportedError

ENOTSUPP: Final = 524
"""The kernel-internal "not supported", which leaks to user space from bpf()."""

_NOT_SUPPORTED: Final = frozenset({_errno.ENOSYS, _errno.EOPNOTSUPP, ENOTSUPP})


def permission_error(call: str, err: int, capabilities: Sequence[str]) -> KernelError:
    """EPERM/EACCES of ``call``, which checks ``capabilities``."""
    missing = missing_capabilities(capabilities)
    if missing:
        them = "it" if len(missing) == 1 else "them"
        needs = " + ".join(missing)
        return MissingCapabilityError(
            f"{call}: permission denied: needs {needs} (run as root or grant {them})", needs, err
        )
    held = f" although this process has {' + '.join(capabilities)}" if capabilities else ""
    return KernelError(
        f"{call}: permission denied{held} (file permissions, a sysctl or a security "
        f"module refused it; errno {err})",
        err,
    )


def kernel_error(
    call: str, err: int, *, capabilities: Sequence[str] = (), feature: str | None = None
) -> KernelError:
    """The ebcap error for ``call`` failing with ``err``.

    ``capabilities`` are those the kernel checks for this call (what EPERM and
    EACCES can mean); ``feature``, when given, is the kernel feature whose
    absence EINVAL shows for this call.
    """
    if err in (_errno.EPERM, _errno.EACCES):
        return permission_error(call, err, capabilities)
    if err in _NOT_SUPPORTED or (err == _errno.EINVAL and feature is not None):
        name = feature or call
        return NotSupportedError(f"{call}: this kernel does not support {name}", name, err)
    return KernelError(f"{call}: {os.strerror(err).lower()} (errno {err})", err)
