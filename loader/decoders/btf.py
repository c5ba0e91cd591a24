"""Default decoding: from the BTF of an event struct to the ops of the C JSON encoder.

What each field becomes:
    integers, enums, pointers      numbers (bitfields too)
    bool                           true / false
    char[N]                        text, up to the first NUL
    fixed arrays                   lists (byte arrays over 64 bytes: a hex string)
    nested structs / unions        objects
    float / double                 numbers
    __be16 / __be32 / __be64       numbers in host order (ports stored as the kernel keeps them)
    bpfdepot_ipv4, __be32 *addr*   "a.b.c.d"
    bpfdepot_ip, u8[16] *addr*     IPv4 or IPv6 text, by the struct's `family` field (else IPv6)
    u8[4] *addr*                   "a.b.c.d"
Fields whose names start with ``__`` are padding by convention and left out.

A channel may instead declare its fields in the manifest (``fields:``): ``declared_decoder``
checks each declaration against the BTF, stops at the first mismatch, and encodes only those.
"""

from __future__ import annotations

import difflib
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from loader.kernel.btf import Btf, BtfType, Member
from loader.decoders import UnionChoice
from loader.decoders.names import errno_table
from loader.errors import ArtifactNotFound, ManifestError
from loader.model.yamldoc import did_you_mean
from loader.libbpf.encode import Encoder, NameTable, Op

if TYPE_CHECKING:  # loader.model.fields pulls in yaml; decoding only needs the declarations
    from loader.model.fields import FieldDecl

(OP_LIT, OP_U, OP_S, OP_BE, OP_BOOL, OP_CHARS, OP_IPV4, OP_IPV6, OP_IPFAM,
 OP_UBITS, OP_SBITS, OP_F32, OP_F64, OP_HEX, OP_NAME, OP_KSYM, OP_STRINGS, OP_U128, OP_IFNE,
 OP_GOTO) = range(20)

_MAX_VALUE = {OP_U: 21, OP_S: 21, OP_BE: 21, OP_BOOL: 5, OP_IPV4: 18, OP_IPV6: 48, OP_IPFAM: 48,
              OP_UBITS: 21, OP_SBITS: 21, OP_F32: 26, OP_F64: 26, OP_U128: 36}
_DECODER_NAME = {OP_U: "u", OP_S: "s", OP_BE: "be", OP_BOOL: "bool", OP_CHARS: "chars",
                 OP_IPV4: "ipv4", OP_IPV6: "ipv6", OP_IPFAM: "ip", OP_UBITS: "ubits",
                 OP_SBITS: "sbits", OP_F32: "float", OP_F64: "float", OP_HEX: "hex",
                 OP_NAME: "name", OP_KSYM: "ksym", OP_STRINGS: "strings", OP_U128: "u128"}
# What a manifest's `decoders:` may ask of a field, besides "enum:NAME".
FIELD_OVERRIDES = ("ip", "ipv4", "ipv6", "hex", "string", "strings", "errno", "ksym", "int", "enum")
_MODIFIERS = ("typedef", "const", "volatile", "restrict", "type_tag")
_BE = frozenset(("__be16", "__be32", "__be64"))
_FAMILY = ("family", "af", "sa_family")  # the member that tells IPv4 from IPv6 for OP_IPFAM
# Declared decoders that are one op whatever the type; int and float depend on it.
_DECLARED_OPS = {"be": OP_BE, "bool": OP_BOOL, "string": OP_CHARS, "hex": OP_HEX,
                 "ipv4": OP_IPV4, "ipv6": OP_IPV6, "ip": OP_IPFAM}
_LONG_BYTES = 64
MARKER = "bpfdepot_event__"


@dataclass(frozen=True, slots=True, kw_only=True)
class Field:
    """One decoded leaf of an event, for meta.json and `bpfdepot inspect`."""

    name: str      # dotted path, with [i] for array elements
    offset: int
    size: int      # bytes (bits for bitfields)
    decoder: str   # u, s, be, bool, chars, ipv4, ipv6, ip, ubits, sbits, float, hex


