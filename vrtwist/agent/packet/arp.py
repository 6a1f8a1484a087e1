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

__all__ = ["ANNOUNCE_COUNT", "ANNOUNCE_INTERVAL", "VRRP_MAC", "FabricResolver", "PathProber",
           "announcement", "probe", "resolve_request"]

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


#: path-preference probes (``ArpPathPreferenceState``): every ``kTimeout`` 2 s for
#: ``kMaxRetry`` 150 sends, then every 10 s, or 5 s while the VM answers from a MAC other
#: than its port's
PROBE_INTERVAL: Final = 2.0
PROBE_FAST_SENDS: Final = 150
PROBE_SLOW_INTERVAL: Final = 10.0
PROBE_MOVED_INTERVAL: Final = 5.0
_ZERO_IP: Final = bytes(4)


def probe(vm_mac: bytes, spa: bytes, tpa: bytes, vif_mac: bytes = VRRP_MAC,
          vlan: int = -1) -> bytes:
    """One path-preference probe: an ARP request for the VM's own address ``tpa``, to
    the VM's MAC, from the vif MAC, sender address the service address (or 0)."""
    vlans = (vlan & 0xFFF,) if vlan >= 0 else ()
    eth = Ethernet(vm_mac, vif_mac, ETH_P_ARP, vlans).pack()
    return eth + ARP(1, vif_mac, spa, _ZERO_MAC, tpa).pack()


class _Probed:
    """What the prober keeps of one VM port."""

    __slots__ = ("frame", "ip", "learnt_mac", "mac", "replies", "sent", "timer",
                 "traffic_seen", "vrf")

    def __init__(self, vrf: int, mac: bytes, ip: bytes, frame: bytes) -> None:
        self.vrf = vrf
        self.mac = mac
        self.ip = ip
        self.frame = frame
        self.sent = 0
        self.replies = 0
        self.learnt_mac: bytes | None = None
        self.traffic_seen = False
        self.timer: Any = None


class PathProber:
    """Sends path-preference probes to every local VM for as long as its port exists
    (spec 2.4b) and notes the VM's answers: a reply or a gratuitous ARP from the VM's
    address is "traffic seen", and the MAC it came from is learnt. No I/O: the clock and
    ``send(vif, vrf, frame)`` are injected."""

    def __init__(self, clock: IReactorTime, send: Callable[[int, int, bytes], bool]) -> None:
        self._clock = clock
        self._send = send
        self.ports: dict[int, _Probed] = {}

    def port_up(self, vif: int, vrf: int, mac: bytes, ip: str | None,
                service_ip: str | None = None, vlan: int = -1) -> None:
        """Start probing the VM on ``vif``; a port already probed the same way goes on
        where it was (the vif is re-announced on any change of its fields)."""
        if not ip or ip == "0.0.0.0":
            self.port_down(vif)
            return
        tpa = ipaddress.IPv4Address(ip).packed
        spa = ipaddress.IPv4Address(service_ip).packed if service_ip else _ZERO_IP
        frame = probe(mac, spa, tpa, VRRP_MAC, vlan)
        old = self.ports.get(vif)
        if old is not None and (old.vrf, old.frame) == (vrf, frame):
            return
        self.port_down(vif)
        state = _Probed(vrf, mac, tpa, frame)
        self.ports[vif] = state
        self._fire(vif)

    def _fire(self, vif: int) -> None:
        state = self.ports.get(vif)
        if state is None:
            return
        if self._send(vif, state.vrf, state.frame):
            state.sent += 1
        state.timer = self._clock.callLater(self.interval(state), self._fire, vif)

    @staticmethod
    def interval(state: _Probed) -> float:
        if state.sent < PROBE_FAST_SENDS:
            return PROBE_INTERVAL
        if state.learnt_mac is not None and state.learnt_mac != state.mac:
            return PROBE_MOVED_INTERVAL
        return PROBE_SLOW_INTERVAL

    def received(self, vif: int, frame: bytes | memoryview) -> bool:
        """An ARP packet trapped from a VM vif; True when it is the VM speaking for its
        own address (a reply to a probe, or a gratuitous ARP)."""
        state = self.ports.get(vif)
        if state is None:
            return False
        try:
            eth = Ethernet.parse(frame)
            arp = ARP.parse(frame, eth.length)
        except PacketError:
            return False
        if arp.spa != state.ip or arp.sha == _ZERO_MAC or arp.sha[0] & 1:
            return False
        state.replies += 1
        state.traffic_seen = True
        state.learnt_mac = bytes(arp.sha)
        return True

    def state(self, vif: int) -> dict[str, Any] | None:
        """The introspect view of one port's probing."""
        s = self.ports.get(vif)
        if s is None:
            return None
        return {"probes_sent": s.sent, "replies": s.replies, "traffic_seen": s.traffic_seen,
                "learnt_mac": ":".join("%02x" % b for b in s.learnt_mac) if s.learnt_mac
                else None}

    def port_down(self, vif: int) -> None:
        state = self.ports.pop(vif, None)
        if state is not None and state.timer is not None and state.timer.active():
            state.timer.cancel()

    def stop(self) -> None:
        for vif in list(self.ports):
            self.port_down(vif)
