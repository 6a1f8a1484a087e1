"""``twistd vrouter --introspect``: /health, /metrics, the JSON views and the Snh_* XML
pages of a real agent process, scraped by the real Prometheus server when installed."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import quote

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SkipTest, TestCase

from tests.agent.helpers import port_body, tempdir
from tests.agent.procs import CONTROL_PORT_RE, Twistd, agent_args, logged_port, unused_tcp_port
from tests.polling import wait_until

PROMETHEUS = shutil.which("prometheus")


def get(port: int, path: str, method: str = "GET", body: Any = None,
        timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class AgentIntrospectTests(TestCase):
    def setUp(self) -> None:
        self.dir = tempdir(self)
        self.agent = Twistd(self.dir, "vrouter", agent_args(
            os.path.join(self.dir, "run"), os.path.join(self.dir, "state"), "--no-tap-check"),
            "agent")
        self.addCleanup(self.agent.stop)
        self.rest = self.agent.rest_port()
        self.port = self.agent.introspect_port()

    def add_port(self, n: int) -> dict[str, Any]:
        body = port_body(n)
        code, _, raw = get(self.rest, "/port", "POST", body)
        self.assertEqual((code, raw), (200, b"{}"))
        return body

    def test_health_json_and_xml(self) -> None:
        code, headers, raw = get(self.port, "/health")
        self.assertEqual(code, 200, raw)
        self.assertEqual(json.loads(raw), {"daemon": "vrouter", "live": True, "ready": True,
                                           "reasons": []})
        body = self.add_port(1)
        code, _, raw = get(self.port, "/api/ports")
        self.assertEqual([p["id"] for p in json.loads(raw)["ports"]], [body["id"]])
        code, _, raw = get(self.port, "/api/interfaces")
        rows = {r["name"]: r for r in json.loads(raw)["interfaces"]}
        self.assertEqual(rows["tapv1"]["uuid"], body["id"])
        self.assertEqual(rows["tapv1"]["ip"], body["ip-address"])
        vif = rows["tapv1"]["index"]
        # the XML shape scripts of the real introspect read
        code, headers, raw = get(self.port, "/Snh_ItfReq")
        self.assertEqual(code, 200)
        self.assertTrue(headers["content-type"].startswith("text/xml"))
        root = ET.fromstring(raw.split(b"?>", 1)[1])
        self.assertEqual((root.tag, root.get("type")), ("ItfResp", "sandesh"))
        itfs = {e.findtext("name"): e for e in root.iter("ItfSandeshData")}
        self.assertEqual(itfs["tapv1"].findtext("uuid"), body["id"])
        self.assertEqual(itfs["tapv1"].findtext("index"), str(vif))
        self.assertEqual(itfs["tapv1"].findtext("mac_addr"), body["mac-address"])
        self.assertEqual(itfs["tapv1"].findtext("ip_addr"), body["ip-address"])
        vrf = rows["tapv1"]["vrf"]
        code, _, raw = get(self.port, f"/Snh_Inet4UcRouteReq?vrf_index={vrf}")
        root = ET.fromstring(raw.split(b"?>", 1)[1])
        routes = {(r.findtext("src_ip"), r.findtext("src_plen")): r
                  for r in root.iter("RouteUcSandeshData")}
        vm_route = routes[(body["ip-address"], "32")]
        self.assertEqual(vm_route.findtext("src_vrf"), rows["tapv1"]["vrf_name"])
        self.assertEqual(vm_route.find("path_list/list/PathSandeshData/nh/NhSandeshData/"  # type: ignore[union-attr]
                                       "nh_index").text, str(rows["tapv1"]["l3_nh"]))
        code, _, raw = get(self.port, "/Snh_NhListReq")
        ids = {e.findtext("nh_index") for e in ET.fromstring(raw.split(b"?>", 1)[1]).iter(
            "NhSandeshData")}
        self.assertIn(str(rows["tapv1"]["l3_nh"]), ids)
        code, _, raw = get(self.port, "/Snh_VrfListReq")
        names = [e.findtext("name") for e in ET.fromstring(raw.split(b"?>", 1)[1]).iter(
            "VrfSandeshData")]
        self.assertIn(rows["tapv1"]["vrf_name"], names)
        code, _, raw = get(self.port, "/Snh_AgentXmppConnectionStatusReq")
        self.assertEqual((code, ET.fromstring(raw.split(b"?>", 1)[1]).tag),
                         (200, "AgentXmppConnectionStatus"))
        # the page and its files, served from the package with a strict policy
        code, headers, raw = get(self.port, "/")
        self.assertEqual((code, headers["content-type"]), (200, "text/html; charset=utf-8"))
        self.assertIn("default-src 'self'", headers["content-security-policy"])
        self.assertIn(b'<script src="app.js">', raw)
        code, headers, raw = get(self.port, "/app.js")
        self.assertEqual((code, headers["content-type"]),
                         (200, "text/javascript; charset=utf-8"))
        code, _, raw = get(self.port, "/Snh_KFlowReq")
        root = ET.fromstring(raw.split(b"?>", 1)[1])
        self.assertEqual((root.tag, root.findtext("flow_handle")), ("KFlowResp", "0"))

    def test_metrics_follow_the_state_and_are_monotonic(self) -> None:
        code, headers, raw = get(self.port, "/metrics")
        self.assertEqual(code, 200)
        self.assertTrue(headers["content-type"].startswith("text/plain"))
        first = samples(raw.decode())
        self.assertEqual(first[("vrouter_agent_ports", ())], 0)
        self.add_port(1)
        self.add_port(2)
        get(self.rest, "/port/" + port_body(3)["id"])  # 404
        second = samples(get(self.port, "/metrics")[2].decode())
        self.assertEqual(second[("vrouter_agent_ports", ())], 2)
        self.assertEqual(second[("vrouter_agent_rest_requests_total",
                                 (("code", "200"), ("endpoint", "port"), ("method", "POST")))], 2)
        self.assertEqual(second[("vrouter_agent_rest_requests_total",
                                 (("code", "404"), ("endpoint", "port"), ("method", "GET")))], 1)
        # the embedded datapath's end of pkt0 is there too
        self.assertIn(("vrouter_dp_pkt0_total", (("event", "traps"),)), second)
        vifs = {k[1] for k in second if k[0] == "vrouter_vif_packets_total"}
        self.assertIn((("direction", "rx"), ("name", "tapv2"), ("vif", "4")), vifs)
        for key, value in first.items():
            if key[0].endswith("_total"):
                self.assertGreaterEqual(second.get(key, -1), value, key)
        self.assertGreater(second[("vrouter_agent_ksync_requests_total",
                                   (("message", "vr_interface_req"),))],
                           first.get(("vrouter_agent_ksync_requests_total",
                                      (("message", "vr_interface_req"),)), 0))

    def test_bad_input(self) -> None:
        code, headers, raw = get(self.port, "/nothing/here")
        self.assertEqual((code, headers["content-type"]),
                         (404, "application/json; charset=utf-8"))
        self.assertIn("error", json.loads(raw))
        code, _, raw = get(self.port, "/api/nope")
        self.assertEqual(code, 404)
        self.assertIn("summary", json.loads(raw)["views"])
        code, _, raw = get(self.port, "/Snh_NoSuchReq")
        self.assertEqual(code, 404)
        code, _, raw = get(self.port, "/metrics", method="POST")
        self.assertEqual(code, 405)
        code, _, raw = get(self.port, "/api/flows?start=" + "9" * 200)
        self.assertEqual(code, 400)
        self.assertIn("start", json.loads(raw)["error"])
        code, _, raw = get(self.port, "/api/flows?limit=1000000")
        self.assertEqual(code, 400)
        code, _, raw = get(self.port, "/api/routes?x=" + "a" * 5000)
        self.assertEqual(code, 400)
        self.assertIn("query", json.loads(raw)["error"])
        code, _, raw = get(self.port, "/api/ports?uuid=" + quote("<script>"))
        self.assertEqual(code, 404)
        # a request line far past any sane length is cut off by the HTTP layer itself
        try:
            code, _, _ = get(self.port, "/api/routes?x=" + "a" * 70_000)
        except (http.client.RemoteDisconnected, ConnectionResetError):
            code = 0
        self.assertNotEqual(code, 200)
        # and the server still answers everything after all that
        code, _, raw = get(self.port, "/health")
        self.assertEqual(code, 200)
        code, _, raw = get(self.port, "/api/flows")
        self.assertEqual((code, json.loads(raw)["flows"]), (200, []))

    def test_prometheus_server_scrapes_it(self) -> None:
        if PROMETHEUS is None:
            raise SkipTest("the prometheus server is not installed (Debian: prometheus)")
        self.add_port(1)
        web = unused_tcp_port()  # the prometheus server takes a fixed address
        cfg = os.path.join(self.dir, "prometheus.yml")
        with open(cfg, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                    "scrape_configs:\n  - job_name: vrouter\n    static_configs:\n"
                    f"      - targets: ['127.0.0.1:{self.port}']\n")
        log = open(os.path.join(self.dir, "prometheus.log"), "wb")
        self.addCleanup(log.close)
        proc = subprocess.Popen([PROMETHEUS, f"--config.file={cfg}",
                                 f"--storage.tsdb.path={os.path.join(self.dir, 'tsdb')}",
                                 f"--web.listen-address=127.0.0.1:{web}"],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log)

        def stop() -> None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.addCleanup(stop)

        def query(q: str) -> list[Any] | None:
            if proc.poll() is not None:
                raise AssertionError(open(log.name).read())
            try:
                code, _, raw = get(web, "/api/v1/query?query=" + quote(q), timeout=5)
            except OSError:
                return None
            if code != 200:
                return None
            result = json.loads(raw)["data"]["result"]
            return result or None

        up = wait_until(lambda: query("up"), "prometheus scraping the agent", 60)
        assert up is not None  # wait_until returns only a true value
        self.assertEqual(up[0]["value"][1], "1")
        ports = wait_until(lambda: query("vrouter_agent_ports"), "vrouter_agent_ports", 30)
        assert ports is not None
        self.assertEqual(ports[0]["value"][1], "1")
        _code, _, raw = get(web, "/api/v1/targets")
        target = json.loads(raw)["data"]["activeTargets"][0]
        self.assertEqual((target["health"], target["lastError"]), ("up", ""))
        # counters only go up between scrapes
        before = float(query("vrouter_agent_rest_requests_total")[0]["value"][1])  # type: ignore[index]
        self.add_port(2)
        time.sleep(2.5)
        after = wait_until(lambda: query("sum(vrouter_agent_rest_requests_total)"), "sum", 10)
        assert after is not None
        self.assertGreater(float(after[0]["value"][1]), before)
        resets = query("resets(vrouter_agent_ksync_requests_total[1m])") or []
        self.assertTrue(all(r["value"][1] == "0" for r in resets), resets)


class ControllerSessionTests(TestCase):
    """An agent and a control node, both introspected: the XMPP session seen from both
    ends, in metrics and in the agent's XML page."""

    def test_xmpp_session_state(self) -> None:
        d = tempdir(self)
        cn = Twistd(d, "vrouter-control", ["--xmpp", "tcp:0:interface=127.0.0.1",
                                           "--introspect", "tcp:0:interface=127.0.0.1"], "cn")
        self.addCleanup(cn.stop)
        cn_port = cn.introspect_port()
        xmpp = wait_until(lambda: logged_port(cn.log, CONTROL_PORT_RE), "the XMPP port")
        agent = Twistd(d, "vrouter", agent_args(
            os.path.join(d, "run"), os.path.join(d, "state"), "--no-tap-check",
            "--controller", f"tcp:127.0.0.1:{xmpp}", "--fabric-ip", "127.0.0.2",
            "--hostname", "obnode"), "agent")
        self.addCleanup(agent.stop)
        rest, port = agent.rest_port(), agent.introspect_port()
        peer = f"tcp:127.0.0.1:{xmpp}"

        def session_up() -> bool:
            m = samples(get(port, "/metrics")[2].decode())
            return m.get(("vrouter_xmpp_session_up", (("peer", peer),))) == 1
        wait_until(session_up, "the agent's XMPP session", 30)
        code, _, raw = get(port, "/health")
        self.assertEqual((code, json.loads(raw)["ready"]), (200, True))
        code, _, raw = get(port, "/Snh_AgentXmppConnectionStatusReq")
        data = next(ET.fromstring(raw.split(b"?>", 1)[1]).iter("AgentXmppData"))
        self.assertEqual((data.findtext("controller_ip"), data.findtext("state")),
                         (peer, "Established"))
        code, _, raw = get(rest, "/port", "POST", port_body(1))
        self.assertEqual(code, 200)

        def routes_at_cn() -> float | None:
            m = samples(get(cn_port, "/metrics")[2].decode())
            n = m.get(("vrouter_control_routes", (("agent", "obnode"),)))
            return n if n else None
        wait_until(routes_at_cn, "the control node to hold the agent's routes", 30)
        m = samples(get(cn_port, "/metrics")[2].decode())
        self.assertEqual(m[("vrouter_control_xmpp_sessions", ())], 1)
        self.assertEqual(m[("vrouter_control_xmpp_session_up", (("agent", "obnode"),))], 1)
        am = samples(get(port, "/metrics")[2].decode())
        self.assertGreaterEqual(am[("vrouter_xmpp_routes_published", ())], 1)
        self.assertGreaterEqual(am[("vrouter_xmpp_sessions_established_total", ())], 1)
        code, _, raw = get(cn_port, "/api/peers")
        self.assertEqual([p["agent"] for p in json.loads(raw)["peers"]], ["obnode"])
        # the control node goes away: the agent says so, in /health and the metric
        cn.stop()
        wait_until(lambda: not session_up() or None, "the session to be seen down", 30)
        code, _, raw = get(port, "/health")
        self.assertEqual(code, 503)
        self.assertIn("no XMPP session to a control node", json.loads(raw)["reasons"])
