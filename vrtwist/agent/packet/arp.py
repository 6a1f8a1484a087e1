"""ARP the agent originates: gateway and DNS announcements to each VM on port add, and
the resolution of the remote nodes' fabric MACs (the tunnels' Ethernet destination).

The agent never answers a VM's ARP request (the datapath does, from the route flags and
MACs the agent programs). What it sends are ARP *requests* announcing the gateway (and,
when different, the DNS/service address) to each VM: Ethernet to the VM's MAC from the
vif MAC, sender and target both the announced address, three times two seconds apart.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Any, Final

from twisted.internet.interfaces import IReactorTime

from vrtwist.packet.headers import ARP, ETH_P_ARP, Ethernet, PacketError

__all__ = ["ANNOUNCE_COUNT", "ANNOUNCE_INTERVAL", "VRRP_MAC", "FabricResolver", "announcement",
           "resolve_request"]

#: the MAC every VM vif carries and the datapath answers ARP with
VRRP_MAC: Final = bytes.fromhex("00005e000100")
#: the real agent's ``kGratRetries`` + 1 transmissions at its 2000 ms timer
ANNOUNCE_COUNT: Final = 3
ANNOUNCE_INTERVAL: Final = 2.0


def announcement(vm_mac: bytes, address: bytes, vif_mac: bytes = VRRP_MAC, vlan: int = -1) -> bytes:
    """One 42-byte (46 with a VLAN tag) announcement of ``address`` to the VM, unpadded."""
    vlans = (vlan & 0xFFF,) if vlan >= 0 else ()
    eth = Ethernet(vm_mac, vif_mac, ETH_P_ARP, vlans).pack()
    return eth + ARP(1, vif_mac, address, vif_mac, address).pack()


#: ``ArpEntry``'s retry period and tries before the counter restarts (the entry stays
#: while a tunnel needs it), and how long a resolved MAC is trusted before one refresh
RESOLVE_RETRY: Final = 2.0
RESOLVE_TRIES: Final = 8
RESOLVE_AGING: Final = 300.0
_BROADCAST: Final = b"\xff" * 6
_ZERO_MAC: Final = bytes(6)


def resolve_request(sha: bytes, spa: bytes, tpa: bytes) -> bytes:
    """A fabric ARP request for ``tpa``: broadcast, from the fabric MAC and address."""
    return Ethernet(_BROADCAST, sha, ETH_P_ARP).pack() + ARP(1, sha, spa, _ZERO_MAC, tpa).pack()


class FabricResolver:
    """Resolves the fabric MACs of the remote nodes the tunnels lead to (as the real agent's ARP handler does).

    ``wanted`` lists the addresses to keep resolved; each gets a broadcast request on the
    fabric vif at once and every ``RESOLVE_RETRY`` seconds until an ARP packet from it
    arrives (a reply, or a request it sends itself); a resolved MAC is refreshed with one
    request after ``RESOLVE_AGING`` and kept meanwhile. ``resolved(address, mac)`` is told
    every new or changed MAC (None when an address is no longer wanted). No I/O: the
    clock and the send function are injected.
    """

    def __init__(self, clock: IReactorTime, send: Callable[[bytes], bool],
                 source: Callable[[], tuple[bytes, bytes]],
                 resolved: Callable[[str, bytes | None], None]) -> None:
        self._clock = clock
        self._send = send
        #: (fabric MAC, fabric address packed) at the time of sending
        self._source = source
        self._resolved = resolved
        self.macs: dict[str, bytes] = {}
        self._timers: dict[str, Any] = {}
        self._tries: dict[str, int] = {}
        self.sent = 0
        self.learnt = 0

    def wanted(self, addresses: Iterable[str]) -> None:
        """Keep exactly ``addresses`` resolved (new ones are asked for at once)."""
        want = set(addresses)
        for addr in list(self._timers.keys() | self.macs.keys()):
            if addr not in want:
                self._forget(addr)
        for addr in want:
            if addr not in self._timers and addr not in self.macs:
                self._tries[addr] = 0
                self._ask(addr)

    def _forget(self, addr: str) -> None:
        timer = self._timers.pop(addr, None)
        if timer is not None and timer.active():
            timer.cancel()
        self._tries.pop(addr, None)
        if self.macs.pop(addr, None) is not None:
            self._resolved(addr, None)

    def _ask(self, addr: str) -> None:
        mac, spa = self._source()
        try:
            tpa = ipaddress.IPv4Address(addr).packed
        except ValueError:
            return
        if self._send(resolve_request(mac, spa, tpa)):
            self.sent += 1
        tries = self._tries.get(addr, 0) + 1
        # after RESOLVE_TRIES the count restarts: a tunnel still needs the address
        self._tries[addr] = 0 if tries >= RESOLVE_TRIES else tries
        self._timers[addr] = self._clock.callLater(RESOLVE_RETRY, self._ask, addr)

    def _age(self, addr: str) -> None:
        """A resolved MAC got old: ask once more (and keep asking), keep the MAC."""
        self._timers.pop(addr, None)
        self._ask(addr)

    def received(self, frame: bytes | memoryview) -> bool:
        """An ARP packet trapped from the fabric; True when it resolved a wanted address."""
        try:
            eth = Ethernet.parse(frame)
            arp = ARP.parse(frame, eth.length)
        except PacketError:
            return False
        addr = str(ipaddress.IPv4Address(arp.spa))
        if addr not in self._timers and addr not in self.macs:
            return False
        if arp.sha == _ZERO_MAC or arp.sha[0] & 1:
            return False
        timer = self._timers.pop(addr, None)
        if timer is not None and timer.active():
            timer.cancel()
        self._tries[addr] = 0
        self._timers[addr] = self._clock.callLater(RESOLVE_AGING, self._age, addr)
        self.learnt += 1
        if self.macs.get(addr) != arp.sha:
            self.macs[addr] = arp.sha
            self._resolved(addr, arp.sha)
        return True

    def stop(self) -> None:
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
