"""The ksync server: the forwarding extension's end of ``<run-dir>/dpdk_netlink``.

One ``KsyncServerProtocol`` per connection is one session with its own response queue
(the transport's write buffer, which pauses request processing when full). A client that
sends an impossible frame, or disconnects half way, loses only its own session.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
from collections import deque
from collections.abc import Iterator
from itertools import starmap
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IListeningPort,
    IPushProducer,
    IReactorTime,
    IReactorUNIX,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from vrtwist.access import SocketAccess
from vrtwist.bounds import BoundedFactory, ConnectionLimits, IFrameProgress
from vrtwist.ksync.flowset import decode_flow_sets, flow_answer
from vrtwist.ksync.interfaces import (
    IFlowSetValues,
    IKsyncDispatcher,
    IKsyncSession,
    KsyncReply,
)
from vrtwist.ksync.netlink import (
    HEADERS_LEN,
    NL_REPLY_MAX,
    NL_REQUEST_MAX,
    NLM_F_MULTI,
    FrameReader,
    NetlinkFrameError,
    NetlinkMessage,
    build_done,
    build_response,
    parse_message,
)
from vrtwist.logfields import Logger
from vrtwist.sandesh import (
    RESPONSE,
    VR_MESSAGE_DUMP_INCOMPLETE,
    VR_MESSAGE_PAGE_SIZE,
    SandeshDecodeError,
    decode,
    decode_one,
    encode,
    schema,
)
from vrtwist.unixlisten import UNIXListenEndpoint

__all__ = [
    "KSYNC_SOCKET_NAME",
    "STYLE_DPDK",
    "STYLE_LINUX",
    "KsyncServerFactory",
    "KsyncServerProtocol",
    "KsyncServerService",
    "bounded_ksync_factory",
    "ksync_limits",
    "ksync_socket_path",
    "listen_ksync",
    "remove_stale_socket",
]

KSYNC_SOCKET_NAME = "dpdk_netlink"
#: Multi-part replies: NLM_F_MULTI on every message, then NLMSG_DONE (kernel, Windows).
STYLE_LINUX = "linux"
#: Multi-part replies: NLM_F_MULTI on all but the last message, no DONE (DPDK vRouter).
STYLE_DPDK = "dpdk"

#: Room for Sandesh in one reply.
_REPLY_PAYLOAD_MAX = NL_REPLY_MAX - HEADERS_LEN
#: Requests that fail to decode are answered with resp_code -1 (sandesh_decode's -1).
_UNDECODABLE = -1

_CONNECTION_DONE = Failure(ConnectionDone())
#: nlmsghdr + genlmsghdr + nlattr, host order (netlink.py's layout).
_HEADERS = struct.Struct("<IHHIIBBHHH")
_LOG = Logger(namespace="vrtwist.ksync.server")

_response_cache: dict[int, bytes] = {}


def _response(code: int) -> bytes:
    """Encoded vr_response, memoised for the common codes."""
    b = _response_cache.get(code)
    if b is None:
        b = encode(schema.vr_response(h_op=RESPONSE, resp_code=code))
        if len(_response_cache) < 4096:
            _response_cache[code] = b
    return b


def ksync_socket_path(run_dir: str) -> str:
    """``<run-dir>/dpdk_netlink``."""
    return os.path.join(run_dir, KSYNC_SOCKET_NAME)


@implementer(IKsyncSession, IPushProducer, IFrameProgress)
class KsyncServerProtocol(Protocol):
    """One ksync session: reassembles netlink requests, dispatches, frames the replies."""

    _log = Logger()

    def __init__(
        self,
        dispatcher: IKsyncDispatcher,
        style: str = STYLE_LINUX,
        max_frame: int = NL_REQUEST_MAX,
        clock: IReactorTime | None = None,
        batch: int = 64,
    ) -> None:
        self.dispatcher = dispatcher
        #: the dispatcher takes the agent's FLOW_SETs from their values
        self._values = flow_answer is not None and IFlowSetValues.providedBy(dispatcher)
        self.style = style
        self.requests = 0
        self.peer: IAddress | None = None
        self._reader = FrameReader(max_frame=max_frame, min_frame=HEADERS_LEN)
        self._pending: deque[bytes] = deque()
        self._frames = 0
        self._paused = False
        self._closed = False
        # Fairness: with a clock, at most ``batch`` requests per reactor turn, so one client
        # pouring thousands of requests into one read cannot stall the other sessions.
        self._clock = clock
        self._batch = batch
        self._turn: IDelayedCall | None = None
        self.factory: KsyncServerFactory | None = None

    # -- IProtocol ------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.peer = self.transport.getPeer() if self.transport else None
        if self.transport is not None:
            self.transport.registerProducer(self, True)  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            frames = self._reader.feed(data)
        except NetlinkFrameError as e:
            self._log.warn("ksync: dropping session {peer}: {error}", peer=self.peer, error=str(e))
            self._drop()
            return
        self._frames += len(frames)
        self._pending.extend(frames)
        self._run()

    def frameProgress(self) -> tuple[int, int]:
        """Frames received so far and bytes of the one in progress (for the guard)."""
        return self._frames, self._reader.buffered

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        self._closed = True
        self._pending.clear()
        if self._turn is not None and self._turn.active():
            self._turn.cancel()
        self._turn = None
        if self.factory is not None:
            self.factory.sessions.discard(self)

    # -- IPushProducer: the transport's buffer is this session's response queue ---------------

    def pauseProducing(self) -> None:
        self._paused = True
        if self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resumeProducing(self) -> None:
        self._paused = False
        if self._turn is not None:
            return  # reading resumes when the scheduled turn runs
        if self.transport is not None and not self._closed:
            self.transport.resumeProducing()  # type: ignore[attr-defined]
        self._run()

    def stopProducing(self) -> None:
        self._drop()

    # -- internals ------------------------------------------------------------------------

    def _drop(self) -> None:
        self._closed = True
        self._pending.clear()
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _run(self) -> None:
        if self._turn is not None:
            return  # a turn is already scheduled; it will carry on from here
        pending = self._pending
        budget = self._batch if self._clock is not None else -1
        while pending and not self._paused and not self._closed:
            if budget == 0:
                # Let other sessions run; stop reading this one until our next turn.
                assert self._clock is not None and self.transport is not None
                self.transport.pauseProducing()  # type: ignore[attr-defined]
                self._turn = self._clock.callLater(0, self._next_turn)
                return
            budget -= 1
            self._handle(pending.popleft())

    def _next_turn(self) -> None:
        self._turn = None
        if self._closed:
            return
        if not self._paused and self.transport is not None:
            self.transport.resumeProducing()  # type: ignore[attr-defined]
        self._run()

    def _handle(self, frame: bytes) -> None:
        data = self.answer(frame)
        assert self.transport is not None
        self.transport.write(data)

    def answer(self, frame: bytes) -> bytes:
        """The framed reply to one whole request frame (all of its messages dispatched)."""
        if len(frame) < HEADERS_LEN:  # the reader's minimum makes this impossible
            msg = parse_message(frame)
        else:
            h = _HEADERS.unpack_from(frame)
            msg = NetlinkMessage(h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9], b"", h[0])
        return frame_replies(self.process(frame[HEADERS_LEN:]), msg, self.style)

    def process(self, payload: bytes) -> list[bytes]:
        """Decode and dispatch every Sandesh message of one request; return reply payloads.

        Each element of the result becomes one netlink message. Messages decoded before a
        decoding error have been dispatched and answered, as the C decoder does; the error
        itself is answered with one vr_response of -1.
        """
        # The agent's bunched FLOW_SETs: one struct unpack (vrtwist.ksync.flowset), the
        # values straight to the table when the dispatcher takes them so.
        if self._values:
            reader = self.dispatcher.flow_set_reader()  # type: ignore[attr-defined]
            if reader is not None:
                values = reader.read(payload)
                if values is not None:
                    return self._flow_values(reader, values, payload)
        requests = decode_flow_sets(payload)
        if requests is not None:
            self.requests += len(requests)
            return _flow_sets(self.dispatcher, requests)
        try:
            # Usually every message decodes: decode them in one call.
            requests = decode(payload)
        except SandeshDecodeError:
            return self._process_each(payload)
        if not requests:
            return [_response(_UNDECODABLE)]
        out: list[bytes] = []
        dispatcher = self.dispatcher
        for req in requests:
            self.requests += 1
            out.extend(execute(dispatcher, req, _LOG))
        return out

    def _flow_values(self, reader: Any, values: tuple[int, ...], payload: bytes) -> list[bytes]:
        """``process`` of bunched FLOW_SETs from their values (``IFlowSetValues``): each
        the dispatcher takes is answered from its index and generation, any other is
        decoded and dispatched whole, in order."""
        assert flow_answer is not None
        answer = flow_answer
        dispatcher = self.dispatcher
        apply = dispatcher.flow_sets_at  # type: ignore[attr-defined]
        width = reader.width
        end = len(values)
        out: list[bytes] = []
        done: list[tuple[int, int]] = []
        o = 0
        while o < end:
            try:
                o = apply(values, o, done)
            except Exception:  # noqa: BLE001 - as in execute: logged, answered EINVAL
                o += len(done) * width  # the one that failed, after those done
                _LOG.failure("ksync: dispatcher failed on FLOW_SET {n}", n=o // width)
                out.extend(starmap(answer, done))
                done.clear()
                out.append(_response(-errno.EINVAL))
                o += width
                continue
            out.extend(starmap(answer, done))
            done.clear()
            if o < end:  # one the dispatcher does not take from its values
                out.extend(_flow_sets(dispatcher, [reader.request(payload, o // width)]))
                o += width
        self.requests += end // width
        return out

    def _process_each(self, payload: bytes) -> list[bytes]:
        """``process`` for a payload that fails to decode somewhere: one message at a time."""
        out: list[bytes] = []
        end = len(payload)
        o = 0
        while o < end:
            if end - o <= 3 and not any(payload[o:]):
                break
            try:
                req, o = decode_one(payload, o)
            except SandeshDecodeError as e:
                self._log.warn(
                    "ksync: undecodable request from {peer}: {error}", peer=self.peer, error=str(e)
                )
                out.append(_response(_UNDECODABLE))
                break
            self.requests += 1
            out.extend(execute(self.dispatcher, req, _LOG))
        if not out:
            out.append(_response(_UNDECODABLE))
        return out


def _flow_sets(dispatcher: IKsyncDispatcher, requests: list[Any]) -> list[bytes]:
    """``execute`` of each of the agent's bunched FLOW_SETs, the usual answer (the
    vr_flow_response pre-encoded by the handler) laid out here without a call."""
    out: list[bytes] = []
    dispatch = dispatcher.dispatch
    for request in requests:
        try:
            reply = dispatch(request)
        except Exception:  # noqa: BLE001 - as in execute: logged, answered EINVAL
            _LOG.failure("ksync: dispatcher failed on {request}", request=request)
            out.append(_response(-errno.EINVAL))
            continue
        encoded = reply.encoded if reply.__class__ is KsyncReply else None
        if encoded and not reply.dump and len(encoded) < _FLOW_REPLY_MAX:
            out.append(_response(reply.code) + encoded)
        else:
            out.extend(_lay_out(reply, request, _LOG))
    return out


#: An encoded answer shorter than this fits one message with any vr_response.
_FLOW_REPLY_MAX = _REPLY_PAYLOAD_MAX - 64


def execute(dispatcher: IKsyncDispatcher, request: Any, log: Logger | None = None) -> list[bytes]:
    """Run one request through ``dispatcher`` and lay out the reply payloads (docs/protocols/ksync.md, "Replies")."""
    if log is None:
        log = _LOG
    try:
        reply = dispatcher.dispatch(request)
    except Exception:  # noqa: BLE001 - a dispatcher bug (logged) answers EINVAL, the channel lives
        log.failure("ksync: dispatcher failed on {request}", request=request)
        return [_response(-errno.EINVAL)]
    return _lay_out(reply, request, log)


def _lay_out(reply: Any, request: Any, log: Logger) -> list[bytes]:
    """The reply payloads of ``reply`` (what ``dispatch`` returned for ``request``)."""
    if not isinstance(reply, KsyncReply):
        log.failure("ksync: dispatcher failed on {request}", request=request,
                    failure=Failure(TypeError("dispatch returned %r, not a KsyncReply" % (reply,))))
        return [_response(-errno.EINVAL)]
    try:
        if reply.dump and reply.code >= 0:
            return _dump_page(reply.objects, log)
        objects = reply.objects
        if reply.encoded:
            payload = _response(reply.code) + reply.encoded
        elif not objects:
            return [_response(reply.code)]
        elif objects.__class__ is list and len(objects) == 1:
            payload = _response(reply.code) + encode(objects[0])
        else:
            payload = _response(reply.code) + b"".join([encode(o) for o in objects])
    except Exception:  # noqa: BLE001 - an unencodable object or failed dump (logged) answers EINVAL
        # An unencodable object (SandeshEncodeError) or a dump iterator that failed.
        log.failure("ksync: cannot build the reply to {request}", request=request)
        return [_response(-errno.EINVAL)]
    if len(payload) > _REPLY_PAYLOAD_MAX:
        log.error(
            "ksync: reply of {size} bytes to {request} exceeds one netlink message",
            size=len(payload),
            request=request,
        )
        return [_response(-errno.ENOSPC)]
    return [payload]


def _dump_page(objects: Any, log: Logger) -> list[bytes]:
    page: list[bytes] = []
    size = 0
    more = False
    it: Iterator[Any] = iter(objects)
    for obj in it:
        b = encode(obj)
        if size + len(b) > VR_MESSAGE_PAGE_SIZE:
            if not page:
                log.error("ksync: one dump object of {size} bytes exceeds a page", size=len(b))
                return [_response(-errno.ENOSPC)]
            more = True
            break
        page.append(b)
        size += len(b)
    code = len(page) | (VR_MESSAGE_DUMP_INCOMPLETE if more else 0)
    if not page:
        return [_response(code)]
    return [_response(code), b"".join(page)]


def frame_replies(replies: list[bytes], request: NetlinkMessage, style: str = STYLE_LINUX) -> bytes:
    """Frame reply payloads for ``request``: one message, or a multi-part sequence."""
    if len(replies) == 1:
        return build_response(replies[0], request, 0)
    body = replies if style != STYLE_DPDK else replies[:-1]
    n = len(body[0])
    if len(set(map(len, body))) == 1:  # 16 answers to bunched FLOW_SETs: one header
        head = _HEADERS.pack(HEADERS_LEN + n, request.nl_type, NLM_F_MULTI, request.seq, 0,
                             request.genl_cmd, request.genl_version, request.genl_reserved,
                             n & 0xFFFF, 1)  # fmt: skip
        last = (build_response(replies[-1], request, 0) if style == STYLE_DPDK
                else build_done(request))  # fmt: skip
        return b"".join((head, head.join(body), last))
    # One join for the whole reply; replies of equal size (16 bunched FLOW_SETs) share
    # one packed header.
    parts: list[bytes] = []
    heads: dict[int, bytes] = {}
    t, seq, cmd, ver, res = (
        request.nl_type,
        request.seq,
        request.genl_cmd,
        request.genl_version,
        request.genl_reserved,
    )
    for p in replies if style != STYLE_DPDK else replies[:-1]:
        n = len(p)
        h = heads.get(n)
        if h is None:
            h = heads[n] = _HEADERS.pack(
                HEADERS_LEN + n, t, NLM_F_MULTI, seq, 0, cmd, ver, res, n & 0xFFFF, 1
            )
        parts.append(h)
        parts.append(p)
    if style == STYLE_DPDK:
        parts.append(build_response(replies[-1], request, 0))
    else:
        parts.append(build_done(request))
    return b"".join(parts)


class KsyncServerFactory(Factory):
    """Builds one session per connection; refuses connections beyond ``max_sessions``."""

    _log = Logger()

    def __init__(
        self,
        dispatcher: IKsyncDispatcher,
        style: str = STYLE_LINUX,
        max_sessions: int = 256,
        max_frame: int = NL_REQUEST_MAX,
        clock: IReactorTime | None = None,
    ) -> None:
        if style not in (STYLE_LINUX, STYLE_DPDK):
            raise ValueError("style must be %r or %r" % (STYLE_LINUX, STYLE_DPDK))
        self.dispatcher = dispatcher
        self.style = style
        self.max_sessions = max_sessions
        self.max_frame = max_frame
        self.clock = clock
        self.sessions: set[KsyncServerProtocol] = set()

    def buildProtocol(self, addr: IAddress) -> KsyncServerProtocol | None:  # type: ignore[override]
        if len(self.sessions) >= self.max_sessions:
            self._log.warn(
                "ksync: refusing connection, {count} sessions open", count=len(self.sessions)
            )
            return None
        p = KsyncServerProtocol(self.dispatcher, self.style, self.max_frame, self.clock)
        p.factory = self
        self.sessions.add(p)
        return p


def remove_stale_socket(path: str) -> None:
    """Remove a unix socket left by a dead server; refuse to touch anything else or a live one."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, "%s exists and is not a socket" % path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "another ksync server is listening on %s" % path)


