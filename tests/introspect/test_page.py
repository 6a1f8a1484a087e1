"""The web page in a real headless Chromium (Debian's ``chromium`` driven by Playwright):
loads with no console error, shows a port added over REST within a second, its chart
moves while frames flow through a veth the datapath reads, and a screenshot is saved."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from typing import Any

from twisted.trial.unittest import SkipTest, TestCase

from tests.agent.helpers import port_body, tempdir
from tests.agent.procs import Twistd, agent_args
from tests.introspect.test_agent_e2e import get

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]
#: the chart's pixels (functions, not strings: the page's CSP forbids eval)
CHART = "() => document.getElementById('chart-vif').toDataURL()"
#: where the screenshot goes (kept after the run for people to look at)
ARTIFACTS = os.environ.get("VRTWIST_ARTIFACTS") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "build", "artifacts")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _udp(mac: bytes, sip: bytes, dip: bytes, sport: int) -> bytes:
    """A 64-byte UDP frame to the vRouter's MAC (routed)."""
    from vrtwist.packet.headers import ETH_P_IP, UDP, Ethernet, IPv4

    payload = bytes(18)
    udp = UDP(sport, 5001, 8 + len(payload)).pack() + payload
    ip = IPv4(sip, dip, 17, 20 + len(udp), 1, 64).pack()
    return Ethernet(bytes.fromhex("00005e000100"), mac, ETH_P_IP).pack() + ip + udp


class PageTests(TestCase):
    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest("needs root: the traffic runs through a veth pair")
        if not os.path.exists(CHROMIUM):
            raise SkipTest("Debian's chromium is not installed (apt-get install chromium)")
        try:
            from playwright.sync_api import sync_playwright  # noqa: F401
        except ImportError:
            raise SkipTest("the playwright package is not installed") from None
        self.dir = tempdir(self)
        tag = f"ob{os.getpid() % 100000}"
        self.veth, self.peer = tag + "a", tag + "b"
        self.veth2, self.peer2 = tag + "c", tag + "d"
        for veth, peer in ((self.veth, self.peer), (self.veth2, self.peer2)):
            subprocess.run(["ip", "link", "del", veth], capture_output=True)
            _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
            self.addCleanup(subprocess.run, ["ip", "link", "del", veth], capture_output=True)
            _ip("link", "set", veth, "up")
            _ip("link", "set", peer, "up")
        self.agent = Twistd(self.dir, "vrouter", agent_args(
            os.path.join(self.dir, "run"), os.path.join(self.dir, "state"), "--no-tap-check"),
            "agent")
        self.addCleanup(self.agent.stop)
        self.rest = self.agent.rest_port()
        self.port = self.agent.introspect_port()

    def _send_frames(self, stop: threading.Event, mac: bytes, src: str, dst: str) -> None:
        """From the first VM's side of its veth until told to stop: broadcast ARP
        requests, and UDP to the second VM from a new source port each time (every one
        a new flow for the agent to set up)."""
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        try:
            s.bind((self.peer, 0))
            sip, dip = socket.inet_aton(src), socket.inet_aton(dst)
            arp = (b"\x00\x01\x08\x00\x06\x04\x00\x01" + mac + sip
                   + b"\x00" * 6 + bytes([10, 0, 0, 254]))
            frame = b"\xff" * 6 + mac + b"\x08\x06" + arp + b"\x00" * 18
            sport = 20000
            while not stop.is_set():
                for _ in range(20):
                    s.send(frame)
                for _ in range(5):
                    sport = sport + 1 if sport < 60000 else 20000
                    s.send(_udp(mac, sip, dip, sport))
                time.sleep(0.01)
        finally:
            s.close()

    def test_page_live(self) -> None:
        from playwright.sync_api import sync_playwright

        errors: list[str] = []
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            try:
                self._check_page(browser, errors)
            finally:
                browser.close()
        self.assertEqual(errors, [])

    def _check_page(self, browser: Any, errors: list[str]) -> None:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"http://127.0.0.1:{self.port}/?period=200")
        page.wait_for_function("() => window.vrtwist && window.vrtwist.samples >= 2",
                               timeout=10_000)
        self.assertIn("pkt0", page.inner_text("#vifs"))

        body = port_body(1, **{"system-name": self.veth})
        code, _, raw = get(self.rest, "/port", "POST", body)
        self.assertEqual((code, raw), (200, b"{}"))
        t0 = time.monotonic()
        row = page.wait_for_selector(f'#vifs tr[data-uuid="{body["id"]}"]', timeout=1000)
        shown = time.monotonic() - t0
        assert row is not None
        self.assertLess(shown, 1.0)
        self.assertIn(self.veth, row.inner_text())
        vif = int(row.get_attribute("data-vif") or -1)
        other = port_body(2, **{"system-name": self.veth2})
        code, _, raw = get(self.rest, "/port", "POST", other)
        self.assertEqual((code, raw), (200, b"{}"))

        quiet = page.evaluate(CHART)
        stop = threading.Event()
        sender = threading.Thread(target=self._send_frames, args=(stop, bytes.fromhex(
            body["mac-address"].replace(":", "")), body["ip-address"], other["ip-address"]))
        sender.start()
        try:
            page.wait_for_function(
                "v => { const s = window.vrtwist.vif.get(v); "
                "return s && s.data.filter(x => x > 0).length >= 5; }",
                arg=vif, timeout=10_000)
            # and the flow setup chart: pairs set up per second
            page.wait_for_function(
                "() => window.vrtwist.flowRate.filter(x => x > 0).length >= 3",
                timeout=10_000)
            moving = page.evaluate(CHART)
            rates: Any = page.evaluate("v => window.vrtwist.vif.get(v).data.slice(-5)", vif)
            os.makedirs(ARTIFACTS, exist_ok=True)
            shot = os.path.join(ARTIFACTS, "introspect-page.png")
            page.screenshot(path=shot, full_page=True)
        finally:
            stop.set()
            sender.join()
        self.assertNotEqual(moving, quiet, "the chart did not change while traffic flowed")
        self.assertGreater(max(rates), 0)
        self.assertGreater(os.path.getsize(shot), 10_000)
        print(f"\nscreenshot of the page: {shot}")
        code, _, raw = get(self.port, "/metrics")
        self.assertIn(f'vrouter_vif_packets_total{{direction="rx",name="{self.veth}",'
                      f'vif="{vif}"}}', raw.decode())
        created = [line for line in raw.decode().splitlines()
                   if line.startswith("vrouter_flows_created_total ")]
        self.assertGreater(float(created[0].split()[1]), 0)
        # the flows the agent set up, in the paged listing and the XML introspect
        code, _, raw = get(self.port, "/api/flows?limit=10")
        listing = json.loads(raw)
        self.assertEqual(len(listing["flows"]), 10)
        self.assertTrue({f["sip"] for f in listing["flows"]} <= {"10.0.0.1", "10.0.0.2"},
                        listing["flows"][:2])
        code, _, raw = get(self.port, "/Snh_KFlowReq")
        self.assertIn(b"<sip type=\"string\" identifier=\"3\">10.0.0.1</sip>", raw)
