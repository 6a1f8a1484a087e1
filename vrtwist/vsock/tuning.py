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

import socket
from typing import Any

#: Bytes per read and per send on relay transports.
READ_SIZE = 256 * 1024
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
