"""``twistd -n vrouter-dp``: the forwarding extension alone.

It serves ksync on ``<run-dir>/dpdk_netlink`` and keeps the flow and bridge tables in
``<run-dir>/flow.shmem`` and ``<run-dir>/bridge.shmem``, as the DPDK vRouter does with
``--no-huge``; an agent started with ``--datapath=external`` talks to it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.application.service import MultiService
from twisted.python import usage

from vrtwist._process import DaemonService, reactor_and_tunings
from vrtwist.datapath.introspect import make_datapath_app
from vrtwist.datapath.service import DatapathOptionsMixin, makeDatapathService
from vrtwist.introspect.listen import add_introspect, introspect_option


class Options(DatapathOptionsMixin, usage.Options):
    """Options of ``twistd vrouter-dp``: ``--run-dir``, ``--flow-entries``, ...."""

    synopsis = (
        "[--run-dir DIR] [--flow-entries N] [--bridge-entries N] [--fabric IFNAME] "
        "[--vlan-tci TCI [--vtest-vlan]] [--no-ports]"
    )
    optParameters: ClassVar[list[list[Any]]] = [introspect_option("vrouter-dp")]


def makeService(options: Options, reactor: Any = None) -> MultiService:
    """The forwarding extension's service tree (tests pass their reactor: no tunings)."""
    reactor, tunings = reactor_and_tunings(reactor)
    top = makeDatapathService(options, reactor=reactor)
    datapath = top.datapath  # type: ignore[attr-defined]
    run_dir = str(options.get("run-dir"))
    pkt0 = getattr(getattr(top, "packets", None), "trap", None)
    add_introspect(top, reactor, options.get("introspect"),
                   lambda: make_datapath_app(datapath, run_dir, pkt0))
    if tunings:
        # an otherwise empty child that applies the daemon's tunings when twistd starts it
        daemon = DaemonService(*tunings)
        daemon.setName("daemon")
        daemon.setServiceParent(top)
    return top