@dataclass(frozen=True, slots=True, kw_only=True)
class EventDecoder:
    """Everything the C encoder needs for one event struct."""

    struct: str
    size: int
    ops: tuple[Op, ...]
    fields: tuple[Field, ...]
    max_record: int
    min_size: int = 0                       # the fixed part (a trailing array may be cut short)
    names: tuple[NameTable, ...] = ()       # OP_NAME tables, by aux
    ksym: bool = False                      # OP_KSYM is used: the encoder needs kallsyms

    @property
    def fixed_size(self) -> int:
        """Samples shorter than this are counted short; longer ones are decoded as received."""
        return self.min_size or self.size


EnumSource = Callable[[str], "NameTable | None"]


def channel_struct(btf: Btf, channel: str, declared: str | None = None) -> BtfType:
    """The struct a channel carries: the manifest's ``event:``, else the BPFDEPOT_CHANNEL marker."""
    if declared:
        found = btf.by_name(declared, "struct")
        if found is None:
            raise ArtifactNotFound(f"channel '{channel}': no struct '{declared}' in the object's BTF",
                                   hint="fix `event:` in the manifest, or use the event struct in the program")
        return found
    for t in btf:
        if t.kind == "var" and t.name == MARKER + channel:
            target = btf.strip(t.type_id)
            if target.kind == "ptr":
                target = btf.strip(target.type_id)
            if target.kind in ("struct", "union"):
                return target
    raise ArtifactNotFound(
        f"channel '{channel}': the object does not say which struct it carries",
        hint=f"declare it with BPFDEPOT_CHANNEL({channel}, struct your_event, SIZE) from "
             "bpfdepot.h, or set `event: your_event` on the channel in the manifest")


