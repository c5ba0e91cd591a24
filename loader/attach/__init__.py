"""Attach kinds: how a BPF program is attached when libbpf's auto-attach cannot do it (it needs
a perf event per CPU, a binary and function, a cgroup, a socket, an iterator). One module per
kind, registered under the key a manifest uses in a program's ``attach:``; adding a kind is
adding a module here.

    attach:
      do_sample: {perf_event: {frequency: 99}}     # <BPF program>: {<kind>: {options}}
      handle_exit: {autoload: false}               # not loaded at all

A program the manifest does not name is auto-attached by libbpf from its SEC() name. Each kind
parses its options at manifest time (errors name the line) and attaches after load, returning
the links it made; every link is destroyed at detach, in reverse order.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from yaml.nodes import Node

    from loader.libbpf import BpfObject
    from loader.model.yamldoc import YamlDoc


class Link(Protocol):
    """Something attached; ``destroy()`` undoes it (idempotent)."""

    def destroy(self) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class AttachKind:
    """A registered attach kind."""

    key: str                                   # the manifest key: perf_event, uprobe, ...
    summary: str
    sections: tuple[str, ...]                  # SEC() prefixes it attaches (for messages)
    parse: Callable[[YamlDoc, Node, str], Mapping[str, Any]]
    attach: Callable[[BpfObject, str, Mapping[str, Any]], list[Link]]


_REGISTRY: dict[str, AttachKind] = {}
_LOADED = False


def register(kind: AttachKind) -> AttachKind:
    if kind.key in _REGISTRY:
        raise ValueError(f"attach kind {kind.key!r} registered twice")
    _REGISTRY[kind.key] = kind
    return kind


def attach_kinds() -> dict[str, AttachKind]:
    """Every kind, by manifest key (each module of this package registers its own on import)."""
    global _LOADED
    if not _LOADED:
        for module in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{module.name}")
        _LOADED = True
    return dict(sorted(_REGISTRY.items()))
