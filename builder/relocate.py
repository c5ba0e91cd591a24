"""Will this CO-RE object run on that kernel? Decided from BTF alone, without loading.

The farm compiles a program once per variant against a reference header and asks, for every
target kernel, what libbpf 1.1 would do at load time there: resolve each CO-RE relocation of the
object's ``.BTF.ext`` against the kernel's BTF (rules in ``builder.corerelo``) and find each
``__ksym`` extern (a kfunc must be a FUNC of the kernel's BTF, a typed ksym a VAR).

    objrel = core_relocations(obj_bytes)         # parsed once per object (cached by sha256)
    kt = kernel_types(Path("6.1.0-50-amd64.btf"))  # indexed once per kernel per process
    verdict = check_relocations(obj_bytes, kt)
    verdict.ok, verdict.reasons("6.1.0-50-amd64")

A relocation nothing matches is *poisoned* by libbpf: the verifier refuses the program only if
the instruction is reachable. Whether it is cannot be known without the verifier, so the check
follows the libbpf-tools convention: a program that also carries an existence relocation
(``bpf_core_field_exists``, ``bpf_core_type_exists``, ``bpf_core_enum_value_exists``,
``bpf_core_type_matches``) guards its fallbacks, and its misses are *guarded*; any other miss
refuses the kernel. A missing ``__weak`` extern is guarded too (its address reads as 0).
Ambiguous matches, anonymous root types and unreadable fields make libbpf fail the whole load:
never guarded. Typeless ksyms (``extern const void x __ksym``) come from kallsyms, which BTF
does not describe: they are not checked.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from builder import corerelo as cr
from loader.errors import BuildError
from loader.kernel.btf import Btf, BtfFormatError

_EXT_HEADER = "<HBBIIIIIII"  # magic, version, flags, hdr_len, func/line/core_relo (off, len)
_EXT_CORE_MIN = 32  # header size up to core_relo_len
_RELO = struct.Struct("<IIII")  # bpf_core_relo: insn_off, type_id, access_str_off, kind
_MAX_RELOS = 1_000_000  # far above any real object; bounds the work a hostile one can ask for
_LOAD_STORE = (1, 2, 3)  # BPF_LDX, BPF_ST, BPF_STX: instruction classes whose size libbpf fits


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """One relocation or extern that does not resolve on a kernel."""

    program: str  # BPF program (function) name, or "" for object-level (externs)
    insn: int  # instruction index in its section, -1 for externs
    kind: str  # libbpf's relo kind name (field_byte_offset, ...), or "kfunc"/"ksym"
    spec: str  # "struct task_struct.__state", "enum x::Y", "kfunc bpf_iter_num_new"
    guarded: bool  # the program can survive it (see the module docstring)
    why: str  # "struct task_struct has no field '__state'", ...

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """The outcome of one (object, kernel) check."""

    ok: bool  # no unguarded problem
    checked: int  # relocations + externs checked
    problems: tuple[Problem, ...]  # all unresolved ones, guarded or not
    seconds: float

    def reasons(self, kernel: str) -> list[str]:
        """One line per unguarded problem, naming the kernel, what, program and instruction."""
        return [f"kernel {kernel}: {p.why} ("
                + (f"program {p.program}, insn {p.insn}, {p.kind} of {p.spec}" if p.program
                   else p.spec) + ")" for p in self.problems if not p.guarded]

    def to_dict(self) -> dict[str, object]:
        """JSON-able, for the artifact's per-kernel record."""
        return {"ok": self.ok, "checked": self.checked, "seconds": round(self.seconds, 6),
                "problems": [p.to_dict() for p in self.problems]}


@dataclass(frozen=True, slots=True, kw_only=True)
class Relocation:
    """One ``bpf_core_relo`` record with the function it belongs to."""

    program: str
    section: str
    insn: int  # index in the section
    type_id: int  # local root type
    access: str  # "0:1:2"
    kind: int  # enum bpf_core_relo_kind
    insn_class: int  # low 3 bits of the opcode, for libbpf's load-size rule


