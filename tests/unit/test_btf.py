"""Unit tests for loader.kernel.btf on BTF bytes assembled by the small encoder in btfgen.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from btfgen import (
    K_CONST, K_DECL_TAG, K_FLOAT, K_FUNC, K_FUNC_PROTO, K_FWD, K_INT, K_PTR, K_RESTRICT,
    K_STRUCT, K_TYPE_TAG, K_TYPEDEF, K_VOLATILE, BtfEncoder,
)
from loader.kernel.btf import MAP_TYPE_NAMES, Btf, BtfFormatError, Member, MapDef
from loader.errors import BpfDepotError

VMLINUX = Path("/sys/kernel/btf/vmlinux")


def test_empty_btf_has_only_void() -> None:
    btf = Btf.parse(BtfEncoder().build())
    assert len(btf) == 1
    assert btf.type(0).kind == "void" and btf.type(0).name == ""
    assert btf.by_name("anything") is None
    assert btf.map_defs() == {}


@pytest.mark.parametrize("order", ["<", ">"])
def test_ints_signed_char_bool_in_both_byte_orders(order: str) -> None:
    enc = BtfEncoder(order=order)
    i32 = enc.int_("int", 4, signed=True)
    u8 = enc.int_("unsigned char", 1)
    ch = enc.int_("char", 1, signed=True, char=True)
    b = enc.int_("_Bool", 1, boolean=True)
    btf = Btf.parse(enc.build())
    assert btf.byte_order == ("little" if order == "<" else "big")
    assert len(btf) == 5
    t = btf.type(i32)
    assert (t.kind, t.name, t.size, t.int_bits, t.int_offset) == ("int", "int", 4, 32, 0)
    assert t.int_signed and not t.int_char and not t.int_bool
    assert not btf.type(u8).int_signed
    assert btf.type(ch).int_char and btf.type(ch).int_signed
    assert btf.type(b).int_bool and btf.type(b).int_bits == 8
    assert btf.by_name("char") == btf.type(ch)


def test_struct_with_nested_struct_array_and_sizes() -> None:
    enc = BtfEncoder()
    u32 = enc.int_("unsigned int", 4)
    u64 = enc.int_("unsigned long long", 8)
    char = enc.int_("char", 1, signed=True)
    inner = enc.struct("inner", 8, [("lo", u32, 0), ("hi", u32, 32)])
    comm = enc.array(char, 16, index=u32)
    grid = enc.array(enc.array(u32, 3), 2)  # __u32 grid[2][3]
    ptr = enc.ref(K_PTR, inner)
    outer = enc.struct("outer", 64, [("ts", u64, 0), ("in", inner, 64), ("comm", comm, 128),
                                     ("grid", grid, 256), ("next", ptr, 448)])
    btf = Btf.parse(enc.build())

    t = btf.by_name("outer", "struct")
    assert t is not None and t.id == outer and t.size == 64
    assert [m.name for m in t.members] == ["ts", "in", "comm", "grid", "next"]
    assert t.members[1] == Member(name="in", type_id=inner, bit_offset=64, bitfield_size=0)
    assert btf.type(inner).members[1].bit_offset == 32
    a = btf.type(comm)
    assert (a.kind, a.elem_type_id, a.index_type_id, a.nelems) == ("array", char, u32, 16)
    assert btf.size_of(comm) == 16
    assert btf.size_of(grid) == 24
    assert btf.size_of(ptr) == 8
    assert btf.size_of(inner) == 8
    assert btf.size_of(outer) == 64


def test_typedef_const_volatile_chain_strip_and_size() -> None:
    enc = BtfEncoder()
    u32 = enc.int_("unsigned int", 4)
    td = enc.ref(K_TYPEDEF, u32, "__u32")
    cst = enc.ref(K_CONST, td)
    vol = enc.ref(K_VOLATILE, cst)
    tag = enc.ref(K_TYPE_TAG, vol, "user")
    rst_ptr = enc.ref(K_RESTRICT, enc.ref(K_PTR, tag))
    td2 = enc.ref(K_TYPEDEF, enc.array(cst, 4), "quad")
    var = enc.var("counter", vol)
    btf = Btf.parse(enc.build())

    assert btf.strip(tag) == btf.type(u32)
    assert btf.strip(u32) == btf.type(u32)
    assert btf.type(td).name == "__u32" and btf.type(td).type_id == u32
    assert btf.type(tag).kind == "type_tag" and btf.type(tag).name == "user"
    assert btf.strip(rst_ptr).kind == "ptr"  # pointers are not modifiers: strip stops there
    assert btf.size_of(tag) == 4
    assert btf.size_of(rst_ptr) == 8
    assert btf.size_of(td2) == 16
    assert btf.size_of(var) == 4
    assert btf.strip(0).kind == "void"


def test_size_of_refuses_types_without_size() -> None:
    enc = BtfEncoder()
    proto = enc.ref(K_FUNC_PROTO, 0)
    enc.raw("handler", K_FUNC, 1, proto)
    btf = Btf.parse(enc.build())
    with pytest.raises(BtfFormatError, match=r"BTF: type 2 \(func 'handler'\) has no size"):
        btf.size_of(2)


def test_bitfield_members_with_kind_flag() -> None:
    enc = BtfEncoder()
    u32 = enc.int_("unsigned int", 4)
    flags = enc.struct("flags", 8, [("a", u32, 3 << 24 | 0), ("b", u32, 5 << 24 | 3),
                                    ("whole", u32, 32)], kind_flag=True)
    # Without kind_flag the same word is a plain bit offset.
    plain = enc.struct("plain", 8, [("x", u32, 40)])
    btf = Btf.parse(enc.build())

    t = btf.type(flags)
    assert t.kind_flag
    assert t.members == (
        Member(name="a", type_id=u32, bit_offset=0, bitfield_size=3),
        Member(name="b", type_id=u32, bit_offset=3, bitfield_size=5),
        Member(name="whole", type_id=u32, bit_offset=32, bitfield_size=0),
    )
    assert btf.type(plain).members[0] == Member(name="x", type_id=u32, bit_offset=40,
                                                bitfield_size=0)


def test_enum_signedness_and_enum64() -> None:
    enc = BtfEncoder()
    signed = enc.enum("err", [("E_BAD", -22), ("E_OK", 0), ("E_MAX", 0x7FFFFFFF)], signed=True)
    unsigned = enc.enum("mask", [("ALL", 0xFFFFFFFF)])
    e64 = enc.enum64("big", [("HUGE", 1 << 40), ("NEG", -(1 << 40))], signed=True)
    u64 = enc.enum64("ubig", [("TOP", 0xFFFF_FFFF_FFFF_FFFF)])
    btf = Btf.parse(enc.build())

    t = btf.type(signed)
    assert (t.kind, t.size, t.kind_flag) == ("enum", 4, True)
    assert t.enumerators == (("E_BAD", -22), ("E_OK", 0), ("E_MAX", 0x7FFFFFFF))
    assert btf.type(unsigned).enumerators == (("ALL", 0xFFFFFFFF),)
    assert btf.type(e64).enumerators == (("HUGE", 1 << 40), ("NEG", -(1 << 40)))
    assert btf.type(e64).kind == "enum64" and btf.size_of(e64) == 8
    assert btf.type(u64).enumerators == (("TOP", 0xFFFF_FFFF_FFFF_FFFF),)


def test_other_kinds_decode() -> None:
    enc = BtfEncoder()
    i32 = enc.int_("int", 4, signed=True)
    fwd = enc.raw("sock", K_FWD, 0, 0, kind_flag=True)
    flt = enc.raw("double", K_FLOAT, 0, 8)
    proto = enc.raw("", K_FUNC_PROTO, 3, i32, enc.s("ctx"), i32, enc.s("n"), i32, 0, 0)
    func = enc.raw("handle", K_FUNC, 1, proto)  # vlen of a FUNC is its linkage
    st = enc.struct("s", 4, [("x", i32, 0)])
    tag = enc.raw("percpu", K_DECL_TAG, 0, st, 0)
    whole = enc.raw("tagged", K_DECL_TAG, 0, st, 0xFFFFFFFF)
    un = enc.struct("u", 4, [("x", i32, 0), ("y", i32, 0)], union=True)
    after = enc.int_("long", 8, signed=True)  # decoding must stay aligned after every kind
    btf = Btf.parse(enc.build())

    assert btf.type(fwd).kind == "fwd" and btf.type(fwd).kind_flag
    assert btf.type(flt).kind == "float" and btf.size_of(flt) == 8
    p = btf.type(proto)
    assert p.type_id == i32 and p.params == (("ctx", i32), ("n", i32), ("", 0))
    assert btf.type(func).linkage == 1 and btf.type(func).type_id == proto
    assert btf.type(tag).component_idx == 0 and btf.type(tag).type_id == st
    assert btf.type(whole).component_idx == -1
    assert btf.type(un).kind == "union" and btf.size_of(un) == 4
    assert btf.type(after).name == "long"
    assert [t.id for t in btf] == list(range(len(btf)))


def test_by_name_kind_filter_and_first_match() -> None:
    enc = BtfEncoder()
    i32 = enc.int_("int", 4, signed=True)
    fwd = enc.raw("task", K_FWD, 0, 0)
    st = enc.struct("task", 4, [("pid", i32, 0)])
    enc.struct("task", 4, [("tid", i32, 0)])  # a duplicate: the first one wins
    enc.ref(K_TYPEDEF, i32, "ask")  # a suffix of "task" must not match it
    btf = Btf.parse(enc.build())

    assert btf.by_name("task").id == fwd
    assert btf.by_name("task", "struct").id == st
    assert btf.by_name("task", "union") is None
    assert btf.by_name("ask").kind == "typedef"
    assert btf.by_name("pid") is None  # member names are not type names
    assert btf.by_name("") is None
    with pytest.raises(ValueError, match="unknown BTF kind 'structure'"):
        btf.by_name("task", "structure")


def test_by_name_with_suffix_shared_string() -> None:
    # Some producers point a name into the tail of a longer string ("ask" inside "task").
    enc = BtfEncoder()
    i32 = enc.int_("int", 4, signed=True)
    st = enc.struct("task", 4, [("x", i32, 0)])
    task_off = bytes(enc.strings).index(b"task\0")
    enc.words += [task_off + 1, K_TYPEDEF << 24, i32]  # named "ask" via the tail of "task"
    enc.count += 1
    btf = Btf.parse(enc.build())
    assert btf.type(st).name == "task"
    assert btf.by_name("ask").id == 3 and btf.type(3).kind == "typedef"


def _maps_btf() -> tuple[BtfEncoder, dict[str, int]]:
    """The BTF clang emits for a ringbuf and a percpu_array map in '.maps'."""
    enc = BtfEncoder()
    i32 = enc.int_("int", 4, signed=True)
    u32 = enc.ref(K_TYPEDEF, enc.int_("unsigned int", 4), "__u32")
    u64 = enc.ref(K_TYPEDEF, enc.int_("unsigned long long", 8), "__u64")
    ring = enc.struct("", 16, [("type", enc.map_uint(27, i32), 0),
                               ("max_entries", enc.map_uint(4096, i32), 64)])
    ring_var = enc.var("events", ring)
    counters = enc.struct("", 32, [
        ("type", enc.map_uint(6, i32), 0),
        ("max_entries", enc.map_uint(1, i32), 64),
        ("key", enc.ref(K_PTR, u32), 128),
        ("value", enc.ref(K_PTR, u64), 192),
    ])
    counters_var = enc.var("events_lost", counters)
    ids = {"i32": i32, "u32": u32, "u64": u64, "ring_var": ring_var, "counters_var": counters_var}
    return enc, ids


def test_map_defs_ringbuf_and_percpu_array() -> None:
    enc, ids = _maps_btf()
    enc.datasec(".maps", [(ids["ring_var"], 0, 16), (ids["counters_var"], 16, 32)])
    btf = Btf.parse(enc.build())

    maps = btf.map_defs()
    assert list(maps) == ["events", "events_lost"]
    assert maps["events"] == MapDef(name="events", map_type=27, type_name="ringbuf",
                                    max_entries=4096)
    assert maps["events_lost"] == MapDef(
        name="events_lost", map_type=6, type_name="percpu_array", max_entries=1,
        key_size=4, value_size=8, key_type_id=ids["u32"], value_type_id=ids["u64"])
    sec = btf.datasec(".maps")
    assert sec is not None and sec.kind == "datasec"
    names = [(n, v.kind, off, size) for n, v, off, size in btf.datasec_vars(".maps")]
    assert names == [("events", "var", 0, 16), ("events_lost", "var", 16, 32)]
    assert btf.datasec(".bss") is None and btf.datasec_vars(".bss") == []


def test_map_defs_sizes_flags_and_unknown_members() -> None:
    enc = BtfEncoder()
    i32 = enc.int_("int", 4, signed=True)
    key = enc.struct("flow", 12, [("a", i32, 0), ("b", i32, 32), ("c", i32, 64)])
    fn = enc.ref(K_PTR, enc.ref(K_FUNC_PROTO, i32))
    body = enc.struct("", 48, [
        ("type", enc.map_uint(1, i32), 0),
        ("map_flags", enc.map_uint(1, i32), 64),  # BPF_F_NO_PREALLOC
        ("max_entries", enc.map_uint(1024, i32), 128),
        ("key", enc.ref(K_PTR, key), 192),
        ("value_size", enc.map_uint(24, i32), 256),
        ("values", enc.array(fn, 0), 320),  # prog_array style member: ignored
    ])
    td = enc.ref(K_TYPEDEF, body, "flows_t")  # the var's type may be a typedef
    enc.datasec(".maps", [(enc.var("flows", td), 0, 48)])
    btf = Btf.parse(enc.build())
    assert btf.map_defs()["flows"] == MapDef(
        name="flows", map_type=1, type_name="hash", max_entries=1024, key_size=12,
        value_size=24, key_type_id=key, value_type_id=0, map_flags=1)


def test_map_defs_errors_name_the_map() -> None:
    enc = BtfEncoder()
    i32 = enc.int_("int", 4, signed=True)
    no_type = enc.struct("", 8, [("max_entries", enc.map_uint(1, i32), 0)])
    enc.datasec(".maps", [(enc.var("nameless", no_type), 0, 8)])
    with pytest.raises(BtfFormatError, match="map 'nameless' in .maps has no map type") as exc:
        Btf.parse(enc.build()).map_defs()
    assert "__uint(type, BPF_MAP_TYPE_" in str(exc.value)

    enc = BtfEncoder()
    i32 = enc.int_("int", 4, signed=True)
    u64 = enc.int_("unsigned long long", 8)
    body = enc.struct("", 24, [("type", enc.map_uint(2, i32), 0),
                               ("key_size", enc.map_uint(4, i32), 64),
                               ("key", enc.ref(K_PTR, u64), 128)])
    enc.datasec(".maps", [(enc.var("clash", body), 0, 24)])
    with pytest.raises(BtfFormatError,
                       match="map 'clash': key_size 4 disagrees with its key type of 8 bytes"):
        Btf.parse(enc.build()).map_defs()

    enc = BtfEncoder()
    i32 = enc.int_("int", 4, signed=True)
    body = enc.struct("", 4, [("type", i32, 0)])  # `int type;` instead of __uint(type, N)
    enc.datasec(".maps", [(enc.var("plain", body), 0, 4)])
    with pytest.raises(BtfFormatError, match="map 'plain' member 'type' is a int, not a pointer"):
        Btf.parse(enc.build()).map_defs()


def test_map_type_names_cover_the_uapi_enum() -> None:
    assert MAP_TYPE_NAMES[0] == "unspec"
    assert MAP_TYPE_NAMES[4] == "perf_event_array"
    assert MAP_TYPE_NAMES[27] == "ringbuf"
    assert MAP_TYPE_NAMES[32] == "cgrp_storage"
    assert sorted(MAP_TYPE_NAMES) == list(range(len(MAP_TYPE_NAMES)))


def test_bad_magic_error_text() -> None:
    data = BtfEncoder().build(magic=0x1234)
    with pytest.raises(BtfFormatError) as exc:
        Btf.parse(data)
    assert exc.value.message == "BTF: bad magic 0x1234 at offset 0 (expected 0xeb9f)"
    assert exc.value.hint
    assert isinstance(exc.value, BpfDepotError) and exc.value.exit_code == 1


def test_short_and_truncated_data_errors() -> None:
    with pytest.raises(BtfFormatError, match="too short for a BTF header"):
        Btf.parse(b"\x9f")
    data = BtfEncoder().build()
    with pytest.raises(BtfFormatError, match="too short for the 24-byte header"):
        Btf.parse(data[:10])
    enc = BtfEncoder()
    enc.int_("int", 4)
    data = enc.build()
    with pytest.raises(BtfFormatError, match="string section at offset 40 with 5 bytes "
                                             "runs past the end of the data"):
        Btf.parse(data[:-1])


def test_record_running_past_type_section_is_reported() -> None:
    enc = BtfEncoder()
    enc.int_("int", 4)
    enc.words += [0, K_STRUCT << 24 | 5, 8]  # claims 5 members, has none
    with pytest.raises(BtfFormatError,
                       match=r"BTF: type 2 \(struct\) runs past the end of the type section"):
        Btf.parse(enc.build())


def test_unknown_kind_is_reported() -> None:
    enc = BtfEncoder()
    enc.raw("odd", 25, 0, 0)
    with pytest.raises(BtfFormatError, match="BTF: type 1 at offset 24 has unknown kind 25"):
        Btf.parse(enc.build())


def test_type_id_out_of_range_error_text() -> None:
    enc = BtfEncoder()
    i32 = enc.int_("int", 4, signed=True)
    enc.struct("s", 4, [("x", i32, 0), ("y", 99999, 32)])
    btf = Btf.parse(enc.build())
    with pytest.raises(BtfFormatError) as exc:
        btf.type(2)
    assert exc.value.message == "BTF: type 2 refers to type 99999 beyond 3 types"
    with pytest.raises(BtfFormatError, match="refers to type 99999"):
        btf.validate()
    with pytest.raises(BtfFormatError, match=r"BTF: no type 3; ids run 0\.\.2"):
        btf.type(3)


def test_bad_string_offset_is_reported() -> None:
    enc = BtfEncoder()
    enc.words += [1000, K_INT << 24, 4, 32]
    enc.count += 1
    with pytest.raises(BtfFormatError,
                       match="type 1 names string offset 1000 beyond the 1-byte string section"):
        Btf.parse(enc.build()).type(1)


def test_modifier_loop_is_reported() -> None:
    enc = BtfEncoder()
    enc.ref(K_TYPEDEF, 2, "a")
    enc.ref(K_CONST, 1)
    btf = Btf.parse(enc.build())
    with pytest.raises(BtfFormatError, match="modifier chain deeper than 32"):
        btf.size_of(1)


def test_vmlinux_btf() -> None:
    if not VMLINUX.exists():
        pytest.skip(f"{VMLINUX} not present: kernel built without CONFIG_DEBUG_INFO_BTF")
    btf = Btf.parse(VMLINUX.read_bytes())
    assert len(btf) > 10_000
    task = btf.by_name("task_struct", "struct")
    assert task is not None and task.kind == "struct" and task.size > 1000
    assert btf.size_of(task.id) == task.size
    tp = btf.by_name("trace_event_raw_inet_sock_set_state", "struct")
    assert tp is not None
    assert {"sport", "dport", "saddr_v6"} <= {m.name for m in tp.members}
    # MAP_TYPE_NAMES must agree with this kernel's enum bpf_map_type wherever both know a value.
    map_enum = btf.by_name("bpf_map_type", "enum")
    assert map_enum is not None
    kernel = {}
    for name, value in map_enum.enumerators:
        kernel.setdefault(value, set()).add(name)
    for value, names in kernel.items():
        if value in MAP_TYPE_NAMES:
            assert f"BPF_MAP_TYPE_{MAP_TYPE_NAMES[value].upper()}" in names
