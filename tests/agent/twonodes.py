"""The two-node set-up of ``docs/walkthrough.md`` as test fixtures: one control node, two
``twistd vrouter`` nodes in their own network namespaces joined by a fabric bridge, VMs
(namespaces behind veth pairs) plugged with ``vrouter-port-control``.

Every namespace, veth and bridge carries the prefix ``PFX`` (``tn`` + pid) so parallel
runs never collide, and ``Lab.cleanup`` removes them all.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from typing import Any

from tests.agent.procs import BIN, PORT_CONTROL, SMALL_TABLES, TWISTD
from tests.polling import wait_until

PFX = "tn%d" % (os.getpid() % 100000)
VN = "7a7a7a7a-2222-3333-4444-555555555555"
SUBNET, PLEN, GATEWAY, DNS = "10.77.1", 24, "10.77.1.1", "10.77.1.2"
FABRIC = "192.168.77"


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (veths, bridges and network namespaces)"
    for tool in ("ip", "dhclient", "ping"):
        if shutil.which(tool) is None:
            return f"needs {tool} (.ci/run installs iproute2, isc-dhcp-client, iputils-ping)"
    return None


def sh(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=timeout)


class Daemon:
    """``twistd -n`` in a namespace (or not), logging to a file."""

    def __init__(self, workdir: str, name: str, plugin: str, args: list[str],
                 netns: str | None = None) -> None:
        self.log = os.path.join(workdir, f"{name}.log")
        self.name = name
        argv = [TWISTD, "-n", "--pidfile=", "--logfile", self.log, plugin, *args]
        if netns is not None:
            argv = ["ip", "netns", "exec", netns, *argv]
        self.argv = argv
        self.proc = subprocess.Popen(argv, cwd=workdir, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def text(self) -> str:
        try:
            with open(self.log) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def wait_log(self, needle: str, timeout: float = 30) -> None:
        def found() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n"
                                     f"{self.text()[-3000:]}")
            return needle in self.text()
        wait_until(found, f"{self.name}: {needle!r}", timeout)

    def kill(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class Vm:
    """A VM: a namespace behind a veth pair whose host end lives in its node's namespace."""

    def __init__(self, node: Node, n: int) -> None:
        self.node, self.n = node, n
        self.ns = f"{PFX}v{n}"
        self.host = f"{PFX}h{n}"
        self.guest = f"{PFX}g{n}"
        self.mac = f"02:77:00:00:00:{n:02x}"
        self.ip = f"{SUBNET}.{10 + n}"
        self.uuid = f"7b7b7b7b-0000-0000-0000-{n:012x}"
        sh("ip", "netns", "add", self.ns)
        os.makedirs(f"/etc/netns/{self.ns}", exist_ok=True)
        with open(f"/etc/netns/{self.ns}/resolv.conf", "w") as f:
            f.write("")  # dhclient-script writes resolv.conf: keep it in the namespace's view
        sh("ip", "link", "add", self.host, "type", "veth", "peer", "name", self.guest)
        sh("ip", "link", "set", self.guest, "netns", self.ns)
        sh("ip", "link", "set", self.host, "netns", node.ns)
        sh("ip", "-n", self.ns, "link", "set", self.guest, "address", self.mac)
        sh("ip", "-n", self.ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.ns, "link", "set", self.guest, "up")
        node.run("sysctl", "-qw", f"net.ipv6.conf.{self.host}.disable_ipv6=1", check=False)
        node.run("ip", "link", "set", self.host, "up")

    def run(self, *args: str, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.ns, *args, check=check, timeout=timeout)

    def plug(self) -> subprocess.CompletedProcess[str]:
        """``vrouter-port-control --oper add`` in the node's namespace."""
        return self.node.run(
            PORT_CONTROL, "--oper", "add", "--uuid", self.uuid,
            "--instance_uuid", f"7c7c7c7c-0000-0000-0000-{self.n:012x}", "--vn_uuid", VN,
            "--vm_project_uuid", "7d7d7d7d-0000-0000-0000-000000000001",
            "--ip_address", self.ip, "--mac", self.mac, "--tap_name", self.host,
            "--vm_name", f"vm{self.n}", "--plen", str(PLEN), "--gateway", GATEWAY,
            "--dns_server", DNS, "--agent_port", str(self.node.rest_port),
            "--port_json_path", self.node.ports_dir, check=False)  # fmt: skip

    def dhcp(self, workdir: str) -> str:
        lease = os.path.join(workdir, f"{self.ns}.leases")
        pid = os.path.join(workdir, f"{self.ns}.pid")
        self.run("dhclient", "-1", "-4", "-lf", lease, "-pf", pid, self.guest, timeout=60)
        return self.run("ip", "-4", "-o", "addr", "show", "dev", self.guest).stdout

    def cleanup(self) -> None:
        for p in sh("ip", "netns", "pids", self.ns, check=False).stdout.split():
            sh("kill", "-9", p, check=False)
        sh("ip", "netns", "del", self.ns, check=False)
        shutil.rmtree(f"/etc/netns/{self.ns}", ignore_errors=True)


