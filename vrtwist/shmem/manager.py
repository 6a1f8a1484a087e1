"""Agent side of the flow table: program flows over ksync, read them from the mapping.

The real Agent (``flowtable_ksync.cc``) writes flows with ``vr_flow_req`` FLOW_SET and
reads their statistics straight from the mapped ``flow.shmem``; :class:`FlowManager`
does the same.  A forward/reverse pair costs two round trips: the forward flow and
the reverse flow (linked to the forward one by key, ``fr_rindex = -1`` with
``VR_RFLOW_VALID``) are bunched in one netlink message, then the forward flow is
updated to point back at the reverse one.

Any object with ``request(msg) -> Deferred[KsyncResponse]`` and
``request_many(msgs) -> list[Deferred]`` works as the client
(``vrtwist.ksync.client.KsyncClientProtocol``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from zope.interface import implementer

from vrtwist.logfields import Logger
from vrtwist.sandesh import schema
from vrtwist.shmem import layout as L
from vrtwist.shmem.entries import FlowEntry, port_to_wire
from vrtwist.shmem.interfaces import IFlowManager
from vrtwist.shmem.listing import FlowTableView

__all__ = ["FlowHandle", "FlowKey", "FlowManager", "FlowPair", "FlowSetError", "StaleFlowError"]


class _Client(Protocol):
    def request(self, msg: Any) -> Deferred[Any]: ...

    def request_many(self, msgs: Any) -> list[Deferred[Any]]: ...


class StaleFlowError(LookupError):
    """The entry behind a handle was deleted or reused (generation id changed)."""


class FlowSetError(Exception):
    """FLOW_SET refused: ``errno`` is the positive errno, ``index``/``gen_id`` from the reply."""

    def __init__(self, errno_: int, index: int, gen_id: int) -> None:
        import os

        super().__init__("vRouter(Response): %s (%d)" % (os.strerror(errno_), errno_))
        self.errno = errno_
        self.index = index
        self.gen_id = gen_id


@dataclass(frozen=True)
class FlowKey:
    """A flow's 5-tuple plus key next hop, with host-order ports and address strings."""

    sip: str
    dip: str
    proto: int
    sport: int
    dport: int
    nh_id: int

    @property
    def family(self) -> int:
        return L.AF_INET6 if ipaddress.ip_address(self.sip).version == 6 else L.AF_INET

    def reversed(self, nh_id: int | None = None) -> FlowKey:
        """The key of the return traffic (addresses and ports swapped)."""
        return FlowKey(
            self.dip,
            self.sip,
            self.proto,
            self.dport,
            self.sport,
            self.nh_id if nh_id is None else nh_id,
        )

    def _addr(self, prefix: str) -> dict[str, int]:
        s = ipaddress.ip_address(self.sip).packed
        d = ipaddress.ip_address(self.dip).packed
        if len(s) != len(d):
            raise ValueError("source and destination must be of one family")
        if len(s) == 4:
            return {
                prefix + "sip_l": int.from_bytes(s, "little"),
                prefix + "dip_l": int.from_bytes(d, "little"),
            }
        return {
            prefix + "sip_u": int.from_bytes(s[:8], "little"),
            prefix + "sip_l": int.from_bytes(s[8:], "little"),
            prefix + "dip_u": int.from_bytes(d[:8], "little"),
            prefix + "dip_l": int.from_bytes(d[8:], "little"),
        }

    def request_fields(self) -> dict[str, int]:
        """The ``fr_family``/``fr_flow_*`` fields of a vr_flow_req for this key."""
        f = {
            "fr_family": self.family,
            "fr_flow_proto": self.proto,
            "fr_flow_sport": port_to_wire(self.sport),
            "fr_flow_dport": port_to_wire(self.dport),
            "fr_flow_nh_id": self.nh_id,
        }
        f.update(self._addr("fr_flow_"))
        return f

    def rflow_fields(self) -> dict[str, int]:
        """The ``fr_rflow_*`` fields naming this key as the reverse flow."""
        f = {
            "fr_rflow_sport": port_to_wire(self.sport),
            "fr_rflow_dport": port_to_wire(self.dport),
            "fr_rflow_nh_id": self.nh_id,
        }
        f.update(self._addr("fr_rflow_"))
        return f


@dataclass(frozen=True)
class FlowHandle:
    """Where a flow lives: its index and the generation id it was created with."""

    index: int
    gen_id: int
    key: FlowKey
    rindex: int = -1


@dataclass(frozen=True)
class FlowPair:
    forward: FlowHandle
    reverse: FlowHandle


def _flow_response(objs: list[Any]) -> Any:
    for o in objs:
        if type(o).__name__ == "vr_flow_response":
            return o
    return None