class _Emitter:
    def __init__(self, btf: Btf, *, overrides: Mapping[str, str] | None = None,
                 unions: Mapping[str, UnionChoice] | None = None, enums: EnumSource | None = None,
                 channel: str = "") -> None:
        self.btf = btf
        self.ops: list[Op] = []
        self.fields: list[Field] = []
        self.pending = ""  # literal JSON text waiting for the next op
        self.max_record = 0
        self.overrides = dict(overrides or {})
        self.unions = dict(unions or {})
        self.enums = enums
        self.channel = channel
        self.names: list[NameTable] = []
        self._name_index: dict[object, int] = {}
        self.ksym = False
        self.used: set[str] = set()  # override and union paths met (the rest are typos)

    def lit(self, text: str) -> None:
        self.pending += text

    def value(self, kind: int, path: str, offset: int, size: int, aux: int = 0, aux_size: int = 0,
              width: int = 0) -> None:
        prefix = self.pending.encode()
        self.pending = ""
        self.ops.append(Op(kind=kind, offset=offset, size=size, aux=aux, aux_size=aux_size, prefix=prefix))
        width = width or {OP_CHARS: 2 + 6 * size, OP_HEX: 2 + 2 * size,
                          OP_STRINGS: 2 + 9 * size}.get(kind) or _MAX_VALUE[kind]
        self.max_record += len(prefix) + width
        self.fields.append(Field(name=path, offset=offset, size=size, decoder=_DECODER_NAME[kind]))

    def control(self, kind: int, **kw: int) -> int:
        """Append a jump op (its prefix is what is pending); return its index for patching."""
        prefix = self.pending.encode()
        self.pending = ""
        self.ops.append(Op(kind=kind, prefix=prefix, **kw))
        self.max_record += len(prefix)
        return len(self.ops) - 1

    def flush(self) -> None:
        """Pending literal text as an op of its own (it must not leak past a jump)."""
        if self.pending:
            prefix = self.pending.encode()
            self.pending = ""
            self.ops.append(Op(kind=OP_LIT, prefix=prefix))
            self.max_record += len(prefix)

    def name_table(self, key: object, table: NameTable) -> int:
        if key not in self._name_index:
            self._name_index[key] = len(self.names)
            self.names.append(table)
        return self._name_index[key]

    def finish(self) -> None:
        self.lit("\n")
        prefix = self.pending.encode()
        self.ops.append(Op(kind=OP_LIT, prefix=prefix))
        self.max_record += len(prefix)

    def done(self, struct: BtfType) -> EventDecoder:
        self.finish()
        unknown = sorted((set(self.overrides) | set(self.unions)) - self.used)
        if unknown:
            known = [f.name for f in self.fields]
            close = difflib.get_close_matches(unknown[0], known, n=1)
            raise ManifestError(
                f"channel '{self.channel}': struct {struct.name} has no field '{unknown[0]}' "
                "(named in decoders: or unions:)",
                hint=f"did you mean '{close[0]}'?" if close else
                f"its fields: {', '.join(known[:20])}")
        return EventDecoder(struct=struct.name, size=struct.size, ops=tuple(self.ops),
                            fields=tuple(self.fields), max_record=self.max_record,
                            min_size=_fixed_part(self.btf, struct), names=tuple(self.names),
                            ksym=self.ksym)

    def struct(self, t: BtfType, offset: int, path: str) -> None:
        self.lit("{")
        first = True
        for name, member in self._members(t):
            if name.startswith("__"):
                continue
            self.lit(("" if first else ",") + json.dumps(name) + ":")
            first = False
            at = offset + member.bit_offset // 8
            sub = f"{path}.{name}" if path else name
            if member.bitfield_size:
                self.bitfield(member, offset, sub)
            else:
                self.field(member.type_id, at, sub, name, t, offset)
        self.lit("}")

    def _members(self, t: BtfType):
        # anonymous struct/union members are flattened into their parent, as C spells them
        for member in t.members:
            inner = self.btf.strip(member.type_id)
            if not member.name and inner.kind in ("struct", "union"):
                for name, m in self._members(inner):
                    yield name, type(m)(name=m.name, type_id=m.type_id,
                                        bit_offset=m.bit_offset + member.bit_offset,
                                        bitfield_size=m.bitfield_size)
            else:
                yield member.name, member

    def bitfield(self, member, struct_offset: int, path: str) -> None:
        signed = self.btf.strip(member.type_id).int_signed
        start = struct_offset + member.bit_offset // 8
        shift = member.bit_offset % 8
        load = (shift + member.bitfield_size + 7) // 8
        self.value(OP_SBITS if signed else OP_UBITS, path, start, member.bitfield_size, shift, load)

    def field(self, type_id: int, offset: int, path: str, name: str, parent: BtfType, parent_offset: int) -> None:
        typedefs = self._typedef_names(type_id)
        t = self.btf.strip(type_id)
        size = self.btf.size_of(type_id)
        is_addr = "addr" in name.lower()
        family = self._family(parent, parent_offset)
        if path in self.overrides:
            self.used.add(path)
            return self.override(self.overrides[path], t, offset, size, path, family)
        if path in self.unions and t.kind == "union":
            self.used.add(path)
            return self.union(t, offset, path, self.unions[path], parent, parent_offset)
        if t.kind == "int" and size == 16:  # unsigned __int128: an address, or too big for JSON
            if is_addr:
                if family is not None:
                    return self.value(OP_IPFAM, path, offset, 16, family[0], family[1])
                return self.value(OP_IPV6, path, offset, 16)
            return self.value(OP_U128, path, offset, 16)
        if "bpfdepot_ipv4" in typedefs or (is_addr and typedefs & {"__be32"} and size == 4):
            return self.value(OP_IPV4, path, offset, 4)
        if "bpfdepot_ip" in typedefs or (is_addr and t.kind == "array" and size == 16 and self._bytes(t)):
            if family is not None:
                return self.value(OP_IPFAM, path, offset, 16, family[0], family[1])
            return self.value(OP_IPV6, path, offset, 16)
        if is_addr and t.kind == "array" and size == 4 and self._bytes(t):
            return self.value(OP_IPV4, path, offset, 4)
        be = typedefs & _BE
        if be and t.kind == "int":
            return self.value(OP_BE, path, offset, size)
        match t.kind:
            case "int":
                if t.int_bool:
                    return self.value(OP_BOOL, path, offset, size)
                return self.value(OP_S if t.int_signed else OP_U, path, offset, size)
            case "enum" | "enum64":
                return self.enum(t, offset, size, path)
            case "ptr":
                return self.value(OP_U, path, offset, 8)
            case "float":
                return self.value(OP_F32 if size == 4 else OP_F64, path, offset, size)
            case "struct" | "union":
                return self.struct(t, offset, path)
            case "array":
                return self.array(t, offset, path, name, parent, parent_offset)
        return self.value(OP_HEX, path, offset, size)

    def enum(self, t: BtfType, offset: int, size: int, path: str, name: str = "") -> None:
        """An enum field as its name: from this node's BTF when it has the enum, else the object's."""
        enum_name = name or t.name
        table = self.enums(enum_name) if self.enums is not None and enum_name else None
        if table is None and t.kind in ("enum", "enum64") and t.enumerators:
            table = NameTable(names=tuple((v, n) for n, v in t.enumerators), signed=bool(t.kind_flag))
        if table is None:
            return self.value(OP_S if t.kind_flag else OP_U, path, offset, size)
        index = self.name_table(("enum", enum_name, table is not None), table)
        longest = max((len(n) for _, n in table.names), default=0)
        self.value(OP_NAME, path, offset, size, index, width=max(21, longest * 6 + 2))

    def override(self, spec: str, t: BtfType, offset: int, size: int, path: str,
                 family: tuple[int, int] | None) -> None:
        """A field decoded as the manifest's ``decoders:`` says."""
        kind, _, arg = spec.partition(":")
        if kind == "enum":
            if not arg:
                raise ManifestError(f"channel '{self.channel}', field '{path}': decoder enum needs "
                                    "the enum's name", hint="write e.g. enum:skb_drop_reason")
            table = self.enums(arg) if self.enums is not None else None
            found = self.btf.by_name(arg, "enum") or self.btf.by_name(arg, "enum64")
            if table is None and found is None:
                raise ManifestError(
                    f"channel '{self.channel}', field '{path}': no enum '{arg}' in this node's BTF "
                    "or the object's", hint="name an enum of the kernel, e.g. enum:skb_drop_reason")
            return self.enum(found or t, offset, size, path, name=arg) if table is None else \
                self._named(table, ("enum", arg, True), offset, size, path)
        if kind == "errno":
            return self._named(errno_table(), ("errno",), offset, size, path)
        if kind == "ksym":
            self.ksym = True
            return self.value(OP_KSYM, path, offset, size, width=2 + 128 + 20)
        need = {"ip": 16, "ipv6": 16, "ipv4": 4}.get(kind)
        if need is not None and size < need:
            raise ManifestError(f"channel '{self.channel}', field '{path}': decoder {kind} needs "
                                f"{need} bytes, the field has {size}", hint="pick another decoder")
        if kind == "ip":
            if family is None:
                return self.value(OP_IPV6, path, offset, 16)
            return self.value(OP_IPFAM, path, offset, 16, family[0], family[1])
        ops = {"ipv4": OP_IPV4, "ipv6": OP_IPV6, "hex": OP_HEX, "string": OP_CHARS,
               "strings": OP_STRINGS}
        if kind == "hex" and t.kind in ("int", "enum", "enum64"):
            # an integer reads most significant digit first, whatever the byte order it is
            # stored in (aux 1: the bytes the other way round on this little-endian host)
            return self.value(OP_HEX, path, offset, size, 1 if sys.byteorder == "little" else 0)
        if kind in ops:
            return self.value(ops[kind], path, offset, {"ipv4": 4, "ipv6": 16}.get(kind, size))
        if kind == "int" and t.kind in ("int", "enum", "enum64"):
            return self.value(OP_S if (t.int_signed or t.kind_flag) else OP_U, path, offset, size)
        raise ManifestError(f"channel '{self.channel}', field '{path}': unknown decoder {spec!r}",
                            hint=did_you_mean(kind, FIELD_OVERRIDES, "decoders"))

    def _named(self, table: NameTable, key: tuple, offset: int, size: int, path: str) -> None:
        index = self.name_table(key, table)
        longest = max((len(n) for _, n in table.names), default=0)
        self.value(OP_NAME, path, offset, size, index, width=max(21, longest * 6 + 2))

    def union(self, t: BtfType, offset: int, path: str, choice: UnionChoice, parent: BtfType,
              parent_offset: int) -> None:
        """Only the member the discriminator picks, as {"member": {...}}; null for other values."""
        siblings = dict(self._members(parent))
        if choice.by not in siblings:
            raise ManifestError(f"channel '{self.channel}': union '{path}' is chosen by "
                                f"'{choice.by}', which is not a member beside it",
                                hint=f"members beside it: {', '.join(n for n in siblings if n)}")
        by = siblings[choice.by]
        by_type = self.btf.strip(by.type_id)
        by_offset, by_size = parent_offset + by.bit_offset // 8, self.btf.size_of(by.type_id)
        members = dict(self._members(t))
        gotos = []
        for value, member_name in choice.cases:
            if member_name not in members:
                raise ManifestError(f"channel '{self.channel}': union '{path}' has no member "
                                    f"'{member_name}'", hint=f"its members: {', '.join(members)}")
            number = self._case_value(value, by_type, path)
            test = self.control(OP_IFNE, offset=by_offset, aux_size=by_size,
                                value=number & 0xFFFFFFFFFFFFFFFF if number < 0 else number)
            self.lit("{" + json.dumps(member_name) + ":")
            member = members[member_name]
            self.field(member.type_id, offset + member.bit_offset // 8, f"{path}.{member_name}",
                       member_name, t, offset)
            self.lit("}")
            self.flush()
            gotos.append(self.control(OP_GOTO))
            self.ops[test] = replace(self.ops[test], jump=len(self.ops) - test - 1)
        self.lit("null")
        self.flush()
        for at in gotos:
            self.ops[at] = replace(self.ops[at], jump=len(self.ops) - at - 1)

    def _case_value(self, value: int | str, by_type: BtfType, path: str) -> int:
        if isinstance(value, int):
            return value
        for name, number in by_type.enumerators:
            if name == value:
                return number
        raise ManifestError(f"channel '{self.channel}': union '{path}': case {value!r} is not a "
                            "number or a name of the discriminator's enum",
                            hint="write the value as a number")

    def array(self, t: BtfType, offset: int, path: str, name: str, parent: BtfType, parent_offset: int) -> None:
        elem = self.btf.strip(t.elem_type_id)
        if elem.kind == "int" and elem.size == 1 and self._is_char(t.elem_type_id):
            return self.value(OP_CHARS, path, offset, t.nelems)
        if elem.kind == "int" and elem.size == 1 and t.nelems > _LONG_BYTES:
            return self.value(OP_HEX, path, offset, t.nelems)
        step = self.btf.size_of(t.elem_type_id)
        self.lit("[")
        for i in range(t.nelems):
            if i:
                self.lit(",")
            self.field(t.elem_type_id, offset + i * step, f"{path}[{i}]", name, parent, parent_offset)
        self.lit("]")

    def _is_char(self, type_id: int) -> bool:
        # text is plain `char`; a __u8 / uint8_t array is bytes even though it is unsigned char
        if self._typedef_names(type_id) & {"u8", "__u8", "uint8_t", "s8", "__s8", "int8_t"}:
            return False
        return self.btf.strip(type_id).name == "char"

    def _bytes(self, t: BtfType) -> bool:
        elem = self.btf.strip(t.elem_type_id)
        return elem.kind == "int" and elem.size == 1

    def _typedef_names(self, type_id: int) -> set[str]:
        names, t = set(), self.btf.type(type_id)
        while t.kind in _MODIFIERS:
            if t.kind == "typedef":
                names.add(t.name)
            t = self.btf.type(t.type_id)
        return names

    def _family(self, parent: BtfType, parent_offset: int) -> tuple[int, int] | None:
        for name, member in self._members(parent):
            if name in _FAMILY and not member.bitfield_size:
                return parent_offset + member.bit_offset // 8, self.btf.size_of(member.type_id)
        return None


