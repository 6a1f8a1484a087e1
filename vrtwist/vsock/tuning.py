"""Socket and transport sizing shared by the relays (vsock relay, vSPC).

Why: a relay sits in the middle of a pipeline, so every buffer between the two
ends bounds how much work one scheduling slice can do. On a loaded machine the
relay process waits for a core; the bigger each read, write and socket queue,
the fewer wake-ups (and context switches) per megabyte. TCP autotunes its
buffers (setting them by hand would turn that off), but a unix stream socket
queues only the sender's ``SO_SNDBUF`` (``wmem_default``, 208 KiB), so for unix
sockets we ask for more; the kernel caps the request at ``net.core.wmem_max``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import socket
from typing import Any

#: Bytes per read on relay transports (copy path of the vsock relay).
READ_SIZE = 256 * 1024
#: Bytes per read for the vSPC, whose process runs with :func:`tuneAllocator`.
READ_SIZE_LARGE = 1024 * 1024
#: glibc ``mallopt`` parameters (see :func:`tuneAllocator`).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Largest single ``send`` (Twisted's default is 128 KiB): fewer syscalls per megabyte.
SEND_LIMIT = 1024 * 1024
#: Requested SO_SNDBUF/SO_RCVBUF for unix stream sockets (capped by the kernel).
UNIX_SOCKET_BUFFER = 4 * 1024 * 1024


def tuneTransport(
    transport: Any, readSize: int = READ_SIZE, socketBuffer: int = UNIX_SOCKET_BUFFER
) -> None:
    """Size one Twisted socket transport for bulk relaying.

    ``bufferSize`` is both Twisted's read size and its write high-water mark;
    ``SEND_LIMIT`` (128 KiB by default) caps one ``send`` call; we allow 1 MiB. Transports that
    are not sockets (StringTransport in tests, TLS wrappers) are left alone
    apart from the two attributes.
    """
    if hasattr(transport, "bufferSize"):
        transport.bufferSize = readSize
    if hasattr(transport, "SEND_LIMIT"):
        transport.SEND_LIMIT = max(readSize, SEND_LIMIT)
    sock = getattr(transport, "socket", None)
    if socketBuffer and isinstance(sock, socket.socket) and sock.family == socket.AF_UNIX:
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                if sock.getsockopt(socket.SOL_SOCKET, opt) < socketBuffer:
                    sock.setsockopt(socket.SOL_SOCKET, opt, socketBuffer)
            except OSError:
                pass  # not fatal: the default size still works, only slower


def tuneAllocator(
    mmapThreshold: int = 4 * 1024 * 1024, trimThreshold: int = 32 * 1024 * 1024
) -> bool:
    """Keep relay-sized buffers (up to 1 MiB) off fresh ``mmap`` calls (glibc only).

    Why: every read allocates a new bytes object of the read size and every
    write or unescape another. Above glibc's mmap threshold (128 KiB until it
    adapts, and it keeps re-adapting) each one is a fresh mapping whose pages
    fault in one by one, and a heap top above the trim threshold is handed back
    and faulted in again. Measured on the vSPC with 1 MiB reads: 0.58 s CPU per
    256 MiB unescaped with glibc's defaults, 0.29 s with these settings. The
    cost is up to ``trimThreshold`` of freed memory kept by the process. Call it
    from a relay process's ``makeService``, never from library code: it is
    process-wide. Returns False where there is no glibc ``mallopt``.
    """
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(M_MMAP_THRESHOLD, mmapThreshold) == 1
    trimmed: bool = mallopt(M_TRIM_THRESHOLD, trimThreshold) == 1
    return trimmed and ok
