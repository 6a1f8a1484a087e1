"""End to end: ``twistd -n vrouter`` subprocesses driven by vrouter-port-control and HTTP,
the datapath read back over ksync from a separate session."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import threading
import time
from typing import Any

from twisted.trial.unittest import TestCase

from tests.agent.dpview import snapshot, vif_names
from tests.agent.helpers import SAMPLE, port_body, tempdir
from tests.agent.procs import BIN, SMALL_TABLES, Twistd, agent_args, port_control
from tests.polling import wait_until


def http_call(port: int, method: str, path: str, body: Any = None) -> tuple[int, str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data,
                     headers={"Content-Type": "application/json"} if data else {})
        r = conn.getresponse()
        raw = r.read()
        return r.status, r.reason, json.loads(raw) if raw else None
    finally:
        conn.close()


def utility(name: str, *args: str) -> str:
    """Run a vRouter utility (``vif``, ``nh``, ``rt``, ``mpls``) and return its stdout."""
    r = subprocess.run([os.path.join(BIN, name), *args], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, (name, args, r.stdout, r.stderr)
    return r.stdout


def control_args(port: int, json_dir: str, body: dict[str, Any], *extra: str) -> list[str]:
    return ["--oper", "add", "--uuid", body["id"], "--instance_uuid", body["instance-id"],
            "--vn_uuid", body["vn-id"].replace("-", ""), "--vm_project_uuid",
            body["vm-project-id"], "--ip_address", body["ip-address"], "--ipv6_address=",
            "--mac", body["mac-address"], "--tap_name", body["system-name"],
            "--vm_name", body["display-name"], "--rx_vlan_id=-1", "--tx_vlan_id", "-1",
            "--agent_port", str(port), "--port_json_path", json_dir, *extra]


class EmbeddedAgentTests(TestCase):
    """One embedded agent; ports added with the real script's options."""

    def setUp(self) -> None:
        self.dir = tempdir(self)
        self.run_dir = os.path.join(self.dir, "run")
        self.state = os.path.join(self.dir, "state")
        self.agent = Twistd(self.dir, "vrouter",
                            agent_args(self.run_dir, self.state, "--no-tap-check"), "agent")
        self.addCleanup(self.agent.stop)
        self.port = self.agent.rest_port()

    def test_port_control_add_then_delete(self) -> None:
        json_dir = os.path.join(self.dir, "json")
        b = port_body(1)
        r = port_control(*control_args(self.port, json_dir, b))
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(json_dir, b["id"])) as f:
            self.assertEqual(json.load(f)["mac-address"], b["mac-address"])
        snap = wait_until(lambda: (s := snapshot(self.run_dir)) and
                          any(v[0] == "tapv1" for v in s["vifs"].values()) and
                          s["routes"] and s["bridge"] and s, "the port in the datapath")
        assert snap  # wait_until returns only a true value
        idx = next(i for i, v in snap["vifs"].items() if v[0] == "tapv1")
        _name, vrf, nh = snap["vifs"][idx]
        self.assertEqual(snap["nhs"][nh][3], idx)  # interface NH points at the vif
        label = next(lbl for lbl, n in snap["labels"].items() if n == nh)
        self.assertEqual(snap["routes"][(vrf, bytes([10, 0, 0, 1]), 32)], (nh, label))
        self.assertIn((vrf, bytes.fromhex("020000000001")), snap["bridge"])
        status, reason, body = http_call(self.port, "GET", f"/port/{b['id']}")
        self.assertEqual((status, reason, body["system-name"]), (200, "OK", "tapv1"))
        # what the vRouter utilities print about it
        out = utility("vif", "--sock-dir", self.run_dir, "--list")
        self.assertIn(f"vif0/{idx}      Virtual: tapv1 NH: {nh}", out)
        self.assertIn("Type:Virtual HWaddr:00:00:5e:00:01:00 IPaddr:10.0.0.1", out)
        self.assertIn(f"Vrf:{vrf} Mcast Vrf:{vrf} Flags:PL3L2D", out)
        out = utility("nh", "--sock-dir", self.run_dir, "--list")
        self.assertIn("Encap Data: 02 00 00 00 00 01 00 00 5e 00 01 00 08 00", out)
        self.assertIn("Type:Receive", out)
        self.assertIn("Type:Resolve", out)
        out = utility("rt", "--sock-dir", self.run_dir, "--dump", str(vrf))
        # label valid, and proxied ARP: the route carries the VM's MAC
        self.assertRegex(out, rf"10\.0\.0\.1/32 +32 +LP +{label} +{nh} ")
        out = utility("rt", "--sock-dir", self.run_dir, "--dump", str(vrf), "--family",
                      "bridge")
        # the bridge entry carries the port's L2 label, which leads to its L2 next hop
        found = re.search(r"2:0:0:0:0:1 +L +(\d+) ", out)
        assert found is not None, out
        l2_label = int(found.group(1))
        self.assertNotEqual(l2_label, label)
        out = utility("mpls", "--sock-dir", self.run_dir, "--dump")
        self.assertRegex(out, rf" +{label} +{nh}\n")
        self.assertRegex(out, rf" +{l2_label} +{snap['labels'][l2_label]}\n")
        self.assertEqual(snap["nhs"][snap["labels"][l2_label]][1:4:2], (7, idx))  # AF_BRIDGE

        r = port_control("--oper", "delete", "--uuid", b["id"], "--agent_port", str(self.port),
                         "--port_json_path", json_dir)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertFalse(os.path.exists(os.path.join(json_dir, b["id"])))
        wait_until(lambda: "tapv1" not in vif_names(self.run_dir), "the vif to go")
        snap = snapshot(self.run_dir)
        self.assertEqual(snap["labels"], {})
        self.assertEqual(snap["routes"], {})
        self.assertEqual(snap["bridge"], {})
        self.assertEqual(http_call(self.port, "GET", f"/port/{b['id']}")[0], 404)

    def test_errors_over_a_real_socket(self) -> None:
        status, reason, body = http_call(self.port, "POST", "/port",
                                         dict(SAMPLE, **{"ip-address": "11.0.0"}))
        self.assertEqual((status, reason), (400, "Bad Request"))
        self.assertIn("ip-address", body["error"])
        status, reason, body = http_call(self.port, "GET", f"/port/{SAMPLE['id']}")
        self.assertEqual((status, reason), (404, "Not Found"))
        # the agent refuses the port: exit code 4, and the agent still serves
        r = port_control(*control_args(self.port, os.path.join(self.dir, "j"),
                                       port_body(2, **{"mac-address": "01:00:00:00:00:01"})))
        self.assertEqual(r.returncode, 4)
        self.assertIn("multicast", r.stdout + r.stderr)
        self.assertEqual(http_call(self.port, "POST", "/port", SAMPLE)[0], 200)

    def test_port_control_arguments(self) -> None:
        r = port_control("--oper", "add")  # --uuid missing
        self.assertEqual(r.returncode, 1)
        r = port_control("--oper", "add", "--uuid", "x" * 5)
        self.assertEqual(r.returncode, 1)
        self.assertIn("not a uuid", r.stderr)
        r = port_control(*control_args(self.port, os.path.join(self.dir, "j"), port_body(3),
                                       "--rx_vlan_id", "abc"))
        self.assertEqual(r.returncode, 1)
        r = port_control(*control_args(self.port, os.path.join(self.dir, "j"), port_body(3),
                                       "--vif_type", "VhostUser"))
        self.assertEqual(r.returncode, 1)  # VhostUser without a socket
        self.assertIsNone(wait_until(lambda: http_call(self.port, "GET",
                                                       f"/port/{port_body(3)['id']}")[0]
                                     == 404 or None, "no port", 5) and None)


