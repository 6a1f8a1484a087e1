"""``twistd -n vpnkit-forwarder``: the in-VM side (Go's ``vpnkit-forwarder`` flags).

``--data-listen ADDR`` accepts data connections (any number; Go takes one at a time) and
``--data-connect ADDR`` dials out and redials with backoff when refused or lost.  Every
channel the peer opens is connected to its destination (TCP, UDP or a unix socket).
``--control-listen``/``--api`` also serves the expose API, as Go's ``-control-listen``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from vrtwist.introspect.daemons import vpnkit_app
from vrtwist.introspect.listen import add_introspect, introspect_option
from vrtwist.vpnkit.service import VpnkitOptions, VpnkitService, makeVpnkitService

__all__ = ["Options", "makeService"]


class Options(VpnkitOptions):
    """Options of ``twistd vpnkit-forwarder``."""

    optParameters: ClassVar[list[list[Any]]] = [introspect_option("vpnkit-forwarder")]
    synopsis = "[--data-listen ADDR | --data-connect ADDR] [--control-listen ENDPOINT]"


def makeService(options: Options, reactor: Any = None) -> VpnkitService:
    svc = makeVpnkitService(options, reactor, role="forwarder")
    add_introspect(svc, reactor, options.get("introspect"), lambda: vpnkit_app(svc, "forwarder"))
    return svc
