"""libbpf 1.1's CO-RE relocation rules (``relo_core.c``), re-expressed over ``loader.kernel.btf``.

One relocation is resolved the way ``bpf_core_calc_relo_insn`` does it: parse the local access
spec ("0:1:2") by walking the object's type, match it against each kernel candidate (types of a
compatible kind whose *essential name* — the name up to a ``___flavour`` suffix — is the same),
compute the value each matching candidate gives, and insist they all agree. The outcome is one
of three: resolved (with the value libbpf would patch in), *poisoned* (nothing matched, so libbpf
turns the instruction into a call to helper 0xbad2310 that the verifier refuses if it is
reachable), or *refused* (libbpf fails the whole load: ambiguity, anonymous root type, a field
libbpf cannot read). Nothing here loads anything.

Unlike libbpf, a miss keeps a sentence saying *what* did not match ("struct task_struct has no
field 'foo'"), because that sentence is what the farm shows for a kernel it refuses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from loader.kernel.btf import Btf, BtfFormatError, BtfType

# enum bpf_core_relo_kind (include/uapi/linux/bpf.h), named as the uapi names them, lowercased.
KIND_NAMES = ("field_byte_offset", "field_byte_size", "field_exists", "field_signed",
              "field_lshift_u64", "field_rshift_u64", "type_id_local", "type_id_target",
              "type_exists", "type_size", "enumval_exists", "enumval_value", "type_matches")
FIELD_KINDS = frozenset(range(6))
TYPE_KINDS = frozenset((6, 7, 8, 9, 12))
ENUM_KINDS = frozenset((10, 11))
# These resolve to 0 or 1 and never fail: a program uses them to guard the access they check.
EXISTENCE_KINDS = frozenset((2, 8, 10, 12))
(BYTE_OFFSET, BYTE_SIZE, FIELD_EXISTS, SIGNED, LSHIFT_U64, RSHIFT_U64, TYPE_ID_LOCAL,
 TYPE_ID_TARGET, TYPE_EXISTS, TYPE_SIZE, ENUMVAL_EXISTS, ENUMVAL_VALUE, TYPE_MATCHES) = range(13)

_SPEC_MAX_LEN = 64  # BPF_CORE_SPEC_MAX_LEN
_COMPOSITE = ("struct", "union")
_ENUMS = ("enum", "enum64")


class Refused(Exception):
    """libbpf would fail the load on this relocation (not merely poison an instruction)."""


def essential_name(name: str) -> str:
    """``name`` up to its last ``X___Y`` flavour separator (bpf_core_essential_name_len)."""
    for i in range(len(name) - 5, -1, -1):
        if name[i] != "_" and name[i + 1:i + 4] == "___" and name[i + 4] != "_":
            return name[:i + 1]
    return name


def kinds_compat(a: str, b: str) -> bool:
    """btf_kind_core_compat: the same kind, or enum and enum64."""
    return a == b or (a in _ENUMS and b in _ENUMS)


def describe(t: BtfType) -> str:
    """'struct task_struct', 'enum <anon>', 'int' — a type as C spells it."""
    if t.kind in ("struct", "union", "enum", "fwd"):
        return f"{t.kind} {t.name or '<anon>'}"
    if t.kind == "enum64":
        return f"enum {t.name or '<anon>'}"
    return t.name or t.kind


@dataclass(slots=True)
class Acc:
    """One high-level accessor: a named member (``name``) or an array index (``name`` None)."""

    type_id: int
    idx: int
    name: str | None


@dataclass(slots=True)
class Spec:
    """bpf_core_spec: accessors, the raw access indices and the resulting bit offset."""

    btf: Btf
    root_id: int
    kind: int
    accs: list[Acc] = field(default_factory=list)
    raw: list[int] = field(default_factory=list)
    bit_offset: int = 0


@dataclass(frozen=True, slots=True)
class Value:
    """What one spec gives: the value to patch, and for loads the field's size and type."""

    val: int
    size: int = 0
    type_id: int = 0
    poison: bool = False


