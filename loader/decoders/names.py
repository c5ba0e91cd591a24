"""Integer → name tables for the C encoder: enum names from BTF, errno names.

Enum values are per kernel (SKB_DROP_REASON_NO_SOCKET is 2 on 6.1 and 3 on 6.12 and 6.18), so a
program's enum fields are named from the BTF of the node that runs it, found by the enum's name;
only when the node's BTF lacks that enum are the object's own values used.
"""

from __future__ import annotations

import errno
from functools import cache
from pathlib import Path

from loader.kernel.btf import Btf
from loader.kernel.hooks import kernel_btf
from loader.libbpf.encode import NameTable


def enum_table(btf: Btf, name: str, *, strip_prefix: bool = False) -> NameTable | None:
    """The names of enum ``name`` in ``btf`` (enum or enum64), or None when it has none.
    ``strip_prefix`` drops the enum's name as a prefix where an enumerator carries it
    (SKB_DROP_REASON_NO_SOCKET → NO_SOCKET; SKB_CONSUMED stays)."""
    t = btf.by_name(name, "enum") or btf.by_name(name, "enum64")
    if t is None:
        return None
    rows = list(t.enumerators)
    if strip_prefix:
        prefix = name.upper() + "_"
        rows = [(n[len(prefix):] if n.startswith(prefix) and n != prefix else n, v) for n, v in rows]
    return NameTable(names=tuple((v, n) for n, v in rows), signed=bool(t.kind_flag))


def errno_table() -> NameTable:
    """errno names by number (this machine's: errno numbers differ between arches), for fields
    that hold 0 or -errno: a negative value becomes its name, others stay numbers."""
    return NameTable(names=tuple(sorted(errno.errorcode.items())), negated=True, signed=True)


class NodeEnums:
    """Enum tables from this node's BTF (parsed once, when the first enum is asked for)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._btf: Btf | None = None
        self._tables: dict[str, NameTable | None] = {}

    def __call__(self, name: str) -> NameTable | None:
        if name not in self._tables:
            if self._btf is None:
                self._btf = kernel_btf(str(self.path)) or Btf.parse(_EMPTY_BTF)
            self._tables[name] = enum_table(self._btf, name)
        return self._tables[name]


# A valid BTF with no types: what a node without /sys/kernel/btf/vmlinux has to offer.
_EMPTY_BTF = bytes.fromhex("9feb0100" "18000000" "00000000" "00000000" "00000000" "01000000") + b"\0"


@cache
def node_enums(path: str = "/sys/kernel/btf/vmlinux") -> NodeEnums:
    return NodeEnums(Path(path))