@dataclass(frozen=True, slots=True, kw_only=True)
class Extern:
    """A ``__ksym`` extern the kernel's BTF must provide."""

    name: str
    func: bool  # kfunc (FUNC) rather than typed ksym (VAR)
    weak: bool
    type_id: int  # the local func_proto, or the var's type, modifiers skipped


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectRelocations:
    """What an object asks of a kernel, parsed once."""

    btf: Btf | None
    relocations: tuple[Relocation, ...]
    externs: tuple[Extern, ...]
    guarded_programs: frozenset[str]  # programs with an existence relocation


_NOT_CANDIDATES = frozenset(("func", "var", "datasec", "decl_tag"))


class KernelTypes:
    """A kernel's BTF asked by name, as libbpf asks it: candidates by essential name, the first
    FUNC or VAR of a name (btf__find_by_name_kind), whether a typedef exists. Nothing is
    indexed by name up front: the string section is searched for the few names a check asks
    (bytes.find), and the types pointing at each hit are found in a sorted (name offset, id)
    array made in C (loader/native/bpfdepot_btf.c, ~5 ms for a kernel's ~130k types, where a
    dict of every name took ~130 ms). Answers are kept per name for the process."""

    __slots__ = ("_by_name", "_cands", "_kinds", "_named", "btf", "digest", "index_seconds")

    def __init__(self, btf: Btf, digest: str) -> None:
        t0 = time.perf_counter()
        self.btf = btf
        self.digest = digest
        self._by_name = btf.name_offsets()  # sorted name_off << 32 | type id
        self._named: dict[str, list[int]] = {}
        self._cands: dict[str, list[int]] = {}
        self._kinds: dict[int, str] = {}
        self.index_seconds = time.perf_counter() - t0

    def _at(self, off: int) -> list[int]:
        """The ids of the types whose name starts at string offset ``off``."""
        by_name, out = self._by_name, []
        i = bisect.bisect_left(by_name, off << 32)
        while i < len(by_name) and by_name[i] >> 32 == off:
            out.append(by_name[i] & 0xFFFFFFFF)
            i += 1
        return out

    def _hits(self, needle: bytes) -> list[int]:
        """Every string offset where ``needle`` occurs (an offset may point into the tail of a
        longer string: each hit is a candidate name start)."""
        strings, out = self.btf._strings, []  # noqa: SLF001 - the same module family's parse
        pos = strings.find(needle)
        while pos != -1:
            out.append(pos)
            pos = strings.find(needle, pos + 1)
        return out

    def named(self, name: str) -> list[int]:
        """The ids of every type called exactly ``name``, lowest first."""
        found = self._named.get(name)
        if found is None:
            found = self._named[name] = sorted(
                tid for off in self._hits(name.encode() + b"\0") for tid in self._at(off))
        return found

    def _kind(self, tid: int) -> str:
        kind = self._kinds.get(tid)
        if kind is None:
            kind = self._kinds[tid] = self.btf.type(tid).kind
        return kind

    def first(self, name: str, kind: str) -> int | None:
        """The lowest id of a ``kind`` type called ``name`` (a kfunc's FUNC, a ksym's VAR)."""
        return next((tid for tid in self.named(name) if self._kind(tid) == kind), None)

    def has_typedef(self, name: str) -> bool:
        """Whether the kernel has a typedef called exactly ``name``."""
        return self.first(name, "typedef") is not None

    def _essential(self, essential: str) -> list[int]:
        """Types (not FUNC, VAR, DATASEC or DECL_TAG) whose essential name is ``essential``."""
        found = self._cands.get(essential)
        if found is None:
            ids = list(self.named(essential))
            strings = self.btf._strings  # noqa: SLF001
            for off in self._hits(essential.encode() + b"___"):  # flavoured: name___suffix
                tids = self._at(off)
                if tids and cr.essential_name(
                        strings[off:strings.index(b"\0", off)].decode()) == essential:
                    ids += tids
            found = self._cands[essential] = sorted(
                tid for tid in ids if self._kind(tid) not in _NOT_CANDIDATES)
        return found

    def candidates(self, name: str, kind: str) -> list[int]:
        """Kernel types of a kind compatible with ``kind`` sharing ``name``'s essential name."""
        return [tid for tid in self._essential(cr.essential_name(name))
                if cr.kinds_compat(self._kind(tid), kind)]