def _size(btf: Btf, type_id: int) -> int:
    try:
        return btf.size_of(type_id)
    except BtfFormatError as exc:
        raise Refused(f"cannot size type {type_id}: {exc.message}") from None


def parse_spec(btf: Btf, root_id: int, access: str, kind: int) -> Spec:
    """bpf_core_parse_spec: the local side of a relocation; Refused when it is malformed."""
    spec = Spec(btf=btf, root_id=root_id, kind=kind)
    if kind in TYPE_KINDS:
        if access != "0":
            raise Refused(f"type relocation with access string {access!r} (expected '0')")
        return spec
    try:
        spec.raw = [int(x) for x in access.split(":")]
    except ValueError:
        raise Refused(f"malformed access string {access!r}") from None
    if not spec.raw or len(spec.raw) > _SPEC_MAX_LEN or min(spec.raw) < 0:
        raise Refused(f"malformed access string {access!r}")
    t = btf.strip(root_id)
    idx = spec.raw[0]
    if kind in ENUM_KINDS:
        if t.kind not in _ENUMS or len(spec.raw) > 1 or idx >= len(t.enumerators):
            raise Refused(f"enum relocation {access!r} does not name a value of {describe(t)}")
        spec.accs.append(Acc(t.id, idx, t.enumerators[idx][0]))
        return spec
    spec.accs.append(Acc(t.id, idx, None))
    spec.bit_offset = idx * _size(btf, t.id) * 8
    tid = t.id
    for idx in spec.raw[1:]:
        t = btf.strip(tid)
        if t.kind in _COMPOSITE:
            if idx >= len(t.members):
                raise Refused(f"access {access!r}: {describe(t)} has no member #{idx}")
            m = t.members[idx]
            spec.bit_offset += m.bit_offset
            if m.name:  # anonymous members are walked through, not recorded
                spec.accs.append(Acc(t.id, idx, m.name))
            tid = m.type_id
        elif t.kind == "array":
            elem = btf.strip(t.elem_type_id)
            if not _is_flex(btf, spec.accs[-1], t) and idx >= t.nelems:
                raise Refused(f"access {access!r}: index {idx} beyond {t.nelems} elements")
            spec.accs.append(Acc(elem.id, idx, None))
            spec.bit_offset += idx * _size(btf, elem.id) * 8
            tid = elem.id
        else:
            raise Refused(f"access {access!r} goes into a {t.kind}")
    return spec


def _is_flex(btf: Btf, acc: Acc, arr: BtfType) -> bool:
    """A zero-length array that is the last member of its struct may be indexed past 0."""
    if acc.name is None or arr.nelems > 0:
        return False
    return acc.idx == len(btf.type(acc.type_id).members) - 1


def spec_text(spec: Spec) -> str:
    """'struct task_struct.pid', 'enum bpf_map_type::BPF_MAP_TYPE_RINGBUF', 'struct sk_buff'."""
    head = describe(spec.btf.type(spec.root_id))
    if spec.kind in TYPE_KINDS:
        return head
    if spec.kind in ENUM_KINDS:
        return f"{head}::{spec.accs[0].name}"
    out = head
    for i, acc in enumerate(spec.accs):
        if acc.name:
            out += f".{acc.name}"
        elif i > 0 or acc.idx > 0:
            out += f"[{acc.idx}]"
    return out


def _fields_compat(lb: Btf, lid: int, tb: Btf, tid: int) -> bool:
    """bpf_core_fields_are_compat: may the local field be read from the target field."""
    for _ in range(32):
        lt, tt = lb.strip(lid), tb.strip(tid)
        if lt.kind in _COMPOSITE and tt.kind in _COMPOSITE:
            return True
        if not kinds_compat(lt.kind, tt.kind):
            return False
        if lt.kind in ("ptr", "float"):
            return True
        if lt.kind in ("fwd", "enum", "enum64"):
            ln, tn = essential_name(lt.name), essential_name(tt.name)
            return not ln or not tn or ln == tn
        if lt.kind == "int":
            return lt.int_offset == 0 and tt.int_offset == 0
        if lt.kind == "array":
            lid, tid = lt.elem_type_id, tt.elem_type_id
            continue
        return False
    raise Refused("field types nest deeper than 32 levels")


