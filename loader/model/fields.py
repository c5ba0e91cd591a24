"""Event fields a channel declares in its manifest (``fields:``), and the decoders they take.

A declaration names a member of the event struct, its type (``FIELD_TYPES``) and where it sits
(``offset`` in bytes or ``order`` among the members); ``loader.decoders.btf.declared_decoder`` checks it
against the object's BTF.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, cast, get_args

import yaml
from yaml.nodes import Node, ScalarNode

from loader.model.yamldoc import TAG, YamlDoc, did_you_mean, kind_of, line_of

FieldDecoder = Literal["int", "string", "hex", "ipv4", "ipv6", "ip", "bool", "float", "be"]
FIELD_DECODERS: tuple[str, ...] = get_args(FieldDecoder)
FIELD_TYPES = ("u8", "u16", "u32", "u64", "s8", "s16", "s32", "s64", "be16", "be32", "be64",
               "bool", "char[N]", "u8[N]", "f32", "f64")  # fmt: skip
MAX_FIELD_ARRAY = 4096  # N of char[N] / u8[N]
_FIELD_TYPE_RE = re.compile(r"[us](?:8|16|32|64)|be(?:16|32|64)|f(?:32|64)|bool|(char|u8)\[(\d+)\]")
# By base type, the decoders it takes; the first is the default.
_FIELD_DECODERS: dict[str, tuple[FieldDecoder, ...]] = {
    "u": ("int", "be", "bool", "hex", "ipv4"), "s": ("int", "bool", "hex"),
    "be": ("be", "hex", "ipv4"), "bool": ("bool", "int", "hex"), "f": ("float", "hex"),
    "char": ("string", "hex"), "bytes": ("hex", "string", "ipv4", "ipv6", "ip"),
}  # fmt: skip
_DECODER_BYTES = {"ipv4": 4, "ipv6": 16, "ip": 16}


def field_type(spelled: str) -> tuple[str, int] | None:
    """(base, size in bytes) of a declared field type: 'be32' → ('be', 4), 'u8[16]' → ('bytes', 16)."""
    match = _FIELD_TYPE_RE.fullmatch(spelled)
    if match is None:
        return None
    if match[1]:
        return ("char" if match[1] == "char" else "bytes"), int(match[2])
    if spelled == "bool":
        return "bool", 1
    base = spelled.rstrip("0123456789")
    return base, int(spelled[len(base) :]) // 8


@dataclass(frozen=True, kw_only=True, slots=True)
class FieldDecl:
    """One event field a channel declares; the object's BTF must agree with it."""

    name: str  # a member of the event struct
    type: str  # one of FIELD_TYPES with N filled in, e.g. u32, be16, char[16]
    offset: int | None  # bytes from the struct's start; exactly one of offset and order is set
    order: int | None  # index among the struct's members, padding (__*) members included
    decoder: FieldDecoder
    line: int

    @property
    def base(self) -> str:
        """u, s, be, bool, f, char or bytes."""
        return cast(tuple[str, int], field_type(self.type))[0]

    @property
    def size(self) -> int:
        """Bytes."""
        return cast(tuple[str, int], field_type(self.type))[1]

    @property
    def decoders(self) -> tuple[FieldDecoder, ...]:
        """The decoders this type takes, the default first."""
        size = self.size
        return tuple(d for d in _FIELD_DECODERS[self.base] if _DECODER_BYTES.get(d, size) == size)

    def decoder_problem(self) -> str:
        """Why ``decoder`` does not fit ``type``; empty when it does."""
        if self.decoder in self.decoders:
            return ""
        need = _DECODER_BYTES.get(self.decoder, self.size)
        if need != self.size:
            return f"decoder {self.decoder} needs a {need}-byte type, not {self.type}"
        return f"decoder {self.decoder} does not apply to {self.type}"

    def spelled(self) -> str:
        """As a manifest writes it, e.g. {name: sport, type: be16, offset: 4}."""
        kind = f'"{self.type}"' if "[" in self.type else self.type  # [ ] are YAML flow syntax
        where = f"offset: {self.offset}" if self.offset is not None else f"order: {self.order}"
        decoder = "" if self.decoder == self.decoders[0] else f", decoder: {self.decoder}"
        return f"{{name: {self.name}, type: {kind}, {where}{decoder}}}"


