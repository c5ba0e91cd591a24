"""libbpf's CO-RE rules on hand-built BTF: a local ("object") BTF and a kernel BTF made with
tests/unit/btfgen.py, resolved through ``builder.relocate.check_parsed`` and ``builder.corerelo``.
Expected values are worked out by hand from the layouts below."""

from __future__ import annotations

import pytest
from btfgen import K_FUNC, K_FUNC_PROTO, K_PTR, K_TYPEDEF, BtfEncoder

from builder import corerelo as cr
from builder.relocate import (
    Extern,
    KernelTypes,
    ObjectRelocations,
    Problem,
    Relocation,
    check_parsed,
)
from loader.kernel.btf import Btf


def local_btf() -> tuple[Btf, dict[str, int]]:
    """What clang would record for a program built against a newer header."""
    e = BtfEncoder()
    ids = {}
    u32 = e.int_("unsigned int", 4)
    s32 = e.int_("int", 4, signed=True)
    u64 = e.int_("long long unsigned int", 8)
    arr = e.array(u32, 4)
    # struct task { u32 state; int pid; u32 ids[4]; u64 newer; u32 flag:3 (bitfield at bit 224) }
    ids["task"] = e.struct("task", 40, [("state", u32, 0), ("pid", s32, 32), ("ids", arr, 64),
                                        ("newer", u64, 192), ("flag", u32, 3 << 24 | 256)],
                           kind_flag=True)
    ids["task___old"] = e.struct("task___old", 8, [("old_state", s32, 0)])
    ids["kind"] = e.enum("kind", [("KIND_A", 0), ("KIND_NEW", 5)])
    ids["big"] = e.enum64("big", [("BIG_X", 1 << 40)])
    ids["anon"] = e.struct("", 4, [("x", u32, 0)])
    ids["proto"] = e.raw("", K_FUNC_PROTO, 2, s32, e.s("a"), s32, e.s("b"), u32)
    ids["u32"], ids["s32"] = u32, s32
    ids["typedef"] = e.ref(K_TYPEDEF, ids["task"], "task_t")
    return Btf.parse(e.build()), ids


def kernel(variant: str = "old") -> KernelTypes:
    """A kernel whose task has state/pid at other offsets, ids in an anonymous union, no
    'newer' field on the old variant, and (on 'dup') two flavours that disagree."""
    e = BtfEncoder()
    u32 = e.int_("unsigned int", 4)
    s32 = e.int_("int", 4, signed=True)
    u64 = e.int_("long long unsigned int", 8)
    arr = e.array(u32, 8)
    inner = e.struct("", 32, [("ids", arr, 0)], union=True)
    members = [("pad", u64, 0), ("state", u32, 64), ("pid", s32, 96), ("", inner, 128),
               ("flag", u32, 3 << 24 | 389)]
    if variant == "new":
        members.append(("newer", u64, 448))
    e.struct("task", 64, members, kind_flag=True)
    if variant == "dup":
        e.struct("task___2", 16, [("state", u32, 0), ("pid", s32, 32)])
    e.enum("kind", [("KIND_A", 7)] + ([("KIND_NEW", 9)] if variant == "new" else []))
    e.enum64("big", [("BIG_X", 1 << 41)])
    proto = e.raw("", K_FUNC_PROTO, 2, s32, e.s("a"), s32, e.s("b"), u32)
    e.raw("kfunc_new" if variant == "new" else "kfunc_other", K_FUNC, 1, proto)
    e.ref(K_PTR, 0)
    return KernelTypes(Btf.parse(e.build()), f"test-{variant}")


def relo(program: str, insn: int, type_id: int, access: str, kind: int,
         insn_class: int = 7) -> Relocation:
    return Relocation(program=program, section="tp/x", insn=insn, type_id=type_id, access=access,
                      kind=kind, insn_class=insn_class)


def objrel(btf: Btf, relos: list[Relocation], externs: tuple[Extern, ...] = ()) -> ObjectRelocations:
    return ObjectRelocations(btf=btf, relocations=tuple(relos), externs=externs,
                             guarded_programs=frozenset(r.program for r in relos
                                                        if r.kind in cr.EXISTENCE_KINDS))


def test_essential_names_drop_only_a_flavour_suffix() -> None:
    assert [cr.essential_name(n) for n in ("task___old", "task", "a___b___c", "x____y",
                                           "__task___1", "___x")] == [
        "task", "task", "a___b", "x____y", "__task", "___x"]