def types_compat(lb: Btf, lid: int, tb: Btf, tid: int, level: int = 32) -> bool:
    """__bpf_core_types_are_compat: the rule for type relocations and __ksym externs."""
    if not kinds_compat(lb.type(lid).kind, tb.type(tid).kind):
        return False
    for _ in range(32):
        lt, tt = lb.strip(lid), tb.strip(tid)
        if not kinds_compat(lt.kind, tt.kind):
            return False
        if lt.kind in ("void", "struct", "union", "enum", "enum64", "fwd"):
            return True
        if lt.kind == "int":
            return lt.int_offset == 0 and tt.int_offset == 0
        if lt.kind == "ptr":
            lid, tid = lt.type_id, tt.type_id
        elif lt.kind == "array":
            lid, tid = lt.elem_type_id, tt.elem_type_id
        elif lt.kind == "func_proto":
            if len(lt.params) != len(tt.params):
                return False
            for (_, lp), (_, tp) in zip(lt.params, tt.params):
                if level <= 0:
                    raise Refused("function prototypes nest too deep")
                if not types_compat(lb, lb.strip(lp).id, tb, tb.strip(tp).id, level - 1):
                    return False
            lid, tid = lt.type_id, tt.type_id
        else:
            return False
    raise Refused("types nest deeper than 32 levels")


def _names_match(local: str, targ: str) -> bool:
    if not targ:
        return not local
    return essential_name(local) == essential_name(targ)


def types_match(lb: Btf, lid: int, tb: Btf, tid: int, behind_ptr: bool = False,
                level: int = 32) -> bool:
    """__bpf_core_types_match: the stricter rule of bpf_core_type_matches()."""
    if level <= 0:
        raise Refused("types nest too deep to match")
    for _ in range(32):
        lt, tt = lb.strip(lid), tb.strip(tid)
        if not _names_match(lt.name, tt.name):
            return False
        lk, tk = lt.kind, tt.kind
        if lk == "void":
            return tk == "void"
        if lk == "fwd":
            if behind_ptr and tk in _COMPOSITE:
                return (tk == "union") == lt.kind_flag
            return tk == "fwd" and lt.kind_flag == tt.kind_flag
        if lk in _ENUMS:
            return tk in _ENUMS and lt.size == tt.size and len(lt.enumerators) <= len(
                tt.enumerators) and all(any(_names_match(n, m) for m, _ in tt.enumerators)
                                        for n, _ in lt.enumerators)
        if lk in _COMPOSITE:
            if behind_ptr:
                return lk == tk or (tk == "fwd" and (lk == "union") == tt.kind_flag)
            if lk != tk or len(lt.members) > len(tt.members):
                return False
            return all(any(_names_match(lm.name, tm.name) and
                           types_match(lb, lm.type_id, tb, tm.type_id, behind_ptr, level - 1)
                           for tm in tt.members) for lm in lt.members)
        if lk == "int":
            return tk == "int" and lt.size == tt.size and lt.int_signed == tt.int_signed
        if lk == "ptr":
            if tk != "ptr":
                return False
            behind_ptr, lid, tid = True, lt.type_id, tt.type_id
        elif lk == "array":
            if tk != "array" or lt.nelems != tt.nelems:
                return False
            lid, tid = lt.elem_type_id, tt.elem_type_id
        elif lk == "func_proto":
            if tk != "func_proto" or len(lt.params) != len(tt.params):
                return False
            if not all(types_match(lb, lp, tb, tp, behind_ptr, level - 1)
                       for (_, lp), (_, tp) in zip(lt.params, tt.params)):
                return False
            lid, tid = lt.type_id, tt.type_id
        else:
            return False
    raise Refused("types nest deeper than 32 levels")