def _clock_of(reactor: object) -> IReactorTime | None:
    return reactor if IReactorTime.providedBy(reactor) else None


def ksync_limits(max_sessions: int = 256) -> ConnectionLimits:
    """The bounds of ``dpdk_netlink``.

    A first request within 10 s of connecting and any request completed within 10 s of
    its first byte: ``vif``, ``nh`` and friends send theirs at once, and a header
    promising 65,536 bytes with no body is cut off.  Idle: 600 s, far above the agent's
    habit (one session kept open for good, polling statistics every few seconds), well
    below "forever".  When ``max_sessions`` are open the stalest session is closed for
    the newcomer (see :mod:`vrtwist.bounds`), so idle sockets cannot lock a utility out.
    """
    return ConnectionLimits(max_connections=max_sessions, first_frame=10.0, partial=10.0,
                            idle=600.0)  # fmt: skip


def bounded_ksync_factory(
    reactor: object,
    dispatcher: IKsyncDispatcher,
    style: str = STYLE_LINUX,
    max_sessions: int = 256,
    limits: ConnectionLimits | None = None,
) -> BoundedFactory | KsyncServerFactory:
    """The ksync factory under :func:`ksync_limits` (unwrapped without a clock)."""
    clock = _clock_of(reactor)
    limits = limits if limits is not None else ksync_limits(max_sessions)
    # the guard owns the cap: the inner factory only has to hold the sessions being
    # evicted (their connectionLost comes a turn later) next to the live ones
    inner = KsyncServerFactory(dispatcher, style, limits.max_connections * 4, clock=clock)
    if clock is None:
        inner.max_sessions = max_sessions
        return inner
    return BoundedFactory(inner, clock, limits, "ksync")


