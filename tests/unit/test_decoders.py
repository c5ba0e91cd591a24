"""Decoders on raw bytes: 128-bit addresses, unions by discriminator, names from enums (the
node's BTF, the reference kernels' tables), errno, kernel symbols, NUL-separated strings."""

from __future__ import annotations

import errno
import json
import socket
import struct
from pathlib import Path

import pytest
from btfgen import BtfEncoder

from loader.kernel.btf import Btf
from loader.decoders.btf import UnionChoice, event_decoder
from loader.decoders.ksym import parse_kallsyms
from loader.decoders.names import enum_table, node_enums
from loader.errors import ManifestError
from loader.libbpf.encode import Encoder, NameTable

KERNELS = Path(__file__).resolve().parents[3] / "shared" / "kernels"


def encode(dec, raw: bytes, *, syms=None) -> dict:
    enc = Encoder(dec.ops, event_size=dec.fixed_size, max_record=dec.max_record, names=dec.names,
                  syms=syms)
    enc.encode(raw, len(raw))
    out = enc.take()
    assert out.count(b"\n") == 1 and len(out) <= dec.max_record
    return json.loads(out)


def _event_btf():
    """struct ev { u16 family; u16 op; u32 reason; unsigned __int128 saddr; unsigned __int128 big;
    s32 ret; u64 location; union { struct {u32 fd;} open; struct {u64 bytes;} rw; } u; char args[24]; }"""
    enc = BtfEncoder()
    u16 = enc.int_("unsigned short", 2)
    u32 = enc.int_("unsigned int", 4)
    s32 = enc.int_("int", 4, signed=True)
    u64 = enc.int_("unsigned long long", 8)
    u128 = enc.int_("unsigned __int128", 16)
    char = enc.int_("char", 1, signed=True, char=True)
    opened = enc.struct("opened", 4, [("fd", u32, 0)])
    rw = enc.struct("rw", 8, [("bytes", u64, 0)])
    union = enc.struct("", 8, [("open", opened, 0), ("rw", rw, 0)], union=True)
    enc.struct("ev", 88, [("family", u16, 0), ("op", u16, 16), ("reason", u32, 32),
                               ("saddr", u128, 64), ("big", u128, 192), ("ret", s32, 320),
                               ("location", u64, 384), ("u", union, 448),
                               ("args", enc.array(char, 24), 512)])
    enc.enum("skb_drop_reason", [("SKB_DROP_REASON_NOT_SPECIFIED", 2), ("SKB_DROP_REASON_NO_SOCKET", 3)])
    btf = Btf.parse(enc.build())
    return btf, btf.by_name("ev", "struct")


def pack(*, family=socket.AF_INET, op=1, reason=3, saddr=b"\x7f\0\0\1" + bytes(12), big=0, ret=0,
         location=0, union=0, args=b"") -> bytes:
    return (struct.pack("<HHI", family, op, reason) + saddr + big.to_bytes(16, "little")
            + struct.pack("<i4xQQ", ret, location, union) + args)


def test_an_unsigned_int128_address_is_an_ip_and_other_int128s_are_hex() -> None:
    btf, ev = _event_btf()
    dec = event_decoder(btf, ev)
    got = encode(dec, pack(big=2**100 + 5, args=b"\0" * 24))
    assert got["saddr"] == "127.0.0.1" and got["big"] == hex(2**100 + 5)
    six = encode(dec, pack(family=socket.AF_INET6, saddr=socket.inet_pton(socket.AF_INET6, "::1"),
                           args=b"\0" * 24))
    assert six["saddr"] == "::1"


def test_a_union_prints_the_member_its_discriminator_picks() -> None:
    btf, ev = _event_btf()
    dec = event_decoder(btf, ev, unions={"u": UnionChoice(by="op", cases=((1, "open"), (2, "rw")))})
    assert encode(dec, pack(op=1, union=7))["u"] == {"open": {"fd": 7}}
    assert encode(dec, pack(op=2, union=2**40))["u"] == {"rw": {"bytes": 2**40}}
    got = encode(dec, pack(op=9, union=1, ret=-5))
    assert got["u"] is None and got["ret"] == -5  # and the fields after it are intact
    with pytest.raises(ManifestError, match="union 'u' has no member 'close'"):
        event_decoder(btf, ev, unions={"u": UnionChoice(by="op", cases=((3, "close"),))})
    with pytest.raises(ManifestError, match="chosen by 'opcode', which is not a member beside it"):
        event_decoder(btf, ev, unions={"u": UnionChoice(by="opcode", cases=((1, "open"),))})


