"""Routes learnt from the control node, turned into datapath programming calls.

The control node sends inet, inet6 and EVPN items separately; the datapath wants one
route per prefix (tunnel next hop + label) plus a bridge entry for the VM's MAC.  This
object merges the items per ``(vrf, prefix)``, picks the encapsulation by priority, keeps
graceful-restart stale marks, and calls an ``IRouteProgrammer`` (the agent's datapath
model: it shares tunnel next hops by remote node and encapsulation, with reference counts,
and turns everything into ksync requests) only when the wanted state of a prefix changes.
It does no I/O and knows nothing about XMPP sessions.
"""

from __future__ import annotations

from typing import NamedTuple

from vrtwist.logfields import Logger

from .interfaces import IRouteProgrammer as IRemoteRouteSink
from .stanzas import AFI_L2VPN, RouteEntry

__all__ = ["DEFAULT_ENCAP_PRIORITY", "IRemoteRouteSink", "Programmed", "RemoteRouteTable"]

#: The real agent's default encapsulation priority (global-vrouter-config).
DEFAULT_ENCAP_PRIORITY = ("udp", "gre", "vxlan")

Family = tuple[int, int]
ItemKey = tuple[str, Family, str]  # (vrf, (afi, safi), item id)
PrefixKey = tuple[str, str]  # (vrf, "addr/len")


class Programmed(NamedTuple):
    """What is installed for one prefix (a named tuple: one per learnt route)."""

    nexthop: str
    label: int
    encap: str
    mac: str | None
    #: the EVPN item's label: the far node's L2 label (MPLS) or the network's VNI (VXLAN)
    l2_label: int | None = None


class RemoteRouteTable:
    """Items and retracts in, minimal ``addRemoteRoute``/``deleteRemoteRoute`` calls out."""

    _log = Logger()

    def __init__(
        self,
        sink: IRemoteRouteSink,
        encap_priority: tuple[str, ...] = DEFAULT_ENCAP_PRIORITY,
    ) -> None:
        self.sink = sink
        self.encap_priority = encap_priority
        self._items: dict[ItemKey, RouteEntry] = {}
        self._by_prefix: dict[PrefixKey, set[ItemKey]] = {}
        self._stale: set[ItemKey] = set()
        self.programmed: dict[PrefixKey, Programmed] = {}
        self.errors = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def stale_count(self) -> int:
        return len(self._stale)

    # -- updates ------------------------------------------------------------------------

    def reach(self, vrf: str, family: Family, entries: tuple[RouteEntry, ...]) -> None:
        """Items received for ``vrf``: add or replace each one."""
        touched: dict[PrefixKey, None] = {}  # in arrival order
        items = self._items
        by_prefix = self._by_prefix
        stale = self._stale
        for entry in entries:
            if entry.afi == AFI_L2VPN:
                item_id = entry.item_id
                pkey = _prefix_key(vrf, entry)
            else:
                item_id = entry.address
                pkey = (vrf, item_id)
            key = (vrf, family, item_id)
            if stale:
                stale.discard(key)
            old = items.get(key)
            if old is not None:
                if old == entry:
                    continue
                old_pkey = _prefix_key(vrf, old)
                if old_pkey != pkey and old_pkey is not None:
                    self._unlink(key, old_pkey)
                    touched[old_pkey] = None
            items[key] = entry
            if pkey is not None:
                keys = by_prefix.get(pkey)
                if keys is None:
                    by_prefix[pkey] = {key}
                else:
                    keys.add(key)
                touched[pkey] = None
        for pkey in touched:
            self._reprogram(pkey)

    def retract(self, vrf: str, family: Family, item_ids: tuple[str, ...]) -> None:
        touched: set[PrefixKey] = set()
        for item_id in item_ids:
            key = (vrf, family, item_id)
            entry = self._items.pop(key, None)
            self._stale.discard(key)
            if entry is None:
                continue
            pkey = _prefix_key(vrf, entry)
            if pkey is not None:
                self._unlink(key, pkey)
                touched.add(pkey)
        for pkey in touched:
            self._reprogram(pkey)

    def drop_vrf(self, vrf: str) -> int:
        """Forget every route of ``vrf`` (its last local port went, we unsubscribed)."""
        keys = [k for k in self._items if k[0] == vrf]
        by_family: dict[Family, list[str]] = {}
        for _, family, item_id in keys:
            by_family.setdefault(family, []).append(item_id)
        for family, ids in by_family.items():
            self.retract(vrf, family, tuple(ids))
        return len(keys)

    def mark_all_stale(self) -> int:
        """The session dropped: everything learnt is kept, but stale until re-advertised."""
        self._stale = set(self._items)
        return len(self._stale)

    def sweep_stale(self) -> int:
        """Remove what the new session did not re-advertise (End-of-RIB or stale timer)."""
        stale, self._stale = self._stale, set()
        by_vrf_family: dict[tuple[str, Family], list[str]] = {}
        for vrf, family, item_id in stale:
            by_vrf_family.setdefault((vrf, family), []).append(item_id)
        for (vrf, family), ids in by_vrf_family.items():
            self.retract(vrf, family, tuple(ids))
        return len(stale)

    # -- programming --------------------------------------------------------------------

    def _unlink(self, key: ItemKey, pkey: PrefixKey | None) -> None:
        if pkey is None:
            return
        keys = self._by_prefix.get(pkey)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_prefix[pkey]

    def _choose(self, entry: RouteEntry) -> tuple[str, int, str] | None:
        for nh in entry.next_hops:
            for encap in self.encap_priority:
                if encap in nh.encapsulations:
                    return nh.address, nh.label, encap
        return None

    def _wanted(self, pkey: PrefixKey) -> Programmed | None:
        inet: tuple[str, int, str] | None = None
        evpn: tuple[str, int, str] | None = None
        mac: str | None = None
        items = self._items
        for key in self._by_prefix.get(pkey, ()):
            entry = items[key]
            chosen = self._choose(entry)
            if chosen is None:
                continue
            if entry.afi == AFI_L2VPN:
                evpn, mac = chosen, entry.mac
            else:
                inet = chosen
        best = inet or evpn
        if best is None:
            return None
        l2 = evpn[1] if evpn is not None else None
        label = best[1]
        if best[2] == "vxlan" and l2 is not None:
            label = l2  # over VXLAN a routed packet, too, is carried with the network's VNI
        return Programmed(best[0], label, best[2], mac, l2)

    def _reprogram(self, pkey: PrefixKey) -> None:
        want = self._wanted(pkey)
        have = self.programmed.get(pkey)
        if want == have:
            return
        vrf, prefix = pkey
        addr, _, plen = prefix.partition("/")
        try:
            if want is None:
                del self.programmed[pkey]
                self.sink.deleteRemoteRoute(vrf, addr, int(plen))
            else:
                if want.l2_label is None or want.l2_label == want.label:
                    self.sink.addRemoteRoute(vrf, addr, int(plen), *want[:4])
                else:
                    self.sink.addRemoteRoute(vrf, addr, int(plen), *want[:4],
                                             l2_label=want.l2_label)
                self.programmed[pkey] = want
        except (KeyError, ValueError) as exc:
            self.errors += 1
            self.programmed.pop(pkey, None)
            self._log.warn(
                "cannot program {prefix} in {vrf}: {error}", prefix=prefix, vrf=vrf, error=exc
            )


def _prefix_key(vrf: str, entry: RouteEntry) -> PrefixKey | None:
    address = entry.address
    if entry.afi == AFI_L2VPN and (not address or address.startswith("0.0.0.0/")):
        return None  # a MAC-only EVPN route has no prefix to program
    return (vrf, address)
