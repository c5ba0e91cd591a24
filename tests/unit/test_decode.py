"""Default event decoding on raw bytes: BTF (from btfgen) → encoder ops → the C JSON encoder.

Every event is packed by hand with struct.pack (little-endian, as BPF objects here are) and the
JSON line the C encoder writes is compared whole.
"""

from __future__ import annotations

import ipaddress
import json
import math
import random
import struct
from dataclasses import dataclass

import pytest

from btfgen import K_FLOAT, K_PTR, K_TYPEDEF, BtfEncoder
from loader.kernel.btf import Btf
from loader.decoders.btf import MARKER, EventDecoder, Field, channel_struct, encoder_for, event_decoder
from loader.errors import ArtifactNotFound
from loader.libbpf.encode import Encoder

AF_INET, AF_INET6 = 2, 10


@dataclass
class Types:
    """Type ids of a BTF blob in progress, named as C spells them."""

    enc: BtfEncoder

    def __post_init__(self) -> None:
        enc = self.enc
        self.uchar = enc.int_("unsigned char", 1)
        self.schar = enc.int_("signed char", 1, signed=True)
        self.u16_ = enc.int_("unsigned short", 2)
        self.s16 = enc.int_("short", 2, signed=True)
        self.u32_ = enc.int_("unsigned int", 4)
        self.s32 = enc.int_("int", 4, signed=True)
        self.u64 = enc.int_("unsigned long long", 8)
        self.s64 = enc.int_("long long", 8, signed=True)
        self.char = enc.int_("char", 1, signed=True, char=True)
        self.bool = enc.int_("_Bool", 1, boolean=True)
        self.f32 = enc.raw("float", K_FLOAT, 0, 4)
        self.f64 = enc.raw("double", K_FLOAT, 0, 8)
        self.u8 = self.typedef("__u8", self.uchar)
        self.u16 = self.typedef("__u16", self.u16_)
        self.u32 = self.typedef("__u32", self.u32_)
        self.be16 = self.typedef("__be16", self.u16)
        self.be32 = self.typedef("__be32", self.u32)
        self.ipv4 = self.typedef("bpfdepot_ipv4", self.u32)
        self.ip = self.typedef("bpfdepot_ip", enc.array(self.u8, 16))

    def typedef(self, name: str, type_id: int) -> int:
        return self.enc.ref(K_TYPEDEF, type_id, name)

    def marker(self, channel: str, struct_id: int) -> int:
        """What BPFDEPOT_CHANNEL leaves in BTF: `struct ev *bpfdepot_event__<channel>`."""
        return self.enc.var(MARKER + channel, self.enc.ref(K_PTR, struct_id))


def build_event_btf() -> tuple[Btf, int]:
    """`struct ev`: one member per decoding rule (264 bytes; see EV_FORMAT for the layout)."""
    enc = BtfEncoder()
    t = Types(enc)
    state = enc.enum("state", [("ST_IDLE", 0), ("ST_BUSY", 3)])
    err = enc.enum("err16", [("E_INVAL", -22), ("E_OK", 0)], signed=True, size=2)
    inner = enc.struct("inner", 8, [("lo", t.u32, 0), ("hi", t.s16, 32), ("tag", t.u8, 48),
                                    ("d", t.schar, 56)])
    anon = enc.struct("", 8, [("cookie", t.u64, 0), ("cookie_lo", t.u32, 0)], union=True)
    comm = enc.array(t.char, 16)

    def bits(size: int, offset: int) -> int:
        return size << 24 | offset

    ev = enc.struct("ev", 264, [
        ("a_u8", t.u8, 0), ("a_s8", t.schar, 8), ("a_u16", t.u16, 16), ("a_s16", t.s16, 32),
        ("sport", t.be16, 48), ("a_u32", t.u32, 64), ("a_s32", t.s32, 96), ("a_u64", t.u64, 128),
        ("a_s64", t.s64, 192), ("ok", t.bool, 256), ("__pad", enc.array(t.u8, 3), 264),
        # bitfields in the 32 bits at byte 36: mid and neg straddle byte boundaries
        ("flags", t.u32_, bits(3, 288)), ("level", t.s32, bits(3, 291)), ("mid", t.u32_, bits(6, 294)),
        ("neg", t.s32, bits(8, 300)), ("wide", t.u32_, bits(12, 308)),
        ("f32", t.f32, 320), ("state", state, 352), ("f64", t.f64, 384),
        ("ptr", enc.ref(K_PTR, inner), 448), ("comm", comm, 512), ("text", comm, 640),
        ("counts", enc.array(t.u32, 3), 768), ("saddr4", t.ipv4, 864), ("inner", inner, 896),
        ("", anon, 960), ("family", t.u16, 1024), ("err", err, 1040), ("saddr", t.ip, 1056),
        ("daddr", enc.array(t.u8, 16), 1184), ("blob", enc.array(t.u8, 100), 1312),
    ], kind_flag=True)
    t.marker("events", ev)
    return Btf.parse(enc.build()), ev