def event_decoder(btf: Btf, struct: BtfType, *, overrides: Mapping[str, str] | None = None,
                  unions: Mapping[str, UnionChoice] | None = None, enums: EnumSource | None = None,
                  channel: str = "") -> EventDecoder:
    """Compile the default decoding of ``struct`` into encoder ops. ``overrides`` picks a decoder
    per field path, ``unions`` the member of a union per event, ``enums`` finds enum names on
    this node (default: the object's own values)."""
    emitter = _Emitter(btf, overrides=overrides, unions=unions, enums=enums, channel=channel)
    emitter.struct(struct, 0, "")
    return emitter.done(struct)


def encoder_for(decoder: EventDecoder) -> Encoder:
    """The C encoder of ``decoder``, with its name tables (and kallsyms when it names addresses)."""
    from loader.decoders.ksym import kallsyms

    return Encoder(decoder.ops, event_size=decoder.fixed_size, max_record=decoder.max_record,
                   names=decoder.names, syms=kallsyms() if decoder.ksym else None)


def _fixed_part(btf: Btf, struct: BtfType) -> int:
    """The bytes every sample must hold: up to a trailing array (a variable-length tail, like an
    exec event's argument buffer) or the whole struct."""
    if struct.kind == "struct" and struct.members:
        last = struct.members[-1]
        if not last.bitfield_size and btf.strip(last.type_id).kind == "array":
            return last.bit_offset // 8
    return struct.size


