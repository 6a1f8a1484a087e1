"""A TCP stream checked byte for byte between two network namespaces: the scripts each
side runs, and what the receiver must print. Shared by the integration tests that move
a stream through vrtwist (ports, overlay, VMs)."""

from __future__ import annotations

import hashlib
import textwrap
from typing import NamedTuple


class Stream(NamedTuple):
    server: str  # python -c script: accept one connection, print "<bytes> <sha256>"
    client: str  # python -c script: connect (retrying while the server starts), send, close
    expected: str  # what the server prints when every byte arrived


def tcp_stream(address: str, port: int, size: int, timeout: float = 60.0) -> Stream:
    """Scripts that send ``size`` bytes of a known pattern to ``address``:``port``."""
    server = textwrap.dedent(f"""
        import hashlib, socket
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("{address}", {port})); s.listen(1); s.settimeout({timeout})
        c, _ = s.accept(); c.settimeout({timeout}); h, n = hashlib.sha256(), 0
        while True:
            d = c.recv(1 << 20)
            if not d: break
            h.update(d); n += len(d)
        print(n, h.hexdigest())
    """)
    client = textwrap.dedent(f"""
        import socket, time
        data = bytes(range(256)) * ({size} // 256)
        for _ in range(100):
            try:
                c = socket.create_connection(("{address}", {port}), timeout=5); break
            except OSError: time.sleep(0.1)
        c.sendall(data); c.close()
    """)
    pattern = bytes(range(256)) * (size // 256)
    return Stream(server, client, "%d %s" % (len(pattern), hashlib.sha256(pattern).hexdigest()))
