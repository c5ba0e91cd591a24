"""Declared fields: the manifest's `fields:` (text and line of each error) and declared_decoder,
which checks them against real BTF (from btfgen) and encodes raw events with the C encoder."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import replace
from pathlib import Path

import pytest

from btfgen import BtfEncoder
from loader.kernel.btf import Btf
from loader.decoders.btf import EventDecoder, Field, declared_decoder, encoder_for
from loader.kernel.elf import ObjectInfo
from loader.errors import ManifestError
from loader.model.fields import FieldDecl, field_type
from loader.model.manifest import parse_manifest
from test_decode import AF_INET, AF_INET6, Types, build_event_btf, pack_ev

HEAD = """\
kind: ebpfprogram
name: declared
spec:
  programs:
    - {name: k, path: file://./k.bpf.c, type: ebpf_object}
  channels:
    events:
      type: ring_buffer
      event: ev
      fields:
"""

# Fields of struct ev (test_decode.build_event_btf) as a manifest declares them.
GOOD_FIELDS = """\
        - name: a_s16
          type: s16
          offset: 4
        - {name: sport, type: be16, order: 4}
        - {name: a_u32, type: u32, offset: 0x8, decoder: hex}
        - {name: a_u8, type: bool, offset: 0}
        - {name: ok, type: bool, offset: 32}
        - {name: f64, type: f64, offset: 48}
        - name: comm
          type: char[16]
          offset: 64
        - {name: text, type: "u8[16]", offset: 80, decoder: string}
        - {name: saddr4, type: u32, offset: 108, decoder: ipv4}
        - {name: inner, type: "u8[8]", offset: 112}
        - {name: cookie_lo, type: u32, offset: 120}
        - {name: saddr, type: "u8[16]", offset: 132, decoder: ip}
        - {name: daddr, type: "u8[16]", order: 30, decoder: ipv6}
"""


def manifest(tmp_path: Path, fields: str) -> Path:
    (tmp_path / "k.bpf.c").write_text("")
    path = tmp_path / "manifest.yaml"
    path.write_text(HEAD + fields)
    return path


def decl(name: str, type_: str, *, offset: int | None = None, order: int | None = None,
         decoder: str | None = None, line: int = 12) -> FieldDecl:
    """A declaration as the parser makes it: without ``decoder``, the type's default."""
    made = FieldDecl(name=name, type=type_, offset=offset, order=order,
                     decoder=decoder or "int", line=line)  # type: ignore[arg-type]
    return made if decoder else replace(made, decoder=made.decoders[0])


# ---- the manifest -----------------------------------------------------------------------


def test_fields_parse_into_declarations(tmp_path: Path) -> None:
    [channel] = parse_manifest(manifest(tmp_path, GOOD_FIELDS)).channels
    assert channel.event == "ev"
    assert [(f.name, f.type, f.offset, f.order, f.decoder, f.line) for f in channel.fields] == [
        ("a_s16", "s16", 4, None, "int", 11), ("sport", "be16", None, 4, "be", 14),
        ("a_u32", "u32", 8, None, "hex", 15), ("a_u8", "bool", 0, None, "bool", 16),
        ("ok", "bool", 32, None, "bool", 17), ("f64", "f64", 48, None, "float", 18),
        ("comm", "char[16]", 64, None, "string", 19), ("text", "u8[16]", 80, None, "string", 22),
        ("saddr4", "u32", 108, None, "ipv4", 23), ("inner", "u8[8]", 112, None, "hex", 24),
        ("cookie_lo", "u32", 120, None, "int", 25), ("saddr", "u8[16]", 132, None, "ip", 26),
        ("daddr", "u8[16]", None, 30, "ipv6", 27),
    ]


def test_field_types_and_their_decoders() -> None:
    assert [field_type(t) for t in ("u8", "s64", "be16", "bool", "f32", "char[16]", "u8[4096]")] == [
        ("u", 1), ("s", 8), ("be", 2), ("bool", 1), ("f", 4), ("char", 16), ("bytes", 4096)]
    assert [field_type(t) for t in ("u24", "be8", "f16", "char", "u16[2]", "U8")] == [None] * 6
    assert decl("x", "u32").decoders == ("int", "be", "bool", "hex", "ipv4")
    assert decl("x", "u8[16]").decoders == ("hex", "string", "ipv6", "ip")
    assert decl("x", "be16").decoders == ("be", "hex")
    assert decl("x", "char[4]", order=2, decoder="hex").spelled() == \
        '{name: x, type: "char[4]", order: 2, decoder: hex}'


BAD = [
    # (the field items, the error after "manifest.yaml:", its hint)
    ("        - {name: x, type: u33, offset: 0}\n",
     "11: unknown type 'u33' for field 'x' in spec.channels.events.fields[0]; expected one of: "
     "u8 u16 u32 u64 s8 s16 s32 s64 be16 be32 be64 bool char[N] u8[N] f32 f64",
     "did you mean 'u32'?"),
    ("        - {name: x, type: \"char[0]\", offset: 0}\n",
     "11: type 'char[0]' of field 'x' in spec.channels.events.fields[0]: N must be 1..4096",
     "give the array's length as the struct declares it"),
    ("        - name: x\n          type: u8[4097]\n          offset: 0\n",
     "12: type 'u8[4097]' of field 'x' in spec.channels.events.fields[0]: N must be 1..4096",
     "give the array's length as the struct declares it"),
    ("        - {name: x, type: u32}\n",
     "11: field 'x' in spec.channels.events.fields[0] needs 'offset' (bytes) or 'order' (member index)",
     "add e.g. offset: 0"),
    ("        - name: x\n          type: u32\n          offset: 0\n          order: 1\n",
     "14: field 'x' in spec.channels.events.fields[0] has both 'offset' and 'order'",
     "keep one: offset (bytes from the struct's start) or order (member index)"),
    ("        - {name: x, type: u32, offset: -4}\n",
     "11: 'offset' in spec.channels.events.fields[0] must be a whole number, 0 or more, got -4",
     "e.g. offset: 8, unquoted"),
    ("        - {name: x, type: u32, order: \"3\"}\n",
     "11: 'order' in spec.channels.events.fields[0] must be a whole number, 0 or more, got a string",
     "e.g. order: 8, unquoted"),
    ("        - {name: x, type: u32, offset: 0, decoder: ipv6}\n",
     "11: field 'x' in spec.channels.events.fields[0]: decoder ipv6 needs a 16-byte type, not u32",
     "u32 takes: int, be, bool, hex, ipv4"),
    ("        - {name: x, type: f32, offset: 0, decoder: string}\n",
     "11: field 'x' in spec.channels.events.fields[0]: decoder string does not apply to f32",
     "f32 takes: float, hex"),
    ("        - {name: x, type: u32, offset: 0, decoder: ipv_4}\n",
     "11: unknown decoder 'ipv_4' in spec.channels.events.fields[0]; expected one of: "
     "int, string, hex, ipv4, ipv6, ip, bool, float, be",
     "did you mean 'ipv4'?"),
    ("        - {name: x, type: u32, offset: 0, decodr: hex}\n",
     "11: unknown key 'decodr' in spec.channels.events.fields[0]", "did you mean 'decoder'?"),
    ("        - {name: key.saddr, type: u32, offset: 0}\n",
     "11: field name 'key.saddr' is not a C identifier",
     "use the name exactly as declared in the source: letters, digits and '_'"),
    ("        - {name: pid, type: u32, offset: 0}\n        - {name: tid, type: u32, offset: 4}\n"
     "        - {name: pid, type: u32, offset: 8}\n",
     "13: field 'pid' is declared twice in spec.channels.events (first at line 11)",
     "declare each member once"),
    ("        []\n", "11: 'fields' in spec.channels.events is empty",
     "list the event's fields, e.g. - {name: pid, type: u32, offset: 0}, "
     "or drop 'fields:' to decode every member"),
    ("        pid: u32\n", "11: 'fields' in spec.channels.events must be a list, got a mapping",
     "start each item with '- ' on its own line"),
]


@pytest.mark.parametrize(("fields", "message", "hint"), BAD,
                         ids=[m.split(": ", 1)[1][:40] for _, m, _ in BAD])
def test_bad_fields_name_the_line(tmp_path: Path, fields: str, message: str, hint: str) -> None:
    path = manifest(tmp_path, fields)
    with pytest.raises(ManifestError) as caught:
        parse_manifest(path)
    assert caught.value.message == f"{path}:{message}"
    assert caught.value.hint == hint
    assert caught.value.exit_code == 2


# ---- declared_decoder on BTF --------------------------------------------------------------


def encode(dec: EventDecoder, raw: bytes) -> bytes:
    enc = encoder_for(dec)
    enc.encode(raw, dec.size)
    out = enc.take()
    assert out.endswith(b"\n") and out.count(b"\n") == 1 and len(out) <= dec.max_record
    return out


@pytest.fixture(scope="module")
def ev() -> tuple[Btf, int]:
    return build_event_btf()


def test_declared_fields_encode_to_exact_json(tmp_path: Path, ev: tuple[Btf, int]) -> None:
    btf, sid = ev
    [channel] = parse_manifest(manifest(tmp_path, GOOD_FIELDS)).channels
    dec = declared_decoder(btf, btf.type(sid), channel.fields, "events")
    assert (dec.struct, dec.size) == ("ev", 264)
    assert [(f.name, f.offset, f.size, f.decoder) for f in dec.fields] == [
        ("a_s16", 4, 2, "s"), ("sport", 6, 2, "be"), ("a_u32", 8, 4, "hex"), ("a_u8", 0, 1, "bool"),
        ("ok", 32, 1, "bool"), ("f64", 48, 8, "float"), ("comm", 64, 16, "chars"),
        ("text", 80, 16, "chars"), ("saddr4", 108, 4, "ipv4"), ("inner", 112, 8, "hex"),
        ("cookie_lo", 120, 4, "u"), ("saddr", 132, 16, "ip"), ("daddr", 148, 16, "ipv6"),
    ]
    assert all(isinstance(f, Field) for f in dec.fields)
    raw = pack_ev(family=AF_INET, saddr=bytes([192, 168, 1, 2]) + bytes(12),
                  daddr=ipaddress.IPv6Address("fe80::1").packed, text=b"hi\0there", f64=-2.5)
    assert encode(dec, raw) == (
        b'{"a_s16":-32768,"sport":8080,"a_u32":"ffffffff","a_u8":true,"ok":true,"f64":-2.5,'
        b'"comm":"bash","text":"hi","saddr4":"10.0.0.1","inner":"efbeaddefeffff80",'
        b'"cookie_lo":1432778632,"saddr":"192.168.1.2","daddr":"fe80::1"}\n')
    v6 = pack_ev(family=AF_INET6, saddr=ipaddress.IPv6Address("2001:db8::1").packed, daddr=bytes(16))
    got = json.loads(encode(dec, v6))
    assert (got["saddr"], got["daddr"]) == ("2001:db8::1", "::")


def test_object_info_decoder_takes_the_declared_fields(ev: tuple[Btf, int]) -> None:
    btf, _ = ev
    info = ObjectInfo(machine="EM_BPF", license="GPL", programs=(), maps=(), sections=(), btf=btf,
                      has_btf_ext=True)
    dec = info.decoder("events", None, (decl("a_u64", "u64", offset=16),))
    assert [f.name for f in dec.fields] == ["a_u64"]
    assert len(info.decoder("events").fields) == 36  # without fields: every member, by default


WHERE = "channel 'events', field '{}' (manifest line 12): "
MISMATCHES = [
    # (declaration, message after WHERE, hint)
    (decl("a_u33", "u32", offset=8), "struct ev has no member 'a_u33' in the object's BTF",
     "did you mean 'a_u32'?"),
    (decl("a_u32", "u32", offset=12), "the manifest says offset 12, the BTF has 'a_u32' at offset 8 "
     "of struct ev", "declare it as {name: a_u32, type: u32, offset: 8}"),
    (decl("a_u32", "u32", order=3), "the manifest says order 3, the BTF has 'a_u32' as member 5 of "
     "struct ev (from 0, padding members included)", "declare it as {name: a_u32, type: u32, order: 5}"),
    (decl("a_u64", "u32", offset=16), "the manifest says u32 (4 bytes), the BTF says "
     "`unsigned long long` (unsigned int, 8 bytes)", "declare it as {name: a_u64, type: u64, offset: 16}"),
    (decl("a_s32", "u32", offset=12, decoder="hex"), "the manifest says u32 (4 bytes), the BTF says "
     "`int` (signed int, 4 bytes)", "declare it as {name: a_s32, type: s32, offset: 12, decoder: hex}"),
    (decl("a_u32", "char[16]", offset=8), "the manifest says char[16] (16 bytes), the BTF says `__u32` "
     "(unsigned int, 4 bytes)", "declare it as {name: a_u32, type: u32, offset: 8}"),
    (decl("a_u64", "f64", offset=16), "the manifest says f64 (8 bytes), the BTF says "
     "`unsigned long long` (unsigned int, 8 bytes)", "declare it as {name: a_u64, type: u64, offset: 16}"),
    (decl("f32", "u32", offset=40), "the manifest says u32 (4 bytes), the BTF says `float` "
     "(float, 4 bytes)", "declare it as {name: f32, type: f32, offset: 40}"),
    (decl("sport", "u16", offset=6), "the manifest says u16 (2 bytes), the BTF says `__be16` "
     "(big-endian unsigned int, 2 bytes)", "declare it as {name: sport, type: be16, offset: 6}"),
    (decl("counts", "char[12]", offset=96), "the manifest says char[12] (12 bytes), the BTF says "
     "`__u32[3]` (array, 12 bytes)", 'declare it as {name: counts, type: "u8[12]", offset: 96}'),
    (decl("inner", "u64", offset=112), "the manifest says u64 (8 bytes), the BTF says `struct inner` "
     "(struct, 8 bytes)", 'declare it as {name: inner, type: "u8[8]", offset: 112}'),
    (decl("ptr", "u32", offset=56, decoder="ipv4"), "the manifest says u32 (4 bytes), the BTF says "
     "`struct inner *` (pointer, 8 bytes)", "declare it as {name: ptr, type: u64, offset: 56}"),
    (decl("flags", "u32", offset=36), "'flags' is a bitfield of 3 bits in struct ev, which cannot be "
     "declared", "remove it from fields: (without fields:, default decoding reads bitfields)"),
    (decl("a_u64", "u64", offset=16, decoder="ipv4"), "decoder ipv4 needs a 4-byte type, not u64",
     "declare it as {name: a_u64, type: u64, offset: 16}"),
    (decl("comm", "char[16]", offset=64, decoder="ip"), "decoder ip does not apply to char[16]",
     'declare it as {name: comm, type: "char[16]", offset: 64}'),
]


@pytest.mark.parametrize(("field", "message", "hint"), MISMATCHES,
                         ids=[f"{d.name}-{d.type}" for d, _, _ in MISMATCHES])
def test_first_mismatch_with_the_btf(ev: tuple[Btf, int], field: FieldDecl, message: str, hint: str) -> None:
    btf, sid = ev
    fine = decl("a_u8", "u8", offset=0, line=11)
    later = decl("nope", "u8", offset=0, line=13)  # never reached: the first mismatch is raised
    with pytest.raises(ManifestError) as caught:
        declared_decoder(btf, btf.type(sid), [fine, field, later], "events")
    assert caught.value.message == WHERE.format(field.name) + message
    assert caught.value.hint == hint


def test_ip_needs_a_family_member() -> None:
    enc = BtfEncoder()
    t = Types(enc)
    sid = enc.struct("conn", 20, [("port", t.u16, 0), ("addr", t.ip, 32)])
    btf = Btf.parse(enc.build())
    with pytest.raises(ManifestError) as caught:
        declared_decoder(btf, btf.type(sid), [decl("addr", "u8[16]", order=1, decoder="ip")], "conns")
    assert caught.value.message == ("channel 'conns', field 'addr' (manifest line 12): decoder ip tells "
                                    "IPv4 from IPv6 by the struct's family, but struct conn has no "
                                    "member family / af / sa_family")
    assert caught.value.hint == ('declare it as {name: addr, type: "u8[16]", order: 1, decoder: ipv6}, '
                                 "or add a `family` member to the struct")
    dec = declared_decoder(btf, btf.type(sid), [decl("addr", "u8[16]", order=1, decoder="ipv6"),
                                                decl("port", "u16", offset=0, decoder="be")], "conns")
    raw = b"\x01\xbb" + b"\0\0" + ipaddress.IPv6Address("::ffff:1.2.3.4").packed
    assert encode(dec, raw) == b'{"addr":"::ffff:1.2.3.4","port":443}\n'
