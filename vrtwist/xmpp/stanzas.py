"""Sans-IO builders and parsers for the stanzas of the Contrail XMPP dialect.

The public face of four private modules, one job each:

* :mod:`._records`: constants, errors, the records, and the field checks both parsers share;
* :mod:`._tree`: the general parser (expat, no DTD) for every shape and formatting;
* :mod:`._build`: the builders, in the element order the real peers write, with their
  bounded cache of the parts routes of one agent share;
* :mod:`._fastparse`: the checked fast path for the canonical hot stanzas.

Every stanza framed by :mod:`vrtwist.xmpp.framing` is parsed alone; every malformed
input raises :class:`StanzaError` and nothing else.  No Twisted imports: bytes in,
records out; records in, bytes out.
"""

from __future__ import annotations

from . import _build, _fastparse
from ._build import (
    PROCEED,
    STARTTLS,
    build_agent_eor,
    build_config,
    build_eor_iq_pair,
    build_eor_message,
    build_features,
    build_retract,
    build_route_publish,
    build_route_update,
    build_subscribe,
    build_unsubscribe,
    entry_xml,
    items_node,
    publish_node,
)
from ._fastparse import parse_fast
from ._records import (
    AFI_INET,
    AFI_INET6,
    AFI_L2VPN,
    AFI_SAFI,
    CONTROL_NODE_JID,
    ENCAP_NAMES,
    EOR_NODE,
    PUBSUB_NS,
    SAFI_ENET,
    SAFI_UNICAST,
    TLS_NS,
    Collection,
    ConfigLink,
    ConfigNode,
    ConfigUpdate,
    EndOfRib,
    NextHop,
    Publish,
    RouteEntry,
    RouteUpdate,
    Stanza,
    StanzaError,
    StartTls,
    StreamFeatures,
    Subscribe,
    TlsFailure,
    TlsProceed,
    Unsubscribe,
    UnsupportedFamily,
)
from ._tree import _MISSED, _parse_full, parse_stanza_full

__all__ = [
    "AFI_INET",
    "AFI_INET6",
    "AFI_L2VPN",
    "AFI_SAFI",
    "CONTROL_NODE_JID",
    "ENCAP_NAMES",
    "EOR_NODE",
    "PROCEED",
    "PUBSUB_NS",
    "SAFI_ENET",
    "SAFI_UNICAST",
    "STARTTLS",
    "TLS_NS",
    "Collection",
    "ConfigLink",
    "ConfigNode",
    "ConfigUpdate",
    "EndOfRib",
    "NextHop",
    "Publish",
    "RouteEntry",
    "RouteUpdate",
    "Stanza",
    "StanzaError",
    "StartTls",
    "StreamFeatures",
    "Subscribe",
    "TlsFailure",
    "TlsProceed",
    "Unsubscribe",
    "UnsupportedFamily",
    "build_agent_eor",
    "build_config",
    "build_eor_iq_pair",
    "build_eor_message",
    "build_features",
    "build_retract",
    "build_route_publish",
    "build_route_update",
    "build_subscribe",
    "build_unsubscribe",
    "entry_xml",
    "items_node",
    "parse_fast",
    "parse_stanza",
    "parse_stanza_full",
    "publish_node",
]


# The bounded caches the tests inspect, under the names they had here.
_pieces = _build._pieces
_PIECES_MAX = _build._PIECES_MAX
_TAILS = _fastparse._TAILS
_TAILS_MAX = _fastparse._TAILS_MAX


def parse_stanza(data: bytes) -> Stanza:
    """Parse one framed stanza into a record; :class:`StanzaError` says what is wrong."""
    try:
        fast = parse_fast(data)
        if fast is not None:
            return fast
        return _parse_full(data)
    except StanzaError:
        raise
    except _MISSED as exc:
        raise StanzaError(f"stanza not understood ({type(exc).__name__})") from None
