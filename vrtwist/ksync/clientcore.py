"""Sans-IO ksync client: builds requests, correlates replies by seq, splits bunched replies.

Shared by the Twisted ``KsyncClientProtocol`` (the Agent) and the blocking
``KsyncConnection`` (the command-line utilities), so both read replies the same way:

* a reply to one netlink request is every message with that seq up to the first one
  without ``NLM_F_MULTI`` (a DPDK-style last part, a single reply, or NLMSG_DONE);
* inside it, each ``vr_response`` starts the answer to the next bunched request and the
  objects after it belong to that request (the Agent's ``KSyncBulkSandeshContext``).
"""

from __future__ import annotations

import errno as _errno
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vrtwist.ksync.flowset import flow_answers
from vrtwist.ksync.netlink import (
    GENL_ID_VROUTER,
    HEADERS_LEN,
    NLM_F_MULTI,
    NLMSG_ERROR,
    NLMSG_HDRLEN,
    FrameReader,
    NetlinkFrameError,
    build_request,
    parse_message,
)
from vrtwist.sandesh import (
    VR_MESSAGE_DUMP_INCOMPLETE,
    SandeshDecodeError,
    decode,
    encode,
    schema,
)
from vrtwist.sandesh.constants import AF_BRIDGE, DUMP

__all__ = [
    "CLIENT_MAX_FRAME",
    "FLOW_RESET",
    "MAX_DUMP_PAGES",
    "ClientCore",
    "DumpPager",
    "KsyncError",
    "KsyncProtocolError",
    "KsyncResponse",
    "flow_result",
    "next_dump_request",
]

_NLMSGHDR = struct.Struct("<IHHI")

#: Largest reply frame a client accepts (servers send at most 4096; be lenient, but bounded).
CLIENT_MAX_FRAME = 65536


@dataclass
class KsyncResponse:
    """The answer to one request: its vr_response code and the objects after it."""

    code: int
    objects: list[Any] = field(default_factory=list)

    @property
    def more(self) -> bool:
        """DUMP: more objects remain after this page (bit 30 of the code)."""
        return self.code >= 0 and bool(self.code & VR_MESSAGE_DUMP_INCOMPLETE)

    @property
    def count(self) -> int:
        """DUMP: number of objects in this page."""
        return self.code & ~VR_MESSAGE_DUMP_INCOMPLETE if self.code >= 0 else 0


class KsyncError(Exception):
    """The vRouter answered with a negative errno.

    ``str()`` is what the real utilities print: ``vRouter(Response): <strerror> (<errno>)``.
    ``objects`` holds anything sent after the vr_response (e.g. a vr_flow_response).
    """

    def __init__(self, code: int, objects: Sequence[Any] = ()) -> None:
        self.code = code
        self.errno = -code
        self.strerror = os.strerror(self.errno)
        self.objects = list(objects)
        super().__init__("vRouter(Response): %s (%d)" % (self.strerror, self.errno))


class KsyncProtocolError(Exception):
    """The server's bytes do not make sense (bad framing, undecodable Sandesh, missing replies)."""


@dataclass
class _Pending:
    count: int
    payloads: list[bytes] = field(default_factory=list)
    error: int | None = None
    #: FLOW_SETs: answered as ``(resp_code, index, gen_id)`` (see ``flow_result``)
    flow: bool = False


Result = KsyncResponse | KsyncError | KsyncProtocolError
#: A FLOW_SET's answer: ``(resp_code, fresp_index, fresp_gen_id)``.
FlowAnswer = tuple[int, int, int]
#: The answer of a FLOW_SET whose session broke (closed, or replies that make no sense).
FLOW_RESET: FlowAnswer = (-_errno.ECONNRESET, -1, 0)


def flow_result(r: Result) -> FlowAnswer:
    """A FLOW_SET's result as the agent reads it: the code (0 when not negative), and the
    index and generation of the vr_flow_response after it (-1 and 0 when none came)."""
    if isinstance(r, KsyncResponse):
        code, objects = 0, r.objects
    elif isinstance(r, KsyncError):
        code, objects = r.code, r.objects
    else:
        return FLOW_RESET
    fr = next((o for o in objects if type(o) is schema.vr_flow_response), None)
    if fr is None:
        return code, -1, 0
    return code, int(fr.fresp_index), int(fr.fresp_gen_id)


