"""Dependencies run one way: no import cycle between subpackages, no Twisted in a codec.

The layer order is in ``docs/layers.md``. Two checks keep it true as code moves:

- the import graph between ``vrtwist``'s subpackages (and its top-level private modules),
  read statically from every ``import`` in the source, lazy ones included, has no cycle;
- each codec module, imported alone in a fresh interpreter, leaves no ``twisted`` module in
  ``sys.modules`` (a codec is bytes in, records out: layer 1 may not reach layer 2).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import vrtwist

ROOT = Path(vrtwist.__file__).resolve().parent

# Codec modules by name; every module under these packages is a codec too.
CODEC_MODULES = (
    "vrtwist.ksync.netlink",
    "vrtwist.xmpp.framing",
    "vrtwist.xmpp.stanzas",
    "vrtwist.vpnkit.frames",
    "vrtwist.vsock.proxyv2",
    "vrtwist.vic.vmware_ext",
    "vrtwist.vic.vmotion",
    "vrtwist.shmem.layout",
    "vrtwist.shmem.entries",
    "vrtwist.shmem.jhash",
)
CODEC_PACKAGES = ("sandesh", "packet")



def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _node(module: str) -> str | None:
    """The graph node of a ``vrtwist`` module: its subpackage, or the top-level module."""
    parts = module.split(".")
    if parts[0] != "vrtwist" or len(parts) < 2:
        return None
    return parts[1]


def _imports(path: Path, root: Path = ROOT) -> list[str]:
    """Every absolute module name ``path`` imports, at any depth of its code."""
    module = _module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[str] = []
    for n in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(n, ast.Import):
            found.extend(a.name for a in n.names)
        elif isinstance(n, ast.ImportFrom):
            if n.level:
                base = package.split(".")
                base = base[: len(base) - (n.level - 1)]
                target = ".".join(base + ([n.module] if n.module else []))
            else:
                target = n.module or ""
            found.append(target)
            # ``from vrtwist import agent`` names a subpackage, not an attribute
            found.extend(f"{target}.{a.name}" for a in n.names if target == "vrtwist")
    return found


def import_graph(root: Path = ROOT) -> dict[str, dict[str, list[str]]]:
    """``{node: {imported node: [importing modules]}}`` between different nodes."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        src = _node(module)
        if src is None:
            continue
        for target in _imports(path, root):
            dst = _node(target)
            if dst is not None and dst != src:
                graph[src][dst].append(module)
    return graph


def cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def codec_modules(root: Path = ROOT) -> list[str]:
    names = set(CODEC_MODULES)
    for pkg in CODEC_PACKAGES:
        names.update(_module_name(p, root) for p in (root / pkg).glob("*.py"))
    return sorted(names)


class ImportCycleTests(SynchronousTestCase):
    """No subpackage imports, even lazily, one that imports it back."""

    def test_no_cycle_between_subpackages(self) -> None:
        graph = import_graph()
        found = cycles(graph)
        detail = [
            f"{a} -> {b} ({', '.join(sorted(set(graph[a][b])))})"
            for component in found for a in component for b in component
            if b in graph.get(a, {})
        ]
        self.assertEqual(found, [], "\n".join(detail))

    def test_graph_is_read(self) -> None:
        """The reader sees the edges that exist (an empty graph would pass vacuously)."""
        graph = import_graph()
        self.assertIn("sandesh", graph["ksync"])
        self.assertIn("ksync", graph["agent"])

    def test_a_cycle_is_found(self) -> None:
        """A made-up three-package cycle is reported as one component."""
        graph = {"a": {"b": ["vrtwist.a.x"]}, "b": {"c": ["vrtwist.b.y"]},
                 "c": {"a": ["vrtwist.c.z"]}, "d": {"a": ["vrtwist.d.w"]}}
        self.assertEqual(cycles(graph), [["a", "b", "c"]])

    def test_relative_and_lazy_imports_count(self) -> None:
        """``from ..x import y`` inside a function is an edge like any other."""
        base = tempfile.mkdtemp(prefix="layers-")
        self.addCleanup(shutil.rmtree, base)
        tmp = Path(base).resolve() / "vrtwist"
        (tmp / "a").mkdir(parents=True)
        (tmp / "b").mkdir()
        (tmp / "__init__.py").write_text("")
        (tmp / "a" / "__init__.py").write_text("")
        (tmp / "b" / "__init__.py").write_text("")
        (tmp / "a" / "m.py").write_text("def f():\n    from ..b import n\n")
        (tmp / "b" / "n.py").write_text("import vrtwist.a.m\n")
        graph = import_graph(tmp)
        self.assertEqual(dict(graph["a"]), {"b": ["vrtwist.a.m"]})
        self.assertEqual(cycles(graph), [["a", "b"]])


