"""The ksync synchroniser's sessions: the channels it talks through and their life cycle.

:class:`KsyncSynchroniser` keeps a ksync session to the datapath's ``dpdk_netlink``
socket (reconnecting with backoff) and runs a :class:`~vrtwist.agent.ksync_datapath.DatapathSync`
on each: every (re)connection reads the datapath first.  :class:`LocalSynchroniser` is
the same over an in-process :class:`LocalChannel`.  :class:`ProtocolChannel` adapts a
ksync client protocol to the channel interfaces, one Deferred per bunch of requests.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from zope.interface import implementer

from vrtwist.agent.dpstate import AGENT_VIF, VIF, DatapathModel
from vrtwist.agent.interfaces import IKsyncBunchChannel, IKsyncChannel
from vrtwist.agent.ksync_datapath import DatapathSync
from vrtwist.agent.ksync_plan import owned_subset
from vrtwist.agent.ksync_window import gather
from vrtwist.datapath import constants as C
from vrtwist.ksync.client import KsyncClientProtocol, KsyncConnectionLost
from vrtwist.ksync.client import KsyncError as ClientKsyncError
from vrtwist.ksync.clientcore import KsyncProtocolError
from vrtwist.logfields import Logger
from vrtwist.sandesh import schema

__all__ = ["KsyncSynchroniser", "LocalChannel", "LocalSynchroniser", "ProtocolChannel"]


@implementer(IKsyncChannel)
class LocalChannel:
    """An in-process channel straight into a ``vrtwist.datapath`` dispatcher (no socket)."""

    def __init__(self, datapath: Any) -> None:
        self.datapath = datapath

    def request(self, msg: Any) -> Deferred[list[Any]]:
        return succeed([obj for part in self.datapath.handle(msg) for obj in part])

    def request_many(self, msgs: list[Any]) -> list[Deferred[list[Any]]]:
        return [self.request(m) for m in msgs]


@implementer(IKsyncBunchChannel)
class ProtocolChannel:
    """IKsyncChannel over a connected ``vrtwist.ksync.client.KsyncClientProtocol``."""

    def __init__(self, proto: Any) -> None:
        self.proto = proto

    def request_bunch(self, msgs: list[Any]) -> Deferred[list[Any]]:
        """One Deferred for a bunch (see ``IKsyncBunchChannel``)."""
        bunch = getattr(self.proto, "request_bunch", None)
        if bunch is not None:
            return bunch(msgs)  # type: ignore[no-any-return]
        # a plain KsyncClientProtocol: its per-request Deferreds, gathered
        d = gather(self.proto.request_many(msgs))
        return d.addCallback(_as_results)

    def request(self, msg: Any) -> Deferred[list[Any]]:
        return self.request_many([msg])[0]

    def request_many(self, msgs: list[Any]) -> list[Deferred[list[Any]]]:
        """Bunch ``msgs`` into one netlink message; one Deferred per request, in order."""
        return [d.addCallbacks(_as_reply, _refused_reply)
                for d in self.proto.request_many(msgs)]


def _as_results(results: list[Any]) -> list[Any]:
    """Per-request outcomes in the ``request_bunch`` form (a lost session fails it all)."""
    out = []
    for r in results:
        if isinstance(r, Failure):
            if not isinstance(r.value, ClientKsyncError | KsyncProtocolError):
                return r  # type: ignore[return-value]
            out.append(r.value)
        else:
            out.append(r)
    return out


def _as_reply(resp: Any) -> list[Any]:
    return [schema.vr_response(h_op=C.OP_RESPONSE, resp_code=resp.code), *resp.objects]


def _refused_reply(f: Any) -> list[Any]:
    f.trap(ClientKsyncError)
    return [schema.vr_response(h_op=C.OP_RESPONSE, resp_code=f.value.code), *f.value.objects]


class KsyncSynchroniser:
    """Keeps a ksync session to ``<run-dir>/dpdk_netlink`` and a :class:`DatapathSync` on it.

    Every (re)connection reads the datapath first, so a datapath that restarted empty is
    refilled and one that kept its state is only corrected.  The first read also lets the
    model adopt the ids each TAP already has (``prepare``, before the ports are replayed).
    """

    _log = Logger()

    def __init__(self, reactor: Any, model: DatapathModel, endpoint: str, *,
                 adopt: bool = True, first_connect_timeout: float = 10.0) -> None:
        from twisted.application.internet import ClientService
        from twisted.internet.endpoints import clientFromString
        from twisted.internet.protocol import Factory

        self.reactor = reactor
        self.model = model
        self.sync = DatapathSync(model, schedule=lambda f: reactor.callLater(0, f))
        self.adopt_ids = adopt
        self.first_connect_timeout = first_connect_timeout
        self._stopping = False
        self._prepared: Any = None
        factory = Factory.forProtocol(_SyncProtocol)
        self.client = ClientService(clientFromString(reactor, endpoint), factory,
                                    retryPolicy=_retry_policy)
        self._loop: Deferred[None] | None = None
        self._nap: Deferred[None] | None = None

    async def prepare(self) -> None:
        """Start connecting; wait (bounded) for the first session and adopt ids from it."""
        self.client.startService()
        d = self.client.whenConnected(failAfterFailures=None)
        timer = self.reactor.callLater(self.first_connect_timeout, d.cancel)
        try:
            proto: Any = await d
        except Exception:  # noqa: BLE001 - timed out (cancelled) or stopped: logged, ports wait
            self._log.warn("datapath not reachable after {t} s; ports are replayed and "
                           "programmed once it is", t=self.first_connect_timeout)
            return
        finally:
            if timer.active():
                timer.cancel()
        await self._session(proto, adopt=self.adopt_ids, attach=False)

    def start(self) -> None:
        """Follow connections from now on (call after the ports were replayed)."""
        self._loop = Deferred.fromCoroutine(self._follow())
        self._loop.addErrback(self._follower_failed)

    def _follower_failed(self, f: Any) -> None:
        if self._stopping and f.check(CancelledError):
            return  # stop() cancelled its wait between sessions
        self._log.failure("ksync follower failed", f)

    async def _follow(self) -> None:
        while not self._stopping:
            try:
                proto: Any = await self.client.whenConnected(failAfterFailures=None)
            except Exception:  # noqa: BLE001 - the client service stopped: nothing to follow
                return
            if self._stopping:
                return
            if proto.lost_d.called:
                # ClientService still reports the session that just ended: let it notice
                self._nap = deferLater(self.reactor, 0.05, lambda: None)
                try:
                    await self._nap
                finally:
                    self._nap = None
                continue
            if proto is self._prepared:
                self.sync.attach(ProtocolChannel(proto))
            else:
                await self._session(proto, adopt=False)
            self._prepared = None
            await proto.lost_d
            self.sync.attach(None)
            if self._stopping:
                return  # our own stop closed it (or the datapath went with us): no news
            self._log.warn("ksync session to the datapath lost; reconnecting")

    async def _session(self, proto: Any, adopt: bool, attach: bool = True) -> bool:
        """Read the datapath over a new session, then (``attach``) start writing to it."""
        channel = ProtocolChannel(proto)
        self.sync.reader = channel
        try:
            if adopt:
                await self.sync.adopt()
            else:
                present = await self.sync.read_datapath()
                self.sync.applied = owned_subset(
                    present, ((VIF, AGENT_VIF), (VIF, self.model.fabric_vif)))
        except Exception as e:  # noqa: BLE001 - any failed read: logged, the next session retries
            self._log.error("cannot read the datapath: {e}", e=e)
            return False
        finally:
            self.sync.reader = None
        if attach:
            self.sync.attach(channel)
        else:
            self._prepared = proto
        return True

    def whenIdle(self) -> Deferred[None]:
        return self.sync.whenIdle()

    def stopping(self) -> None:
        """The agent is stopping: a session lost from now on is not news (no warning).

        Called before anything else stops, since the embedded datapath may close the
        session before :meth:`stop` runs.
        """
        self._stopping = True

    async def stop(self) -> None:
        self._stopping = True
        if self._nap is not None and not self._nap.called:
            self._nap.cancel()  # the follower's pause before a reconnection check
        stopped = self.client.stopService()
        if stopped is not None:
            await stopped


class LocalSynchroniser:
    """The synchroniser of an embedded datapath reached in-process (``--ksync inprocess``).

    Same Sandesh requests and replies as over ``dpdk_netlink``, handed to the datapath's
    dispatcher directly: no netlink framing and no encode/decode on either side.  The
    utilities still use the socket.
    """

    def __init__(self, model: DatapathModel, datapath: Any, *, adopt: bool = True) -> None:
        self.sync = DatapathSync(model)
        self.channel = LocalChannel(datapath)
        self.adopt_ids = adopt

    async def prepare(self) -> None:
        self.sync.reader = self.channel
        try:
            if self.adopt_ids:
                await self.sync.adopt()
            else:
                present = await self.sync.read_datapath()
                self.sync.applied = owned_subset(
                    present, ((VIF, AGENT_VIF), (VIF, self.sync.model.fabric_vif)))
        finally:
            self.sync.reader = None

    def start(self) -> None:
        self.sync.attach(self.channel)

    def whenIdle(self) -> Deferred[None]:
        return self.sync.whenIdle()

    async def stop(self) -> None:
        self.sync.attach(None)


def _retry_policy(attempt: int) -> float:
    return float(min(0.05 * (2 ** min(attempt, 6)), 2.0))


class _SyncProtocol(KsyncClientProtocol):
    """The ksync client protocol plus a Deferred that fires when the session ends, and
    ``request_bunch``: one Deferred per netlink message rather than per request."""

    def __init__(self) -> None:
        super().__init__(pid=os.getpid())
        self.lost_d: Deferred[None] = Deferred()
        self._bunches: dict[int, Deferred[list[Any]]] = {}

    def request_bunch(self, msgs: list[Any]) -> Deferred[list[Any]]:
        """Bunch ``msgs`` into one netlink message; one Deferred for all their results."""
        if self._lost is not None or self.transport is None:
            return fail(KsyncConnectionLost("ksync connection is closed"))
        seq, data = self._core.build(msgs)
        d: Deferred[list[Any]] = Deferred()
        self._bunches[seq] = d
        self.transport.write(data)
        return d

    def _deliver(self, done: list[tuple[int, list[Any]]]) -> None:
        if not self._bunches:
            super()._deliver(done)
            return
        for seq, results in done:
            bunch = self._bunches.pop(seq, None)
            if bunch is not None:
                bunch.callback(results)
            else:
                super()._deliver([(seq, results)])  # a plain request, in its turn

    def _fail_all(self, f: Failure) -> None:
        bunches, self._bunches = self._bunches, {}
        super()._fail_all(f)
        for d in bunches.values():
            d.errback(f)

    def connectionLost(self, reason: Any = None) -> None:
        if reason is None:
            super().connectionLost()
        else:
            super().connectionLost(reason)
        if not self.lost_d.called:
            self.lost_d.callback(None)