class ClientCore:
    """Request building and reply correlation for one ksync connection."""

    def __init__(
        self, nl_type: int = GENL_ID_VROUTER, pid: int = 0, max_frame: int = CLIENT_MAX_FRAME
    ) -> None:
        self.nl_type = nl_type
        self.pid = pid
        self._seq = 0
        self._reader = FrameReader(max_frame=max_frame)
        self.pending: dict[int, _Pending] = {}

    def build(self, msgs: Sequence[Any], flow: bool = False) -> tuple[int, bytes]:
        """Encode ``msgs`` (bunched) into one netlink request; remember what to expect.

        A message given as bytes is taken as already encoded. With ``flow`` (the
        messages are FLOW_SETs) each result is the ``flow_result`` tuple."""
        if not msgs:
            raise ValueError("no messages to send")
        # a message may come encoded already (bytes): the agent's FLOW_SETs do
        payload = b"".join([m if m.__class__ is bytes else encode(m) for m in msgs])
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        while self._seq in self.pending or self._seq == 0:
            self._seq = (self._seq + 1) & 0xFFFFFFFF
        seq = self._seq
        self.pending[seq] = _Pending(len(msgs), flow=flow)
        return seq, build_request(payload, seq, self.nl_type, self.pid)

    def feed(self, data: bytes) -> list[tuple[int, list[Any]]]:
        """Consume received bytes; return (seq, one result per bunched request) when complete.

        A result is a ``Result``, or for a request built with ``flow`` a ``FlowAnswer``.

        Raises ``KsyncProtocolError`` when the stream itself is broken (the connection
        must then be dropped and every pending request failed).
        """
        try:
            frames = self._reader.feed(data)
        except NetlinkFrameError as e:
            raise KsyncProtocolError(str(e)) from e
        done: list[tuple[int, list[Any]]] = []
        pending = self.pending
        for frame in frames:
            if len(frame) < HEADERS_LEN:  # NLMSG_DONE, or impossible
                try:
                    m = parse_message(frame)
                except NetlinkFrameError as e:
                    raise KsyncProtocolError(str(e)) from e
                nl_type, flags, seq = m.nl_type, m.flags, m.seq
            else:  # the headers alone (parse_message's, without the message object)
                _, nl_type, flags, seq = _NLMSGHDR.unpack_from(frame)
            p = pending.get(seq)
            if p is None:
                continue  # not ours (e.g. a multicast notification): ignore
            if nl_type == NLMSG_ERROR and self.nl_type != NLMSG_ERROR and len(frame) >= 20:
                # A kernel netlink error ack: payload starts with the negative errno.
                p.error = int.from_bytes(frame[16:20], "little", signed=True) or -_errno.EINVAL
            elif len(frame) != NLMSG_HDRLEN:  # not a bare NLMSG_DONE
                p.payloads.append(frame[HEADERS_LEN:])
            if not flags & NLM_F_MULTI:
                del pending[seq]
                done.append((seq, _flow_split(p) if p.flow else _split(p)))
        return done


def _flow_split(p: _Pending) -> list[FlowAnswer]:
    """The answers to bunched FLOW_SETs: read at the datapath's layout when they are
    exactly that (``vrtwist.ksync.flowset``), else decoded and read as ``flow_result``."""
    if p.error is None:
        fast = flow_answers(p.payloads[0] if len(p.payloads) == 1 else b"".join(p.payloads),
                            p.count)
        if fast is not None:
            return fast
    return [flow_result(r) for r in _split(p)]