def listen_ksync(
    reactor: IReactorUNIX,
    run_dir: str,
    dispatcher: IKsyncDispatcher,
    style: str = STYLE_LINUX,
    max_sessions: int = 256,
    access: SocketAccess | None = None,
    limits: ConnectionLimits | None = None,
) -> Deferred[IListeningPort]:
    """Listen on ``<run-dir>/dpdk_netlink`` (stale socket removed first).

    Whoever can connect can rewrite the forwarding tables: the socket is the owner's
    (0600), or also ``access``'s group (0660), never the umask's (``vrtwist.access``).
    """
    path = ksync_socket_path(run_dir)
    remove_stale_socket(path)
    ep = UNIXListenEndpoint(reactor, path, access, backlog=128)
    return ep.listen(bounded_ksync_factory(reactor, dispatcher, style, max_sessions, limits))


class KsyncServerService(StreamServerEndpointService):
    """``IService`` serving ksync on ``<run-dir>/dpdk_netlink``; for ``makeService``."""

    def __init__(
        self,
        reactor: IReactorUNIX,
        run_dir: str,
        dispatcher: IKsyncDispatcher,
        style: str = STYLE_LINUX,
        max_sessions: int = 256,
        access: SocketAccess | None = None,
    ) -> None:
        self.path = ksync_socket_path(run_dir)
        self.factory = bounded_ksync_factory(reactor, dispatcher, style, max_sessions)
        super().__init__(
            UNIXListenEndpoint(reactor, self.path, access, backlog=128), self.factory
        )

    def privilegedStartService(self) -> None:
        remove_stale_socket(self.path)
        super().privilegedStartService()

    def stopService(self) -> Deferred[None] | None:
        d: Deferred[None] | None = super().stopService()

        def _unlink(result: object) -> object:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            return result

        if d is not None:
            d.addBoth(_unlink)
        else:
            _unlink(None)
        return d