def test_field_offsets_follow_the_kernel_layout_through_anonymous_unions() -> None:
    btf, ids = local_btf()
    spec = cr.parse_spec(btf, ids["task"], "0:2:3", cr.BYTE_OFFSET)
    assert (cr.spec_text(spec), spec.bit_offset) == ("struct task.ids[3]", 64 + 96)
    k = kernel()
    targ, why = cr.match_spec(spec, k.btf, k.candidates("task", "struct")[0])
    # ids sit at bit 128 in the kernel (inside an anonymous union), [3] adds 96 bits
    assert (why, targ.bit_offset, targ.raw) == ("", 128 + 96, [0, 3, 0, 3])
    assert cr.value_of(cr.BYTE_OFFSET, targ).val == 28


def test_bitfield_kinds_give_libbpfs_shifts() -> None:
    btf, ids = local_btf()
    k = kernel()
    spec = cr.parse_spec(btf, ids["task"], "0:4", cr.LSHIFT_U64)
    targ, _ = cr.match_spec(spec, k.btf, k.candidates("task", "struct")[0])
    # kernel: 3 bits at bit 389 → a 4-byte load at byte 48 (bits 384..415), lshift 64-(5+3)
    values = [cr.value_of(kind, targ).val for kind in
              (cr.BYTE_OFFSET, cr.BYTE_SIZE, cr.SIGNED, cr.LSHIFT_U64, cr.RSHIFT_U64)]
    assert values == [48, 4, 0, 56, 61]


def test_a_missing_field_is_named_and_guarded_only_by_an_existence_check() -> None:
    btf, ids = local_btf()
    rel = objrel(btf, [relo("plain", 3, ids["task"], "0:3", cr.BYTE_OFFSET),
                       relo("checked", 10, ids["task"], "0:3", cr.FIELD_EXISTS),
                       relo("checked", 12, ids["task"], "0:3", cr.BYTE_OFFSET),
                       relo("plain", 5, ids["task"], "0:1", cr.BYTE_OFFSET)])
    verdict = check_parsed(rel, kernel("old"))
    why = "struct task has no field 'newer'"
    assert verdict.problems == (
        Problem(program="plain", insn=3, kind="field_byte_offset", spec="struct task.newer",
                guarded=False, why=why),
        Problem(program="checked", insn=12, kind="field_byte_offset", spec="struct task.newer",
                guarded=True, why=why))
    assert (verdict.ok, verdict.checked) == (False, 4)
    assert verdict.reasons("k1") == [(f"kernel k1: {why} (program plain, insn 3, "
                                      "field_byte_offset of struct task.newer)")]
    assert check_parsed(rel, kernel("new")).problems == ()


def test_flavours_match_and_a_field_absent_in_every_candidate_poisons() -> None:
    btf, ids = local_btf()
    verdict = check_parsed(objrel(btf, [relo("p", 1, ids["task___old"], "0:0",
                                             cr.BYTE_OFFSET)]), kernel())
    assert [(p.spec, p.why) for p in verdict.problems] == [
        ("struct task___old.old_state", "struct task has no field 'old_state'")]


def test_candidates_that_disagree_are_an_ambiguity_libbpf_refuses() -> None:
    btf, ids = local_btf()
    rel = objrel(btf, [relo("p", 0, ids["task"], "0:1", cr.FIELD_EXISTS),
                       relo("p", 2, ids["task"], "0:1", cr.BYTE_OFFSET)])
    verdict = check_parsed(rel, kernel("dup"))
    # libbpf compares the candidates' bit offsets for every kind, an existence check too
    why = "ambiguous: 2 candidates give different offsets"
    assert [(p.kind, p.guarded, p.why) for p in verdict.problems] == [
        ("field_exists", False, why), ("field_byte_offset", False, why)]
    assert not verdict.ok


def test_enum_values_and_enum64() -> None:
    btf, ids = local_btf()
    rel = objrel(btf, [relo("p", 0, ids["kind"], "0", cr.ENUMVAL_VALUE),
                       relo("p", 1, ids["kind"], "1", cr.ENUMVAL_VALUE),
                       relo("q", 2, ids["big"], "0", cr.ENUMVAL_VALUE)])
    verdict = check_parsed(rel, kernel())
    assert [(p.program, p.spec, p.why) for p in verdict.problems] == [
        ("p", "enum kind::KIND_NEW", "enum kind has no value 'KIND_NEW'")]
    k = kernel()
    spec = cr.parse_spec(btf, ids["big"], "0", cr.ENUMVAL_VALUE)
    targ, _ = cr.match_spec(spec, k.btf, k.candidates("big", "enum64")[0])
    assert cr.value_of(cr.ENUMVAL_VALUE, targ).val == 1 << 41


