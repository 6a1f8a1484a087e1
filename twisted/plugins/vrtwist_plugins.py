"""twistd plugins of vrtwist.

Kept tiny on purpose: Twisted imports every plugin module on each scan while its
``dropin.cache`` is stale, so everything here is lazy (module names, not imports).
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import ServiceMaker
from twisted.internet.interfaces import (
    IStreamClientEndpointStringParserWithReactor,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import IPlugin
from zope.interface import implementer

vrouter = ServiceMaker(
    "vRouter agent",
    "vrtwist.agent.tap",
    "vRouter agent (REST port API, ksync, XMPP) with an embedded or external datapath",
    "vrouter",
)
vrouterDatapath = ServiceMaker(
    "vRouter forwarding extension",
    "vrtwist.datapath.tap",
    "vRouter forwarding extension alone: ksync server, tables, shared memory",
    "vrouter-dp",
)
vrouterControl = ServiceMaker(
    "vRouter control node",
    "vrtwist.xmpp.control_tap",
    "XMPP control node that reflects routes between vRouter agents",
    "vrouter-control",
)
vpnkitForwarder = ServiceMaker(
    "vpnkit forwarder",
    "vrtwist.vpnkit.forwarder_tap",
    "vpnkit-forwarder: the in-VM side of the multiplexed port-forwarding protocol",
    "vpnkit-forwarder",
)
vpnkitHost = ServiceMaker(
    "vpnkit host",
    "vrtwist.vpnkit.host_tap",
    "vpnkit host side: exposes ports and carries them over the multiplexed link",
    "vpnkit-host",
)
vspc = ServiceMaker(
    "vSPC relay",
    "vrtwist.vic.vspc_tap",
    "virtual serial port concentrator for ESX network serial ports (telnet option 232)",
    "vspc",
)
vsockRelay = ServiceMaker(
    "vsock relay",
    "vrtwist.vsock.relay_tap",
    "relay from AF_VSOCK (or a stand-in) to TCP/unix backends",
    "vsock-relay",
)


@implementer(IPlugin, IStreamServerEndpointStringParser)
class _VSockServerParser:
    """``vsock:PORT[:cid=CID]`` server endpoints; the real parser is imported on use."""

    prefix = "vsock"

    def parseStreamServer(self, reactor: Any, *args: str, **kwargs: str) -> Any:
        from vrtwist.vsock.endpoints import VSockServerParser

        return VSockServerParser().parseStreamServer(reactor, *args, **kwargs)


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class _VSockClientParser:
    """``vsock:CID:PORT`` client endpoints; the real parser is imported on use."""

    prefix = "vsock"

    def parseStreamClient(self, reactor: Any, *args: str, **kwargs: str) -> Any:
        from vrtwist.vsock.endpoints import VSockClientParser

        return VSockClientParser().parseStreamClient(reactor, *args, **kwargs)


vsockServerParser = _VSockServerParser()
vsockClientParser = _VSockClientParser()