# a_u8 a_s8 a_u16 a_s16 sport a_u32 a_s32 a_u64 a_s64 ok __pad bits f32 state f64 ptr comm text
# counts[3] saddr4 inner(lo hi tag d) cookie family err saddr daddr blob
EV_FORMAT = "<BbHh2sIiQq?3sIfIdQ16s16s3I4sIhBbQHh16s16s100s"
assert struct.calcsize(EV_FORMAT) == 264


def bitword(flags: int, level: int, mid: int, neg: int, wide: int) -> int:
    return (flags | (level & 0b111) << 3 | mid << 6 | (neg & 0xFF) << 12 | wide << 20)


def pack_ev(*, family: int, saddr: bytes, daddr: bytes, **over: object) -> bytes:
    values: dict[str, object] = dict(
        a_u8=255, a_s8=-128, a_u16=65535, a_s16=-32768, sport=struct.pack(">H", 8080),
        a_u32=0xFFFFFFFF, a_s32=-(2**31), a_u64=2**64 - 1, a_s64=-(2**63), ok=True,
        pad=b"\xaa\xbb\xcc", bits=bitword(5, -3, 45, -100, 4000), f32=0.1, state=3, f64=-2.5e-300,
        ptr=0xFFFF888012345678, comm=b"bash\0junk after the NUL"[:16], text=b'a"b\\c\nd\x80e\x7f\0zz',
        counts=(1, 0xFFFFFFFF, 7), saddr4=bytes([10, 0, 0, 1]),
        inner=(0xDEADBEEF, -2, 255, -128), cookie=0x1122334455667788, err=-22, blob=bytes(range(100)))
    values.update(over)
    v = values
    return struct.pack(EV_FORMAT, v["a_u8"], v["a_s8"], v["a_u16"], v["a_s16"], v["sport"], v["a_u32"],
                       v["a_s32"], v["a_u64"], v["a_s64"], v["ok"], v["pad"], v["bits"], v["f32"],
                       v["state"], v["f64"], v["ptr"], v["comm"], v["text"], *v["counts"],  # type: ignore[misc]
                       v["saddr4"], *v["inner"], v["cookie"], family, v["err"], saddr,  # type: ignore[misc]
                       daddr, v["blob"])


def f32(value: float) -> float:
    return struct.unpack("<f", struct.pack("<f", value))[0]


EXPECTED_COMMON = {
    "a_u8": 255, "a_s8": -128, "a_u16": 65535, "a_s16": -32768, "sport": 8080,
    "a_u32": 4294967295, "a_s32": -2147483648, "a_u64": 18446744073709551615,
    "a_s64": -9223372036854775808, "ok": True,
    "flags": 5, "level": -3, "mid": 45, "neg": -100, "wide": 4000,
    "f32": f32(0.1), "state": "ST_BUSY", "f64": -2.5e-300, "ptr": 0xFFFF888012345678,
    "comm": "bash", "text": 'a"b\\c\nd\x80e\x7f', "counts": [1, 4294967295, 7], "saddr4": "10.0.0.1",
    "inner": {"lo": 3735928559, "hi": -2, "tag": 255, "d": -128},
    "cookie": 0x1122334455667788, "cookie_lo": 0x55667788,
}
KEYS = ["a_u8", "a_s8", "a_u16", "a_s16", "sport", "a_u32", "a_s32", "a_u64", "a_s64", "ok", "flags",
        "level", "mid", "neg", "wide", "f32", "state", "f64", "ptr", "comm", "text", "counts", "saddr4",
        "inner", "cookie", "cookie_lo", "family", "err", "saddr", "daddr", "blob"]


@pytest.fixture(scope="module")
def dec() -> EventDecoder:
    btf, ev = build_event_btf()
    return event_decoder(btf, btf.type(ev))


