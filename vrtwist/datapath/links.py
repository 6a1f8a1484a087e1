"""Link events from rtnetlink (``RTMGRP_LINK``): devices appearing, changing, vanishing.

:func:`parse_link_events` is a small sans-IO parser of ``RTM_NEWLINK``/``RTM_DELLINK``
messages (``struct nlmsghdr`` + ``struct ifinfomsg`` + the ``IFLA_IFNAME`` attribute,
``<linux/rtnetlink.h>``); :class:`LinkWatcher` is the thin reader that feeds a
``(name, present)`` callback. Only names are needed, so a dependency such as pyroute2
would bring far more than it serves here.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterator

from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from vrtwist.logfields import Logger

__all__ = ["LinkEvent", "LinkWatcher", "parse_link_events"]

NETLINK_ROUTE = 0
RTMGRP_LINK = 1
RTM_NEWLINK, RTM_DELLINK = 16, 17
NLMSG_ERROR, NLMSG_OVERRUN = 2, 4
IFLA_IFNAME = 3
IFF_UP = 0x1
_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_RTATTR = struct.Struct("=HH")

#: (name, ifindex, present, IFF_* flags)
LinkEvent = tuple[str, int, bool, int]

_log = Logger()


def _align(n: int) -> int:
    return (n + 3) & ~3


def parse_link_events(data: bytes) -> Iterator[LinkEvent]:
    """Link events in one netlink datagram; other or truncated messages are skipped."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            return
        body = offset + _NLMSGHDR.size
        end = offset + length
        offset += _align(length)
        if kind not in (RTM_NEWLINK, RTM_DELLINK) or body + _IFINFOMSG.size > end:
            continue
        _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(data, body)
        name = None
        at = body + _IFINFOMSG.size
        while at + _RTATTR.size <= end:
            alen, atype = _RTATTR.unpack_from(data, at)
            if alen < _RTATTR.size or at + alen > end:
                break
            if atype & 0x3FFF == IFLA_IFNAME:
                name = (
                    data[at + _RTATTR.size : at + alen]
                    .split(b"\0", 1)[0]
                    .decode("utf-8", "replace")
                )
            at += _align(alen)
        if name:
            yield name, index, kind == RTM_NEWLINK, flags


@implementer(IReadDescriptor)
class LinkWatcher:
    """Reads ``RTMGRP_LINK`` notifications and calls ``changed(name, present)``.

    On a receive-buffer overrun (``ENOBUFS``) events were lost; ``resync`` (the port
    manager's full reconciliation) is called so nothing stays out of date.
    """

    def __init__(self, reactor: IReactorFDSet, changed: Callable[[str, bool], None],
                 resync: Callable[[], None] | None = None) -> None:  # fmt: skip
        self.reactor = reactor
        self.changed = changed
        self.resync = resync
        self.sock: socket.socket | None = None
        self.events = 0

    def start(self) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        sock.bind((0, RTMGRP_LINK))
        sock.setblocking(False)
        self.sock = sock
        self.reactor.addReader(self)

    def stop(self) -> None:
        if self.sock is not None:
            self.reactor.removeReader(self)
            self.sock.close()
            self.sock = None

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock is not None else -1

    def logPrefix(self) -> str:
        return "rtnetlink"

    def doRead(self) -> None:
        assert self.sock is not None
        for _ in range(64):
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return None
            except OSError as e:
                _log.warn("rtnetlink: {error}, resynchronising", error=str(e))
                if self.resync is not None:
                    self.resync()
                continue
            for name, _index, present, _flags in parse_link_events(data):
                self.events += 1
                self.changed(name, present)
        return None

    def connectionLost(self, reason: Failure) -> None:
        self.stop()
