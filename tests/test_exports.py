"""Each subpackage's public surface is pinned: ``__all__`` exactly, and every name imports.

A name leaving ``__all__`` (or a new one arriving) fails here first, so a change of the
public API is always a deliberate edit of this file (as klein's ``test_exports.py``).
The lazy ``__init__`` modules are also checked against themselves: the names mypy sees in
their ``TYPE_CHECKING`` block are the names they load at run time.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import vrtwist
from vrtwist._exports import lazy_exports

ROOT = Path(vrtwist.__file__).resolve().parent

EXPORTS: dict[str, list[str]] = {
    "agent": ["AgentPacketService", "AgentService", "DatapathModel", "DatapathRequestError",
        "DatapathSync", "Gateway", "IControllerLink", "IGatewayProgrammer",
        "IKsyncBunchChannel", "IKsyncChannel", "IPortObserver", "IPortStore",
        "IRouteProgrammer", "KsyncSynchroniser", "LocalChannel", "LocalRoute",
        "LocalSynchroniser", "PacketServices", "Port", "PortApi", "PortFileError",
        "PortNotFound", "PortStore", "PortTable", "PortValidationError", "ProtocolChannel",
        "ResourceExhausted", "RestApiError", "VmPort", "WrongPortType", "make_agent_app",
        "port_from_json"],
    "cli": ["APIClient", "DEFAULT_SOCK_DIR", "EXIT_RESPONSE", "EXIT_USAGE", "ExposeApiError",
        "FlowTool", "PortControl", "UsageError", "UsageFailure"],
    "datapath": ["BridgeRoutesInMemory", "DEFAULT_RUN_DIR", "Datapath", "DatapathConfig",
        "DatapathOptionsMixin", "DatapathService", "DropLog", "DropLogError", "DropRecord",
        "DumpReply", "IBridgeRoutes", "IDatapath", "IFrameOutput", "IPacketPipeline",
        "IPacketTrap", "IRequestHandler", "LinkEvent", "LinkWatcher", "OffloadError", "Packet",
        "PacketPort", "PacketService", "Pipeline", "PortManager", "RouteTables", "TableError",
        "Tables", "TapPort", "makeDatapathService", "make_datapath_app", "make_pipeline"],
    "introspect": ["BadQuery", "FlowTableSource", "Health", "IntrospectApp",
        "IntrospectCollector", "IntrospectService", "NotFoundError", "add_introspect",
        "control_app", "introspect_option", "listen_introspect", "vpnkit_app", "vsock_app",
        "vspc_app"],
    "ksync": ["FrameReader", "IBridgeRoutes", "IDatapath", "IKsyncDispatcher", "IKsyncSession",
        "IRequestHandler", "KsyncClientProtocol", "KsyncConnectError", "KsyncConnection",
        "KsyncConnectionLost", "KsyncError", "KsyncProtocolError", "KsyncReply", "KsyncResponse",
        "KsyncServerFactory", "KsyncServerProtocol", "KsyncServerService", "NetlinkFrameError",
        "NetlinkMessage", "connect_ksync", "ksync_socket_path", "listen_ksync", "open_ksync"],
    "packet": ["ARP", "Ethernet", "GRE", "ICMP", "IPv4", "IPv6", "MPLS", "PacketError", "TCP",
        "UDP", "VXLAN", "checksum", "checksum_update16", "ipv4_ttl_decrement"],
    "pkt0": ["AGENT_HDR_LEN", "AgentEndpoint", "AgentHeader", "DatapathEndpoint",
        "EndpointCounters", "HEADER_LEN", "IPacketTrap", "IPkt0Receiver", "IPkt0Transport",
        "ITrapHandler", "Pkt0Counters", "Pkt0Error", "TrapLimiter", "UnixDatagramTransport",
        "bind_datagram", "decode", "encode_command", "encode_trap", "trap_header"],
    "sandesh": ["ADD", "DEL", "DUMP", "FLOW_LIST", "FLOW_SET", "FLOW_TABLE_GET", "FieldSpec",
        "GET", "MAX_NAME_LEN", "MESSAGE_NAMES", "MessageSpec", "RESET", "RESPONSE",
        "SPECS_BY_CLASS", "SPECS_BY_NAME", "SandeshDecodeError", "SandeshEncodeError",
        "VR_MESSAGE_DUMP_INCOMPLETE", "VR_MESSAGE_PAGE_SIZE", "constants", "decode",
        "decode_one", "encode", "encode_many", "int_to_ipv4", "int_to_port", "ip_to_list",
        "ip_to_u64_pair", "ipv4_to_int", "ipv6_to_u64_pair", "list_to_ip", "list_to_mac",
        "mac_to_list", "message_name", "port_to_int", "prefix_to_route", "route_to_prefix",
        "schema", "u64_pair_to_ip", "u64_pair_to_ipv6"],
    "shmem": ["BRIDGE_FILE", "BridgeEntry", "BridgeTable", "BridgeTableView", "FLOW_FILE",
        "FlowEntry", "FlowHandle", "FlowKey", "FlowManager", "FlowMatch", "FlowPair",
        "FlowSetError", "FlowSetResult", "FlowTable", "FlowTableFull", "FlowTableView",
        "FlowVerdict", "HashTable", "IBridgeTable", "IFlowDatapath", "IFlowManager",
        "IFlowTable", "MatchError", "SharedTables", "StaleFlowError", "install", "parse_match"],
    "vic": ["ExtensionError", "FileTransport", "GuestInfo", "GuestInfoError",
        "IGuestInfoTransport", "IVMPortTable", "ProxyRequest", "RpcToolTransport", "SerialPort",
        "TelnetParser", "TelnetProtocolError", "VMPortTable", "VSPCApi", "VSPCConfig",
        "VSPCFactory"],
    "vpnkit": ["AddressError", "Channel", "ChannelAddress", "DEFAULT_WINDOW",
        "DestinationPolicy", "DestinationRefused", "ExposeAPI", "ExposeError", "ForwardTable",
        "ForwardingAcceptor", "FrameError", "HandshakeError", "IChannel", "IChannelAcceptor",
        "IForwardTable", "IMultiplexer", "Multiplexer", "MultiplexerFactory", "MuxStats", "Port",
        "PortError", "VpnkitOptions", "VpnkitService", "makeVpnkitService", "parse_connect_addr",
        "parse_listen_addr"],
    "vsock": ["AF_VSOCK", "BackendRoutes", "IBackendRoutes", "ProxyHeader", "ProxyProtocolError",
        "RelayConfig", "RelayStats", "RouteError", "VMADDR_CID_ANY", "VMADDR_CID_HOST",
        "VMADDR_PORT_ANY", "VSockAddress", "VSockClientEndpoint", "VSockRelayFactory",
        "VSockServerEndpoint"],
    "vtest": ["FileResult", "PacketRig", "PacketUnavailable", "PcapError", "VtestFile",
        "VtestFormatError", "VtestMessage", "VtestPacket", "compare_frames", "parse_bytes",
        "parse_file", "read_pcap", "run_file", "run_messages"],
    "xmpp": ["AgentSession", "ControlNode", "ControlNodeFactory", "ControlSession",
        "ControllerLink", "FailoverEndpoint", "FramingError", "IControlNode", "IControllerLink",
        "IRemoteRouteSink", "IRouteProgrammer", "LocalRoute", "NextHop", "ProtocolViolation",
        "RemoteRouteTable", "RouteEntry", "StanzaError", "StanzaSplitter", "StreamHeader",
        "XmppSession", "makeControllerLink", "mutual_tls_options", "parse_stanza"],
}


def _type_checking_imports(path: Path) -> dict[str, str]:
    """``{name: module}`` imported under ``if TYPE_CHECKING:`` in ``path``."""
    found: dict[str, str] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom), ast.unparse(imp)
                found.update((a.asname or a.name, imp.module or "") for a in imp.names)
    return found


class ExportTests(SynchronousTestCase):
    """``vrtwist.<package>.__all__`` is what this file says, and each name is there."""

    def test_every_subpackage_is_pinned(self) -> None:
        packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
        self.assertEqual(packages, set(EXPORTS))

    def test_all_is_pinned(self) -> None:
        for package, names in EXPORTS.items():
            module = importlib.import_module(f"vrtwist.{package}")
            self.assertEqual(sorted(module.__all__), names, package)
            self.assertEqual(len(set(module.__all__)), len(module.__all__), package)

    def test_every_name_imports(self) -> None:
        for package, names in EXPORTS.items():
            module = importlib.import_module(f"vrtwist.{package}")
            for name in names:
                self.assertIsNotNone(getattr(module, name, None), f"vrtwist.{package}.{name}")
            self.assertLessEqual(set(names), set(dir(module)), package)

    def test_lazy_names_are_the_modules_objects(self) -> None:
        """A re-exported name is the object of the module ``TYPE_CHECKING`` names, and that
        block lists exactly ``__all__`` (so mypy and the run time agree)."""
        for package in EXPORTS:
            path = ROOT / package / "__init__.py"
            where = _type_checking_imports(path)
            if not where:
                continue  # an eager __init__: its imports are checked by running it
            module = importlib.import_module(f"vrtwist.{package}")
            self.assertEqual(sorted(where), sorted(module.__all__), package)
            for name, home in where.items():
                self.assertIs(getattr(module, name), getattr(importlib.import_module(home), name),
                              f"vrtwist.{package}.{name}")

    def test_importing_a_package_loads_no_module(self) -> None:
        """``import vrtwist.<package>`` alone loads nothing but the package (names load on
        first use), so a codec module of a package that also holds protocols stays free
        of Twisted (and of typing) and a command-line tool pays only for what it uses."""
        lazy = sorted(p for p in EXPORTS if _type_checking_imports(ROOT / p / "__init__.py"))
        self.assertIn("xmpp", lazy)
        script = (
            "import importlib, sys\n"
            "before = set(sys.modules)\n"
            "for p in sys.argv[1:]:\n"
            "    importlib.import_module('vrtwist.' + p)\n"
            "new = sorted(m for m in set(sys.modules) - before\n"
            "             if m.startswith('vrtwist.') and m.count('.') > 1\n"
            "             or m in ('twisted', 'typing'))\n"
            "print(' '.join(new))\n"
        )
        out = subprocess.run([sys.executable, "-c", script, *lazy], check=True,
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.stdout.split(), [])


class LazyExportsTests(SynchronousTestCase):
    """The helper behind the lazy ``__init__`` modules."""

    def test_unknown_name_is_an_attribute_error(self) -> None:
        import vrtwist.xmpp

        with self.assertRaises(AttributeError) as caught:
            vrtwist.xmpp.NoSuchName
        self.assertIn("'vrtwist.xmpp' has no attribute 'NoSuchName'", str(caught.exception))

    def test_a_loaded_name_is_kept(self) -> None:
        import vrtwist.xmpp
        from vrtwist.xmpp import framing

        self.assertIs(vrtwist.xmpp.StanzaSplitter, framing.StanzaSplitter)
        self.assertIs(vars(vrtwist.xmpp)["StanzaSplitter"], framing.StanzaSplitter)

    def test_a_name_from_two_modules_is_refused(self) -> None:
        with self.assertRaises(ValueError) as caught:
            lazy_exports("vrtwist.xmpp", {"framing": ("X",), "stanzas": ("X",)})
        self.assertIn("'X' is exported from two modules", str(caught.exception))
