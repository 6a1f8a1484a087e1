"""The flow trap's hot path (``FlowSetup.trap_ipv4`` and the pair written from its
values) leaves what the general path (parse, ``analyse``, two request mappings) leaves:
the same shared-memory entries, counters, pairs and released packets."""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.agent.test_packet_services import Node
from vrtwist.agent.packet.flows import FlowDecision, FlowKey, FlowSetup
from vrtwist.packet.headers import ETH_P_IP, IPPROTO_TCP, IPPROTO_UDP, Ethernet, IPv4
from vrtwist.pkt0 import constants as K
from vrtwist.pkt0.codec import AgentHeader
from vrtwist.shmem import layout as L

VM1_MAC = bytes.fromhex("020000000001")
VRRP = bytes.fromhex("00005e000100")


def _ip(text: str) -> bytes:
    return bytes(int(x) for x in text.split("."))


def l4_frame(proto: int, sip: str, dip: str, sport: int, dport: int, tcp_flags: int = 0x02,
             options: bytes = b"", frag: int = 0, vlan: int | None = None,
             total: int | None = None) -> bytes:
    """A TCP or UDP packet from VM1 (tagged when ``vlan`` is given)."""
    if proto == IPPROTO_TCP:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, tcp_flags, 65535, 0, 0)
    else:
        l4 = struct.pack("!HHHH", sport, dport, 8, 0)
    tlen = 20 + len(options) + len(l4) if total is None else total
    ip = IPv4(_ip(sip), _ip(dip), proto, tlen, 1, frag=frag, options=options).pack()
    eth = Ethernet(VRRP, VM1_MAC, ETH_P_IP, () if vlan is None else (vlan,)).pack()
    return eth + ip + l4


def _state(n: Node) -> tuple[Any, ...]:
    pairs = [(i, p.fwd_index, p.fwd_gen, p.forward, p.rev_index, p.rev_gen, p.reverse,
              p.decision) for i, p in n.flows.pairs.items()]  # fmt: skip
    return (n.flows.counters, n.services.counters, pairs, bytes(n.world.flows.buf),
            n.world.flows.counters, list(n.world.out.frames), n.flows._pending)


def _nodes() -> tuple[Node, Node, list[bool]]:
    """Two identical nodes; the second's flow setup never takes the hot path. Returns
    the first's hot-path answers too."""
    fast, slow = Node(), Node()
    fast.world.flows._hashrnd = slow.world.flows._hashrnd = 12345
    taken: list[bool] = []
    hot = fast.flows.trap_ipv4

    def watch(hdr: AgentHeader, frame: Any) -> bool:
        taken.append(hot(hdr, frame))
        return taken[-1]

    fast.flows.trap_ipv4 = watch  # type: ignore[method-assign]
    slow.flows.trap_ipv4 = lambda hdr, frame: False  # type: ignore[method-assign]
    return fast, slow, taken


class PipelineTests(SynchronousTestCase):
    """Packets from VM1 through the real pipeline, trapped, set up, released."""

    def test_same_as_general_path(self) -> None:
        fast, slow, taken = _nodes()
        frames = [
            l4_frame(IPPROTO_TCP, "10.1.1.3", "10.1.1.4", 1000, 80),
            l4_frame(IPPROTO_TCP, "10.1.1.3", "10.1.1.4", 1001, 80, tcp_flags=0x12),  # ACK
            l4_frame(IPPROTO_UDP, "10.1.1.3", "10.1.1.4", 1002, 53),
            l4_frame(IPPROTO_TCP, "10.1.1.3", "192.0.2.77", 1003, 80),  # no route: short
            l4_frame(IPPROTO_TCP, "10.1.1.3", "10.1.1.4", 1004, 80, options=b"\x01" * 4),
            l4_frame(IPPROTO_TCP, "10.1.1.3", "10.1.1.4", 1000, 80),  # a hit now
        ]
        for node in (fast, slow):
            for f in frames:
                node.world.pipeline.receive(fast.vif_of(1), f)
        self.assertEqual(_state(fast), _state(slow))
        self.assertEqual(taken, [True, True, True, True, False])
        self.assertEqual(fast.flows.counters.pairs, 4)
        self.assertEqual(fast.flows.counters.short_flows, 1)
        acks = [p.decision.tcp_ack for p in fast.flows.pairs.values() if p.decision]
        self.assertEqual(acks.count(True), 1)
        self.assertEqual(len(fast.world.out.on(fast.vif_of(2))), 5)


