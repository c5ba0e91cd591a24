"""A tiny BTF *encoder* for unit tests: assemble BTF bytes type by type, then parse them.

Shared by test_btf.py (the reader) and test_decode.py (event decoding). Layout as in the
kernel's Documentation/bpf/btf.rst: 24-byte header, type section, string section.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

# BTF_KIND_* numbers from include/uapi/linux/btf.h.
K_INT, K_PTR, K_ARRAY, K_STRUCT, K_UNION, K_ENUM, K_FWD, K_TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
K_VOLATILE, K_CONST, K_RESTRICT, K_FUNC, K_FUNC_PROTO, K_VAR, K_DATASEC = 9, 10, 11, 12, 13, 14, 15
K_FLOAT, K_DECL_TAG, K_TYPE_TAG, K_ENUM64 = 16, 17, 18, 19


@dataclass(kw_only=True)
class BtfEncoder:
    """Assembles header + type section + string section; each add_* returns the new type id."""

    order: str = "<"
    words: list[int] = field(default_factory=list)
    strings: bytearray = field(default_factory=lambda: bytearray(b"\0"))
    count: int = 0

    def s(self, name: str) -> int:
        if not name:
            return 0
        off = len(self.strings)
        self.strings += name.encode() + b"\0"
        return off

    def raw(self, name: str, kind: int, vlen: int, size_or_type: int, *extra: int,
            kind_flag: bool = False) -> int:
        info = kind << 24 | vlen | (1 << 31 if kind_flag else 0)
        self.words += [self.s(name), info, size_or_type, *extra]
        self.count += 1
        return self.count

    def int_(self, name: str, size: int, *, signed: bool = False, char: bool = False,
             boolean: bool = False, bits: int | None = None, offset: int = 0) -> int:
        enc = (1 if signed else 0) | (2 if char else 0) | (4 if boolean else 0)
        nbits = size * 8 if bits is None else bits
        return self.raw(name, K_INT, 0, size, enc << 24 | offset << 16 | nbits)

    def ref(self, kind: int, type_id: int, name: str = "") -> int:
        return self.raw(name, kind, 0, type_id)

    def array(self, elem: int, nelems: int, index: int = 0) -> int:
        return self.raw("", K_ARRAY, 0, 0, elem, index, nelems)

    def struct(self, name: str, size: int, members: list[tuple[str, int, int]], *,
               union: bool = False, kind_flag: bool = False) -> int:
        extra = [w for m_name, m_type, m_off in members for w in (self.s(m_name), m_type, m_off)]
        kind = K_UNION if union else K_STRUCT
        return self.raw(name, kind, len(members), size, *extra, kind_flag=kind_flag)

    def enum(self, name: str, values: list[tuple[str, int]], *, signed: bool = False,
             size: int = 4) -> int:
        extra = [w for n, v in values for w in (self.s(n), v & 0xFFFFFFFF)]
        return self.raw(name, K_ENUM, len(values), size, *extra, kind_flag=signed)

    def enum64(self, name: str, values: list[tuple[str, int]], *, signed: bool = False) -> int:
        extra = [w for n, v in values
                 for w in (self.s(n), v & 0xFFFFFFFF, (v >> 32) & 0xFFFFFFFF)]
        return self.raw(name, K_ENUM64, len(values), 8, *extra, kind_flag=signed)

    def var(self, name: str, type_id: int, linkage: int = 1) -> int:
        return self.raw(name, K_VAR, 0, type_id, linkage)

    def datasec(self, name: str, secinfos: list[tuple[int, int, int]], size: int = 0) -> int:
        extra = [w for info in secinfos for w in info]
        return self.raw(name, K_DATASEC, len(secinfos), size, *extra)

    def map_uint(self, value: int, int_id: int) -> int:
        """__uint(name, value) is `int (*name)[value]`: the type id of that pointer."""
        return self.ref(K_PTR, self.array(int_id, value))

    def build(self, *, magic: int = 0xEB9F) -> bytes:
        types = struct.pack(f"{self.order}{len(self.words)}I", *self.words)
        header = struct.pack(f"{self.order}HBBIIIII", magic, 1, 0, 24, 0, len(types),
                             len(types), len(self.strings))
        return header + types + bytes(self.strings)
