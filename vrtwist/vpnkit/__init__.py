"""vpnkit's multiplexed port-forwarding protocol, forwarder and host sides.

``Multiplexer`` speaks the framing of ``vrtwist.vpnkit.frames`` (sans-IO) with per-channel
windows; ``ForwardTable`` and ``ExposeAPI`` are the host side's exposed ports;
``VpnkitService`` is what the twistd plugins run. In-memory peers for tests are in
``vrtwist.vpnkit.testing``.
"""

from __future__ import annotations

from vrtwist._exports import lazy_exports

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads it so)

if TYPE_CHECKING:
    from vrtwist.vpnkit.addr import AddressError, parse_connect_addr, parse_listen_addr
    from vrtwist.vpnkit.api import ExposeAPI
    from vrtwist.vpnkit.frames import FrameError, HandshakeError
    from vrtwist.vpnkit.host import ExposeError, ForwardTable, Port, PortError
    from vrtwist.vpnkit.interfaces import IChannel, IChannelAcceptor, IForwardTable, IMultiplexer
    from vrtwist.vpnkit.mux import (
        DEFAULT_WINDOW,
        Channel,
        ChannelAddress,
        Multiplexer,
        MultiplexerFactory,
        MuxStats,
    )
    from vrtwist.vpnkit.policy import DestinationPolicy, DestinationRefused
    from vrtwist.vpnkit.proxy import ForwardingAcceptor
    from vrtwist.vpnkit.service import VpnkitOptions, VpnkitService, makeVpnkitService

__all__ = [
    "DEFAULT_WINDOW",
    "AddressError",
    "Channel",
    "ChannelAddress",
    "DestinationPolicy",
    "DestinationRefused",
    "ExposeAPI",
    "ExposeError",
    "ForwardTable",
    "ForwardingAcceptor",
    "FrameError",
    "HandshakeError",
    "IChannel",
    "IChannelAcceptor",
    "IForwardTable",
    "IMultiplexer",
    "Multiplexer",
    "MultiplexerFactory",
    "MuxStats",
    "Port",
    "PortError",
    "VpnkitOptions",
    "VpnkitService",
    "makeVpnkitService",
    "parse_connect_addr",
    "parse_listen_addr",
]

__getattr__, __dir__ = lazy_exports(__name__, {
    "mux": ("Multiplexer", "MultiplexerFactory", "Channel", "ChannelAddress", "MuxStats", "DEFAULT_WINDOW"),
    "interfaces": ("IChannel", "IChannelAcceptor", "IMultiplexer", "IForwardTable"),
    "host": ("ForwardTable", "Port", "PortError", "ExposeError"),
    "api": ("ExposeAPI",),
    "policy": ("DestinationPolicy", "DestinationRefused"),
    "proxy": ("ForwardingAcceptor",),
    "service": ("VpnkitService", "VpnkitOptions", "makeVpnkitService"),
    "frames": ("FrameError", "HandshakeError"),
    "addr": ("AddressError", "parse_listen_addr", "parse_connect_addr"),
})