def parse_fields(doc: YamlDoc, node: Node, at: str) -> tuple[FieldDecl, ...]:
    """The ``fields:`` list of channel ``at``: declarations with distinct names."""
    items = doc.sequence(node, "fields", at)
    if not items:
        raise doc.error(
            node, f"'fields' in {at} is empty",
            hint="list the event's fields, e.g. - {name: pid, type: u32, offset: 0}, "
            "or drop 'fields:' to decode every member",
        )  # fmt: skip
    declared: dict[str, FieldDecl] = {}
    for index, item in enumerate(items):
        decl = _parse_field(doc, item, f"{at}.fields[{index}]")
        if decl.name in declared:
            raise doc.error(
                item, f"field {decl.name!r} is declared twice in {at} "
                f"(first at line {declared[decl.name].line})",
                hint="declare each member once",
            )  # fmt: skip
        declared[decl.name] = decl
    return tuple(declared.values())


def _parse_field(doc: YamlDoc, node: Node, at: str) -> FieldDecl:
    entry = doc.fields(
        node, at, required=("name", "type"), optional=("offset", "order", "decoder")
    )
    name = doc.c_identifier(entry["name"], "name", at, what="field name")
    spelled = doc.string(entry["type"], "type", at)
    found = field_type(spelled)
    if found is None:
        raise doc.error(
            entry["type"], f"unknown type {spelled!r} for field {name!r} in {at}; "
            f"expected one of: {' '.join(FIELD_TYPES)}",
            hint=did_you_mean(re.sub(r"\[\d+\]$", "[N]", spelled), FIELD_TYPES, "types"),
        )  # fmt: skip
    if not 1 <= found[1] <= MAX_FIELD_ARRAY:
        raise doc.error(
            entry["type"], f"type {spelled!r} of field {name!r} in {at}: "
            f"N must be 1..{MAX_FIELD_ARRAY}",
            hint="give the array's length as the struct declares it",
        )  # fmt: skip
    place = [key for key in ("offset", "order") if key in entry]
    if not place:
        raise doc.error(
            node, f"field {name!r} in {at} needs 'offset' (bytes) or 'order' (member index)",
            hint="add e.g. offset: 0",
        )  # fmt: skip
    if len(place) == 2:
        raise doc.error(
            entry["order"], f"field {name!r} in {at} has both 'offset' and 'order'",
            hint="keep one: offset (bytes from the struct's start) or order (member index)",
        )  # fmt: skip
    value = _whole(doc, entry[place[0]], place[0], at)
    decoder = _FIELD_DECODERS[found[0]][0]
    if "decoder" in entry:
        decoder = doc.choice(entry["decoder"], "decoder", at, FIELD_DECODERS)
    decl = FieldDecl(
        name=name, type=spelled, decoder=cast(FieldDecoder, decoder), line=line_of(node),
        offset=value if place[0] == "offset" else None,
        order=value if place[0] == "order" else None,
    )  # fmt: skip
    if problem := decl.decoder_problem():
        raise doc.error(
            entry["decoder"], f"field {name!r} in {at}: {problem}",
            hint=f"{spelled} takes: {', '.join(decl.decoders)}",
        )  # fmt: skip
    return decl


def _whole(doc: YamlDoc, node: Node, key: str, at: str) -> int:
    """A YAML integer of 0 or more."""
    is_int = isinstance(node, ScalarNode) and node.tag == TAG + "int"
    value = int(yaml.constructor.SafeConstructor().construct_yaml_int(node)) if is_int else -1
    if value >= 0:
        return value
    raise doc.error(
        node, f"{doc.label(key, at)} must be a whole number, 0 or more, "
        f"got {node.value if is_int else kind_of(node)}",
        hint=f"e.g. {key}: 8, unquoted",
    )  # fmt: skip