@implementer(IFlowManager)
class FlowManager:
    """Creates, updates and deletes flows; reads them back from the shared mapping."""

    _log = Logger()

    def __init__(self, client: _Client, view: FlowTableView | None = None) -> None:
        self.client = client
        self.view = view

    @classmethod
    def open(cls, client: _Client) -> Deferred[FlowManager]:
        """Ask ``vr_flow_table_data`` for the file, map it read-only, return a manager."""

        async def go() -> FlowManager:
            resp = await client.request(schema.vr_flow_table_data(ftable_op=2))
            data = next(o for o in resp.objects if type(o).__name__ == "vr_flow_table_data")
            view = FlowTableView(data.ftable_file_path, int(data.ftable_size) or None)
            return cls(client, view)

        return Deferred.fromCoroutine(go())

    def close(self) -> None:
        if self.view is not None:
            self.view.close()
            self.view = None

    # -- requests ------------------------------------------------------------------
    @staticmethod
    def _request(
        key: FlowKey, index: int, gen: int, action: int, flags: int, options: dict[str, int]
    ) -> Any:
        f: dict[str, int] = {
            "fr_op": 0,
            "fr_index": index,
            "fr_gen_id": gen,
            "fr_action": action,
            "fr_flags": flags,
            "fr_ecmp_nh_index": 0xFFFFFFFF,
        }
        f.update(key.request_fields())
        for name, value in options.items():
            f[name if name.startswith("fr_") else "fr_" + name] = value
        if f.get("fr_flow_dvrf") and not f["fr_flags"] & L.FLAG_VRFT:
            f["fr_flags"] |= L.FLAG_VRFT
        return schema.vr_flow_req(**f)

    @staticmethod
    async def _set(d: Deferred[Any], key: FlowKey, rindex: int = -1) -> FlowHandle:
        from vrtwist.ksync.clientcore import KsyncError

        try:
            resp = await d
        except KsyncError as e:
            fr = _flow_response(e.objects)
            raise FlowSetError(
                e.errno, int(fr.fresp_index) if fr else -1, int(fr.fresp_gen_id) if fr else 0
            ) from e
        fr = _flow_response(resp.objects)
        if fr is None:
            raise FlowSetError(71, -1, 0)  # EPROTO: no vr_flow_response
        return FlowHandle(int(fr.fresp_index), int(fr.fresp_gen_id) & 0xFF, key, rindex)

    def create_pair(
        self, forward: FlowKey, reverse: FlowKey, action: int = L.ACTION_FORWARD, **options: int
    ) -> Deferred[FlowPair]:
        """Create both directions with ``action`` and link them (``fe_rflow`` both ways).

        ``options`` are vr_flow_req fields with or without the ``fr_`` prefix
        (``flow_vrf``, ``flow_dvrf``, ``src_nh_index``, ``drop_reason``, ``qos_id``, ...);
        ``reverse_<field>`` applies to the reverse flow only.
        """
        fwd_opts = {k: v for k, v in options.items() if not k.startswith("reverse_")}
        rev_opts = dict(fwd_opts)
        rev_opts.update(
            {k[len("reverse_") :]: v for k, v in options.items() if k.startswith("reverse_")}
        )
        rev_req = self._request(reverse, -1, 0, action, L.FLAG_ACTIVE | L.RFLOW_VALID, rev_opts)
        for name, value in forward.rflow_fields().items():
            setattr(rev_req, name, value)
        rev_req.fr_rindex = -1
        fwd_req = self._request(forward, -1, 0, action, L.FLAG_ACTIVE, fwd_opts)

        async def go() -> FlowPair:
            d_fwd, d_rev = self.client.request_many([fwd_req, rev_req])
            got: list[FlowHandle | Exception] = []
            for d, key, rindex in ((d_fwd, forward, -1), (d_rev, reverse, -2)):
                try:
                    got.append(await self._set(d, key, rindex))
                except Exception as e:  # noqa: BLE001 - kept; rollback re-raises
                    got.append(e)
            fwd, rev = got
            if isinstance(fwd, Exception) or isinstance(rev, Exception):
                for done in (fwd, rev):
                    if isinstance(done, FlowHandle):
                        await self._delete(done)
                raise fwd if isinstance(fwd, Exception) else rev  # type: ignore[misc]
            rev = replace(rev, rindex=fwd.index)
            linked = self._request(
                forward,
                fwd.index,
                fwd.gen_id,
                action,
                L.FLAG_ACTIVE | L.RFLOW_VALID,
                dict(fwd_opts, rindex=rev.index),
            )
            fwd = await self._set(self.client.request(linked), forward, rev.index)
            return FlowPair(fwd, rev)

        return Deferred.fromCoroutine(go())

    def update(self, handle: FlowHandle, action: int, **options: int) -> Deferred[FlowHandle]:
        """Change the action (and other fields) of one flow, keeping its reverse link."""
        flags = L.FLAG_ACTIVE | (L.RFLOW_VALID if handle.rindex >= 0 else 0)
        opts = dict(options)
        if handle.rindex >= 0:
            opts.setdefault("rindex", handle.rindex)
        req = self._request(handle.key, handle.index, handle.gen_id, action, flags, opts)

        async def go() -> FlowHandle:
            h = await self._set(self.client.request(req), handle.key, handle.rindex)
            return replace(h, rindex=handle.rindex)

        return Deferred.fromCoroutine(go())

    async def _delete(self, handle: FlowHandle) -> None:
        req = self._request(handle.key, handle.index, handle.gen_id, L.ACTION_DROP, 0, {})
        await self._set(self.client.request(req), handle.key)

    def delete(self, handle: FlowHandle) -> Deferred[None]:
        """Delete one flow (FLOW_SET without ACTIVE)."""
        return Deferred.fromCoroutine(self._delete(handle))

    # -- reading the mapping ------------------------------------------------------------
    def read(self, handle: FlowHandle) -> FlowEntry:
        """The live entry behind ``handle``; StaleFlowError if it was deleted or reused."""
        if self.view is None:
            raise RuntimeError("flow table not mapped: use FlowManager.open()")
        e = self.view.get(handle.index)
        if e is None or e.gen_id != handle.gen_id or e.flags & L.FLAG_EVICTED:
            raise StaleFlowError("flow %d (gen %d) is gone" % (handle.index, handle.gen_id))
        return e

    def read_stats(self, handle: FlowHandle) -> tuple[int, int]:
        """(bytes, packets) including the overflow bits, from the mapped table."""
        e = self.read(handle)
        return e.total_bytes, e.total_packets