def match_spec(local: Spec, tb: Btf, targ_id: int) -> tuple[Spec | None, str]:
    """bpf_core_spec_match against one candidate: (target spec or None, why not)."""
    targ = Spec(btf=tb, root_id=targ_id, kind=local.kind)
    lb = local.btf
    if local.kind in TYPE_KINDS:
        if local.kind == TYPE_MATCHES:
            ok, how = types_match(lb, local.root_id, tb, targ_id), "does not match"
        else:
            ok, how = types_compat(lb, local.root_id, tb, targ_id), "is incompatible with"
        return (targ if ok else None), (f"{describe(tb.type(targ_id))} {how} the object's "
                                        f"{describe(lb.type(local.root_id))}")
    if local.kind in ENUM_KINDS:
        t = tb.strip(targ_id)
        if t.kind not in _ENUMS:
            return None, f"{describe(t)} is not an enum"
        want = essential_name(local.accs[0].name or "")
        for i, (name, _) in enumerate(t.enumerators):
            if essential_name(name) == want:
                targ.accs.append(Acc(t.id, i, name))
                targ.raw.append(i)
                return targ, ""
        return None, f"{describe(t)} has no value '{local.accs[0].name}'"
    tid = targ_id
    for i, acc in enumerate(local.accs):
        t = tb.strip(tid)
        if acc.name is not None:
            if t.kind not in _COMPOSITE:
                return None, f"{describe(t)} has no field '{acc.name}' (not a struct or union)"
            found, tid = _match_member(lb, acc, tb, t, targ)
            if found is None:
                return None, f"{describe(t)} has no field '{acc.name}'"
            if not found:
                lm = lb.type(acc.type_id).members[acc.idx]
                return None, (f"field '{acc.name}' of {describe(t)} is a "
                              f"{describe(tb.strip(tid))}, the object reads a "
                              f"{describe(lb.strip(lm.type_id))}")
            continue
        if i > 0:
            if t.kind != "array":
                return None, f"{describe(t)} is not an array"
            if not _is_flex(tb, targ.accs[-1], t) and acc.idx >= t.nelems:
                return None, f"index {acc.idx} is beyond the {t.nelems} elements of the array"
            t = tb.strip(t.elem_type_id)
        if len(targ.raw) >= _SPEC_MAX_LEN:
            raise Refused("access nests deeper than 64 levels")
        targ.accs.append(Acc(t.id, acc.idx, None))
        targ.raw.append(acc.idx)
        targ.bit_offset += acc.idx * _size(tb, t.id) * 8
        tid = t.id
    return targ, ""


def _match_member(lb: Btf, acc: Acc, tb: Btf, t: BtfType, targ: Spec) -> tuple[bool | None, int]:
    """bpf_core_match_member: (True: found and compatible, False: found but incompatible,
    None: absent; the member's type id) — anonymous members are searched depth-first."""
    local_m = lb.type(acc.type_id).members[acc.idx]
    for i, m in enumerate(t.members):
        if len(targ.raw) >= _SPEC_MAX_LEN:
            raise Refused("access nests deeper than 64 levels")
        targ.bit_offset += m.bit_offset
        targ.raw.append(i)
        if not m.name:
            inner = tb.strip(m.type_id)
            if inner.kind in _COMPOSITE:
                raw_len, bit_offset = len(targ.raw), targ.bit_offset
                found, tid = _match_member(lb, acc, tb, inner, targ)
                if found:
                    return found, tid
                # libbpf goes on with the next member whether the field was absent or
                # incompatible down there
                del targ.raw[raw_len:]
                targ.bit_offset = bit_offset
        elif m.name == acc.name:
            ok = _fields_compat(lb, local_m.type_id, tb, m.type_id)
            if ok:
                targ.accs.append(Acc(t.id, i, m.name))
                return True, m.type_id
            targ.bit_offset -= m.bit_offset
            targ.raw.pop()
            return False, m.type_id
        targ.bit_offset -= m.bit_offset
        targ.raw.pop()
    return None, 0