def _split(p: _Pending) -> list[Result]:
    if p.error is not None:
        return [KsyncError(p.error) for _ in range(p.count)]
    msgs: list[Any] = []
    try:
        for payload in p.payloads:
            msgs.extend(decode(payload))
    except SandeshDecodeError as e:
        err = KsyncProtocolError("undecodable reply: %s" % e)
        return [err for _ in range(p.count)]
    groups: list[tuple[int, list[Any]]] = []
    for m in msgs:
        if type(m) is schema.vr_response:
            groups.append((m.resp_code, []))
        elif groups:
            groups[-1][1].append(m)
        else:
            err = KsyncProtocolError("reply object %s before any vr_response" % type(m).__name__)
            return [err for _ in range(p.count)]
    results: list[Result] = []
    for code, objs in groups[: p.count]:
        results.append(KsyncResponse(code, objs) if code >= 0 else KsyncError(code, objs))
    while len(results) < p.count:
        results.append(KsyncProtocolError("no vr_response for request %d" % len(results)))
    return results


# ---------------------------------------------------------------------------------------------
# Dump iteration: which field is the marker and which key of the last object feeds it (2.4).

_MARKERS: dict[str, tuple[str, str]] = {
    "vr_interface_req": ("vifr_marker", "vifr_idx"),
    "vr_nexthop_req": ("nhr_marker", "nhr_id"),
    "vr_mpls_req": ("mr_marker", "mr_label"),
    "vr_mirror_req": ("mirr_marker", "mirr_index"),
    "vr_vrf_assign_req": ("var_marker", "var_vlan_id"),
    "vr_vrf_stats_req": ("vsr_marker", "vsr_vrf"),
    "vr_vrf_req": ("vrf_marker", "vrf_idx"),
    "vr_qos_map_req": ("qmr_marker", "qmr_id"),
    "vr_vxlan_req": ("vxlanr_vnid", "vxlanr_vnid"),
    "vr_info_req": ("vdu_marker", "vdu_marker"),
}


def next_dump_request(req: Any, last: Any) -> Any:
    """The DUMP request asking for the page after object ``last``."""
    name = type(req).__name__
    nxt = type(req)(**vars(req))
    nxt.h_op = DUMP
    if name == "vr_route_req":
        nxt.rtr_marker = list(last.rtr_prefix)
        nxt.rtr_marker_plen = last.rtr_prefix_len
        if req.rtr_family == AF_BRIDGE:
            nxt.rtr_mac = list(last.rtr_mac)
            nxt.rtr_index = last.rtr_index
        return nxt
    if name == "vr_fc_map_req":
        nxt.fmr_marker = last.fmr_id[-1] if last.fmr_id else -1
        return nxt
    try:
        marker, key = _MARKERS[name]
    except KeyError:
        raise ValueError("%s has no dump marker" % name) from None
    setattr(nxt, marker, getattr(last, key))
    return nxt


#: Pages after which a DUMP that keeps setting the more bit is declared broken.
MAX_DUMP_PAGES = 1 << 20


class DumpPager:
    """ksync dump paging, sans-IO: the one implementation every client drives.

    Send :attr:`request`, hand each reply page to :meth:`page`, and send the request it
    returns until it returns None; :attr:`objects` then holds the whole dump. A page
    that sets the more bit without objects, or a dump longer than ``max_pages``, raises
    :class:`KsyncProtocolError` (a server that would otherwise be asked forever).
    """

    def __init__(self, req: Any, max_pages: int = MAX_DUMP_PAGES) -> None:
        req = type(req)(**vars(req))
        if hasattr(req, "h_op"):
            req.h_op = DUMP
        self.request = req
        self.objects: list[Any] = []
        self.pages = 0
        self.max_pages = max_pages

    def page(self, objects: Sequence[Any], more: bool) -> Any | None:
        """Record one page; the next request, or None when the dump is complete."""
        self.pages += 1
        self.objects.extend(objects)
        if not more:
            return None
        if not objects:
            raise KsyncProtocolError("dump page with no objects but the more bit set")
        if self.pages >= self.max_pages:
            raise KsyncProtocolError("dump did not finish after %d pages" % self.max_pages)
        self.request = next_dump_request(self.request, objects[-1])
        return self.request