class AgentDownTests(TestCase):
    def test_add_with_the_agent_down_writes_the_file_and_exits_0(self) -> None:
        d = tempdir(self)
        json_dir = os.path.join(d, "ports")
        b = port_body(5)
        # no file to write: the port is lost, and the script says so (exit 1)
        r = port_control(*control_args(1, json_dir, b, "--no_persist"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("--no_persist: nothing was saved, the port is not added", r.stdout + r.stderr)
        # a directory no agent reads: said too, and nothing pretends otherwise
        elsewhere = os.path.join(d, "elsewhere")
        r = port_control(*control_args(1, elsewhere, b))
        self.assertEqual(r.returncode, 1)
        self.assertIn("an agent reads <state-dir>/ports/ only", r.stdout + r.stderr)
        os.unlink(os.path.join(elsewhere, b["id"]))
        r = port_control(*control_args(1, json_dir, b))  # nothing listens on port 1
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(os.path.isfile(os.path.join(json_dir, b["id"])))
        # the message names the exact --state-dir whose agent adds it ...
        self.assertIn(f"the agent adds the port when it starts with --state-dir {d}",
                      r.stdout + r.stderr)
        # ... and an agent started later with that state directory does
        run_dir = os.path.join(d, "run")
        agent = Twistd(d, "vrouter", agent_args(run_dir, d, "--no-tap-check"), "agent")
        self.addCleanup(agent.stop)
        port = agent.rest_port()
        self.assertEqual(http_call(port, "GET", f"/port/{b['id']}")[0], 200)
        wait_until(lambda: "tapv5" in vif_names(run_dir), "the replayed port's vif")
        r = port_control("--oper", "delete", "--uuid", b["id"], "--agent_port", "1",
                         "--port_json_path", json_dir)
        self.assertEqual(r.returncode, 0)
        self.assertFalse(os.path.exists(os.path.join(json_dir, b["id"])))
        r = port_control(*control_args(1, "/proc/forbidden", b))  # unwritable, agent down
        self.assertEqual(r.returncode, 1)


class Watcher(threading.Thread):
    """A utility watching the datapath: snapshots over its own ksync session until stopped."""

    def __init__(self, run_dir: str) -> None:
        super().__init__(daemon=True)
        self.run_dir = run_dir
        self.snaps: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.snaps.append(snapshot(self.run_dir))
            except Exception as e:  # noqa: BLE001
                self.errors.append(repr(e))
            time.sleep(0.01)

    def stop(self) -> None:
        self._halt.set()
        self.join(30)


class UtilityWatcher(threading.Thread):
    """``vif --list`` run again and again while the agent restarts, as an operator would."""

    def __init__(self, run_dir: str) -> None:
        super().__init__(daemon=True)
        self.run_dir = run_dir
        self.outputs: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            r = subprocess.run([os.path.join(BIN, "vif"), "--sock-dir", self.run_dir, "--list"],
                               capture_output=True, text=True, timeout=60)
            self.outputs.append(r.stdout if r.returncode == 0 else "ERROR " + r.stderr)

    def stop(self) -> None:
        self._halt.set()
        self.join(60)


class ExternalRestartTests(TestCase):
    """--datapath=external: killing and restarting the agent disturbs nothing."""

    def test_kill_and_restart_disturbs_nothing(self) -> None:
        d = tempdir(self)
        run_dir, state = os.path.join(d, "run"), os.path.join(d, "state")
        dp = Twistd(d, "vrouter-dp", ["--run-dir", run_dir, *SMALL_TABLES], "dp")
        self.addCleanup(dp.stop)
        wait_until(lambda: os.path.exists(os.path.join(run_dir, "dpdk_netlink")),
                   "the datapath socket")
        args = agent_args(run_dir, state, "--no-tap-check", "--datapath", "external")
        agent = Twistd(d, "vrouter", args, "agent1")
        self.addCleanup(agent.kill)
        port = agent.rest_port()
        bodies = [port_body(i, plen=24, gateway="10.0.0.254") for i in range(1, 5)]
        bodies.append(port_body(9, vn="77777777-5553-4e6a-b87f-8423afc21e9d"))
        self.assertEqual(http_call(port, "POST", "/port", bodies)[0], 200)
        before = wait_until(lambda: (s := snapshot(run_dir)) and len(s["labels"]) == 10
                            # an L3 and an L2 label per port
                            # 5 VM MACs, the VRRP and broadcast MACs of each of the 2 VRFs
                            and len(s["bridge"]) == 9 and len(s["routes"]) == 7 and s,
                            "five ports programmed")
        assert before  # wait_until returns only a true value
        # a flow set up before the restart must survive it untouched
        flows_before = _add_flow(run_dir, before)
        self.assertIn("10.0.0.1:1000", flows_before)
        watcher = Watcher(run_dir)
        watcher.start()
        self.addCleanup(watcher.stop)
        vif_watcher = UtilityWatcher(run_dir)
        vif_watcher.start()
        self.addCleanup(vif_watcher.stop)
        wait_until(lambda: len(watcher.snaps) >= 2 and vif_watcher.outputs, "the watchers")
        agent.kill()  # SIGKILL: no clean-up at all
        agent2 = Twistd(d, "vrouter", args, "agent2")
        self.addCleanup(agent2.stop)
        port2 = agent2.rest_port()
        wait_until(lambda: "datapath holds" in agent2.text(), "adoption")
        # a new port after the restart is programmed next to the old ones
        self.assertEqual(http_call(port2, "POST", "/port", port_body(6))[0], 200)
        wait_until(lambda: "tapv6" in vif_names(run_dir), "the new port")
        n = len(watcher.snaps)
        wait_until(lambda: len(watcher.snaps) >= n + 2, "more snapshots")
        watcher.stop()
        vif_watcher.stop()
        self.assertEqual(watcher.errors, [])
        lines = [f"vif0/{i}      Virtual: {v[0]} NH: {v[2]}"
                 for i, v in before["vifs"].items() if i >= 3]
        self.assertEqual(len(lines), 5)
        for out in vif_watcher.outputs:
            for line in lines:
                self.assertIn(line, out)
        for snap in watcher.snaps:
            for table in ("vifs", "nhs", "labels", "routes", "bridge"):
                for k, v in before[table].items():
                    self.assertEqual(snap[table].get(k), v, f"{table} {k} disturbed")
        for b in bodies:
            self.assertEqual(http_call(port2, "GET", f"/port/{b['id']}")[0], 200)
        self.assertNotIn("failed", agent2.text())
        self.assertEqual(utility("flow", "--sock-dir", run_dir, "-l"), flows_before)


def _add_flow(run_dir: str, snap: dict[str, Any]) -> str:
    """FLOW_SET one flow keyed on a port's next hop; returns ``flow -l`` afterwards."""
    from vrtwist.ksync.blocking import open_ksync
    from vrtwist.shmem import layout as L
    from vrtwist.shmem.manager import FlowKey, FlowManager

    idx = min(i for i in snap["vifs"] if i >= 3)
    _name, vrf, nh = snap["vifs"][idx]
    key = FlowKey("10.0.0.1", "10.0.0.2", 6, 1000, 80, nh)
    req = FlowManager._request(key, -1, 0, L.ACTION_FORWARD, L.FLAG_ACTIVE, {"flow_vrf": vrf})
    with open_ksync(run_dir) as c:
        c.request(req)
    return utility("flow", "--sock-dir", run_dir, "-l")


class DatapathRestartTests(TestCase):
    """The datapath restarts empty under a running agent: the agent refills it."""

    def test_refill_after_datapath_restart(self) -> None:
        d = tempdir(self)
        run_dir, state = os.path.join(d, "run"), os.path.join(d, "state")
        dp = Twistd(d, "vrouter-dp", ["--run-dir", run_dir, *SMALL_TABLES], "dp1")
        self.addCleanup(dp.kill)
        sock = os.path.join(run_dir, "dpdk_netlink")
        wait_until(lambda: os.path.exists(sock), "the datapath socket")
        agent = Twistd(d, "vrouter", agent_args(run_dir, state, "--no-tap-check",
                                                "--datapath", "external"), "agent")
        self.addCleanup(agent.stop)
        port = agent.rest_port()
        self.assertEqual(http_call(port, "POST", "/port", [port_body(1), port_body(2)])[0], 200)
        wait_until(lambda: {"tapv1", "tapv2"} <= vif_names(run_dir), "two ports")
        dp.kill()
        os.unlink(sock)
        # while the datapath is away the API still works and the port is kept
        self.assertEqual(http_call(port, "POST", "/port", port_body(3))[0], 200)
        dp2 = Twistd(d, "vrouter-dp", ["--run-dir", run_dir, *SMALL_TABLES], "dp2")
        self.addCleanup(dp2.kill)
        snap = wait_until(lambda: (s := snapshot(run_dir)) and len(s["labels"]) == 6 and
                          # 3 VM MACs and the VRF's VRRP and broadcast MACs
                          len(s["bridge"]) == 5 and s, "three ports refilled", 30)
        assert snap  # wait_until returns only a true value
        self.assertEqual({v[0] for v in snap["vifs"].values()} >= {"tapv1", "tapv2", "tapv3"},
                         True)
        # no busy loop while the datapath was away: the log stays short
        self.assertLess(agent.text().count("\n"), 200)


class WireFormatTests(TestCase):
    def test_content_length_and_type_not_chunked(self) -> None:
        d = tempdir(self)
        agent = Twistd(d, "vrouter", agent_args(os.path.join(d, "run"), d, "--no-tap-check"),
                       "agent")
        self.addCleanup(agent.stop)
        port = agent.rest_port()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.addCleanup(conn.close)
        for method, path, body in (("POST", "/port", json.dumps(SAMPLE)),
                                   ("GET", f"/port/{SAMPLE['id']}", None),
                                   ("GET", "/nothing", None)):
            conn.request(method, path, body=body)
            r = conn.getresponse()
            raw = r.read()
            self.assertEqual(r.getheader("Content-Type"), "application/json; charset=UTF-8")
            self.assertEqual(int(r.getheader("Content-Length") or ""), len(raw))
            self.assertIsNone(r.getheader("Transfer-Encoding"))
        # a body announced larger than the limit is refused before it is sent
        import socket

        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"POST /port HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
        self.assertTrue(reply.startswith(b"HTTP/1.1 413 "), reply)
        self.assertIn(b"byte limit", reply)
        # ... and so is a chunked one once it passes the limit
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"POST /port HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            block = b"%x\r\n%s\r\n" % (1 << 20, b" " * (1 << 20))
            reply = b""
            try:
                for _ in range(12):
                    s.sendall(block)
            except OSError:
                pass  # the agent cut the connection off
            try:
                while chunk := s.recv(4096):
                    reply += chunk
            except ConnectionResetError:
                pass
        self.assertTrue(reply.startswith(b"HTTP/1.1 413 "), reply)
        # the agent is fine
        self.assertEqual(http_call(port, "GET", f"/port/{SAMPLE['id']}")[0], 200)


class InProcessKsyncTests(TestCase):
    def test_inprocess_programming_is_seen_over_the_socket(self) -> None:
        d = tempdir(self)
        run_dir = os.path.join(d, "run")
        agent = Twistd(d, "vrouter", agent_args(run_dir, d, "--no-tap-check", "--ksync",
                                                "inprocess"), "agent")
        self.addCleanup(agent.stop)
        port = agent.rest_port()
        self.assertEqual(http_call(port, "POST", "/port", port_body(1))[0], 200)
        # the answer comes once the datapath has the port: no waiting needed
        self.assertIn("tapv1", vif_names(run_dir))
        self.assertIn("in-process", agent.text())
        self.assertEqual(http_call(port, "DELETE", f"/port/{port_body(1)['id']}")[0], 200)
        self.assertNotIn("tapv1", vif_names(run_dir))