def field_value(kind: int, spec: Spec | None) -> Value:
    """bpf_core_calc_field_relo for one side; ``spec`` None means nothing matched."""
    if kind == FIELD_EXISTS:
        return Value(1 if spec else 0)
    if spec is None:
        return Value(0, poison=True)
    btf, acc = spec.btf, spec.accs[-1]
    if acc.name is None:  # an a[n] accessor
        if kind == BYTE_OFFSET:
            return Value(spec.bit_offset // 8, _size(btf, acc.type_id), acc.type_id)
        if kind == BYTE_SIZE:
            return Value(_size(btf, acc.type_id))
        raise Refused(f"{KIND_NAMES[kind]} cannot be applied to an array element")
    t = btf.type(acc.type_id)
    m = t.members[acc.idx]
    mt = btf.strip(m.type_id)
    bit_off, bit_sz = spec.bit_offset, m.bitfield_size
    if bit_sz:
        byte_sz = mt.size
        byte_off = bit_off // 8 // byte_sz * byte_sz
        while bit_off + bit_sz - byte_off * 8 > byte_sz * 8:  # smallest load that covers it
            if byte_sz >= 8:
                raise Refused(f"bitfield '{acc.name}' cannot be read with a 64-bit load")
            byte_sz *= 2
            byte_off = bit_off // 8 // byte_sz * byte_sz
    else:
        byte_sz = _size(btf, mt.id)
        byte_off, bit_sz = bit_off // 8, byte_sz * 8
    if kind == BYTE_OFFSET:
        return Value(byte_off, 0 if m.bitfield_size else byte_sz, 0 if m.bitfield_size else mt.id)
    if kind == BYTE_SIZE:
        return Value(byte_sz)
    if kind == SIGNED:
        return Value(int((mt.kind in _ENUMS and mt.kind_flag) or
                         (mt.kind == "int" and mt.int_signed)))
    if kind == LSHIFT_U64:  # little-endian: BPF objects here are bpfel
        return Value(64 - (bit_off + bit_sz - byte_off * 8))
    return Value(64 - bit_sz)  # RSHIFT_U64


def type_value(kind: int, spec: Spec | None) -> Value:
    """bpf_core_calc_type_relo: a missing type gives 0, never a poisoned instruction."""
    if spec is None:
        return Value(0)
    if kind == TYPE_ID_TARGET:
        return Value(spec.root_id)
    if kind == TYPE_SIZE:
        return Value(_size(spec.btf, spec.root_id))
    return Value(1)  # TYPE_EXISTS, TYPE_MATCHES


def enum_value(kind: int, spec: Spec | None) -> Value:
    """bpf_core_calc_enumval_relo."""
    if kind == ENUMVAL_EXISTS:
        return Value(1 if spec else 0)
    if spec is None:
        return Value(0, poison=True)
    acc = spec.accs[0]
    return Value(spec.btf.type(acc.type_id).enumerators[acc.idx][1] & (1 << 64) - 1)


def value_of(kind: int, spec: Spec | None) -> Value:
    if kind in FIELD_KINDS:
        return field_value(kind, spec)
    if kind in TYPE_KINDS:
        return type_value(kind, spec)
    return enum_value(kind, spec)


def size_adjust_ok(local: Spec, lv: Value, kernel: Spec, kv: Value) -> bool:
    """libbpf resizes a load only for pointers and unsigned integers (bpf_core_calc_relo)."""
    if lv.size == kv.size:
        return True
    lt, kt = local.btf.type(lv.type_id), kernel.btf.type(kv.type_id)
    if lt.kind == "ptr" and kt.kind == "ptr":
        return True
    # libbpf compares the whole encoding with BTF_INT_SIGNED: 'signed char' (SIGNED|CHAR) passes
    return (lt.kind == "int" and kt.kind == "int" and not _plain_signed(lt)
            and not _plain_signed(kt))


def _plain_signed(t: BtfType) -> bool:
    return t.int_signed and not t.int_char and not t.int_bool
