"""``vrouter-port-control``: tell the agent about a VM port, as Nova/os-vif do.

Same options, defaults, file writing and exit codes as the real script
(``src/vnsw/agent/port_ipc/vrouter-port-control``; docs/protocols/agent-rest.md): the port file is the source
of truth, so an ``add`` whose agent is down still exits 0 for a Vrouter vif once the file
is written; the agent replays it at start.  Files are written atomically.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError, ConnectingCancelledError
from twisted.internet.task import deferLater, react

from vrtwist.agent.model import dashed_uuid
from vrtwist.agent.store import PortFileError, write_json_atomic

PORT_TYPES = {"NovaVMPort": 0, "NameSpacePort": 1, "ESXiPort": 2}

EXIT_OK = 0
EXIT_BAD_ARGUMENT = 1
EXIT_AGENT_PORT_CLOSED = 2
EXIT_NO_DPDK_SOCKET = 3
EXIT_AGENT_REFUSED = 4
EXIT_CONNECT_ERROR_VHOSTUSER = 5
EXIT_NO_VHOSTUSER_SOCKET = 6

AGENT_WAIT = 120
DPDK_WAIT = 15
VHOSTUSER_WAIT = 15


class UsageFailure(Exception):
    """A bad argument; exit 1 with the message."""


def _strip_quotes(argv: Sequence[str]) -> list[str]:
    """``--x="v"`` is accepted: the real script strips the quotes."""
    out = []
    for a in argv:
        if a.startswith("--") and "=" in a:
            k, v = a.split("=", 1)
            if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
                v = v[1:-1]
            a = f"{k}={v}"
        elif len(a) >= 2 and a[0] == a[-1] and a[0] in "\"'":
            a = a[1:-1]
        out.append(a)
    return out


def parser() -> argparse.ArgumentParser:
    """The real script's options, plus two hidden vrtwist ones."""
    p = argparse.ArgumentParser(prog="vrouter-port-control",
                                description="Add, delete, enable or disable a vRouter port")
    p.add_argument("--oper", required=True, choices=["add", "delete", "enable", "disable"])
    p.add_argument("--uuid", required=True, help="port (VMI) uuid")
    p.add_argument("--instance_uuid", help="VM uuid")
    p.add_argument("--vn_uuid", help="virtual network uuid")
    p.add_argument("--vm_project_uuid", help="project uuid")
    p.add_argument("--ip_address", help="IPv4 address of the port")
    p.add_argument("--ipv6_address", help="IPv6 address of the port")
    p.add_argument("--vm_name", help="VM name")
    p.add_argument("--mac", help="MAC address of the port")
    p.add_argument("--tap_name", help="name of the TAP interface")
    p.add_argument("--port_type", default="NovaVMPort", choices=sorted(PORT_TYPES))
    p.add_argument("--tx_vlan_id", help="transmit VLAN id")
    p.add_argument("--rx_vlan_id", help="receive VLAN id")
    p.add_argument("--no_persist", action="store_true", help="do not write/delete the file")
    p.add_argument("--vif_type", default="Vrouter", choices=["Vrouter", "VhostUser"])
    p.add_argument("--vhostuser_socket", help="vhost-user socket path (VhostUser)")
    p.add_argument("--vhostuser_mode", default=0, type=int, help="0 client, 1 server")
    p.add_argument("--agent_port", default=9091, type=int, help="agent REST port")
    p.add_argument("--port_json_path", default="/var/lib/contrail/ports/",
                   help="directory of the port files")
    # vrtwist extensions (defaults keep the real behaviour)
    p.add_argument("--agent_host", default="localhost", help=argparse.SUPPRESS)
    p.add_argument("--dpdk_netlink", default="/var/run/vrouter/dpdk_netlink",
                   help=argparse.SUPPRESS)
    # the subnet of the port when no controller config gives its IPAM (what DHCP offers)
    p.add_argument("--plen", type=int, help="prefix length of the port's subnet (vrtwist)")
    p.add_argument("--gateway", help="default gateway of the port's subnet (vrtwist)")
    p.add_argument("--dns_server", help="DNS server of the port's subnet (vrtwist)")
    p.add_argument("--ipv6_plen", type=int,
                   help="prefix length of the port's IPv6 subnet (vrtwist)")
    p.add_argument("--ipv6_gateway", help="gateway of the port's IPv6 subnet (vrtwist)")
    p.add_argument("--ipv6_dns_server",
                   help="DNS (DHCPv6 server) address of the port's IPv6 subnet (vrtwist)")
    return p


