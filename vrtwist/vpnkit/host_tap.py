"""``twistd -n vpnkit-host``: the host side that exposes ports through the forwarder.

``--data-connect ADDR`` (or ``--data-listen ADDR``) for the link, ``--expose
proto:outip:outport:inip:inport`` (repeatable) for ports exposed at start, and ``--api
ENDPOINT`` for the HTTP/JSON expose API (``vpnkit-expose`` talks to it).
"""

from __future__ import annotations

from typing import Any, ClassVar

from vrtwist.introspect.daemons import vpnkit_app
from vrtwist.introspect.listen import add_introspect, introspect_option
from vrtwist.vpnkit.service import VpnkitOptions, VpnkitService, makeVpnkitService

__all__ = ["Options", "makeService"]


class Options(VpnkitOptions):
    """Options of ``twistd vpnkit-host``."""

    optParameters: ClassVar[list[list[Any]]] = [introspect_option("vpnkit-host")]
    synopsis = "[--data-connect ADDR | --data-listen ADDR] [--expose SPEC ...] [--api ENDPOINT]"


def makeService(options: Options, reactor: Any = None) -> VpnkitService:
    svc = makeVpnkitService(options, reactor, role="host")
    add_introspect(svc, reactor, options.get("introspect"), lambda: vpnkit_app(svc, "host"))
    return svc