def encoder(dec: EventDecoder) -> Encoder:
    return encoder_for(dec)


def run(dec: EventDecoder, *events: bytes) -> list[bytes]:
    """Encode ``events`` (each dec.size bytes) in one batch; return the JSON lines."""
    enc = encoder(dec)
    enc.encode(b"".join(events), dec.size)
    out = enc.take()
    assert out.endswith(b"\n") and enc.pending() == 0
    assert enc.events == len(events) and enc.short_events == 0
    return out.splitlines()


def test_decoder_shape(dec: EventDecoder) -> None:
    assert (dec.struct, dec.size) == ("ev", 264)
    assert [(f.name, f.offset, f.size, f.decoder) for f in dec.fields] == [
        ("a_u8", 0, 1, "u"), ("a_s8", 1, 1, "s"), ("a_u16", 2, 2, "u"), ("a_s16", 4, 2, "s"),
        ("sport", 6, 2, "be"), ("a_u32", 8, 4, "u"), ("a_s32", 12, 4, "s"), ("a_u64", 16, 8, "u"),
        ("a_s64", 24, 8, "s"), ("ok", 32, 1, "bool"),
        ("flags", 36, 3, "ubits"), ("level", 36, 3, "sbits"), ("mid", 36, 6, "ubits"),
        ("neg", 37, 8, "sbits"), ("wide", 38, 12, "ubits"),
        ("f32", 40, 4, "float"), ("state", 44, 4, "name"), ("f64", 48, 8, "float"), ("ptr", 56, 8, "u"),
        ("comm", 64, 16, "chars"), ("text", 80, 16, "chars"),
        ("counts[0]", 96, 4, "u"), ("counts[1]", 100, 4, "u"), ("counts[2]", 104, 4, "u"),
        ("saddr4", 108, 4, "ipv4"),
        ("inner.lo", 112, 4, "u"), ("inner.hi", 116, 2, "s"), ("inner.tag", 118, 1, "u"),
        ("inner.d", 119, 1, "s"),
        ("cookie", 120, 8, "u"), ("cookie_lo", 120, 4, "u"), ("family", 128, 2, "u"),
        ("err", 130, 2, "name"), ("saddr", 132, 16, "ip"), ("daddr", 148, 16, "ip"),
        ("blob", 164, 100, "hex"),
    ]
    assert all(isinstance(f, Field) for f in dec.fields)


def test_ipv4_event(dec: EventDecoder) -> None:
    raw = pack_ev(family=AF_INET, saddr=bytes([192, 168, 1, 2]) + b"\xff" * 12,  # tail ignored
                  daddr=bytes([8, 8, 4, 4]) + bytes(12))
    [line] = run(dec, raw)
    got = json.loads(line)
    assert got == {**EXPECTED_COMMON, "family": 2, "err": "E_INVAL", "saddr": "192.168.1.2",
                   "daddr": "8.8.4.4", "blob": bytes(range(100)).hex()}
    assert list(got) == KEYS  # member order; __pad left out
    # text escapes as the encoder writes them: \" \\ and \u00XX for control and non-ASCII bytes
    assert b'"text":"a\\"b\\\\c\\u000ad\\u0080e\\u007f"' in line
    assert b'"comm":"bash"' in line and b"__pad" not in line


def test_ipv6_event(dec: EventDecoder) -> None:
    raw = pack_ev(family=AF_INET6, saddr=ipaddress.IPv6Address("2001:db8::1").packed,
                  daddr=ipaddress.IPv6Address("fe80::1").packed)
    [line] = run(dec, raw)
    assert json.loads(line) == {**EXPECTED_COMMON, "family": 10, "err": "E_INVAL", "saddr": "2001:db8::1",
                                "daddr": "fe80::1", "blob": bytes(range(100)).hex()}


def test_events_laid_end_to_end_give_one_line_each(dec: EventDecoder) -> None:
    v4 = pack_ev(family=AF_INET, saddr=bytes([1, 2, 3, 4]) + bytes(12), daddr=bytes(16))
    v6 = pack_ev(family=AF_INET6, saddr=ipaddress.IPv6Address("::1").packed, daddr=bytes(16),
                 a_u8=0, ok=False, comm=b"x" * 16, bits=bitword(0, 3, 0, 127, 0), f32=float("nan"),
                 f64=float("-inf"))
    lines = [json.loads(line) for line in run(dec, v4, v6, v4)]
    assert [(e["saddr"], e["daddr"]) for e in lines] == [("1.2.3.4", "0.0.0.0"), ("::1", "::"),
                                                         ("1.2.3.4", "0.0.0.0")]
    second = lines[1]
    assert (second["a_u8"], second["ok"], second["comm"]) == (0, False, "x" * 16)  # no NUL: all 16
    assert (second["flags"], second["level"], second["mid"], second["neg"], second["wide"]) == (0, 3, 0, 127, 0)
    assert (second["f32"], second["f64"]) == (None, None)  # JSON has no NaN or infinity