def declared_decoder(btf: Btf, struct: BtfType, fields: Sequence[FieldDecl], channel: str) -> EventDecoder:
    """Encoder ops for the fields a manifest declares, in its order and with its decoders.

    The first declaration the BTF of ``struct`` contradicts is a ManifestError.
    """
    emitter = _Declared(btf, struct, channel)
    emitter.lit("{")
    for i, decl in enumerate(fields):
        member = emitter.check(decl)
        emitter.lit(("," if i else "") + json.dumps(decl.name) + ":")
        aux = emitter.family if decl.decoder == "ip" and emitter.family else (0, 0)
        emitter.value(_declared_op(decl), decl.name, member.bit_offset // 8, decl.size, *aux)
    emitter.lit("}")
    return emitter.done(struct)


def _declared_op(decl: FieldDecl) -> int:
    if decl.decoder == "int":
        return OP_S if decl.base == "s" else OP_U
    if decl.decoder == "float":
        return OP_F32 if decl.size == 4 else OP_F64
    return _DECLARED_OPS[decl.decoder]


class _Declared(_Emitter):
    """Checks declarations against one struct's members (anonymous ones flattened, as C names them)."""

    def __init__(self, btf: Btf, struct: BtfType, channel: str) -> None:
        super().__init__(btf)
        self.struct, self.channel = struct, channel
        self.members = {name: (i, m) for i, (name, m) in enumerate(self._members(struct))}
        self.family = self._family(struct, 0)

    def check(self, decl: FieldDecl) -> Member:
        """The member ``decl`` names, if the BTF agrees with every part of the declaration."""
        where = f"channel '{self.channel}', field '{decl.name}' (manifest line {decl.line})"
        of = f"struct {self.struct.name}"
        if decl.name not in self.members:
            names = [name for name in self.members if name]
            close = difflib.get_close_matches(decl.name, names, n=1)
            raise ManifestError(f"{where}: {of} has no member '{decl.name}' in the object's BTF",
                                hint=f"did you mean '{close[0]}'?" if close
                                else f"its members: {', '.join(names)}")
        index, member = self.members[decl.name]
        if member.bitfield_size:
            raise ManifestError(
                f"{where}: '{decl.name}' is a bitfield of {member.bitfield_size} bits in {of}, "
                "which cannot be declared",
                hint="remove it from fields: (without fields:, default decoding reads bitfields)")
        offset, tid = member.bit_offset // 8, member.type_id
        fix = f"declare it as {self._right(decl, index, offset, tid).spelled()}"
        if decl.offset is not None and decl.offset != offset:
            raise ManifestError(f"{where}: the manifest says offset {decl.offset}, the BTF has "
                                f"'{decl.name}' at offset {offset} of {of}", hint=fix)
        if decl.order is not None and decl.order != index:
            raise ManifestError(f"{where}: the manifest says order {decl.order}, the BTF has "
                                f"'{decl.name}' as member {index} of {of} (from 0, padding "
                                "members included)", hint=fix)
        if not self._fits(decl, tid):
            raise ManifestError(
                f"{where}: the manifest says {decl.type} ({decl.size} bytes), the BTF says "
                f"`{self._c_type(tid)}` ({self._what(tid)}, {self.btf.size_of(tid)} bytes)", hint=fix)
        if problem := decl.decoder_problem():
            raise ManifestError(f"{where}: {problem}", hint=fix)
        if decl.decoder == "ip" and self.family is None:
            raise ManifestError(
                f"{where}: decoder ip tells IPv4 from IPv6 by the struct's family, but {of} has "
                f"no member {' / '.join(_FAMILY)}",
                hint=f"declare it as {replace(decl, decoder='ipv6').spelled()}, or add a "
                     "`family` member to the struct")
        return member

    def _right(self, decl: FieldDecl, index: int, offset: int, type_id: int) -> FieldDecl:
        """``decl`` corrected to what the BTF says, for hints; a chosen decoder stays if it fits."""
        right = replace(decl, type=decl.type if self._fits(decl, type_id) else self._spell(type_id),
                        offset=None if decl.offset is None else offset,
                        order=None if decl.order is None else index)
        if decl.decoder == decl.decoders[0] or right.decoder_problem():
            return replace(right, decoder=right.decoders[0])
        return right

    def _spell(self, type_id: int) -> str:
        """The manifest type that matches a BTF type exactly (raw bytes when nothing else does)."""
        t, size = self.btf.strip(type_id), self.btf.size_of(type_id)
        if t.kind == "int" and size in (1, 2, 4, 8):
            if t.int_bool:
                return "bool"
            if size > 1 and self._typedef_names(type_id) & _BE:
                return f"be{8 * size}"
            return f"{'s' if t.int_signed else 'u'}{8 * size}"
        if t.kind in ("enum", "enum64"):
            return f"{'s' if t.kind_flag else 'u'}{8 * size}"
        if t.kind == "ptr":
            return "u64"
        if t.kind == "float" and size in (4, 8):
            return f"f{8 * size}"
        if t.kind == "array" and self._bytes(t) and self._is_char(t.elem_type_id):
            return f"char[{t.nelems}]"
        return f"u8[{size}]"

    def _fits(self, decl: FieldDecl, type_id: int) -> bool:
        t, spelled = self.btf.strip(type_id), self._spell(type_id)
        if decl.type == spelled:
            return True
        if decl.base == "char":  # text in any array of bytes
            return t.kind == "array" and self._bytes(t) and t.nelems == decl.size
        if decl.base == "bytes":  # the raw bytes of any array, struct or union
            return t.kind in ("array", "struct", "union") and self.btf.size_of(type_id) == decl.size
        return decl.base == "bool" and spelled in ("u8", "s8")

    def _what(self, type_id: int) -> str:
        t = self.btf.strip(type_id)
        if t.kind == "int" and not t.int_bool:
            be = "big-endian " if self._typedef_names(type_id) & _BE else ""
            return f"{be}{'signed' if t.int_signed else 'unsigned'} int"
        return {"int": "bool", "enum64": "enum", "ptr": "pointer"}.get(t.kind, t.kind)

    def _c_type(self, type_id: int) -> str:
        """The type as C spells it: `__be16`, `char[16]`, `struct inner`."""
        t = self.btf.type(type_id)
        if t.kind in ("const", "volatile", "restrict", "type_tag"):
            return self._c_type(t.type_id)
        if t.kind == "array":
            base, bracket, dims = self._c_type(t.elem_type_id).partition("[")
            return f"{base}[{t.nelems}]{bracket}{dims}"
        if t.kind == "ptr":
            return f"{self._c_type(t.type_id)} *"
        if t.kind in ("struct", "union", "enum", "enum64"):
            return f"{t.kind.removesuffix('64')} {t.name or '(anonymous)'}"
        return t.name or "void"


def record_decoder(btf: Btf, parts: Sequence[tuple[str, int, int]], *, name: str,
                   extra: Sequence[tuple[str, int, int]] = (),
                   overrides: Mapping[str, str] | None = None, enums: EnumSource | None = None,
                   channel: str = "") -> EventDecoder:
    """Ops that print several BTF types laid end to end as ONE flat JSON object (a map entry:
    key bytes, then value bytes). ``parts`` is (name, type id, offset): a struct's members
    become top-level fields, anything else one field called ``name`` ("key", "value"); a value
    member whose name a key member already has is printed as "value_<name>". ``extra`` adds
    unsigned integer fields (name, offset, size), e.g. the cpu of a per-CPU record."""
    emitter = _Emitter(btf, overrides=overrides, enums=enums, channel=channel)
    emitter.lit("{")
    seen: set[str] = set()
    size = 0
    for part, type_id, offset in parts:
        t = btf.strip(type_id)
        size = max(size, offset + btf.size_of(type_id))
        if t.kind in ("struct", "union"):
            members = [(n, m) for n, m in emitter._members(t) if not n.startswith("__")]
        else:
            members = [(part, None)]
        for field_name, member in members:
            shown = field_name if field_name not in seen else f"{part}_{field_name}"
            seen.add(shown)
            emitter.lit(("," if len(seen) > 1 else "") + json.dumps(shown) + ":")
            if member is None:
                emitter.field(type_id, offset, shown, shown, t, offset)
            elif member.bitfield_size:
                emitter.bitfield(member, offset, shown)
            else:
                emitter.field(member.type_id, offset + member.bit_offset // 8, shown, field_name,
                              t, offset)
    for field_name, offset, width in extra:
        emitter.lit(("," if seen else "") + json.dumps(field_name) + ":")
        seen.add(field_name)
        emitter.value(OP_U, field_name, offset, width)
        size = max(size, offset + width)
    emitter.lit("}")
    emitter.finish()
    unknown = sorted(set(emitter.overrides) - emitter.used)
    if unknown:
        known = [f.name for f in emitter.fields]
        close = difflib.get_close_matches(unknown[0], known, n=1)
        raise ManifestError(f"channel '{channel}': {name} has no field '{unknown[0]}' (named in "
                            "decoders:)", hint=f"did you mean '{close[0]}'?" if close else
                            f"its fields: {', '.join(known[:20])}")
    return EventDecoder(struct=name, size=size, ops=tuple(emitter.ops),
                        fields=tuple(emitter.fields), max_record=emitter.max_record,
                        min_size=size, names=tuple(emitter.names), ksym=emitter.ksym)
