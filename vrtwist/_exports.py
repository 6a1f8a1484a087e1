"""Lazy re-exports for the subpackages' ``__init__`` modules.

Each subpackage names its public API in ``__all__`` (as klein's ``__init__`` does) but
imports a name's module only when the name is first used. An eager ``__init__`` would make
``import vrtwist.xmpp.framing`` (a codec that must load no Twisted, see docs/layers.md)
import the whole package, and every command-line tool pay for the daemons it never runs.

A package writes::

    TYPE_CHECKING = False        # mypy takes it as true; importing typing is not needed
    if TYPE_CHECKING:            # what mypy and readers see
        from vrtwist.pkg.mod import Name
    __all__ = ["Name"]
    __getattr__, __dir__ = lazy_exports(__name__, {"mod": ("Name",)})

``tests/test_exports.py`` checks that the three agree and that every name imports.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # importing typing or collections.abc here would cost every codec user
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, modules: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """A module ``__getattr__`` and ``__dir__`` that load ``modules``' names on first use.

    ``modules`` maps a submodule (relative to ``package``) to the names it provides.
    A loaded name is stored in the package's namespace, so it is looked up only once.
    """
    where: dict[str, str] = {}
    for module, names in modules.items():
        for name in names:
            if name in where:
                raise ValueError(f"{package}: {name!r} is exported from two modules")
            where[name] = f"{package}.{module}"
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> object:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(where))

    return __getattr__, __dir__
