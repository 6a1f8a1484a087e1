"""Every test asserts something: a test method that checks nothing passes whatever the
code does. Read from the test sources with ``ast``, like ``test_layers.py`` reads imports.

A test method counts as asserting when its body (at any depth) has an ``assert``
statement, calls something named ``assert*``/``fail*``, ``successResultOf``,
``verifyObject``/``verifyClass``, ``raises``, ``skipTest``, ``wait_for``/``wait_until``,
raises ``SkipTest``, or calls a helper of the test tree that does so itself.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

TESTS = Path(__file__).resolve().parent

#: calls that check something, by their (attribute) name; ``wait_for``/``wait_until``
#: (tests/polling.py) fail when what they wait for never happens
CHECKS = frozenset({"successResultOf", "verifyObject", "verifyClass", "raises", "skipTest",
                    "wait_for", "wait_until"})

Function = ast.FunctionDef | ast.AsyncFunctionDef


def _calls(fn: ast.AST) -> set[tuple[bool, str]]:
    """``(on_self, name)`` of every call in ``fn``: ``self.x()`` is ``(True, "x")``,
    ``a.b.x()`` and ``x()`` are ``(False, "x")``."""
    found: set[tuple[bool, str]] = set()
    for n in ast.walk(fn):
        if isinstance(n, ast.Call):
            f = n.func
            if isinstance(f, ast.Attribute):
                on_self = isinstance(f.value, ast.Name) and f.value.id in ("self", "cls")
                found.add((on_self, f.attr))
            elif isinstance(f, ast.Name):
                found.add((False, f.id))
    return found


def _checks_directly(fn: ast.AST) -> bool:
    for n in ast.walk(fn):
        if isinstance(n, ast.Assert):
            return True
        if isinstance(n, ast.Raise) and n.exc is not None and "SkipTest" in ast.unparse(n.exc):
            return True
    return any(name.startswith(("assert", "fail")) or name in CHECKS for _, name in _calls(fn))


def _test_imports(tree: ast.Module) -> set[str]:
    """Names a test file imports from the test tree (``from tests.x import y``, ``from
    .x import y``)."""
    names: set[str] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and (n.level or (n.module or "").startswith("tests")):
            names.update(a.asname or a.name for a in n.names)
    return names


def silent_tests(root: Path = TESTS) -> list[str]:
    """``file:line Class.test`` of every test method that asserts nothing.

    A helper gives credit when it asserts itself or through other helpers: a plain
    call only to a helper of the same file or one imported from the test tree, a
    ``self.`` call to a method of any test class (a base class may live elsewhere).
    """
    files = {p: ast.parse(p.read_text(), str(p)) for p in sorted(root.rglob("*.py"))}
    functions = [(path, cls, fn) for path, tree in files.items()
                 for cls, fn in _functions(tree)]
    calls = {id(fn): _calls(fn) for _, _, fn in functions}
    imported = {path: _test_imports(tree) for path, tree in files.items()}
    asserting = {id(fn) for _, _, fn in functions if _checks_directly(fn)}
    grew = True
    while grew:  # helpers that call helpers that assert
        methods = {fn.name for _, cls, fn in functions if cls and id(fn) in asserting}
        local = {(path, fn.name) for path, _, fn in functions if id(fn) in asserting}
        everywhere = {fn.name for _, _, fn in functions if id(fn) in asserting}
        before = len(asserting)
        for path, _, fn in functions:
            for on_self, name in calls[id(fn)]:
                if ((on_self and name in methods) or (path, name) in local
                        or (name in imported[path] and name in everywhere)):
                    asserting.add(id(fn))
                    break
        grew = len(asserting) > before
    silent = []
    for path, cls, fn in functions:
        if not fn.name.startswith("test") or not path.name.startswith("test"):
            continue
        if (cls is None and not fn.name.startswith("test_")) or id(fn) in asserting:
            continue
        where = f"{path.relative_to(root.parent)}:{fn.lineno} {cls + '.' if cls else ''}{fn.name}"
        silent.append(where)
    return silent


def _functions(tree: ast.Module) -> Iterator[tuple[str | None, Function]]:
    """Every function of ``tree``: (enclosing top-level class or None, definition)."""
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for item in ast.walk(node):
                if isinstance(item, Function):
                    yield node.name, item
        elif isinstance(node, Function):
            for item in ast.walk(node):
                if isinstance(item, Function):
                    yield None, item


class EveryTestAssertsTests(SynchronousTestCase):
    def test_no_silent_test(self) -> None:
        self.assertEqual(silent_tests(), [])

    def test_a_silent_test_is_found(self) -> None:
        """A made-up file: the test without a check is reported, the others are not."""
        root = Path(self.mktemp()) / "tests"
        root.mkdir(parents=True)
        (root / "test_x.py").write_text(
            "class T:\n"
            "    def test_nothing(self):\n"
            "        x = 1\n"
            "    def test_direct(self):\n"
            "        self.assertEqual(1, 1)\n"
            "    def test_through_helper(self):\n"
            "        self.check()\n"
            "    def check(self):\n"
            "        assert True\n"
            "    def test_skip(self):\n"
            "        raise SkipTest('no')\n"
            "    async def test_result(self):\n"
            "        self.successResultOf(d)\n"
            "    def test_other_files_helper(self):\n"
            "        pump.drain()\n"
            "    def test_imported_helper(self):\n"
            "        expect()\n"
            "from tests.y import expect\n"
        )
        (root / "y.py").write_text(
            "def drain():\n    assert 1\ndef expect():\n    assert 1\n")
        self.assertEqual(silent_tests(root), ["tests/test_x.py:2 T.test_nothing",
                                              "tests/test_x.py:14 T.test_other_files_helper"])
