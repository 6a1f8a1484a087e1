"""``vrtwist-vtest``: play vRouter vtest XML files over ``<sock-dir>/dpdk_netlink``.

For each ``<message>`` it sends the request, reads the reply, checks the ``vr_response``
code against ``<return>`` and the listed ``<expect>`` fields against the returned object;
the first mismatch fails the file, as the real driver does. ``<packet>`` blocks run with
``--spawn`` as root (:mod:`vrtwist.vtest.packets`): the vrouter-dp is started in a
private network namespace, the named vifs get veths there, the input pcap is fed into
one and the other's output compared byte for byte with the expected pcap. A packet check
that cannot run (missing pcap, not root, no ``--spawn``) is reported ``SKIP`` with the
reason and makes the exit status 2, unless ``--messages-only`` asks for messages alone.

``--spawn`` starts a fresh ``twistd -n vrouter-dp`` in a temporary run directory for
every file, as the upstream runner restarted the vRouter after every test; ``--reset``
instead sends ``vrouter_ops`` RESET to an already running one before every file.
Exit status: 0 when every file passed (or, with ``--messages-only``, was skipped), 1 when
one failed, 2 when a packet check could not run, 3 on usage or connection errors.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

from vrtwist.ksync.blocking import KsyncConnectError, KsyncConnection
from vrtwist.ksync.clientcore import KsyncError, KsyncProtocolError, KsyncResponse
from vrtwist.sandesh import RESET, SPECS_BY_NAME, schema
from vrtwist.vtest.packets import PacketRig, PacketUnavailable
from vrtwist.vtest.xmlspec import (
    VtestFile,
    VtestFormatError,
    VtestMessage,
    normalize,
    parse_file,
)

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
EXIT_OK, EXIT_FAIL, EXIT_NOT_RUN, EXIT_ERROR = 0, 1, 2, 3


@dataclass
class FileResult:
    path: str
    name: str
    status: str
    detail: str = ""
    messages_run: int = 0


def _same(wire: int, expected: Any, got: Any) -> bool:
    if isinstance(expected, list):
        if not isinstance(got, list) or len(expected) != len(got):
            return False
        return all(
            normalize(wire, int(a)) == normalize(wire, int(b))
            for a, b in zip(expected, got, strict=True)
        )
    if isinstance(expected, str):
        return expected == (got or "")
    return normalize(wire, int(expected)) == normalize(wire, int(got))


def check_reply(msg: VtestMessage, code: int, objects: Sequence[Any]) -> str | None:
    """None if the reply satisfies ``<return>`` and ``<expect>``, else why not."""
    if code != msg.expect_return:
        return "expected return %d, got %d (%s)" % (
            msg.expect_return,
            code,
            os.strerror(-code) if code < 0 else "ok",
        )
    if msg.expect_name is None:
        return None
    obj = next((o for o in objects if type(o).__name__ == msg.expect_name), None)
    if obj is None:
        return "no %s in the reply to compare" % msg.expect_name
    spec = SPECS_BY_NAME[msg.expect_name]
    by_name = {f.name: f for f in spec.fields}
    for name, expected in msg.expect_fields.items():
        f = by_name[name]
        wire = f.elem if f.elem else f.wire
        got = getattr(obj, name)
        if not _same(wire, expected, got):
            return "%s: expected %r, got %r" % (name, expected, got)
    return None


def run_messages(ks: KsyncConnection, test: VtestFile) -> tuple[int, str | None]:
    """Send every message in order; (messages run, first failure or None)."""
    for n, msg in enumerate(test.messages, 1):
        try:
            (result,) = ks.exchange([msg.request])
        except KsyncProtocolError as e:
            return n, "message %d (%s %s): channel error: %s" % (msg.index, msg.name, msg.op, e)
        if isinstance(result, KsyncResponse):
            code, objects = result.code, result.objects
        elif isinstance(result, KsyncError):
            code, objects = result.code, result.objects
        else:
            return n, "message %d (%s %s): %s" % (msg.index, msg.name, msg.op, result)
        why = check_reply(msg, code, objects)
        if why is not None:
            return n, "message %d (%s %s): %s" % (msg.index, msg.name, msg.op, why)
    return len(test.messages), None


def run_file(
    path: str,
    sock_dir: str,
    reset: bool = False,
    timeout: float = 10.0,
    rig: PacketRig | None = None,
    why_no_rig: str = "needs the packet path (--spawn, as root)",
) -> FileResult:
    """Run one file against the vRouter serving ``<sock_dir>/dpdk_netlink``.

    ``rig`` plays the ``<packet>`` blocks; without one they are reported ``SKIP``.
    """
    try:
        test = parse_file(path)
    except VtestFormatError as e:
        return FileResult(path, "", FAIL, "bad test file: %s" % e)
    with KsyncConnection(sock_dir, timeout=timeout, nl_type=0) as ks:
        if reset:
            ks.request(schema.vrouter_ops(h_op=RESET))
        run, failure = run_messages(ks, test)
        if failure is not None:
            return FileResult(path, test.name, FAIL, failure, run)
        if test.packets and rig is None:
            pcaps = ", ".join(p.input_pcap for p in test.packets)
            detail = "%d messages passed; packet check (%s) %s" % (run, pcaps, why_no_rig)
            return FileResult(path, test.name, SKIP, detail, run)
        for n, packet in enumerate(test.packets, 1):
            assert rig is not None
            try:
                why = rig.play(ks, path, packet)
            except PacketUnavailable as e:
                detail = "%d messages passed; packet check %d cannot run: %s" % (run, n, e)
                return FileResult(path, test.name, SKIP, detail, run)
            if why is not None:
                detail = "packet check %d (%s into vif %s, vif %s against %s): %s" % (
                    n, packet.input_pcap, packet.tx_vif, packet.rx_vif,
                    packet.expected_pcap, why,
                )  # fmt: skip
                return FileResult(path, test.name, FAIL, detail, run)
    if test.packets:
        return FileResult(
            path, test.name, PASS, "%d messages, %d packet checks" % (run, len(test.packets)), run
        )
    return FileResult(path, test.name, PASS, "%d messages" % run, run)


@contextmanager
def spawned_vrouter(
    startup_timeout: float = 30.0, netns: str | None = None, extra: Sequence[str] = ()
) -> Iterator[str]:
    """A fresh ``twistd -n vrouter-dp`` in a temporary run directory; yields the dir.

    With ``netns`` the daemon runs in that network namespace; ``extra`` are more
    ``vrouter-dp`` options (``--vtest-vlan --vlan-tci 5``).
    """
    run_dir = tempfile.mkdtemp(prefix="vrtwist-vtest-")
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    cmd = ["ip", "netns", "exec", netns] if netns else []
    cmd += [twistd] if os.path.exists(twistd) else [sys.executable, "-m", "twisted"]
    cmd += [
        "-n", "--pidfile=", "--logfile", os.path.join(run_dir, "vrouter-dp.log"),
        "vrouter-dp", "--run-dir", run_dir, "--flow-entries", "4096", "--bridge-entries", "4096",
        *extra,
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    sock = os.path.join(run_dir, "dpdk_netlink")
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if os.path.exists(sock):
                try:
                    KsyncConnection(run_dir, timeout=2).close()
                    break
                except KsyncConnectError:
                    pass
            if proc.poll() is not None:
                raise KsyncConnectError(0, "vrouter-dp exited with status %s" % proc.returncode)
            if time.monotonic() > deadline:
                raise KsyncConnectError(0, "vrouter-dp did not start in %.0f s" % startup_timeout)
            time.sleep(0.05)
        yield run_dir
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(run_dir, ignore_errors=True)


def expand(paths: Sequence[str]) -> list[str]:
    """Files as given; directories become their ``*.xml`` files, sorted."""
    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            out += sorted(os.path.join(p, n) for n in os.listdir(p) if n.endswith(".xml"))
        else:
            out.append(p)
    return out


def report(result: FileResult, out: TextIO) -> None:
    label = os.path.basename(result.path)
    line = "%s %s" % (result.status, label)
    if result.name:
        line += " (%s)" % result.name
    if result.detail:
        line += ": " + result.detail
    out.write(line + "\n")
    out.flush()


def run(args: argparse.Namespace, out: TextIO) -> int:
    files = expand(args.files)
    if not files:
        out.write("vrtwist-vtest: no test files\n")
        return EXIT_ERROR
    results: list[FileResult] = []
    extra: list[str] = []
    if args.vlan_tci is not None:
        extra += ["--vlan-tci", str(args.vlan_tci)]
    if args.vtest_vlan:
        extra.append("--vtest-vlan")
    why_no_rig = "needs the packet path (--spawn, as root)"
    if args.messages_only:
        why_no_rig = "not run (--messages-only)"
    elif args.spawn and os.geteuid() != 0:
        why_no_rig = "needs root (network namespace and veths)"
    packets = args.spawn and not args.messages_only and os.geteuid() == 0
    for n, path in enumerate(files):
        try:
            if packets:
                netns = "%s-%d-%d" % (args.netns_prefix, os.getpid(), n)
                with private_netns(netns), spawned_vrouter(netns=netns, extra=extra) as run_dir:
                    result = run_file(path, run_dir, rig=PacketRig(netns, run_dir))
            elif args.spawn:
                with spawned_vrouter(extra=extra) as run_dir:
                    result = run_file(path, run_dir, why_no_rig=why_no_rig)
            else:
                result = run_file(path, args.sock_dir, reset=args.reset, why_no_rig=why_no_rig)
        except KsyncConnectError as e:
            out.write("vrtwist-vtest: %s\n" % (e.strerror or e))
            return EXIT_ERROR
        except (KsyncError, KsyncProtocolError, OSError) as e:
            result = FileResult(path, "", FAIL, "channel error: %s" % e)
        results.append(result)
        report(result, out)
    counts = {s: sum(1 for r in results if r.status == s) for s in (PASS, FAIL, SKIP)}
    out.write(
        "%d files: %d passed, %d failed, %d skipped (packet path)\n"
        % (len(results), counts[PASS], counts[FAIL], counts[SKIP])
    )
    if counts[FAIL]:
        return EXIT_FAIL
    return EXIT_NOT_RUN if counts[SKIP] and not args.messages_only else EXIT_OK


@contextmanager
def private_netns(name: str) -> Iterator[str]:
    """A network namespace (IPv6 off: no router solicitations on the vif devices)."""
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        for key in ("all", "default"):
            subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw",
                            "net.ipv6.conf.%s.disable_ipv6=1" % key],
                           capture_output=True)  # fmt: skip
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], capture_output=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vrtwist-vtest",
        description="Play vRouter vtest XML files over <sock-dir>/dpdk_netlink.",
    )
    p.add_argument("files", nargs="+", help="XML files, or directories of them")
    p.add_argument(
        "--sock-dir",
        "--vr_socket_dir",
        dest="sock_dir",
        default=os.environ.get("VRTWIST_SOCK_DIR", "/var/run/vrouter"),
        help="directory of the vRouter's dpdk_netlink (default %(default)s)",
    )
    p.add_argument("--reset", action="store_true", help="vrouter_ops RESET before each file")
    p.add_argument("--spawn", action="store_true", help="a fresh twistd vrouter-dp for each file")
    p.add_argument(
        "--messages-only",
        action="store_true",
        help="run the messages only; packet checks are skipped without failing",
    )
    p.add_argument(
        "--vlan-tci",
        type=int,
        default=None,
        help="start vrouter-dp with --vlan-tci N (the physical_vlan tests use 5)",
    )
    p.add_argument(
        "--vtest-vlan",
        action="store_true",
        help="start vrouter-dp with --vtest-vlan (tag every vif's tx)",
    )
    p.add_argument(
        "--netns-prefix",
        default="vtest",
        help="name prefix of the per-file network namespaces (default %(default)s)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args, sys.stdout)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
