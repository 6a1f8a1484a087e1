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


class _Daemon(ServiceMaker):
    """A vrtwist daemon: its options also bound the log files (``vrtwist.logfiles``), and
    its service ends the process when it cannot start.

    ``makeService`` goes through ``vrtwist._process.daemon_maker``: one line and exit
    status 1 for a start-up failure instead of a traceback and a process serving nothing.
    """

    @property
    def options(self) -> Any:
        from vrtwist._process import usage_errors_exit_1
        from vrtwist.logfiles import with_log_options

        return usage_errors_exit_1(with_log_options(super().options))

    @property
    def makeService(self) -> Any:  # type: ignore[override]
        from twisted.python.reflect import namedAny

        from vrtwist._process import daemon_maker

        return daemon_maker(self.tapname, namedAny(self.module).makeService)


vrouter = _Daemon(
    "vRouter agent",
    "vrtwist.agent.tap",
    "vRouter agent (REST port API, ksync, XMPP) with an embedded or external datapath",
    "vrouter",
)
vrouterDatapath = _Daemon(
    "vRouter forwarding extension",
    "vrtwist.datapath.tap",
    "vRouter forwarding extension alone: ksync server, tables, shared memory",
    "vrouter-dp",
)
vrouterControl = _Daemon(
    "vRouter control node",
    "vrtwist.xmpp.control_tap",
    "XMPP control node that reflects routes between vRouter agents",
    "vrouter-control",
)
vpnkitForwarder = _Daemon(
    "vpnkit forwarder",
    "vrtwist.vpnkit.forwarder_tap",
    "vpnkit-forwarder: the in-VM side of the multiplexed port-forwarding protocol",
    "vpnkit-forwarder",
)
vpnkitHost = _Daemon(
    "vpnkit host",
    "vrtwist.vpnkit.host_tap",
    "vpnkit host side: exposes ports and carries them over the multiplexed link",
    "vpnkit-host",
)
vspc = _Daemon(
    "vSPC relay",
    "vrtwist.vic.vspc_tap",
    "virtual serial port concentrator for ESX network serial ports (telnet option 232)",
    "vspc",
)
vsockRelay = _Daemon(
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