_KERNELS: dict[str, KernelTypes] = {}
_LOCKS: dict[str, threading.Lock] = {}
_KERNELS_MAX = 64  # ~10 MB each (the parsed BTF); a worker checks a bounded fleet
_OBJECTS: dict[str, ObjectRelocations] = {}
_OBJECTS_MAX = 512


def kernel_types(btf_path: Path, digest: str | None = None) -> KernelTypes:
    """The BTF of a kernel ready for checks, cached in this process by ``digest`` (or by path)."""
    key = digest or f"path:{btf_path.resolve()}"
    found = _KERNELS.get(key)
    if found is not None:
        return found
    with _LOCKS.setdefault(key, threading.Lock()):  # one thread parses, the others wait for it
        found = _KERNELS.get(key)
        return found if found is not None else _parse_kernel(btf_path, key, digest)


def _parse_kernel(btf_path: Path, key: str, digest: str | None) -> KernelTypes:
    try:
        if digest is None:
            data = btf_path.read_bytes()
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            btf = Btf.parse(data)
        else:  # the parse the hook check makes of the same file (loader/kernel/hooks.py)
            from loader.kernel.hooks import kernel_btf

            btf = kernel_btf(str(btf_path)) or Btf.parse(btf_path.read_bytes())
    except (OSError, BtfFormatError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else exc.message
        raise BuildError(f"cannot read kernel BTF {btf_path}: {why}",
                         hint="pass raw BTF such as /sys/kernel/btf/vmlinux or the btf blob of "
                              "a catalog kernel") from None
    kt = KernelTypes(btf, digest)
    if len(_KERNELS) >= _KERNELS_MAX:
        _KERNELS.pop(next(iter(_KERNELS)))
    _KERNELS[key] = kt
    return kt


def core_relocations(obj: bytes) -> ObjectRelocations:
    """The CO-RE relocations and ``__ksym`` externs of a BPF object (cached by sha256)."""
    key = hashlib.sha256(obj).hexdigest()
    found = _OBJECTS.get(key)
    if found is None:
        found = _parse_object(obj, f"object sha256:{key[:12]}")
        if len(_OBJECTS) >= _OBJECTS_MAX:
            _OBJECTS.pop(next(iter(_OBJECTS)))
        _OBJECTS[key] = found
    return found


def _parse_object(obj: bytes, label: str) -> ObjectRelocations:
    try:
        elf = ELFFile(io.BytesIO(obj))
        if elf["e_machine"] != "EM_BPF":
            raise BuildError(f"{label} is a {elf['e_machine']} ELF, not a BPF object",
                             hint="check the object built by clang -target bpf")
        btf_sec = elf.get_section_by_name(".BTF")
        if btf_sec is None:
            return ObjectRelocations(btf=None, relocations=(), externs=(),
                                     guarded_programs=frozenset())
        btf = Btf.parse(btf_sec.data())
        funcs, weak_undef = _symbols(elf)
        ext_sec = elf.get_section_by_name(".BTF.ext")
        relos = _relocations(elf, btf, ext_sec.data(), funcs) if ext_sec else ()
        externs = _externs(btf, weak_undef)
    # pyelftools meets a damaged file with whatever its parsing trips on
    except (ELFError, BtfFormatError, ValueError, KeyError, IndexError, AttributeError,
            OverflowError, TypeError, struct.error) as exc:
        raise BuildError(f"{label} is not a valid BPF object: {exc}",
                         hint="rebuild it with clang -g -O2 -target bpf") from None
    guarded = frozenset(r.program for r in relos if r.kind in cr.EXISTENCE_KINDS)
    return ObjectRelocations(btf=btf, relocations=relos, externs=externs,
                             guarded_programs=guarded)


def _symbols(elf: ELFFile) -> tuple[dict[int, list[tuple[int, int, str]]], dict[str, bool]]:
    """Functions by section index as (start byte, end byte, name); undefined globals → weak?"""
    funcs: dict[int, list[tuple[int, int, str]]] = {}
    undef: dict[str, bool] = {}
    symtab = elf.get_section_by_name(".symtab")
    for sym in symtab.iter_symbols() if symtab else ():
        shndx, info = sym["st_shndx"], sym["st_info"]
        if shndx == "SHN_UNDEF":
            if sym.name and info["bind"] in ("STB_GLOBAL", "STB_WEAK"):
                undef[sym.name] = info["bind"] == "STB_WEAK"
        elif info["type"] == "STT_FUNC" and isinstance(shndx, int):
            funcs.setdefault(shndx, []).append(
                (sym["st_value"], sym["st_value"] + sym["st_size"], sym.name))
    return funcs, undef


def _relocations(elf: ELFFile, btf: Btf, ext: bytes,
                 funcs: dict[int, list[tuple[int, int, str]]]) -> tuple[Relocation, ...]:
    """The core_relo records of .BTF.ext (layout: libbpf btf.c, btf_ext_setup_core_relos)."""
    magic, _, _, hdr_len = struct.unpack_from("<HBBI", ext)
    if magic != 0xEB9F:  # libbpf reads only .BTF.ext of its own byte order, as here
        raise ValueError(f".BTF.ext has magic 0x{magic:04x}, not a little-endian 0xeb9f")
    if hdr_len < _EXT_CORE_MIN or hdr_len > len(ext):
        return ()  # an old header without core relocations
    *_, core_off, core_len = struct.unpack_from(_EXT_HEADER, ext)
    start, end = hdr_len + core_off, hdr_len + core_off + core_len
    if core_len == 0:
        return ()
    rec_size = struct.unpack_from("<I", ext, start)[0]
    if end > len(ext) or rec_size < _RELO.size or rec_size % 4:
        raise ValueError(f".BTF.ext core_relo: {core_len} bytes of {rec_size}-byte records "
                         f"at {start} do not fit its {len(ext)} bytes")
    out: list[Relocation] = []
    pos = start + 4
    while pos < end:
        sec_name_off, count = struct.unpack_from("<II", ext, pos)
        pos += 8
        if count == 0 or pos + count * rec_size > end or len(out) + count > _MAX_RELOS:
            raise ValueError(f".BTF.ext core_relo: a section header says {count} records")
        sec_name = btf._str(sec_name_off, 0)
        sec = elf.get_section_by_name(sec_name)
        if sec is None:
            raise ValueError(f"CO-RE relocations name section '{sec_name}', which is missing")
        code = sec.data()
        index = elf.get_section_index(sec_name)
        spans = sorted(funcs.get(index, ()))
        for _ in range(count):
            insn_off, type_id, access_off, kind = _RELO.unpack_from(ext, pos)
            pos += rec_size
            if insn_off % 8 or insn_off >= len(code) or kind >= len(cr.KIND_NAMES):
                raise ValueError(f"CO-RE relocation at byte {insn_off} of '{sec_name}' "
                                 f"(kind {kind}) is out of range")
            btf.type(type_id)  # raises for an id beyond the object's types
            program = next((n for lo, hi, n in spans if lo <= insn_off < hi), sec_name)
            out.append(Relocation(program=program, section=sec_name, insn=insn_off // 8,
                                  type_id=type_id, access=btf._str(access_off, type_id),
                                  kind=kind, insn_class=code[insn_off] & 7))
    return tuple(out)


def _externs(btf: Btf, undefined: dict[str, bool]) -> tuple[Extern, ...]:
    """The typed ``__ksym`` externs: FUNCs and non-void VARs of the '.ksyms' DATASEC."""
    out = []
    for name, t, _, _ in btf.datasec_vars(".ksyms"):
        if name not in undefined:
            continue  # declared but not referenced: clang drops the symbol, libbpf too
        target = btf.strip(t.type_id)
        if t.kind == "var" and target.kind == "void":
            continue  # typeless ksym: resolved from kallsyms, not BTF
        out.append(Extern(name=name, func=t.kind == "func", weak=undefined[name],
                          type_id=target.id))
    return tuple(out)


def check_relocations(obj: bytes, kernel: KernelTypes) -> Verdict:
    """Resolve every relocation and ksym of ``obj`` against ``kernel`` the way libbpf 1.1 would."""
    t0 = time.perf_counter()
    return check_parsed(core_relocations(obj), kernel, started=t0)


def check_parsed(rel: ObjectRelocations, kernel: KernelTypes, *,
                 started: float | None = None) -> Verdict:
    """``check_relocations`` of an object already parsed (``core_relocations``)."""
    t0 = time.perf_counter() if started is None else started
    problems: list[Problem] = []
    for r, outcome in _outcomes(rel, kernel):
        if outcome.why is not None:
            problems.append(Problem(program=r.program, insn=r.insn, kind=cr.KIND_NAMES[r.kind],
                                    spec=_spec_or_raw(rel.btf, r), why=outcome.why,
                                    guarded=not outcome.fatal and r.program in rel.guarded_programs))
    for e in rel.externs:
        found = _extern_problem(rel.btf, e, kernel)
        if found is not None:
            why, absent = found
            # libbpf leaves a missing __weak extern at 0 for the program to test; a present
            # one of the wrong type fails the load either way
            problems.append(Problem(program="", insn=-1, kind="kfunc" if e.func else "ksym",
                                    spec=f"{'kfunc' if e.func else 'ksym'} {e.name}", why=why,
                                    guarded=e.weak and absent))
    return Verdict(ok=all(p.guarded for p in problems), problems=tuple(problems),
                   checked=len(rel.relocations) + len(rel.externs),
                   seconds=time.perf_counter() - t0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """One relocation on one kernel: the value libbpf would patch in (None: poisoned or the
    load fails), the target's bit offset for field kinds, and why it does not resolve."""

    value: int | None
    target_id: int = 0  # the kernel type of the first matching candidate, 0 when none matched
    bit_offset: int = 0
    why: str | None = None
    fatal: bool = False  # libbpf fails the whole load rather than poisoning one instruction


def resolve_relocations(obj: bytes, kernel: KernelTypes) -> list[tuple[Relocation, Outcome]]:
    """Every relocation of ``obj`` with its outcome on ``kernel``, in .BTF.ext order (the
    order libbpf numbers them in, per section): what tests compare with libbpf's own log."""
    return list(_outcomes(core_relocations(obj), kernel))


def _outcomes(rel: ObjectRelocations, kernel: KernelTypes) -> Iterator[tuple[Relocation, Outcome]]:
    cands: dict[int, list[int]] = {}  # libbpf's per-object candidate cache, pruned as it goes
    for r in rel.relocations:
        try:
            yield r, _resolve(rel.btf, r, kernel, cands)
        except cr.Refused as exc:
            yield r, Outcome(value=None, why=str(exc), fatal=True)
        except BtfFormatError as exc:
            yield r, Outcome(value=None, why=f"malformed BTF: {exc.message}", fatal=True)


def _spec_or_raw(btf: Btf, r: Relocation) -> str:
    try:
        return cr.spec_text(cr.parse_spec(btf, r.type_id, r.access, r.kind))
    except cr.Refused:
        return f"{cr.describe(btf.type(r.type_id))} + {r.access}"


def _resolve(btf: Btf, r: Relocation, kernel: KernelTypes,
             cache: dict[int, list[int]]) -> Outcome:
    """bpf_core_calc_relo_insn for one relocation; raises Refused where libbpf fails the load."""
    local = cr.parse_spec(btf, r.type_id, r.access, r.kind)
    if r.kind == cr.TYPE_ID_LOCAL:
        return Outcome(value=r.type_id)
    root = btf.type(r.type_id)
    if not root.name:
        raise cr.Refused(f"{cr.describe(root)}: libbpf cannot relocate an anonymous type")
    cands = cache.get(r.type_id)
    if cands is None:
        cands = cache[r.type_id] = kernel.candidates(root.name, root.kind)
    matched: list[tuple[int, cr.Spec, cr.Value]] = []
    miss = ""
    for cand in cands:
        spec, why = cr.match_spec(local, kernel.btf, cand)
        if spec is None:
            miss = miss or why
            continue
        matched.append((cand, spec, cr.value_of(r.kind, spec)))
    if matched:
        _, first, value = matched[0]
        for _, spec, v in matched[1:]:
            if spec.bit_offset != first.bit_offset:
                raise cr.Refused(f"ambiguous: {len(matched)} candidates give different offsets")
            if (v.val, v.poison) != (value.val, value.poison):
                raise cr.Refused(f"ambiguous: {len(matched)} candidates give different values")
        cache[r.type_id] = [c for c, _, _ in matched]  # later relocations see only these
        why, fatal = _fit_load(local, first, value, r) if r.kind in cr.FIELD_KINDS else (None, False)
        return Outcome(value=None if why else value.val, target_id=matched[0][0],
                       bit_offset=first.bit_offset, why=why, fatal=fatal)
    if r.kind in cr.EXISTENCE_KINDS:
        return Outcome(value=0)  # what the program tests for
    if not cands:
        miss = f"no type named '{cr.describe(root)}'"
    if r.kind in (cr.TYPE_SIZE, cr.TYPE_ID_TARGET):
        # libbpf patches in 0 and loads; a size or id of 0 is still a wrong answer
        return Outcome(value=0, why=f"{miss} ({cr.KIND_NAMES[r.kind]} resolves to 0; "
                                    "libbpf loads it unchanged)")
    return Outcome(value=None, why=miss)


def _fit_load(local: cr.Spec, targ: cr.Spec, value: cr.Value,
              r: Relocation) -> tuple[str | None, bool]:
    """libbpf's rules for patching a load/store's offset and size (bpf_core_patch_insn):
    (why not, fatal)."""
    if r.insn_class not in _LOAD_STORE or r.kind != cr.BYTE_OFFSET:
        return None, False
    mine = cr.field_value(r.kind, local)
    if value.val > 0x7FFF:
        return f"field offset {value.val} does not fit a load's 16-bit offset", True
    if not cr.size_adjust_ok(local, mine, targ, value):
        return (f"{cr.spec_text(targ)} is {value.size} bytes here, {mine.size} in the object, "
                "and only pointers and unsigned integers may be resized"), False
    if mine.size != value.size and value.size not in (1, 2, 4, 8):
        return f"{cr.spec_text(targ)} is {value.size} bytes: no load has that size", True
    return None, False


def _extern_problem(btf: Btf, e: Extern, kernel: KernelTypes) -> tuple[str, bool] | None:
    """libbpf's bpf_object__resolve_ksym_{func,var}_btf_id: (why, absent) when it fails."""
    kb = kernel.btf
    tid = kernel.first(e.name, "func" if e.func else "var")
    if tid is None:
        return f"{'kfunc' if e.func else 'ksym'} not in this kernel's BTF", True
    try:
        if e.func:
            if not cr.types_compat(btf, e.type_id, kb, kb.type(tid).type_id):
                return "kfunc prototype differs from the kernel's", False
        elif not cr.types_compat(btf, e.type_id, kb, kb.strip(kb.type(tid).type_id).id):
            return (f"ksym type {cr.describe(btf.type(e.type_id))} differs from the "
                    "kernel's"), False
    except cr.Refused as exc:
        return str(exc), False
    return None
