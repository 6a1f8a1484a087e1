"""The agent's most used introspect requests, answered in the Sandesh XML shape.

Scripts written against the real agent's ``http://<node>:8085/Snh_<Req>`` pages read a
response element (``type="sandesh"``) holding a ``list`` of structs whose fields carry a
``type`` attribute; this module writes the same shape from vrtwist's state.  The fields
served are documented in ``docs/introspect.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any
from xml.sax.saxutils import escape

from vrtwist.introspect.flows import MAX_PAGE, FlowTableSource, page
from vrtwist.introspect.web import Params, int_param

Field = tuple[str, str, Any]  # (name, sandesh type, value)


class Raw(str):
    """XML already built (a nested struct or list): written as it is."""


def _value(t: str, v: Any) -> str:
    if isinstance(v, Raw):
        return v
    if t == "bool":
        return "true" if v else "false"
    return escape(str(v))


def _struct(name: str, fields: Iterable[Field]) -> Raw:
    inner = "".join(f'<{n} type="{t}" identifier="{i}">{_value(t, v)}</{n}>'
                    for i, (n, t, v) in enumerate(fields, 1))
    return Raw(f"<{name}>{inner}</{name}>")


def response(resp: str, list_name: str, struct: str, rows: Iterable[Iterable[Field]],
             extra: Iterable[Field] = ()) -> bytes:
    """``<Resp type="sandesh"><list_name type="list"><list type="struct" size=N>...``"""
    items = [_struct(struct, r) for r in rows]
    more = "".join(f'<{n} type="{t}" identifier="{i}">{_value(t, v)}</{n}>'
                   for i, (n, t, v) in enumerate(extra, 2))
    body = (f'<?xml-stylesheet type="text/xsl" href="/universal_parse.xsl"?>'
            f'<{resp} type="sandesh"><{list_name} type="list" identifier="1">'
            f'<list type="struct" size="{len(items)}">{"".join(items)}</list>'
            f'</{list_name}>{more}<more type="bool" identifier="0">false</more></{resp}>')
    return body.encode()


class AgentPages:
    """The agent's ``Snh_*`` requests, one method each (see :func:`agent_pages`)."""

    def __init__(self, agent: Any, datapath: Any, flows: FlowTableSource) -> None:
        from vrtwist.agent import introspect  # the JSON views these pages reshape

        self.views = introspect
        self.agent = agent
        self.datapath = datapath
        self.flows = flows

    def itf(self, params: Params) -> bytes:
        name = params.get("name", "")
        uuid = params.get("uuid", "")
        rows = []
        for r in self.views.interfaces(self.agent, self.datapath):
            if name and name not in r["name"]:
                continue
            if uuid and uuid.lower() != r["uuid"]:
                continue
            rows.append([
                ("index", "i32", r["index"]), ("name", "string", r["name"]),
                ("uuid", "string", r["uuid"]),
                ("vrf_name", "string", r["vrf_name"] or "--ERROR--"),
                ("active", "string", "Active" if r["active"] else "Inactive"),
                ("ipv4_active", "string", "Active" if r["ip"] else "Inactive"),
                ("l2_active", "string", "L2 Active"), ("type", "string", r["type"]),
                ("ip_addr", "string", r["ip"] or "0.0.0.0"),
                ("ip6_addr", "string", r["ip6"] or "::"),
                ("mac_addr", "string", r["mac"]), ("label", "i32", r["label"]),
                ("l2_label", "i32", r["l2_label"]), ("vm_uuid", "string", r["vm_uuid"]),
                ("vm_name", "string", r["vm_name"]), ("vn_name", "string", r["vn"]),
                ("os_ifindex", "i32", r["os_index"]),
                ("in_pkts", "i64", r.get("rx_packets", 0)),
                ("in_bytes", "i64", r.get("rx_bytes", 0)),
                ("out_pkts", "i64", r.get("tx_packets", 0)),
                ("out_bytes", "i64", r.get("tx_bytes", 0)),
            ])
        return response("ItfResp", "itf_list", "ItfSandeshData", rows)

    def vrf_list(self, params: Params) -> bytes:
        name = params.get("name", "")
        rows = [[("name", "string", v["name"]), ("ucindex", "u32", v["vrf"]),
                 ("mcindex", "u32", v["vrf"]), ("l2index", "u32", v["vrf"]),
                 ("uc6index", "u32", v["vrf"]), ("vxlan_id", "u32", 0),
                 ("RD", "string", f"{self.agent.fabric_ip}:{v['vrf']}"),
                 ("vn", "string", v["name"].split(":")[-2] if v["vrf"] else ""),
                 ("route_count", "u32", v["routes"])]
                for v in self.views.vrfs(self.agent) if name in v["name"]]
        return response("VrfListResp", "vrf_list", "VrfSandeshData", rows)

    def inet4(self, params: Params) -> bytes:
        vrf = int_param(params, "vrf_index", 0)
        src = params.get("src_ip", "")
        plen = int_param(params, "prefix_len", -1, -1, 32)
        listing = self.views.routes(self.agent, vrf, 0, 1 << 30)["routes"]
        nhs = {n["id"]: n for n in self.views.nexthops(self.agent)}
        rows = []
        for r in listing:
            if r["family"] != "inet" or (src and r["prefix"] != src) or (
                    plen >= 0 and r["plen"] != plen):
                continue
            nh = nhs.get(r["nh_id"], {})
            path = _struct("PathSandeshData", [
                ("nh", "struct", _struct("NhSandeshData", [
                    ("type", "string", nh.get("type", "")), ("nh_index", "u32", r["nh_id"]),
                    ("vrf", "string", str(nh.get("vrf", ""))),
                    ("valid", "string", "true")])),
                ("label", "u32", r["label"]),
                ("peer", "string", "BGP" if r["source"] == "controller" else "LocalVmPort"),
            ])
            rows.append([("src_ip", "string", r["prefix"]), ("src_plen", "byte", r["plen"]),
                         ("src_vrf", "string", r["vrf_name"]),
                         ("path_list", "list",
                          Raw(f'<list type="struct" size="1">{path}</list>'))])
        return (response("Inet4UcRouteResp", "route_list", "RouteUcSandeshData", rows))

    def nh_list(self, params: Params) -> bytes:
        rows = [[("type", "string", n["type"]), ("ref_count", "u32", 1),
                 ("valid", "string", "true"), ("policy", "string", "disabled"),
                 ("nh_index", "u32", n["id"]), ("vrf", "string", str(n["vrf"])),
                 ("sip", "string", n.get("tun_sip", "")), ("dip", "string", n.get("tun_dip", "")),
                 ("itf", "string", str(n.get("oif", "")))]
                for n in self.views.nexthops(self.agent)]
        return response("NhListResp", "nh_list", "NhSandeshData", rows)

    def xmpp(self, params: Params) -> bytes:
        rows = [[("controller_ip", "string", p["controller"]), ("state", "string", p["state"]),
                 ("peer_name", "string", p["peer_name"]),
                 ("peer_address", "string", p["controller"]),
                 ("cfg_controller", "string", "Yes" if p["current"] else "No"),
                 ("xmpp_auth_type", "string", "TLS" if p["tls"] else "NIL"),
                 ("flap_count", "u32", max(0, p["sessions_established"] - 1))]
                for p in self.views.xmpp_peers(self.agent)]
        return response("AgentXmppConnectionStatus", "peer", "AgentXmppData", rows)

    def kflow(self, params: Params) -> bytes:
        start = int_param(params, "flow_idx", 0)
        view = self.flows.view()
        entries, nxt = page(view, start, MAX_PAGE) if view is not None else ([], None)
        rows = [[("index", "i32", e.index), ("rflow", "i32", e.rflow),
                 ("sip", "string", e.sip), ("sport", "u16", e.sport),
                 ("dip", "string", e.dip), ("dport", "u16", e.dport),
                 ("vrf_id", "u16", e.vrf), ("proto", "byte", e.proto),
                 ("action", "string", str(e.action)), ("flags", "string", hex(e.flags)),
                 ("d_vrf_id", "u16", e.dvrf), ("bytes", "u64", e.total_bytes),
                 ("pkts", "u64", e.total_packets), ("nh", "u32", e.nh_id)]
                for e in entries]
        return response("KFlowResp", "flow_list", "KFlowInfo", rows,
                        [("flow_handle", "string", str(nxt) if nxt is not None else "0")])


def agent_pages(agent: Any, datapath: Any, flows: FlowTableSource
                ) -> dict[str, Callable[[Params], bytes]]:
    pages = AgentPages(agent, datapath, flows)
    return {"ItfReq": pages.itf, "VrfListReq": pages.vrf_list, "Inet4UcRouteReq": pages.inet4,
            "NhListReq": pages.nh_list, "AgentXmppConnectionStatusReq": pages.xmpp,
            "KFlowReq": pages.kflow, "FetchAllFlowRecords": pages.kflow}

