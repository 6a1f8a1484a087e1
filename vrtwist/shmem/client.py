"""A small blocking ksync client for the command-line tools of this package.

The utilities are short-lived and strictly request/response, like their C
originals (``vr_sendmsg``/``vr_recvmsg``): a blocking unix stream socket and the
project's netlink framing and Sandesh codec are all they need.  Several
requests can be bunched into one netlink message (``flow -p -b``).
"""

from __future__ import annotations

import os
import socket
from typing import Any

from vrtwist.ksync.netlink import FrameReader, build_request, parse_message
from vrtwist.sandesh import decode, encode, schema

__all__ = ["KsyncError", "BlockingKsyncClient", "find_tables", "SOCKET_NAME"]

SOCKET_NAME = "dpdk_netlink"


class KsyncError(Exception):
    """The channel failed (no server, closed mid-reply, garbage)."""


class BlockingKsyncClient:
    """One session on ``<sock_dir>/dpdk_netlink``."""

    def __init__(self, sock_dir: str, timeout: float = 30.0) -> None:
        path = os.path.join(sock_dir, SOCKET_NAME)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError as e:
            self.sock.close()
            raise KsyncError("cannot connect to %s: %s" % (path, e.strerror or e)) from e
        self._reader = FrameReader(max_frame=1 << 20)
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> BlockingKsyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, messages: list[Any]) -> int:
        """Send ``messages`` bunched in one netlink message; return its seq."""
        self._seq += 1
        payload = b"".join(encode(m) for m in messages)
        self.sock.sendall(build_request(payload, self._seq, nl_type=0))
        return self._seq

    def receive(self) -> list[Any]:
        """Read one whole reply (until a message without NLM_F_MULTI, or NLMSG_DONE)."""
        out: list[Any] = []
        while True:
            frames = self._reader.frames(1)
            if not frames:
                data = self.sock.recv(65536)
                if not data:
                    raise KsyncError("connection closed by the vRouter")
                self._reader.feed(data, 0)
                continue
            msg = parse_message(frames[0])
            if msg.is_done:
                return out
            payload = msg.payload
            if 0 < msg.nla_len <= len(payload):
                payload = payload[: msg.nla_len]
            if payload:
                out.extend(decode(payload))
            if not msg.flags:
                return out

    def request(self, message: Any) -> list[Any]:
        """Send one request, return every Sandesh object of its reply."""
        self.send([message])
        return self.receive()


def response_code(objs: list[Any]) -> int:
    for o in objs:
        if type(o).__name__ == "vr_response":
            return int(o.resp_code)
    raise KsyncError("reply without vr_response")


def find_tables(client: BlockingKsyncClient) -> tuple[Any, Any]:
    """Ask for vr_flow_table_data and vr_bridge_table_data, as the utilities do."""
    f = client.request(schema.vr_flow_table_data(ftable_op=2))
    b = client.request(schema.vr_bridge_table_data(btable_op=1))
    flow = next((o for o in f if type(o).__name__ == "vr_flow_table_data"), None)
    bridge = next((o for o in b if type(o).__name__ == "vr_bridge_table_data"), None)
    return flow, bridge
