"""Kinds by name, each registered by a module of one package: adding a kind is adding a module.

``loader/outputs/`` (channel types) and ``loader/attach/`` (attach kinds) are such packages; the
first call to ``all()`` imports every module of the package, and each module registers its kind.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, package: str, key: Callable[[T], str], what: str) -> None:
        self.package, self.key, self.what = package, key, what
        self._kinds: dict[str, T] = {}
        self._loaded = False

    def register(self, kind: T) -> T:
        name = self.key(kind)
        if name in self._kinds:
            raise ValueError(f"{self.what} {name!r} registered twice")
        self._kinds[name] = kind
        return kind

    def all(self) -> dict[str, T]:
        """Every kind by name, sorted (the package's modules are imported the first time)."""
        if not self._loaded:
            package = importlib.import_module(self.package)
            for module in pkgutil.iter_modules(package.__path__):
                importlib.import_module(f"{self.package}.{module.name}")
            self._loaded = True
        return dict(sorted(self._kinds.items()))