def test_type_relocations() -> None:
    btf, ids = local_btf()
    rel = objrel(btf, [relo("p", 0, ids["task"], "0", cr.TYPE_SIZE),
                       relo("p", 1, ids["typedef"], "0", cr.TYPE_EXISTS),
                       relo("p", 2, ids["task"], "0", cr.TYPE_ID_LOCAL),
                       relo("q", 3, ids["anon"], "0", cr.TYPE_SIZE),
                       relo("r", 4, ids["task"], "0", cr.TYPE_MATCHES)])
    verdict = check_parsed(rel, kernel())
    assert [(p.program, p.guarded, p.why) for p in verdict.problems] == [
        ("q", False, "struct <anon>: libbpf cannot relocate an anonymous type")]
    k = kernel()
    spec = cr.parse_spec(btf, ids["task"], "0", cr.TYPE_SIZE)
    targ, _ = cr.match_spec(spec, k.btf, k.candidates("task", "struct")[0])
    assert cr.value_of(cr.TYPE_SIZE, targ).val == 64
    # type_matches wants every local member by name: the old kernel lacks 'newer'
    assert not cr.types_match(btf, ids["task"], k.btf, k.candidates("task", "struct")[0])
    assert cr.types_match(btf, ids["u32"], k.btf, k.candidates("unsigned int", "int")[0])


def test_a_resized_signed_field_is_poisoned_but_an_unsigned_one_is_not() -> None:
    e = BtfEncoder()
    s16, u16 = e.int_("short", 2, signed=True), e.int_("unsigned short", 2)
    s = e.struct("s", 4, [("a", s16, 0), ("b", u16, 16)])
    btf = Btf.parse(e.build())
    k = BtfEncoder()
    s32, u32 = k.int_("int", 4, signed=True), k.int_("unsigned int", 4)
    k.struct("s", 8, [("a", s32, 0), ("b", u32, 32)])
    kt = KernelTypes(Btf.parse(k.build()), "k")
    ldx = 1  # BPF_LDX: libbpf resizes the load only for pointers and unsigned integers
    verdict = check_parsed(objrel(btf, [relo("p", 0, s, "0:0", cr.BYTE_OFFSET, ldx),
                                        relo("p", 1, s, "0:1", cr.BYTE_OFFSET, ldx)]), kt)
    assert [p.why for p in verdict.problems] == [
        ("struct s.a is 4 bytes here, 2 in the object, and only pointers and unsigned integers "
         "may be resized")]


def test_ksym_externs() -> None:
    btf, ids = local_btf()
    externs = (Extern(name="kfunc_new", func=True, weak=False, type_id=ids["proto"]),
               Extern(name="kfunc_weak", func=True, weak=True, type_id=ids["proto"]),
               Extern(name="kfunc_other", func=True, weak=False, type_id=ids["proto"]))
    old = check_parsed(objrel(btf, [], externs), kernel("old"))
    assert [(p.spec, p.guarded, p.why) for p in old.problems] == [
        ("kfunc kfunc_new", False, "kfunc not in this kernel's BTF"),
        ("kfunc kfunc_weak", True, "kfunc not in this kernel's BTF")]
    assert old.reasons("k") == ["kernel k: kfunc not in this kernel's BTF (kfunc kfunc_new)"]
    new = check_parsed(objrel(btf, [], externs[:2]), kernel("new"))
    assert new.ok and [p.spec for p in new.problems] == ["kfunc kfunc_weak"]


def test_no_relocations_is_ok_with_nothing_checked() -> None:
    btf, _ = local_btf()
    verdict = check_parsed(objrel(btf, []), kernel())
    assert (verdict.ok, verdict.checked, verdict.problems) == (True, 0, ())
    assert verdict.to_dict()["problems"] == []


@pytest.mark.parametrize("access,why", [("0:9", "struct task has no member #9"),
                                        ("0:2:7", "index 7 beyond 4 elements"),
                                        ("x", "malformed access string 'x'")])
def test_a_malformed_access_string_is_refused(access: str, why: str) -> None:
    btf, ids = local_btf()
    with pytest.raises(cr.Refused, match=why):
        cr.parse_spec(btf, ids["task"], access, cr.BYTE_OFFSET)
