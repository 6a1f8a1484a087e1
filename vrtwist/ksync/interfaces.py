"""The seam between the ksync server (transport) and whatever owns the tables.

The server decodes each Sandesh request and hands it to an ``IKsyncDispatcher``; the
dispatcher answers with a ``KsyncReply`` describing what the vRouter would send (spec
2.4). The server turns that into the exact vr_response/object/page layout and framing,
so dispatchers never deal with bytes, paging or sequence numbers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from zope.interface import Attribute, Interface

__all__ = ["KsyncReply", "IKsyncDispatcher", "IKsyncSession"]


@dataclass
class KsyncReply:
    """What one request produces.

    * ``code``: the vr_response ``resp_code``: 0 or a negative errno (``-errno.ENOENT``).
    * ``objects``: Sandesh messages sent after the vr_response. For ADD/DEL/GET they go in
      the same transport message as the vr_response (GET: the object; GET of a vif with
      VIF_FLAG_GET_DROP_STATS: the vif and a vr_drop_stats_req; vr_flow_req: the
      vr_flow_response, also on error).
    * ``dump``: True for a DUMP reply. ``objects`` is then every object after the request's
      marker, in key order, possibly a lazy iterator; the server takes as many as fit in
      one 3968-byte page, sends the vr_response with ``count | VR_MESSAGE_DUMP_INCOMPLETE``
      if any remain, then the page as a second transport message. The client asks again
      with the marker set to the last key it received. ``code`` must be 0 for a dump that
      proceeds; a negative ``code`` sends only the vr_response.
    * ``encoded``: a hot handler's shortcut (FLOW_SET): the objects already Sandesh-encoded,
      sent after the vr_response exactly as ``objects`` would be. When it is not empty the
      server ignores ``objects`` (which may then be empty); not used with ``dump``.
    """

    code: int = 0
    objects: Iterable[Any] = field(default_factory=tuple)
    dump: bool = False
    encoded: bytes = b""


class IKsyncDispatcher(Interface):
    """Executes decoded ksync requests against the forwarding tables."""

    def dispatch(request: Any) -> KsyncReply:
        """Apply one request (a ``vrtwist.sandesh.schema`` message) and describe the reply.

        Called synchronously, in the order requests arrive on a session, one Sandesh message
        at a time even when a client bunched several in one netlink message. Must not block.
        An exception is logged and answered with ``-EINVAL`` so one bad handler cannot take
        down the channel.
        """


class IKsyncSession(Interface):
    """One client connection of the ksync server, as seen by tests and diagnostics."""

    requests = Attribute("Number of Sandesh requests dispatched on this session.")
    peer = Attribute("Peer address of the connection.")