def test_short_events_are_counted_not_emitted(dec: EventDecoder) -> None:
    """Shorter than the fixed part (all but the trailing array): counted short, not decoded."""
    enc = encoder(dec)
    raw = pack_ev(family=AF_INET, saddr=bytes(16), daddr=bytes(16))
    fixed = dec.fixed_size
    assert fixed == dec.size - 100  # the trailing `blob` may be cut short
    enc.encode(raw[:fixed - 1] * 3, fixed - 1)
    assert (enc.events, enc.short_events, enc.pending(), enc.take()) == (0, 3, 0, b"")
    enc.encode(raw, dec.size)  # a longer record is fine: the struct is read from its start
    enc.encode(raw + b"tail", dec.size + 4)
    assert (enc.events, enc.short_events) == (2, 3)
    assert len(enc.take().splitlines()) == 2


def test_a_variable_length_tail_is_decoded_as_far_as_it_arrived(dec: EventDecoder) -> None:
    """An event whose trailing array was sent in part (bpf_ringbuf_output of a shorter size)."""
    enc = encoder(dec)
    raw = pack_ev(family=AF_INET, saddr=bytes(16), daddr=bytes(16))
    enc.encode(raw[:dec.fixed_size + 3], dec.fixed_size + 3)
    got = json.loads(enc.take())
    assert got["blob"] == bytes(range(3)).hex() and enc.short_events == 0
    enc.encode(raw[:dec.fixed_size], dec.fixed_size)
    assert json.loads(enc.take())["blob"] == ""


def test_max_record_bounds_the_longest_record(dec: EventDecoder) -> None:
    longest = ipaddress.IPv6Address("1111:2222:3333:4444:5555:6666:7777:8888").packed
    raw = pack_ev(family=AF_INET6, saddr=longest, daddr=longest, a_u8=255, a_s8=-128,
                  sport=b"\xff\xff", bits=bitword(7, -4, 63, -128, 4095), f32=-1.1754942106924411e-38,
                  f64=-2.2250738585072009e-308, state=0xFFFFFFFF, ptr=2**64 - 1,
                  comm=b"\x80" * 16, text=b"\x01" * 16, counts=(0xFFFFFFFF,) * 3,
                  saddr4=b"\xff\xff\xff\xff", inner=(0xFFFFFFFF, -32768, 255, -128),
                  cookie=2**64 - 1, err=-32768, blob=b"\xff" * 100)
    [line] = run(dec, raw)
    record = line + b"\n"
    assert len(record) <= dec.max_record, (len(record), dec.max_record)
    got = json.loads(line)
    assert got["comm"] == "\x80" * 16 and got["saddr"] == "1111:2222:3333:4444:5555:6666:7777:8888"
    assert got["f32"] == f32(-1.1754942106924411e-38) and got["saddr4"] == "255.255.255.255"


def test_random_bytes_stay_valid_json_within_max_record(dec: EventDecoder) -> None:
    rng = random.Random(20240501)  # fixed seed: the same bytes every run
    lines = run(dec, *(rng.randbytes(dec.size) for _ in range(500)))
    assert len(lines) == 500
    for line in lines:
        assert len(line) + 1 <= dec.max_record
        assert list(json.loads(line)) == KEYS


def test_output_buffer_grows_past_its_first_megabyte(dec: EventDecoder) -> None:
    raw = pack_ev(family=AF_INET, saddr=bytes(16), daddr=bytes(16), comm=b"\x80" * 16)
    enc = encoder(dec)
    enc.encode(raw * 2000, dec.size)
    out = enc.take()
    assert len(out) > 1 << 20
    lines = out.splitlines()
    assert len(lines) == 2000 == enc.events
    assert json.loads(lines[0]) == json.loads(lines[-1])


# ---- one rule at a time ------------------------------------------------------------------


