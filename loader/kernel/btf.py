"""A pure-Python reader of BTF (BPF Type Format), as described in the kernel's
Documentation/bpf/btf.rst.

It reads the ``.BTF`` section of a clang-built object or a whole raw BTF blob such as
``/sys/kernel/btf/vmlinux``. Parsing only walks the type section once to find where each
record starts (about 0.05 s for vmlinux); a type is decoded, and its references checked,
the first time it is asked for. ``Btf.validate()`` decodes everything up front.

On top of the raw types it answers the two questions the loader has: how big a type is
(``size_of``) and which maps an object declares in its ``.maps`` section (``map_defs``).
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from loader.errors import BpfDepotError

Kind = Literal[
    "void", "int", "ptr", "array", "struct", "union", "enum", "fwd", "typedef", "volatile",
    "const", "restrict", "func", "func_proto", "var", "datasec", "float", "decl_tag",
    "type_tag", "enum64",
]

# Index = BTF_KIND_* number from include/uapi/linux/btf.h.
KINDS: tuple[Kind, ...] = (
    "void", "int", "ptr", "array", "struct", "union", "enum", "fwd", "typedef", "volatile",
    "const", "restrict", "func", "func_proto", "var", "datasec", "float", "decl_tag",
    "type_tag", "enum64",
)

BTF_MAGIC = 0xEB9F
_HEADER = "HBBIIIII"  # magic, version, flags, hdr_len, type_off, type_len, str_off, str_len
_HEADER_SIZE = struct.calcsize("<" + _HEADER)  # 24 bytes

# Words (u32) that follow the 3-word `struct btf_type`: fixed part + per-vlen part, by kind.
# FUNC's vlen is its linkage, not a count, hence 0 per vlen.
_EXTRA_FIXED = (0, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0)
_EXTRA_PER_VLEN = (0, 0, 0, 0, 3, 3, 2, 0, 0, 0, 0, 0, 0, 2, 0, 3, 0, 0, 0, 3)

# Kinds whose third word is a type id rather than a size.
_REF_KINDS = frozenset(("ptr", "typedef", "volatile", "const", "restrict", "func", "func_proto",
                        "var", "decl_tag", "type_tag"))
_MODIFIERS = frozenset(("typedef", "volatile", "const", "restrict", "type_tag"))
_SIZED = frozenset(("int", "struct", "union", "enum", "enum64", "datasec", "float"))

# Same bound as libbpf's MAX_RESOLVE_DEPTH: deeper chains mean a loop in broken BTF.
_MAX_DEPTH = 32
_PTR_SIZE = 8  # BPF is a 64-bit target; BTF itself does not record pointer size

# enum bpf_map_type in include/uapi/linux/bpf.h (19 and 21 are the *_DEPRECATED aliases).
MAP_TYPE_NAMES: dict[int, str] = {
    0: "unspec", 1: "hash", 2: "array", 3: "prog_array", 4: "perf_event_array",
    5: "percpu_hash", 6: "percpu_array", 7: "stack_trace", 8: "cgroup_array", 9: "lru_hash",
    10: "lru_percpu_hash", 11: "lpm_trie", 12: "array_of_maps", 13: "hash_of_maps",
    14: "devmap", 15: "sockmap", 16: "cpumap", 17: "xskmap", 18: "sockhash",
    19: "cgroup_storage", 20: "reuseport_sockarray", 21: "percpu_cgroup_storage",
    22: "queue", 23: "stack", 24: "sk_storage", 25: "devmap_hash", 26: "struct_ops",
    27: "ringbuf", 28: "inode_storage", 29: "task_storage", 30: "bloom_filter",
    31: "user_ringbuf", 32: "cgrp_storage", 33: "arena",
}

# Members of a BTF-defined map written as __uint(name, N), i.e. `int (*name)[N]`.
_MAP_UINT_FIELDS = frozenset(("type", "max_entries", "map_flags", "key_size", "value_size",
                              "numa_node", "pinning", "map_extra"))


class BtfFormatError(BpfDepotError):
    """The BTF bytes are malformed, or a question about them cannot be answered."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Member:
    """One struct/union member; ``bitfield_size`` 0 means not a bitfield."""

    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class BtfType:
    """One decoded BTF type; fields that do not apply to ``kind`` keep their defaults."""

    id: int
    kind: Kind
    name: str  # '' if anonymous
    size: int = 0  # bytes, for int/struct/union/enum/enum64/datasec/float
    type_id: int = 0  # referenced type; the return type for func_proto
    # int
    int_bits: int = 0
    int_offset: int = 0
    int_signed: bool = False
    int_char: bool = False
    int_bool: bool = False
    # array
    elem_type_id: int = 0
    index_type_id: int = 0
    nelems: int = 0
    # struct/union
    members: tuple[Member, ...] = ()
    # enum/enum64: (name, value), signed when kind_flag is set
    enumerators: tuple[tuple[str, int], ...] = ()
    # datasec: (var type_id, offset, size)
    secinfos: tuple[tuple[int, int, int], ...] = ()
    linkage: int = 0  # var: 0 static, 1 global, 2 extern; func: the same numbering
    kind_flag: bool = False  # fwd: union if set; struct/union: bitfield offsets; enum: signed
    params: tuple[tuple[str, int], ...] = ()  # func_proto; ('', 0) last means varargs
    component_idx: int = -1  # decl_tag: member/param index, -1 = the type itself


