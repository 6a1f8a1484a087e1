"""The web page in a real headless Chromium (Debian's ``chromium`` driven by Playwright):
loads with no console error, shows a port added over REST within a second, its chart
moves while frames flow through a veth the datapath reads, and a screenshot is saved."""

from __future__ import annotations

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
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True)
        _ip("link", "add", self.veth, "type", "veth", "peer", "name", self.peer)
        self.addCleanup(subprocess.run, ["ip", "link", "del", self.veth], capture_output=True)
        _ip("link", "set", self.veth, "up")
        _ip("link", "set", self.peer, "up")
        self.agent = Twistd(self.dir, "vrouter", agent_args(
            os.path.join(self.dir, "run"), os.path.join(self.dir, "state"), "--no-tap-check"),
            "agent")
        self.addCleanup(self.agent.stop)
        self.rest = self.agent.rest_port()
        self.port = self.agent.introspect_port()

    def _send_frames(self, stop: threading.Event, mac: bytes) -> None:
        """Broadcast ARP requests from the 'VM' side of the veth until told to stop."""
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        try:
            s.bind((self.peer, 0))
            arp = (b"\x00\x01\x08\x00\x06\x04\x00\x01" + mac + bytes([10, 0, 0, 1])
                   + b"\x00" * 6 + bytes([10, 0, 0, 254]))
            frame = b"\xff" * 6 + mac + b"\x08\x06" + arp + b"\x00" * 18
            while not stop.is_set():
                for _ in range(20):
                    s.send(frame)
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

        quiet = page.evaluate(CHART)
        stop = threading.Event()
        sender = threading.Thread(target=self._send_frames, args=(stop, bytes.fromhex(
            body["mac-address"].replace(":", ""))))
        sender.start()
        try:
            page.wait_for_function(
                "v => { const s = window.vrtwist.vif.get(v); "
                "return s && s.data.filter(x => x > 0).length >= 5; }",
                arg=vif, timeout=10_000)
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
