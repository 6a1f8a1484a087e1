"""``twistd -n vspc``: the vSPC relay for ESX network serial ports.

Example::

    twistd -n vspc --listen tcp:2377 --backend 'unix:/run/vic/{uuid}.sock' \\
        --service-uri '*' --api tcp:2378:interface=127.0.0.1

TLS (``telnets://`` in the VM's proxyURI) is a Twisted ``ssl:`` endpoint:
``--listen ssl:13370:privateKey=key.pem:certKey=cert.pem``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.application import internet
from twisted.python import usage

from vrtwist._process import DaemonService, check_endpoint, reactor_and_tunings
from vrtwist.access import SOCKET_GROUP_OPTION
from vrtwist.bounds import ConnectionGuard, bounded_site
from vrtwist.introspect.daemons import vspc_app
from vrtwist.introspect.listen import add_introspect, introspect_option
from vrtwist.unixlisten import access_from_options, listen_endpoint
from vrtwist.vic.vspc import VSPC_LIMITS, VMPortTable, VSPCConfig, VSPCFactory, checkTemplate
from vrtwist.vsock.tuning import tuneAllocator


class Options(usage.Options):
    """Command line of ``twistd vspc``."""

    optParameters: ClassVar[list[list[Any]]] = [
        introspect_option("vspc"),
        [
            "listen",
            "l",
            "tcp:2377",
            "endpoint ESX hosts connect to (tcp:..., ssl:... for telnets://)",
        ],
        [
            "backend",
            "b",
            "tcp:127.0.0.1:2379",
            "client endpoint template per VM serial port; {uuid} and {label} are filled in",
        ],
        [
            "service-uri",
            "s",
            "vSPC.py",
            "service URI expected in DO-PROXY ('*' accepts any; a ?port=LABEL query names the port)",
        ],
        ["api", "a", None, "endpoint for the JSON API (e.g. tcp:2378:interface=127.0.0.1)"],
        SOCKET_GROUP_OPTION,
        ["buffer", None, "262144", "bytes held per direction per VM before pausing the sender"],
        [
            "control-lookahead",
            None,
            "1048576",
            "bytes read ahead per pause on a paused ESX connection to reach option-232"
            " commands such as VMOTION-BEGIN (0: never read ahead)",
        ],
        [
            "handoff-timeout",
            None,
            "30",
            "seconds before an unfinished vMotion hand-off is abandoned",
        ],
        [
            "vm-expire",
            None,
            "60",
            "seconds a VM's state and backend outlive its last ESX connection",
        ],
    ]

    def postOptions(self) -> None:
        check_endpoint(self["listen"], "listen")
        if self["api"]:
            check_endpoint(self["api"], "api")
        try:
            checkTemplate(self["backend"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        for key in ("buffer", "control-lookahead"):
            try:
                self[key] = int(self[key])
            except ValueError:
                raise usage.UsageError(f"--{key} must be an integer") from None
            if self[key] <= 0 and key == "buffer":
                raise usage.UsageError(f"--{key} must be positive")
            if self[key] < 0:
                raise usage.UsageError(f"--{key} must not be negative")
        for key in ("handoff-timeout", "vm-expire"):
            try:
                self[key] = float(self[key])
            except ValueError:
                raise usage.UsageError(f"--{key} must be a number of seconds") from None


def makeService(options: Options, reactor: Any = None) -> DaemonService:
    """The listener, the port table (stops backends on shutdown) and the optional API."""
    # under twistd: size the allocator for relay buffers when it starts
    # (vrtwist.vsock.tuning.tuneAllocator); tests pass their own reactor and get none
    reactor, tunings = reactor_and_tunings(reactor, tuneAllocator)
    config = VSPCConfig(
        backendTemplate=options["backend"],
        serviceURI=options["service-uri"],
        bufferLimit=int(options["buffer"]),
        controlLookahead=int(options["control-lookahead"]),
        handoffTimeout=float(options["handoff-timeout"]),
        vmExpire=float(options["vm-expire"]),
    )
    top = DaemonService(*tunings)
    table = VMPortTable(reactor, config)
    table.setServiceParent(top)
    access = access_from_options(options)
    listen = internet.StreamServerEndpointService(
        listen_endpoint(reactor, options["listen"], access),
        VSPCFactory(table, ConnectionGuard(reactor, VSPC_LIMITS, "vspc")),
    )
    listen.setServiceParent(top)
    if options["api"]:
        from twisted.web.server import Site

        from vrtwist.vic.api import VSPCApi

        site = Site(VSPCApi(table).resource())
        internet.StreamServerEndpointService(
            listen_endpoint(reactor, options["api"], access),
            bounded_site(site, reactor, "vspc-api"),
        ).setServiceParent(top)
    add_introspect(top, reactor, options.get("introspect"), lambda: vspc_app(table), access)
    return top