class TrapTests(SynchronousTestCase):
    """Traps handed to the agent's services as they are, odd ones included."""

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.tuples(
        st.sampled_from([IPPROTO_TCP, IPPROTO_UDP, 1, 47]),
        st.sampled_from(["10.1.1.4", "192.0.2.1", "192.0.2.77"]),
        st.sampled_from([0, 0, 0x2000, 0x0001, 0x4000]),
        st.sampled_from([None, None, None, 20, 22, 23, 24, 10]),
        st.sampled_from([None, None, None, 5]),
        st.sampled_from([0, 0, 0, 10, 30, 47, 48]),
        st.sampled_from([K.AGENT_TRAP_FLOW_MISS, K.AGENT_TRAP_FLOW_ACTION_HOLD]),
        st.sampled_from([0, 0, 7]),
    ), max_size=6))  # fmt: skip
    def test_same_as_general_path(self, traps: list[tuple[Any, ...]]) -> None:
        """Fragments, short totals, truncated frames, tags, other protocols, tunnel
        packets to the fabric address, unknown entries and duplicates: the hot path
        takes only what it can read and does what the general path does."""
        fast, slow, _ = _nodes()
        for node in (fast, slow):
            node.flows.fabric = lambda: (0, _ip("192.0.2.1"))
            for proto, dip, frag, total, vlan, cut, cmd, index in traps:
                f = bytearray(l4_frame(
                    proto if proto in (IPPROTO_TCP, IPPROTO_UDP) else IPPROTO_UDP,
                    "10.1.1.3", dip, 1234, 80, frag=frag, vlan=vlan, total=total))
                if proto not in (IPPROTO_TCP, IPPROTO_UDP):
                    f[14 + 4 * (vlan is not None) + 9] = proto
                frame = bytes(f[:cut] if cut else f)
                hdr = AgentHeader(fast.vif_of(1), 1, cmd, index, 5, 0, 0, 0, 0)
                node.services.trap_received(hdr, memoryview(frame))
        self.assertEqual(_state(fast)[:3], _state(slow)[:3])


_PORT = st.integers(0, 0xFFFF)
_ADDR = st.binary(min_size=4, max_size=4)
_KEY = st.builds(FlowKey, _ADDR, _ADDR, st.sampled_from([1, 6, 17]), _PORT, _PORT,
                 st.integers(0, 100))  # fmt: skip


class PairValuesTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(_KEY, _KEY, st.booleans(), st.sampled_from([L.ACTION_FORWARD, L.ACTION_DROP]),
           st.sampled_from([-1, L.ACTION_DROP]), st.integers(0, 300), st.integers(0, 0xFFFF),
           st.integers(0, 1 << 20), st.integers(0, 0xFFFF), st.integers(0, 0xFF))  # fmt: skip
    def test_values_are_the_requests(self, fwd: FlowKey, other: FlowKey, mirrored: bool,
                                     action: int, raction: int, drop: int, vrf: int,
                                     nh: int, index: int, gen: int) -> None:
        """``pair_values`` is the values of the two request mappings, in their order,
        whether or not the reverse key shares the forward's address objects."""
        rev = FlowKey(fwd.dip, fwd.sip, fwd.proto, fwd.dport, fwd.sport, 9) if mirrored else other
        d = FlowDecision(fwd, rev, action, drop, vrf, vrf ^ 1, nh, nh + 1, raction, drop + 1)
        r, f = FlowSetup.pair_values(index, gen, d)
        self.assertEqual(r, tuple(FlowSetup._reverse_request(index, d).values()))
        self.assertEqual(f, tuple(FlowSetup._forward_request(index, gen, d, -1).values()))