class CodecImportTests(SynchronousTestCase):
    """A codec module, imported alone in a fresh interpreter, loads no Twisted."""

    def test_codecs_import_no_twisted(self) -> None:
        modules = codec_modules()
        self.assertIn("vrtwist.sandesh.constants", modules)
        script = (
            "import importlib, os, sys\n"
            "bad = []\n"
            "for name in sys.argv[1:]:\n"
            "    pid = os.fork()\n"
            "    if pid == 0:\n"
            "        importlib.import_module(name)\n"
            "        twisted = sorted(m for m in sys.modules if m.split('.')[0] == 'twisted')\n"
            "        os._exit(1 if twisted else 0)\n"
            "    if os.waitpid(pid, 0)[1]:\n"
            "        bad.append(name)\n"
            "print(' '.join(bad))\n"
        )
        out = subprocess.run([sys.executable, "-c", script, *modules], check=True,
                             capture_output=True, text=True, timeout=120)
        self.assertEqual(out.stdout.split(), [], "these codec modules import Twisted")

    def test_the_check_sees_twisted(self) -> None:
        """The same check flags a module that does import Twisted."""
        script = (
            "import importlib, sys\n"
            "importlib.import_module(sys.argv[1])\n"
            "print(any(m.split('.')[0] == 'twisted' for m in sys.modules))\n"
        )
        out = subprocess.run([sys.executable, "-c", script, "vrtwist.xmpp.session"],
                             check=True, capture_output=True, text=True, timeout=60)
        self.assertEqual(out.stdout.strip(), "True")


class SeamOwnershipTests(SynchronousTestCase):
    """The XMPP link owns the seams it consumes; the agent re-exports and implements them."""

    def test_one_local_route(self) -> None:
        from vrtwist.agent import interfaces as agent
        from vrtwist.xmpp import agent_link, interfaces

        self.assertIs(agent.LocalRoute, interfaces.LocalRoute)
        self.assertIs(agent_link.LocalRouteInfo, interfaces.LocalRoute)
        self.assertIs(agent.IControllerLink, interfaces.IControllerLink)
        self.assertIs(agent.IRouteProgrammer, interfaces.IRouteProgrammer)

    def test_xmpp_imports_no_agent(self) -> None:
        self.assertNotIn("agent", import_graph()["xmpp"])

    def test_shmem_needs_nothing_of_datapath(self) -> None:
        """The dependency runs one way: datapath (its service, its pipeline reading the
        flow table) may use shmem; shmem plugs into the ksync seams only."""
        graph = import_graph()
        self.assertNotIn("datapath", graph["shmem"])
        self.assertIn("service", {m.rpartition(".")[2] for m in graph["datapath"]["shmem"]})

    def test_datapath_seams_stay_importable(self) -> None:
        """The packet path imports these from vrtwist.datapath.interfaces: one object each."""
        from vrtwist.datapath import interfaces as dp
        from vrtwist.ksync import interfaces as ks

        for name in ("IRequestHandler", "IBridgeRoutes", "IDatapath"):
            self.assertIs(getattr(dp, name), getattr(ks, name))
        for name in ("IFrameOutput", "IPacketTrap", "IPacketPipeline"):
            self.assertTrue(dp.__dict__[name].isOrExtends(dp.Interface))


def _assigned(path: Path) -> set[str]:
    """Module-level names ``path`` assigns (imports excluded)."""
    names: set[str] = set()
    for n in ast.parse(path.read_text()).body:
        targets = n.targets if isinstance(n, ast.Assign) else (
            [n.target] if isinstance(n, ast.AnnAssign) else [])
        for t in targets:
            names.update(x.id for x in ast.walk(t) if isinstance(x, ast.Name))
    return names


class SingleHomeTests(SynchronousTestCase):
    """vr.sandesh constants have one home; other modules import them from it."""

    def test_datapath_constants_define_no_sandesh_name(self) -> None:
        sandesh = _assigned(ROOT / "sandesh" / "constants.py")
        for module in ("datapath/constants.py", "shmem/requests.py"):
            both = sorted(_assigned(ROOT / module) & sandesh)
            self.assertEqual(both, [], module)

    def test_datapath_constants_keep_their_names(self) -> None:
        """The names the packet path imports from vrtwist.datapath.constants are still there."""
        from vrtwist.datapath import constants as C
        from vrtwist.sandesh import constants as S

        self.assertEqual(C.VIF_TYPE_VIRTUAL, S.VIF_TYPE_VIRTUAL)
        self.assertEqual(C.OP_DUMP, S.DUMP)
        self.assertEqual(C.DUMP_INCOMPLETE, S.VR_MESSAGE_DUMP_INCOMPLETE)
        self.assertEqual(C.NH_TYPE_NAMES[S.NH_TUNNEL], "Tunnel")
        for name in C.__all__:
            self.assertTrue(hasattr(C, name), name)


class ExceptionNameTests(SynchronousTestCase):
    """No two exception classes in vrtwist share a name (an ``except`` must say which)."""

    def test_exception_names_are_unique(self) -> None:
        classes: dict[str, list[tuple[str, list[str]]]] = defaultdict(list)
        for path in sorted(ROOT.rglob("*.py")):
            for n in ast.walk(ast.parse(path.read_text())):
                if isinstance(n, ast.ClassDef):
                    bases = [ast.unparse(b).rpartition(".")[2] for b in n.bases]
                    classes[n.name].append((_module_name(path), bases))
        exceptions: set[str] = {"Exception", "BaseException", "OSError", "ValueError",
                                "LookupError", "KeyError", "RuntimeError", "TypeError",
                                "EOFError", "ConnectionError", "IOError"}
        grew = True
        while grew:  # classes whose base is an exception, transitively
            found = {name for name, defs in classes.items()
                     if any(set(bases) & exceptions for _, bases in defs)}
            grew = not found <= exceptions
            exceptions |= found
        twice = {name: [m for m, _ in defs] for name, defs in classes.items()
                 if name in exceptions and len(defs) > 1}
        self.assertIn("KsyncError", exceptions)
        self.assertEqual(twice, {})
