"""Lazy package attributes (PEP 562): a package names what it exports; nothing is imported
until first used.

``pysteer --help`` and ``import pysteer`` must not pay for torch and transformers (seconds),
so the package ``__init__``s import no submodule eagerly. Each declares a table::

    __getattr__, __dir__, __all__ = lazy_exports(__name__, {
        ".collect": ("ActivationBatch", "collect_activations"),
        ".saif": ("SaifResult", "saif"),
    })
    if TYPE_CHECKING:  # what static tools see; tests check it matches the table
        from .collect import ActivationBatch, collect_activations
        from .saif import SaifResult, saif

and ``from package import saif`` imports ``package.saif`` the first time, then caches the
attribute in the package so later lookups are plain attribute reads.

Where an exported name is also its submodule's name (``pysteer.discovery.saif``, the
function, from ``discovery/saif.py``), the export wins whichever is imported first, as it
did when the ``__init__`` imported eagerly: the import system binds a loaded submodule to
its parent's attribute, and the package's class turns that binding into the export.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any, Callable, Mapping, Sequence

__all__ = ["lazy_exports"]


def lazy_exports(package: str, table: Mapping[str, Sequence[str]],
                 submodules: Sequence[str] = ()) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """(``__getattr__``, ``__dir__``, ``__all__``) for ``package``.

    ``table`` maps a submodule (relative, ``".collect"``) to the names it exports;
    ``submodules`` are submodules reachable as attributes (``pysteer.models``) without an
    explicit import. ``__all__`` lists the table's names in order.
    """
    where = {name: module for module, names in table.items() for name in names}
    duplicated = len(where) != sum(len(names) for names in table.values())
    if duplicated:
        raise RuntimeError(f"{package}: a name is exported by two submodules")
    reachable = frozenset(submodules)
    module = sys.modules[package]
    module.__class__ = _Package
    module._lazy_shadowed = {f"{package}.{name}": name for name, sub in where.items()
                             if sub == f".{name}"}

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        if name in where:
            value = getattr(importlib.import_module(where[name], package), name)
        elif name in reachable:
            value = importlib.import_module(f".{name}", package)
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(sys.modules[package], name, value)  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where) | reachable)

    return __getattr__, __dir__, list(where)


class _Package(types.ModuleType):
    """A lazy package: binding a submodule whose name the package exports from it keeps the export."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and \
                self.__dict__.get("_lazy_shadowed", {}).get(value.__name__) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)