@dataclass(frozen=True, slots=True, kw_only=True)
class MapDef:
    """A map declared the BTF way (``struct {...} name SEC(".maps")``)."""

    name: str
    map_type: int  # BPF_MAP_TYPE_* number
    type_name: str  # MAP_TYPE_NAMES entry, or 'unknown(N)'
    max_entries: int = 0
    key_size: int = 0  # bytes; from __uint(key_size, N) or size_of(key type)
    value_size: int = 0
    key_type_id: int = 0  # 0 when declared only by size
    value_type_id: int = 0
    map_flags: int = 0
    numa_node: int = 0
    pinning: int = 0
    map_extra: int = 0


def _s32(v: int) -> int:
    return v - (1 << 32) if v & 0x80000000 else v


_NATIVE_WORDS = 1 << 16  # a type section this big (a kernel's) is indexed in C


def _native():
    """The compiled helpers (ffi, lib), or None where the cffi module is not built."""
    try:
        from loader._libbpf import ffi, lib
    except ImportError:
        return None
    return ffi, lib


def _s64(v: int) -> int:
    return v - (1 << 64) if v & (1 << 63) else v


class Btf:
    """Types and strings of one BTF blob; build with ``Btf.parse(data)``."""

    __slots__ = ("_words", "_starts", "_strings", "_cache", "_by_name_off", "_named", "byte_order")

    def __init__(self, *, words: array, starts: list[int], strings: bytes,
                 byte_order: Literal["little", "big"]) -> None:
        self._words = words  # the type section as u32 in host order
        self._starts = starts  # word index of type id i+1
        self._strings = strings
        self._cache: list[BtfType | None] = [None] * (len(starts) + 1)
        self._cache[0] = BtfType(id=0, kind="void", name="")
        self._by_name_off: dict[int, list[int]] | None = None  # built on first by_name
        self._named: dict[tuple[str, str | None], int | None] = {}  # by_name's answers
        self.byte_order = byte_order

    @classmethod
    def parse(cls, data: bytes) -> Btf:
        """Check the header and section bounds and index every type record."""
        data = bytes(data)
        if len(data) < 4:
            raise BtfFormatError(f"BTF: {len(data)} bytes is too short for a BTF header",
                                 hint="pass the .BTF section or a /sys/kernel/btf/* file")
        if data[:2] == b"\x9f\xeb":
            order, endian = "<", "little"
        elif data[:2] == b"\xeb\x9f":
            order, endian = ">", "big"
        else:
            magic = int.from_bytes(data[:2], "little")
            raise BtfFormatError(
                f"BTF: bad magic 0x{magic:04x} at offset 0 (expected 0x{BTF_MAGIC:04x})",
                hint="pass the .BTF section of the object or a /sys/kernel/btf/* file")
        if len(data) < _HEADER_SIZE:
            raise BtfFormatError(
                f"BTF: {len(data)} bytes is too short for the {_HEADER_SIZE}-byte header")
        _, version, _, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
            order + _HEADER, data, 0)
        if version != 1:
            raise BtfFormatError(f"BTF: unsupported version {version} (only 1 is defined)")
        if hdr_len < _HEADER_SIZE or hdr_len > len(data):
            raise BtfFormatError(f"BTF: header length {hdr_len} outside 24..{len(data)}")
        # Section offsets count from the end of the header.
        for what, off, length in (("type", type_off, type_len), ("string", str_off, str_len)):
            end = hdr_len + off + length
            if end > len(data):
                raise BtfFormatError(
                    f"BTF: {what} section at offset {hdr_len + off} with {length} bytes "
                    f"runs past the end of the data ({len(data)} bytes)")
        if type_off % 4 or type_len % 4:
            raise BtfFormatError(
                f"BTF: type section offset {type_off} / length {type_len} not 4-byte aligned")
        strings = data[hdr_len + str_off : hdr_len + str_off + str_len]
        if strings[:1] != b"\0":
            raise BtfFormatError("BTF: string section does not start with the empty string")
        words = array("I", data[hdr_len + type_off : hdr_len + type_off + type_len])
        if words.itemsize != 4:  # pragma: no cover - every CPython platform has 4-byte 'I'
            raise BtfFormatError("BTF: this Python has no 4-byte unsigned array type")
        if endian != sys.byteorder:
            words.byteswap()
        return cls(words=words, starts=cls._index(words, hdr_len + type_off), strings=strings,
                   byte_order=endian)

    def name_offsets(self) -> array:
        """Every named type as ``name_off << 32 | id``, sorted (so a name's types are together,
        lowest id first): the look-up by name builder/relocate.py makes for a kernel's BTF."""
        native = _native()
        if native is not None and self._starts:
            ffi, lib = native
            out = array("Q", bytes(8 * len(self._starts)))
            n = lib.bpfdepot_btf_names(ffi.from_buffer("uint32_t[]", self._words),
                                       ffi.from_buffer("uint32_t[]", array("I", self._starts)),
                                       len(self._starts), ffi.from_buffer("uint64_t[]", out))
            return out[:n]
        words = self._words
        return array("Q", sorted(words[start] << 32 | tid
                                 for tid, start in enumerate(self._starts, 1) if words[start]))

    @staticmethod
    def _index(words: array, base: int) -> list[int]:
        """Word index of each type record; ``base`` is the section's byte offset, for errors."""
        if len(words) >= _NATIVE_WORDS and (native := _native()) is not None:
            ffi, lib = native  # a kernel's BTF: the same loop in C (loader/native/bpfdepot_btf.c)
            cap = len(words) // 3 + 1
            out = array("I", bytes(4 * cap))
            n = lib.bpfdepot_btf_starts(ffi.from_buffer("uint32_t[]", words), len(words),
                                        ffi.from_buffer("uint32_t[]", out), cap)
            if n >= 0:
                return out[:n].tolist()
            # malformed: the loop below finds where, and says so
        starts: list[int] = []
        append = starts.append
        fixed, per_vlen = _EXTRA_FIXED, _EXTRA_PER_VLEN
        n = len(words)
        i = 0
        # Hot loop: ~150k iterations for vmlinux, so only the arithmetic that is needed.
        while i < n:
            if i + 3 > n:
                raise BtfFormatError(f"BTF: type {len(starts) + 1} at offset {base + 4 * i} "
                                     f"is cut off by the end of the type section")
            info = words[i + 1]
            kind = info >> 24 & 0x1F
            if kind == 0 or kind >= len(KINDS):
                raise BtfFormatError(f"BTF: type {len(starts) + 1} at offset {base + 4 * i} "
                                     f"has unknown kind {kind}")
            append(i)
            i += 3 + fixed[kind] + per_vlen[kind] * (info & 0xFFFF)
        if i != n:
            raise BtfFormatError(
                f"BTF: type {len(starts)} ({KINDS[words[starts[-1] + 1] >> 24 & 0x1F]}) runs "
                f"past the end of the type section ({4 * n} bytes)")
        return starts

    # ---- plain lookups -------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of types, counting void at id 0."""
        return len(self._starts) + 1

    def __iter__(self) -> Iterator[BtfType]:
        """Every type in id order, void first."""
        return (self.type(i) for i in range(len(self)))

    def type(self, type_id: int) -> BtfType:
        """The type with this id; id 0 is void."""
        if not 0 <= type_id < len(self._cache):
            raise BtfFormatError(f"BTF: no type {type_id}; ids run 0..{len(self._cache) - 1}")
        t = self._cache[type_id]
        if t is None:
            t = self._cache[type_id] = self._decode(type_id)
        return t

    def validate(self) -> None:
        """Decode every type, so any bad reference or string offset is raised now."""
        for _ in self:
            pass

    def by_name(self, name: str, kind: str | None = None) -> BtfType | None:
        """The lowest-id type called ``name`` (of ``kind`` if given), or None."""
        if self._by_name_off is None:
            index: dict[int, list[int]] = {}
            words = self._words
            for tid, start in enumerate(self._starts, 1):
                off = words[start]
                if off:
                    index.setdefault(off, []).append(tid)
            self._by_name_off = index
        if not name:
            return None  # anonymous types have no name to look up by
        if kind is not None and kind not in KINDS:
            raise ValueError(f"unknown BTF kind {kind!r}; expected one of {', '.join(KINDS)}")
        if (name, kind) in self._named:  # a kernel's BTF is asked the same names again and again
            found = self._named[(name, kind)]
            return None if found is None else self.type(found)
        # Search the string table for the name instead of decoding 150k names: an offset
        # may point into the tail of a longer string, so every hit is a candidate.
        needle = name.encode() + b"\0"
        strings, index, words, starts = self._strings, self._by_name_off, self._words, self._starts
        best: int | None = None
        pos = strings.find(needle)
        while pos != -1:
            for tid in index.get(pos, ()):
                if best is not None and tid >= best:
                    break
                if kind is None or KINDS[words[starts[tid - 1] + 1] >> 24 & 0x1F] == kind:
                    best = tid
                    break
            pos = strings.find(needle, pos + 1)
        self._named[(name, kind)] = best
        return None if best is None else self.type(best)

    # ---- derived questions ---------------------------------------------------------------

    def strip(self, type_id: int) -> BtfType:
        """Follow typedef/const/volatile/restrict/type_tag down to the underlying type."""
        t = self.type(type_id)
        for _ in range(_MAX_DEPTH):
            if t.kind not in _MODIFIERS:
                return t
            t = self.type(t.type_id)
        raise BtfFormatError(f"BTF: type {type_id} has a modifier chain deeper than "
                             f"{_MAX_DEPTH} (a loop?)")

    def size_of(self, type_id: int) -> int:
        """Size in bytes, following modifiers and vars; arrays multiply out, pointers are 8."""
        return self._size_of(type_id, 0)

    def _size_of(self, type_id: int, depth: int) -> int:
        if depth > _MAX_DEPTH:
            raise BtfFormatError(f"BTF: type {type_id} nests deeper than {_MAX_DEPTH} (a loop?)")
        t = self.strip(type_id)
        if t.kind in _SIZED:
            return t.size
        if t.kind == "ptr":
            return _PTR_SIZE
        if t.kind == "array":
            return t.nelems * self._size_of(t.elem_type_id, depth + 1)
        if t.kind == "var":
            return self._size_of(t.type_id, depth + 1)
        what = f"{t.kind} '{t.name}'" if t.name else t.kind
        raise BtfFormatError(f"BTF: type {t.id} ({what}) has no size")

    def datasec(self, name: str) -> BtfType | None:
        """The DATASEC for an ELF section such as '.maps' or '.bss', or None."""
        return self.by_name(name, "datasec")

    def datasec_vars(self, name: str) -> list[tuple[str, BtfType, int, int]]:
        """(var name, the VAR type, offset, size) for each variable in section ``name``.

        In an object straight from clang the offsets are still 0; libbpf fills them in
        from the ELF symbol table at open time.
        """
        sec = self.datasec(name)
        if sec is None:
            return []
        result = []
        for tid, off, size in sec.secinfos:
            var = self.type(tid)  # a VAR, or a FUNC for extern functions in '.ksyms'
            result.append((var.name, var, off, size))
        return result

    def map_defs(self) -> dict[str, MapDef]:
        """The maps of the '.maps' DATASEC, keyed by name, in declaration order."""
        return {var_name: self._map_def(var_name, var) for var_name, var, _, _ in
                self.datasec_vars(".maps")}

    def _map_def(self, map_name: str, var: BtfType) -> MapDef:
        body = self.strip(var.type_id)
        if body.kind not in ("struct", "union"):
            raise BtfFormatError(
                f"BTF: map '{map_name}' in .maps is a {body.kind}, not a struct",
                hint="declare maps as struct { __uint(type, ...); ... } name SEC(\".maps\")")
        uints: dict[str, int] = {}
        types: dict[str, int] = {}
        for m in body.members:
            if m.name not in _MAP_UINT_FIELDS and m.name not in ("key", "value"):
                continue  # e.g. `values` of map-in-map and prog_array: not ours to decode
            ptr = self.type(m.type_id)
            if ptr.kind != "ptr":
                raise BtfFormatError(
                    f"BTF: map '{map_name}' member '{m.name}' is a {ptr.kind}, not a pointer",
                    hint=f"use __uint({m.name}, N) or __type({m.name}, T) from bpf_helpers.h")
            if m.name in ("key", "value"):
                types[m.name] = ptr.type_id
                continue
            arr = self.strip(ptr.type_id)
            if arr.kind != "array":
                raise BtfFormatError(
                    f"BTF: map '{map_name}' member '{m.name}' points to a {arr.kind}, "
                    f"not an array", hint=f"use __uint({m.name}, N) from bpf_helpers.h")
            uints[m.name] = arr.nelems
        if "type" not in uints:
            raise BtfFormatError(f"BTF: map '{map_name}' in .maps has no map type",
                                 hint="add __uint(type, BPF_MAP_TYPE_...) to its struct")
        sizes: dict[str, int] = {}
        for which in ("key", "value"):
            declared = uints.get(f"{which}_size", 0)
            if which in types:
                actual = self.size_of(types[which])
                # libbpf refuses the same mismatch at open time; say so before it does.
                if declared and declared != actual:
                    raise BtfFormatError(
                        f"BTF: map '{map_name}': {which}_size {declared} disagrees with "
                        f"its {which} type of {actual} bytes",
                        hint=f"drop __uint({which}_size, ...) or fix __type({which}, ...)")
                declared = actual
            sizes[which] = declared
        map_type = uints["type"]
        return MapDef(
            name=map_name,
            map_type=map_type,
            type_name=MAP_TYPE_NAMES.get(map_type, f"unknown({map_type})"),
            max_entries=uints.get("max_entries", 0),
            key_size=sizes["key"],
            value_size=sizes["value"],
            key_type_id=types.get("key", 0),
            value_type_id=types.get("value", 0),
            map_flags=uints.get("map_flags", 0),
            numa_node=uints.get("numa_node", 0),
            pinning=uints.get("pinning", 0),
            map_extra=uints.get("map_extra", 0),
        )

    # ---- decoding ------------------------------------------------------------------------

    def _str(self, off: int, type_id: int) -> str:
        strings = self._strings
        if off >= len(strings):
            raise BtfFormatError(f"BTF: type {type_id} names string offset {off} beyond "
                                 f"the {len(strings)}-byte string section")
        end = strings.find(b"\0", off)
        if end == -1:
            raise BtfFormatError(f"BTF: type {type_id} names a string at offset {off} "
                                 f"that is not NUL-terminated")
        try:
            return strings[off:end].decode()
        except UnicodeDecodeError as exc:
            raise BtfFormatError(f"BTF: type {type_id} names a string at offset {off} "
                                 f"that is not UTF-8: {exc}") from None

    def _ref(self, ref: int, type_id: int) -> int:
        if ref >= len(self._cache):
            raise BtfFormatError(f"BTF: type {type_id} refers to type {ref} beyond "
                                 f"{len(self._cache)} types")
        return ref

    def _decode(self, tid: int) -> BtfType:
        w = self._words
        i = self._starts[tid - 1]
        name_off, info, size_or_type = w[i], w[i + 1], w[i + 2]
        kind = KINDS[info >> 24 & 0x1F]
        vlen = info & 0xFFFF
        kind_flag = bool(info >> 31)
        name = self._str(name_off, tid)
        j = i + 3  # start of the kind-specific data
        common: dict[str, Any] = {"id": tid, "kind": kind, "name": name, "kind_flag": kind_flag}

        if kind in _REF_KINDS:
            common["type_id"] = self._ref(size_or_type, tid)
        elif kind in _SIZED:
            common["size"] = size_or_type

        if kind == "int":
            enc = w[j]
            encoding = enc >> 24 & 0x0F  # BTF_INT_SIGNED 1, BTF_INT_CHAR 2, BTF_INT_BOOL 4
            return BtfType(**common, int_bits=enc & 0xFF, int_offset=enc >> 16 & 0xFF,
                           int_signed=bool(encoding & 1), int_char=bool(encoding & 2),
                           int_bool=bool(encoding & 4))
        if kind == "array":
            return BtfType(**common, elem_type_id=self._ref(w[j], tid),
                           index_type_id=self._ref(w[j + 1], tid), nelems=w[j + 2])
        if kind in ("struct", "union"):
            members = []
            for k in range(j, j + 3 * vlen, 3):
                off = w[k + 2]
                # With kind_flag the offset word packs bitfield_size<<24 | bit_offset.
                bits, bit_off = (off >> 24, off & 0xFFFFFF) if kind_flag else (0, off)
                members.append(Member(name=self._str(w[k], tid), type_id=self._ref(w[k + 1], tid),
                                      bit_offset=bit_off, bitfield_size=bits))
            return BtfType(**common, members=tuple(members))
        if kind == "enum":
            conv = _s32 if kind_flag else int
            return BtfType(**common, enumerators=tuple(
                (self._str(w[k], tid), conv(w[k + 1])) for k in range(j, j + 2 * vlen, 2)))
        if kind == "enum64":
            conv = _s64 if kind_flag else int
            return BtfType(**common, enumerators=tuple(
                (self._str(w[k], tid), conv(w[k + 2] << 32 | w[k + 1]))
                for k in range(j, j + 3 * vlen, 3)))
        if kind == "func_proto":
            params = tuple((self._str(w[k], tid), self._ref(w[k + 1], tid))
                           for k in range(j, j + 2 * vlen, 2))
            return BtfType(**common, params=params)
        if kind == "func":
            return BtfType(**common, linkage=vlen)
        if kind == "var":
            return BtfType(**common, linkage=w[j])
        if kind == "datasec":
            return BtfType(**common, secinfos=tuple(
                (self._ref(w[k], tid), w[k + 1], w[k + 2]) for k in range(j, j + 3 * vlen, 3)))
        if kind == "decl_tag":
            return BtfType(**common, component_idx=_s32(w[j]))
        # ptr, fwd, typedef, volatile, const, restrict, float, type_tag: header only.
        return BtfType(**common)