class Node:
    """A compute node: a namespace with its fabric veth on the lab's bridge, its agent."""

    def __init__(self, lab: Lab, n: int) -> None:
        self.lab, self.n = lab, n
        self.ns = f"{PFX}n{n}"
        self.fabric = f"{PFX}f{n}"  # in the node: vif 0
        self.uplink = f"{PFX}u{n}"  # its peer, on the bridge
        self.fabric_ip = f"{FABRIC}.{n}"
        self.dir = os.path.join(lab.dir, f"node{n}")
        self.run_dir = os.path.join(self.dir, "run")
        self.state_dir = os.path.join(self.dir, "state")
        self.ports_dir = os.path.join(self.state_dir, "ports")
        os.makedirs(self.ports_dir, exist_ok=True)
        self.rest_port = 9091
        self.agent: Daemon | None = None
        self.dp: Daemon | None = None
        sh("ip", "netns", "add", self.ns)
        sh("ip", "-n", self.ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", self.fabric, "type", "veth", "peer", "name", self.uplink)
        sh("ip", "link", "set", self.fabric, "netns", self.ns)
        sh("ip", "link", "set", self.uplink, "master", lab.bridge, "up")
        self.run("sysctl", "-qw", f"net.ipv6.conf.{self.fabric}.disable_ipv6=1", check=False)
        self.run("ip", "link", "set", self.fabric, "up")

    def run(self, *args: str, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.ns, *args, check=check, timeout=timeout)

    def agent_args(self, *extra: str) -> list[str]:
        return ["--run-dir", self.run_dir, "--state-dir", self.state_dir,
                "--rest", f"tcp:{self.rest_port}:interface=127.0.0.1", *SMALL_TABLES,
                "--fabric", self.fabric, "--fabric-ip", self.fabric_ip,
                "--hostname", f"{PFX}-node{self.n}", "--controller", self.lab.xmpp,
                *extra]  # fmt: skip

    def start_agent(self, *extra: str) -> Daemon:
        self.agent = Daemon(self.dir, f"agent{self.n}", "vrouter", self.agent_args(*extra),
                            self.ns)
        self.agent.wait_log("REST port API listening")
        return self.agent

    def start_datapath(self) -> Daemon:
        """``twistd vrouter-dp`` on its own (the agent then runs ``--datapath external``)."""
        self.dp = Daemon(self.dir, f"dp{self.n}", "vrouter-dp",
                         ["--run-dir", self.run_dir, *SMALL_TABLES, "--fabric", self.fabric],
                         self.ns)
        self.dp.wait_log("serving ksync")
        return self.dp

    def mac(self) -> str:
        """The MAC of the node's fabric interface."""
        return self.run("cat", f"/sys/class/net/{self.fabric}/address").stdout.strip()

    def tool(self, name: str, *args: str) -> str:
        return sh(os.path.join(BIN, name), "--sock-dir", self.run_dir, *args,
                  check=False).stdout

    def cleanup(self) -> None:
        for d in (self.agent, self.dp):
            if d is not None:
                d.kill(signal.SIGKILL)
        for p in sh("ip", "netns", "pids", self.ns, check=False).stdout.split():
            sh("kill", "-9", p, check=False)
        sh("ip", "netns", "del", self.ns, check=False)  # takes its veth ends with it


class Lab:
    """The fabric bridge (in the host namespace) and the control node."""

    def __init__(self, workdir: str) -> None:
        self.dir = workdir
        self.bridge = f"{PFX}br"
        self.xmpp_sock = os.path.join(workdir, "xmpp.sock")
        self.xmpp = f"unix:{self.xmpp_sock}"
        self.control: Daemon | None = None
        self.nodes: list[Node] = []
        self.vms: list[Vm] = []
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("sysctl", "-qw", f"net.ipv6.conf.{self.bridge}.disable_ipv6=1", check=False)
        sh("ip", "link", "set", self.bridge, "up")

    def start_control(self, *extra: str) -> Daemon:
        self.control = Daemon(self.dir, "control", "vrouter-control",
                              ["--xmpp", f"unix:{self.xmpp_sock}", "--hostname",
                               f"{PFX}-control", *extra])
        self.control.wait_log("XMPP")
        wait_until(lambda: os.path.exists(self.xmpp_sock), "the XMPP socket", 20)
        return self.control

    def node(self, n: int) -> Node:
        node = Node(self, n)
        self.nodes.append(node)
        return node

    def vm(self, node: Node, n: int) -> Vm:
        vm = Vm(node, n)
        self.vms.append(vm)
        return vm

    def logs(self) -> str:
        out = []
        for d in [self.control] + [x for n in self.nodes for x in (n.dp, n.agent)]:
            if d is not None:
                out.append(f"--- {d.name}\n{d.text()[-2500:]}")
        return "\n".join(out)

    def cleanup(self) -> None:
        for vm in self.vms:
            vm.cleanup()
        for node in self.nodes:
            node.cleanup()
        if self.control is not None:
            self.control.kill(signal.SIGKILL)
        sh("ip", "link", "del", self.bridge, check=False)


TCP_SERVER = (
    "import socket,hashlib,sys;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,"
    "socket.SO_REUSEADDR,1);s.bind(('0.0.0.0',5001));s.listen(1);print('ready',flush=True);"
    "c,_=s.accept();h=hashlib.sha256();n=0\n"
    "while True:\n d=c.recv(65536)\n if not d: break\n h.update(d);n+=len(d)\n"
    "print(n,h.hexdigest(),flush=True)"
)


def tcp_client(dst: str, total: int, seconds: float = 0.0) -> str:
    """A client sending ``total`` random bytes to ``dst``:5001, spread over ``seconds``
    (so a test can act mid-stream), printing the SHA-256 of what it sent."""
    return (
        "import socket,hashlib,time,os\n"
        f"data=os.urandom({total});chunks=50;step=len(data)//chunks\n"
        "for i in range(50):\n"
        f" try:\n  s=socket.create_connection(('{dst}',5001),timeout=5);break\n"
        " except OSError: time.sleep(0.1)\n"
        "s.settimeout(60)\n"
        "for i in range(chunks):\n"
        " part=data[i*step:(i+1)*step if i<chunks-1 else len(data)]\n"
        f" s.sendall(part);time.sleep({seconds}/chunks)\n"
        "s.close();print(hashlib.sha256(data).hexdigest())"
    )


def start_server(vm: Vm) -> subprocess.Popen[str]:
    server = subprocess.Popen(["ip", "netns", "exec", vm.ns, "python3", "-c", TCP_SERVER],
                              stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    line = server.stdout.readline()
    if "ready" not in line:
        raise AssertionError(f"TCP server did not start: {line!r}")
    return server


def now() -> float:
    return time.monotonic()


def ensure(cond: Any, msg: str) -> None:
    if not cond:
        raise AssertionError(msg)
