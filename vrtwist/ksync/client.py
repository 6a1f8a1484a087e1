"""Twisted ksync client protocol, shared by the Agent, the vtest runner and the utilities.

``request(msg)`` sends one Sandesh request and fires with a ``KsyncResponse`` (or fails
with ``KsyncError`` carrying errno/strerror); requests pipeline freely and are matched
by netlink seq. ``request_many(msgs)`` bunches several into one netlink message as the
Agent does. ``dump(req)`` follows the dump marker until the vRouter stops setting the
"more" bit.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorUNIX
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from vrtwist.ksync.clientcore import (
    CLIENT_MAX_FRAME,
    FLOW_RESET,
    ClientCore,
    DumpPager,
    KsyncError,
    KsyncProtocolError,
    KsyncResponse,
)
from vrtwist.ksync.clientcore import MAX_DUMP_PAGES as MAX_DUMP_PAGES  # re-exported
from vrtwist.ksync.netlink import GENL_ID_VROUTER
from vrtwist.logfields import Logger

__all__ = [
    "MAX_DUMP_PAGES",
    "KsyncClientProtocol",
    "KsyncConnectionLost",
    "KsyncError",
    "KsyncProtocolError",
    "KsyncResponse",
    "connect_ksync",
]

_CONNECTION_DONE = Failure(ConnectionDone())


class KsyncConnectionLost(Exception):
    """The connection closed while a request was outstanding."""


class KsyncClientProtocol(Protocol):
    """Pipelined ksync requests over one stream connection."""

    _log = Logger()

    def __init__(
        self, nl_type: int = GENL_ID_VROUTER, pid: int = 0, max_frame: int = CLIENT_MAX_FRAME
    ) -> None:
        self._core = ClientCore(nl_type, pid, max_frame)
        self._waiting: dict[int, list[Deferred[Any]]] = {}
        self._lost: Failure | None = None
        self.connected_d: Deferred[None] = Deferred()

    @property
    def closed(self) -> bool:
        """The connection was lost: every request fails now (a new connection is needed)."""
        return self._lost is not None or self.transport is None

    @property
    def outstanding(self) -> int:
        """Netlink requests sent and not yet fully answered."""
        return len(self._waiting)

    def connectionMade(self) -> None:
        d, self.connected_d = self.connected_d, Deferred()
        d.callback(None)

    def request(self, msg: Any) -> Deferred[KsyncResponse]:
        """Send one request; fires with its KsyncResponse, fails with KsyncError (errno < 0)."""
        return self.request_many([msg])[0]

    def request_many(
        self, msgs: Sequence[Any], answers: list[Deferred[Any]] | None = None
    ) -> list[Deferred[KsyncResponse]]:
        """Bunch ``msgs`` into one netlink message; one Deferred per request, in order.

        ``answers``: the Deferreds to fire (one per request), when the caller made them
        already, e.g. with its callbacks attached, instead of new ones it would chain."""
        if answers is not None and len(answers) != len(msgs):
            raise ValueError("one answer Deferred per request")
        if self._lost is not None or self.transport is None:
            if answers is None:
                return [fail(KsyncConnectionLost("ksync connection is closed")) for _ in msgs]
            for d in answers:
                d.errback(Failure(KsyncConnectionLost("ksync connection is closed")))
            return answers
        seq, data = self._core.build(msgs)
        ds: list[Deferred[KsyncResponse]] = (
            answers if answers is not None else [Deferred() for _ in msgs]
        )
        self._waiting[seq] = ds
        self.transport.write(data)
        return ds

    def request_flow_sets(self, msgs: Sequence[Any], answers: Sequence[Deferred[Any]]) -> None:
        """Bunch FLOW_SETs ``msgs`` (encoded, or objects) into one netlink message; each
        of ``answers`` fires with its ``(resp_code, index, gen_id)`` (``flow_result``),
        never with a failure: a closed or broken session answers ``FLOW_RESET``. No
        response object, callback or Deferred of the client's own per request."""
        if len(answers) != len(msgs):
            raise ValueError("one answer Deferred per request")
        if self._lost is not None or self.transport is None:
            for d in answers:
                d.callback(FLOW_RESET)
            return
        seq, data = self._core.build(msgs, flow=True)
        self._waiting[seq] = list(answers)
        self.transport.write(data)

    def dump(self, req: Any) -> Deferred[list[Any]]:
        """All objects of a DUMP, following the marker page by page."""
        return Deferred.fromCoroutine(self._dump(DumpPager(req, MAX_DUMP_PAGES)))

    async def _dump(self, pager: DumpPager) -> list[Any]:
        req = pager.request
        while req is not None:
            resp = await self.request(req)
            req = pager.page(resp.objects, resp.more)
        return pager.objects

    def dataReceived(self, data: bytes) -> None:
        try:
            done = self._core.feed(data)
        except KsyncProtocolError as e:
            self._log.error("ksync: broken reply stream: {error}", error=str(e))
            self._fail_all(Failure(e))
            if self.transport is not None:
                self.transport.loseConnection()
            return
        self._deliver(done)

    def _deliver(self, done: list[tuple[int, list[Any]]]) -> None:
        """Fire the Deferreds of each answered netlink message (subclasses add kinds)."""
        for seq, results in done:
            ds = self._waiting.pop(seq, None)
            if ds is None:
                continue
            for d, r in zip(ds, results, strict=True):
                if isinstance(r, Exception):
                    d.errback(Failure(r))
                else:
                    d.callback(r)

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        self._lost = reason
        self._fail_all(Failure(KsyncConnectionLost(str(reason.value))))

    def _fail_all(self, f: Failure) -> None:
        waiting, self._waiting = self._waiting, {}
        pending = self._core.pending
        flows = {seq for seq, p in pending.items() if p.flow}
        pending.clear()
        for seq, ds in waiting.items():
            for d in ds:
                if seq in flows:
                    d.callback(FLOW_RESET)
                else:
                    d.errback(f)


def connect_ksync(
    reactor: IReactorUNIX, sock_dir: str, nl_type: int = GENL_ID_VROUTER, timeout: float = 10
) -> Deferred[KsyncClientProtocol]:
    """Connect to ``<sock-dir>/dpdk_netlink``; fires with a connected KsyncClientProtocol."""
    path = os.path.join(sock_dir, "dpdk_netlink")
    ep = UNIXClientEndpoint(reactor, path, timeout=timeout)
    d: Deferred[KsyncClientProtocol] = connectProtocol(
        ep, KsyncClientProtocol(nl_type=nl_type, pid=os.getpid())
    )
    return d