def one_struct(members: list[tuple[str, str, int]], size: int) -> EventDecoder:
    """A struct of the named Types attributes: (member name, Types attribute, byte offset)."""
    enc = BtfEncoder()
    t = Types(enc)
    sid = enc.struct("one", size, [(name, getattr(t, attr), off * 8) for name, attr, off in members])
    btf = Btf.parse(enc.build())
    return event_decoder(btf, btf.type(sid))


def encode_one(dec: EventDecoder, raw: bytes) -> dict:
    [line] = run(dec, raw)
    return json.loads(line)


def test_ip_without_family_is_ipv6_and_be32_addr_is_ipv4() -> None:
    dec = one_struct([("addr", "ip", 0), ("daddr", "be32", 16), ("port", "be16", 20)], 24)
    assert [(f.name, f.decoder) for f in dec.fields] == [("addr", "ipv6"), ("daddr", "ipv4"), ("port", "be")]
    raw = ipaddress.IPv6Address("2001:db8::7").packed + bytes([127, 0, 0, 1]) + b"\x01\xbb\0\0"
    assert encode_one(dec, raw) == {"addr": "2001:db8::7", "daddr": "127.0.0.1", "port": 443}


def test_be32_without_addr_in_its_name_is_a_number() -> None:
    dec = one_struct([("seq", "be32", 0)], 4)
    assert encode_one(dec, b"\x00\x00\x01\x00") == {"seq": 256}


def test_byte_arrays_are_lists_up_to_64_and_hex_beyond() -> None:
    enc = BtfEncoder()
    t = Types(enc)
    sid = enc.struct("one", 129, [("small", enc.array(t.u8, 64), 0), ("big", enc.array(t.u8, 65), 512)])
    btf = Btf.parse(enc.build())
    dec = event_decoder(btf, btf.type(sid))
    got = encode_one(dec, bytes(range(64)) + bytes(range(100, 165)))
    assert got == {"small": list(range(64)), "big": bytes(range(100, 165)).hex()}


def test_a_struct_of_padding_only_is_an_empty_object() -> None:
    dec = one_struct([("__pad", "u32", 0)], 4)
    assert dec.fields == () and encode_one(dec, b"\1\2\3\4") == {}


# ---- which struct a channel carries ------------------------------------------------------


def channel_btf() -> tuple[Btf, int, int]:
    enc = BtfEncoder()
    t = Types(enc)
    ev = enc.struct("ev", 4, [("x", t.u32, 0)])
    other = enc.struct("other_event", 4, [("y", t.u32, 0)])
    t.marker("events", ev)
    enc.var(MARKER + "counts", t.u32)  # a marker that is not a struct pointer
    return Btf.parse(enc.build()), ev, other


def test_channel_struct_from_the_marker() -> None:
    btf, ev, _ = channel_btf()
    assert channel_struct(btf, "events").id == ev
    assert channel_struct(btf, "events", None).name == "ev"


def test_channel_struct_declared_in_the_manifest_wins() -> None:
    btf, _, other = channel_btf()
    assert channel_struct(btf, "events", "other_event").id == other


def test_channel_struct_unknown_declared_struct() -> None:
    btf, _, _ = channel_btf()
    with pytest.raises(ArtifactNotFound) as exc:
        channel_struct(btf, "events", "nope")
    assert exc.value.message == "channel 'events': no struct 'nope' in the object's BTF"
    assert exc.value.hint == "fix `event:` in the manifest, or use the event struct in the program"
    assert exc.value.exit_code == 3


@pytest.mark.parametrize("channel", ["missing", "counts"])
def test_channel_struct_without_a_marker(channel: str) -> None:
    btf, _, _ = channel_btf()
    with pytest.raises(ArtifactNotFound) as exc:
        channel_struct(btf, channel)
    assert exc.value.message == f"channel '{channel}': the object does not say which struct it carries"
    assert exc.value.hint == (f"declare it with BPFDEPOT_CHANNEL({channel}, struct your_event, SIZE) from "
                              f"bpfdepot.h, or set `event: your_event` on the channel in the manifest")


def test_floats_round_trip_exactly() -> None:
    dec = one_struct([("a", "f32", 0), ("b", "f64", 8)], 16)
    for a, b in [(1.5, math.pi), (-0.0, 5e-324), (3.4028234663852886e38, -1.7976931348623157e308)]:
        got = encode_one(dec, struct.pack("<f4xd", a, b))
        assert (got["a"], got["b"]) == (f32(a), b)