def test_enum_errno_ksym_and_strings_decoders() -> None:
    btf, ev = _event_btf()
    node = {"skb_drop_reason": NameTable(names=((3, "SKB_DROP_REASON_PKT_TOO_SMALL"),))}
    dec = event_decoder(btf, ev, overrides={"reason": "enum:skb_drop_reason", "ret": "errno",
                                            "location": "ksym", "args": "strings"},
                        enums=node.get)
    syms = [(0xFFFF0000, "tcp_v4_rcv"), (0xFFFF1000, "kfree_skb_reason"), (0xFFFF2000, "x [mod]")]
    got = encode(dec, pack(reason=3, ret=-errno.ENOENT, location=0xFFFF1010, args=b"ls\0-l\0/tmp\0"),
                 syms=syms)
    # the node's value 3, not the object's (the object says NO_SOCKET is 3)
    assert got["reason"] == "SKB_DROP_REASON_PKT_TOO_SMALL"
    assert (got["ret"], got["location"], got["args"]) == ("ENOENT", "kfree_skb_reason+0x10",
                                                          ["ls", "-l", "/tmp"])
    assert encode(dec, pack(reason=77, ret=12, location=0x10, args=b"a"), syms=syms) | {} == {
        **encode(dec, pack(reason=77, ret=12, location=0x10, args=b"a"), syms=syms),
        "reason": 77, "ret": 12, "location": "0x10", "args": ["a"]}
    # without the node's table, the object's own
    own = event_decoder(btf, ev, overrides={"reason": "enum:skb_drop_reason"})
    assert encode(own, pack(reason=3, args=b""))["reason"] == "SKB_DROP_REASON_NO_SOCKET"


def test_a_decoder_for_a_field_that_does_not_exist_is_a_manifest_error() -> None:
    btf, ev = _event_btf()
    with pytest.raises(ManifestError) as caught:
        event_decoder(btf, ev, overrides={"reasn": "errno"}, channel="drops")
    assert caught.value.message == ("channel 'drops': struct ev has no field 'reasn' (named in "
                                    "decoders: or unions:)")
    assert caught.value.hint == "did you mean 'reason'?"
    with pytest.raises(ManifestError, match="unknown decoder 'errnum'"):
        event_decoder(btf, ev, overrides={"ret": "errnum"})
    with pytest.raises(ManifestError, match="no enum 'skb_drop' in this node's BTF"):
        event_decoder(btf, ev, overrides={"reason": "enum:skb_drop"}, enums=lambda name: None)


def test_kallsyms_keeps_text_symbols_with_their_module() -> None:
    text = ("0000000000000000 A fixed_percpu_data\nffffffff81000000 T _stext\n"
            "ffffffff81000100 t helper\nffffffff82000000 D data_thing\n"
            "ffffffffc0000000 t nf_hook [nf_tables]\n")
    assert parse_kallsyms(text) == [(0xFFFFFFFF81000000, "_stext"), (0xFFFFFFFF81000100, "helper"),
                                    (0xFFFFFFFFC0000000, "nf_hook [nf_tables]")]
    assert parse_kallsyms("0000000000000000 T _stext\n") == []  # kptr_restrict: nothing to name


@pytest.mark.parametrize("kernel, no_socket, too_small, count", [
    ("6.1.0-50-amd64", 2, 3, 66), ("6.12.100+deb12-amd64", 3, 8, 102), ("6.18.44-fc-v669", 3, 9, 130)])
def test_drop_reason_values_differ_per_reference_kernel(kernel: str, no_socket: int, too_small: int,
                                                        count: int) -> None:
    """Why names come from the node's BTF (CATALOG.md §0.3): the same reason, other numbers."""
    path = KERNELS / f"{kernel}.btf"
    if not path.exists():
        pytest.skip(f"no reference kernel BTF at {path}")
    table = enum_table(Btf.parse(path.read_bytes()), "skb_drop_reason", strip_prefix=True)
    names = dict(table.names)
    assert names[no_socket] == "NO_SOCKET" and names[too_small] == "PKT_TOO_SMALL"
    assert len(names) == count


def test_the_running_kernels_enum_is_read_from_its_btf() -> None:
    if not Path("/sys/kernel/btf/vmlinux").exists():
        pytest.skip("this kernel exposes no BTF")
    table = node_enums()("skb_drop_reason")
    assert table is not None and "SKB_DROP_REASON_NO_SOCKET" in dict(table.names).values()
    assert node_enums()("no_such_enum_anywhere") is None


def test_strings_keep_empty_arguments_but_not_trailing_padding() -> None:
    btf, ev = _event_btf()
    dec = event_decoder(btf, ev, overrides={"args": "strings"})
    assert encode(dec, pack(args=b"ls\0-l\0" + bytes(18)))["args"] == ["ls", "-l"]
    assert encode(dec, pack(args=b"a\0\0b\0"))["args"] == ["a", "", "b"]
    assert encode(dec, pack(args=bytes(24)))["args"] == []


def test_hex_reads_an_integer_most_significant_digit_first() -> None:
    btf, ev = _event_btf()
    dec = event_decoder(btf, ev, overrides={"location": "hex", "args": "hex"})
    got = encode(dec, pack(location=0x7FAF80000000, args=b"\x01\x02"))
    assert got["location"] == "00007faf80000000"  # the value, not its little-endian bytes
    assert got["args"].startswith("0102")           # a byte array keeps its memory order