def _vlan(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise UsageFailure(f"--{name} must be an integer, got {value!r}") from None


def port_body(args: argparse.Namespace, uuid: str) -> dict[str, Any]:
    """The JSON the real script writes and POSTs (``null`` for options not given)."""
    body: dict[str, Any] = {
        "id": uuid,
        "instance-id": dashed_uuid(args.instance_uuid or "") if args.instance_uuid else None,
        "ip-address": args.ip_address,
        "ip6-address": args.ipv6_address,
        "vn-id": dashed_uuid(args.vn_uuid or "") if args.vn_uuid else None,
        "display-name": args.vm_name,
        "type": PORT_TYPES[args.port_type],
        "rx-vlan-id": _vlan(args.rx_vlan_id, "rx_vlan_id"),
        "tx-vlan-id": _vlan(args.tx_vlan_id, "tx_vlan_id"),
        "vhostuser-mode": args.vhostuser_mode,
        "vm-project-id": dashed_uuid(args.vm_project_uuid or ""),
        "system-name": args.tap_name,
        "mac-address": args.mac,
        "author": "vrouter-port-control",
        "time": str(datetime.datetime.now()),
    }
    # vrtwist's subnet extension: only when given, so the real script's body is unchanged
    for key, value in (("plen", args.plen), ("gateway", args.gateway),
                       ("dns-server", args.dns_server), ("v6-plen", args.ipv6_plen),
                       ("v6-gateway", args.ipv6_gateway),
                       ("v6-dns-server", args.ipv6_dns_server)):
        if value is not None:
            body[key] = value
    return body


class PortControl:
    """One run of the script; ``run()`` returns the exit code."""

    def __init__(self, reactor: Any, args: argparse.Namespace, out: Any = None) -> None:
        self.reactor = reactor
        self.args = args
        self.out = out or sys.stderr
        uuid = dashed_uuid(args.uuid)
        if not uuid:
            raise UsageFailure(f"--uuid {args.uuid!r} is not a uuid")
        self.uuid = uuid
        self.file = Path(args.port_json_path) / uuid
        self.base = f"http://{args.agent_host}:{args.agent_port}"

    def say(self, msg: str) -> None:
        print(msg, file=self.out)

    async def run(self) -> int:
        op = self.args.oper
        if op == "add":
            return await self.add()
        if op == "delete":
            return await self.delete()
        return await self.link(op == "enable")

    async def _request(self, method: str, path: str, body: Any = None) -> tuple[int, str]:
        import treq

        data = json.dumps(body).encode() if body is not None else None
        headers: Any = {b"Content-Type": [b"application/json"]} if data else None
        from twisted.web.client import HTTPConnectionPool

        # one request per run: no connection is kept (the real script uses requests.post)
        pool = HTTPConnectionPool(self.reactor, persistent=False)
        resp = await treq.request(method, self.base + path, data=data, headers=headers,
                                  timeout=60, reactor=self.reactor, pool=pool)
        text = await treq.text_content(resp, encoding="utf-8")
        return resp.code, text

    async def _port_open(self) -> bool:
        try:
            with socket.create_connection((self.args.agent_host, self.args.agent_port), 1):
                return True
        except OSError:
            return False

    async def _wait_for(self, check: Any, seconds: int) -> bool:
        for _ in range(seconds):
            if await check():
                return True
            await deferLater(self.reactor, 1.0, lambda: None)
        return bool(await check())

    async def add(self) -> int:
        args = self.args
        vhost = args.vif_type == "VhostUser"
        if vhost:
            code = await self._vhost_ready()
            if code != EXIT_OK:
                return code
        body = port_body(args, self.uuid)
        write_failed = None if args.no_persist else self._persist(body)
        try:
            code, text = await self._request("POST", "/port", body)
        except (ConnectError, ConnectingCancelledError, OSError) as e:
            if vhost:
                self.say(f"cannot reach the agent: {e}")
                return EXIT_CONNECT_ERROR_VHOSTUSER
            if write_failed is not None:
                return EXIT_BAD_ARGUMENT
            return self._unreachable(e)
        if code != 200:
            self.say(f"agent refused the port: {code} {text.strip()}")
            return EXIT_AGENT_REFUSED
        if vhost and args.vhostuser_mode == 0:
            async def sock() -> bool:
                return os.path.exists(args.vhostuser_socket)
            if not await self._wait_for(sock, VHOSTUSER_WAIT):
                self.say(f"vhost-user socket {args.vhostuser_socket} not created")
                return EXIT_NO_VHOSTUSER_SOCKET
        return EXIT_OK

    async def _vhost_ready(self) -> int:
        """A vhost-user port needs its socket path, the agent's port and DPDK's netlink."""
        args = self.args
        if not args.vhostuser_socket:
            self.say("VhostUser needs --vhostuser_socket")
            return EXIT_BAD_ARGUMENT
        if not await self._wait_for(self._port_open, AGENT_WAIT):
            self.say(f"agent port {args.agent_port} not open after {AGENT_WAIT} s")
            return EXIT_AGENT_PORT_CLOSED

        async def dpdk() -> bool:
            return os.path.exists(args.dpdk_netlink)
        if not await self._wait_for(dpdk, DPDK_WAIT):
            self.say(f"no {args.dpdk_netlink} after {DPDK_WAIT} s")
            return EXIT_NO_DPDK_SOCKET
        return EXIT_OK

    def _persist(self, body: dict[str, Any]) -> Exception | None:
        """Write the port file (what an agent replays at start); why not, said and returned."""
        try:
            Path(self.args.port_json_path).mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.file, body)
        except (OSError, PortFileError) as e:
            self.say(f"cannot write {self.file}: {e}")
            return e
        return None

    def _unreachable(self, error: Exception) -> int:
        """Say exactly what becomes of the port when the agent cannot be reached.

        The agent replays ``<--state-dir>/ports/<uuid>`` at start (``twistd vrouter``
        defaults to ``/var/lib/contrail``, this script to ``/var/lib/contrail/ports/``):
        the file reaches an agent only if this directory is one's ``ports`` directory.
        """
        where = f"agent unreachable at {self.args.agent_host}:{self.args.agent_port} ({error})"
        if self.args.no_persist:
            self.say(f"{where}; --no_persist: nothing was saved, the port is not added")
            return EXIT_BAD_ARGUMENT
        ports = Path(self.args.port_json_path)
        if ports.name != "ports":
            self.say(f"{where}; wrote {self.file}, but an agent reads <state-dir>/ports/ "
                     "only: the port is not added until you add it again")
            return EXIT_BAD_ARGUMENT
        self.say(f"{where}; wrote {self.file}: the agent adds the port when it starts "
                 f"with --state-dir {ports.parent}")
        return EXIT_OK

    async def delete(self) -> int:
        if not self.args.no_persist:
            try:
                os.unlink(self.file)
            except FileNotFoundError:
                pass
            except OSError as e:
                self.say(f"cannot remove {self.file}: {e}")
        return await self._simple("DELETE", f"/port/{self.uuid}")

    async def link(self, up: bool) -> int:
        if not self.args.no_persist and self.file.exists():
            try:
                body = json.loads(self.file.read_text())
                if isinstance(body, dict) and body.get("type") == PORT_TYPES["ESXiPort"]:
                    body["link-state"] = 1 if up else 0
                    write_json_atomic(self.file, body)
            except (OSError, ValueError, PortFileError) as e:
                self.say(f"cannot update {self.file}: {e}")
        path = f"/{'enable' if up else 'disable'}-port/{self.uuid}"
        return await self._simple("PUT", path)

    async def _simple(self, method: str, path: str) -> int:
        try:
            code, text = await self._request(method, path)
        except (ConnectError, ConnectingCancelledError, OSError) as e:
            self.say(f"agent unreachable: {e}")
            return EXIT_OK
        if code != 200:
            self.say(f"agent answered {code} {text.strip()}")
            return EXIT_BAD_ARGUMENT
        return EXIT_OK


def main(argv: Sequence[str] | None = None) -> None:
    """Console script entry point; exits with the real script's codes."""
    argv = _strip_quotes(sys.argv[1:] if argv is None else argv)
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:
        sys.exit(EXIT_BAD_ARGUMENT if e.code else 0)

    async def go(reactor: Any) -> None:
        try:
            control = PortControl(reactor, args)
            code = await control.run()
        except UsageFailure as e:
            print(f"vrouter-port-control: {e}", file=sys.stderr)
            code = EXIT_BAD_ARGUMENT
        if code:
            raise SystemExit(code)

    def start(reactor: Any) -> Deferred[None]:
        return Deferred.fromCoroutine(go(reactor))

    react(start)


if __name__ == "__main__":  # pragma: no cover
    main()
