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

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from loader.registry import Registry

if TYPE_CHECKING:
    from yaml.nodes import Node

    from loader.libbpf.core import BpfObject
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


_KINDS: Registry[AttachKind] = Registry(__name__, lambda kind: kind.key, "attach kind")
register = _KINDS.register


def attach_kinds() -> dict[str, AttachKind]:
    """Every kind, by manifest key (each module of this package registers its own)."""
    return _KINDS.all()
