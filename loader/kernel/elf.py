"""What is inside a BPF object, read with pyelftools: programs, maps, license, BTF, events.

The builder validates every object it makes with ``check_object``; ``bpfdepot inspect``
prints ``ObjectInfo``; the loader reads the event layouts from the same place.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loader.kernel.btf import Btf, BtfFormatError, MapDef
from loader.errors import BpfDepotError, BuildError, LoadError, ManifestError
from loader.model.yamldoc import did_you_mean
from loader.outputs import output_kinds

# pyelftools (~20 ms to import) and the event decoders (~20 ms) are imported where they are used:
# a cache-hit `bpfdepot build` imports this module (through builder.compile) but reads no object.
if TYPE_CHECKING:
    from loader.decoders import UnionChoice
    from loader.decoders.btf import EnumSource, EventDecoder
    from loader.model.controls import MapSize
    from loader.model.fields import FieldDecl

EM_BPF = 247
EVENT_MAPS = ("ringbuf", "perf_event_array")  # channels of events; other maps are read whole

# libbpf's section names (libbpf.c section_defs, 1.1), spelled as libbpf spells them:
# "x+" matches x or x/..., "x/" matches any x/..., anything else only itself.
# Each maps to the kernel feature its program needs (None: known, not probed by `bpfdepot kernel`).
SECTION_FEATURES: tuple[tuple[str, str | None], ...] = (
    ("socket", "socket_filter"), ("sk_reuseport/migrate", None), ("sk_reuseport", None),
    ("kprobe+", "kprobe"), ("uprobe+", "uprobe"), ("uprobe.s+", "uprobe"),
    ("kretprobe+", "kprobe"), ("uretprobe+", "uprobe"), ("uretprobe.s+", "uprobe"),
    ("kprobe.multi+", "kprobe"), ("kretprobe.multi+", "kprobe"), ("ksyscall+", "kprobe"),
    ("kretsyscall+", "kprobe"), ("usdt+", "uprobe"), ("tc", "sched_cls"),
    ("classifier", "sched_cls"), ("action", None), ("tracepoint+", "tracepoint"),
    ("tp+", "tracepoint"), ("raw_tracepoint+", "raw_tracepoint"), ("raw_tp+", "raw_tracepoint"),
    ("raw_tracepoint.w+", "raw_tracepoint"), ("raw_tp.w+", "raw_tracepoint"),
    ("tp_btf+", "tp_btf"), ("fentry+", "fentry"), ("fmod_ret+", "fentry"), ("fexit+", "fexit"),
    ("fentry.s+", "fentry"), ("fmod_ret.s+", "fentry"), ("fexit.s+", "fexit"),
    ("freplace+", None), ("lsm+", "lsm"), ("lsm.s+", "lsm"), ("lsm_cgroup+", "lsm"),
    ("iter+", None), ("iter.s+", None), ("syscall", None), ("xdp.frags/devmap", "xdp"),
    ("xdp/devmap", "xdp"), ("xdp.frags/cpumap", "xdp"), ("xdp/cpumap", "xdp"),
    ("xdp.frags", "xdp"), ("xdp", "xdp"), ("perf_event", "perf_event"), ("lwt_in", None),
    ("lwt_out", None), ("lwt_xmit", None), ("lwt_seg6local", None), ("sockops", None),
    ("sk_skb/stream_parser", None), ("sk_skb/stream_verdict", None), ("sk_skb", None),
    ("sk_msg", None), ("lirc_mode2", None), ("flow_dissector", None),
    ("cgroup_skb/ingress", "cgroup_skb"), ("cgroup_skb/egress", "cgroup_skb"),
    ("cgroup/skb", "cgroup_skb"), ("cgroup/sock_create", None), ("cgroup/sock_release", None),
    ("cgroup/sock", None), ("cgroup/post_bind4", None), ("cgroup/post_bind6", None),
    ("cgroup/bind4", None), ("cgroup/bind6", None), ("cgroup/connect4", None),
    ("cgroup/connect6", None), ("cgroup/sendmsg4", None), ("cgroup/sendmsg6", None),
    ("cgroup/recvmsg4", None), ("cgroup/recvmsg6", None), ("cgroup/getpeername4", None),
    ("cgroup/getpeername6", None), ("cgroup/getsockname4", None), ("cgroup/getsockname6", None),
    ("cgroup/sysctl", None), ("cgroup/getsockopt", None), ("cgroup/setsockopt", None),
    ("cgroup/dev", None), ("struct_ops+", None), ("sk_lookup", None),
)


def section_feature(section: str) -> tuple[bool, str | None]:
    """(libbpf knows this section, the feature it needs)."""
    for spec, feature in SECTION_FEATURES:
        if spec.endswith("+"):
            base = spec[:-1]
            hit = section == base or section.startswith(base + "/")
        elif spec.endswith("/"):
            hit = section.startswith(spec)
        else:
            hit = section == spec
        if hit:
            return True, feature
    return False, None


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgramInfo:
    name: str
    section: str
    insns: int
    feature: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Knob:
    """A ``const volatile`` global in .rodata: set before load, constant for the verifier.

    ``kind`` is "int" (1/2/4/8 bytes), "string" (``char x[N]``: text, NUL-padded) or "array"
    (``__u32 x[N]``: comma-separated integers, the rest zero); ``elem`` is an element's bytes."""

    name: str
    offset: int  # in .rodata
    size: int    # bytes
    signed: bool
    kind: str = "int"
    elem: int = 0

    def encode(self, value: int | str, label: str) -> bytes:
        """The bytes ``--set NAME=value`` writes; LoadError naming the knob when it cannot."""
        if self.kind == "string":
            raw = str(value).encode()
            if len(raw) >= self.size or b"\0" in raw:
                raise LoadError(f"{value!r} is {len(raw)} bytes: knob '{self.name}' of '{label}' "
                                f"is char[{self.size}], which holds at most {self.size - 1} "
                                "bytes and a NUL", hint=f"give at most {self.size - 1} bytes")
            return raw.ljust(self.size, b"\0")
        if self.kind == "array":
            count = self.size // self.elem
            items = [value] if isinstance(value, int) else [v for v in str(value).split(",")]
            if len(items) > count:
                raise LoadError(f"knob '{self.name}' of '{label}' holds {count} values, "
                                f"{len(items)} given", hint=f"give at most {count}, comma-separated")
            return b"".join(self._int(v, self.elem, label, value)
                            for v in items).ljust(self.size, b"\0")
        return self._int(value, self.size, label, value)

    def _int(self, value: int | str, size: int, label: str, whole: int | str) -> bytes:
        try:
            number = value if isinstance(value, int) else int(value.strip(), 0)
        except ValueError:
            what = "integers (N,N,...)" if self.kind == "array" else "an integer"
            example = "1,2,3" if self.kind == "array" else "1234"
            raise LoadError(f"knob '{self.name}' of '{label}' takes {what}, not {whole!r}",
                            hint=f"for example: --set {self.name}={example}") from None
        try:
            return number.to_bytes(size, "little", signed=self.signed)
        except OverflowError:
            raise LoadError(f"{number} does not fit knob '{self.name}' of '{label}' "
                            f"({'signed' if self.signed else 'unsigned'}, {size} bytes)") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectInfo:
    machine: str
    license: str | None
    programs: tuple[ProgramInfo, ...]
    maps: tuple[MapDef, ...]
    sections: tuple[str, ...]
    btf: Btf | None
    has_btf_ext: bool
    knobs: tuple[Knob, ...] = ()
    # undefined symbols: (name, the BTF section that says who resolves it, '.kconfig' or
    # '.ksyms'; "" when none does, and libbpf will refuse the object at open)
    externs: tuple[tuple[str, str], ...] = ()

    @property
    def required_features(self) -> tuple[str, ...]:
        need = {p.feature for p in self.programs if p.feature}
        need |= {m.type_name for m in self.maps if m.type_name in ("ringbuf", "perf_event_array")}
        return tuple(sorted(need))

    def program_rows(self) -> tuple[dict[str, object], ...]:
        """The programs as meta.json records them."""
        return tuple({"name": p.name, "section": p.section, "insns": p.insns, "feature": p.feature}
                     for p in self.programs)

    def map(self, name: str) -> MapDef | None:
        return next((m for m in self.maps if m.name == name), None)

    def map_decoder(self, channel: str, *, overrides: Sequence[tuple[str, str]] = (),
                    enums: EnumSource | None = None, keep_cpu: bool = False) -> EventDecoder:
        """How the records of a map read whole become JSON: the key bytes then the value bytes
        (then a u32 ``cpu`` with ``keep_cpu``), key and value fields flattened into one object."""
        found = self.map(channel)
        if self.btf is None or found is None or not found.key_type_id or not found.value_type_id:
            raise BuildError(f"channel '{channel}': the map has no BTF key and value types to "
                             "decode its entries with",
                             hint="declare it with __type(key, ...) and __type(value, ...), "
                                  "and compile with -g")
        from loader.decoders.btf import record_decoder

        parts = (("key", found.key_type_id, 0), ("value", found.value_type_id, found.key_size))
        extra = (("cpu", found.key_size + found.value_size, 4),) if keep_cpu else ()
        return record_decoder(self.btf, parts, name=f"map {channel}", extra=extra,
                              overrides=dict(overrides), enums=enums, channel=channel)

    def decoder(self, channel: str, declared: str | None = None,
                fields: Sequence[FieldDecl] = (), *, overrides: Sequence[tuple[str, str]] = (),
                unions: Sequence[tuple[str, UnionChoice]] = (),
                enums: EnumSource | None = None) -> EventDecoder:
        """How ``channel``'s events become JSON: the manifest's ``fields``, else every member
        (with its ``decoders:`` and ``unions:``; enum names from ``enums``, the node's BTF)."""
        if self.btf is None:
            raise BuildError(f"channel '{channel}': the object has no BTF to decode events with",
                             hint="compile with -g")
        from loader.decoders.btf import channel_struct, declared_decoder, event_decoder

        struct = channel_struct(self.btf, channel, declared)
        if fields:
            return declared_decoder(self.btf, struct, fields, channel)
        return event_decoder(self.btf, struct, overrides=dict(overrides), unions=dict(unions),
                             enums=enums, channel=channel)


def read_object(data: bytes, label: str) -> ObjectInfo:
    """Parse an ELF BPF object; raise BuildError naming ``label`` when it is not one."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.constants import SH_FLAGS
    from elftools.elf.elffile import ELFFile

    try:
        elf = ELFFile(io.BytesIO(data))
        machine = elf["e_machine"]
        names = tuple(s.name for s in elf.iter_sections())
        license_sec = elf.get_section_by_name("license")
        license_ = license_sec.data().split(b"\0")[0].decode(errors="replace") if license_sec else None
        programs, knob_syms, undefined = [], [], []
        symtab = elf.get_section_by_name(".symtab")
        rodata = elf.get_section_index(".rodata") if elf.get_section_by_name(".rodata") else None
        for sym in symtab.iter_symbols() if symtab else ():
            if (sym["st_shndx"] == "SHN_UNDEF" and sym.name
                    and sym["st_info"]["bind"] in ("STB_GLOBAL", "STB_WEAK")):
                undefined.append(sym.name)  # an extern: a section of BTF says who resolves it
                continue
            if (sym["st_info"]["type"] == "STT_OBJECT" and sym["st_info"]["bind"] == "STB_GLOBAL"
                    and sym["st_shndx"] == rodata and sym["st_size"] > 0):
                knob_syms.append((sym.name, sym["st_value"], sym["st_size"]))
                continue
            if sym["st_info"]["type"] != "STT_FUNC" or sym["st_info"]["bind"] != "STB_GLOBAL":
                continue
            shndx = sym["st_shndx"]
            if not isinstance(shndx, int):
                continue
            sec = elf.get_section(shndx)
            if not sec["sh_flags"] & SH_FLAGS.SHF_EXECINSTR or sec.name == ".text":
                continue
            programs.append(ProgramInfo(name=sym.name, section=sec.name, insns=sym["st_size"] // 8,
                                        feature=section_feature(sec.name)[1]))
        btf_sec = elf.get_section_by_name(".BTF")
        btf = Btf.parse(btf_sec.data()) if btf_sec else None
        maps = tuple(btf.map_defs().values()) if btf else ()
        knobs = tuple(k for k in (_knob(btf, name, off, size) for name, off, size in knob_syms)
                      if k is not None)
    except (ELFError, BtfFormatError, ValueError, KeyError) as exc:
        raise BuildError(f"'{label}' is not a valid BPF object: {exc}",
                         hint="rebuild it with clang -target bpf -g") from exc
    return ObjectInfo(machine=str(machine), license=license_, programs=tuple(programs), maps=maps,
                      sections=names, btf=btf, has_btf_ext=".BTF.ext" in names, knobs=knobs,
                      externs=_externs(btf, undefined))


def _knob(btf: Btf | None, name: str, offset: int, size: int) -> Knob | None:
    """A knob from its .rodata symbol and BTF type; None for what --set cannot write (structs)."""
    found = btf.by_name(name, "var") if btf else None
    base = btf.strip(found.type_id) if found is not None else None
    if base is not None and base.kind == "array":
        elem = btf.strip(base.elem_type_id)
        if elem.kind not in ("int", "enum") or elem.size not in (1, 2, 4, 8):
            return None
        if elem.kind == "int" and elem.size == 1 and elem.name == "char":
            return Knob(name=name, offset=offset, size=size, signed=False, kind="string", elem=1)
        return Knob(name=name, offset=offset, size=size, kind="array", elem=elem.size,
                    signed=elem.kind == "int" and elem.int_signed)
    if size not in (1, 2, 4, 8) or (base is not None and base.kind not in ("int", "enum")):
        return None
    return Knob(name=name, offset=offset, size=size, signed=_signed(btf, name))


# libbpf 1.1 (bpf_object__collect_externs) resolves an extern only in these BTF sections:
# .kconfig (CONFIG_* from the kernel's config, and these LINUX_* values it computes) and .ksyms
# (kernel variables and kfuncs, from kallsyms and the kernel's BTF). Any other extern fails open.
KCONFIG_VIRTUAL = ("LINUX_KERNEL_VERSION", "LINUX_HAS_BPF_COOKIE", "LINUX_HAS_SYSCALL_WRAPPER")


def _externs(btf: Btf | None, names: Sequence[str]) -> tuple[tuple[str, str], ...]:
    where = {}
    for sec in (".kconfig", ".ksyms"):
        for name, *_ in (btf.datasec_vars(sec) if btf else ()):
            where[name] = sec
    return tuple((name, where.get(name, "")) for name in names)


def unresolved_externs(info: ObjectInfo) -> list[str]:
    """One sentence per extern libbpf will not resolve, naming the symbol and the fix."""
    out = []
    for name, sec in info.externs:
        if not sec:
            out.append(f"extern '{name}' is defined nowhere: libbpf resolves only __kconfig and "
                       f"__ksym externs, so the object would not open; define '{name}' in the "
                       "program (static, or a global it owns), or declare it __ksym (a kernel "
                       "symbol) or __kconfig (CONFIG_*)")
        elif sec == ".kconfig" and not (name.startswith("CONFIG_") or name in KCONFIG_VIRTUAL):
            out.append(f"__kconfig extern '{name}' is neither a CONFIG_* option nor one of "
                       f"{', '.join(KCONFIG_VIRTUAL)}: libbpf cannot give it a value")
    return out


def _signed(btf: Btf | None, var: str) -> bool:
    found = btf.by_name(var, "var") if btf else None
    if found is None:
        return False
    base = btf.strip(found.type_id)
    return base.kind == "int" and base.int_signed


_PARSED: dict[tuple, ObjectInfo] = {}  # by (path, inode, size, mtime): the agent loads an
_PARSED_MAX = 64                      # object again and again; its ELF parse is ~10 ms


def read_object_file(path: Path) -> ObjectInfo:
    """``read_object`` of a file, remembered while the file stays the same (ObjectInfo is
    immutable, so one parse serves every load of it in a process)."""
    st = path.stat()
    key = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    info = _PARSED.get(key)
    if info is None:
        info = read_object(path.read_bytes(), str(path))
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.pop(next(iter(_PARSED)))
        _PARSED[key] = info
    return info


def object_channels(info: ObjectInfo, channels: dict[str, tuple[str, str | None]], *,
                    several_objects: bool) -> dict[str, tuple[str, str | None]]:
    """The manifest channels this object carries. With one kernel program in the manifest, all of
    them (a missing map is an error); with several, those that are maps in this object (the run
    checks that each channel is in one of them)."""
    if not several_objects:
        return channels
    return {name: decl for name, decl in channels.items()
            if info.map(name) is not None or (decl[0] in PROGRAM_CHANNELS and
                                              any(p.name == name for p in info.programs))}


# Channel types named after a BPF program rather than a map, with the sections it must be in.
PROGRAM_CHANNELS = {"iterator": ("iter/", "iter.s/")}


def _program_channel(info: ObjectInfo, name: str, ctype: str) -> list[str]:
    prog = next((p for p in info.programs if p.name == name), None)
    sections = PROGRAM_CHANNELS[ctype]
    if prog is None:
        found = ", ".join(p.name for p in info.programs if p.section.startswith(sections))
        return [f"channel '{name}' is of type {ctype}, which names an iterator program, but the "
                f"object has no program '{name}' (iterator programs: {found or 'none'})"]
    if not prog.section.startswith(sections):
        return [f"channel '{name}' is of type {ctype}, but program '{name}' is in section "
                f"'{prog.section}', not an iterator (SEC(\"iter/tcp\"), SEC(\"iter/task\"), ...)"]
    return []


def check_object(info: ObjectInfo, label: str, channels: dict[str, tuple[str, str | None]]) -> list[str]:
    """Every reason ``info`` is not a loadable bpfdepot object (empty when it is fine).

    ``channels`` maps channel name → (manifest channel type, declared event struct or None).
    """
    problems = []
    if info.machine != "EM_BPF":
        problems.append(f"machine is {info.machine}, not EM_BPF")
    if not info.license:
        problems.append('no license section: add char LICENSE[] SEC("license") = "GPL";')
    if info.btf is None:
        problems.append("no .BTF section: compile with -g")
    if not info.has_btf_ext:
        problems.append("no .BTF.ext section (CO-RE relocations and line info): compile with -g")
    if not info.programs:
        problems.append("no programs: put each in SEC(\"tp/...\") or another libbpf section")
    for prog in info.programs:
        if not section_feature(prog.section)[0]:
            problems.append(f"program '{prog.name}' is in section '{prog.section}', which libbpf "
                            "does not know (e.g. tp/CATEGORY/NAME, raw_tp/NAME, uprobe/...)")
    problems += unresolved_externs(info)
    kinds = output_kinds()  # the map types each channel type reads come from its output kind
    for name, (ctype, declared) in channels.items():
        if ctype in PROGRAM_CHANNELS:  # an iterator: the channel names a program, not a map
            problems += _program_channel(info, name, ctype)
            continue
        found = info.map(name)
        want = kinds[ctype].map_types if ctype in kinds else ()
        if found is None:
            maps = ", ".join(m.name for m in info.maps) or "none"
            problems.append(f"channel '{name}' is not a map in the object (maps: {maps})")
        elif found.type_name not in want:
            problems.append(f"channel '{name}' is a {found.type_name} map, but the manifest says "
                            f"{ctype} (a {' or '.join(want) or 'known'} map)")
        elif info.btf is not None:
            try:
                if found.type_name in EVENT_MAPS:
                    info.decoder(name, declared)
                else:  # a map read whole: its entries are the records
                    info.map_decoder(name)
            except BpfDepotError as exc:
                problems.append(f"{exc.message} ({exc.hint})")
    return problems


# Map types whose zero sizes libbpf fills in itself or that the kernel wants at zero: perf
# event arrays (max_entries = possible CPUs, key/value 4 bytes), local/task/sk storages
# (max_entries must be 0) and map-in-map or prog arrays declared with `values` (libbpf sets
# the value size).
_SIZED_BY_LIBBPF = {"max_entries": frozenset({"perf_event_array", "cgroup_storage", "sk_storage",
                                              "percpu_cgroup_storage", "inode_storage",
                                              "task_storage", "cgrp_storage", "struct_ops"}),
                    "value_size": frozenset({"perf_event_array", "ringbuf", "user_ringbuf",
                                             "prog_array", "array_of_maps", "hash_of_maps",
                                             "struct_ops", "arena", "cgroup_array"})}


def unsized_maps(info: ObjectInfo, sized: set[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """(map, key, map type) of each map declared with max_entries or value_size 0 (sized from
    user space, as libbpf-tools do) that ``sized`` — the manifest's (map, key) pairs — misses."""
    out = []
    for m in info.maps:
        for key in ("max_entries", "value_size"):
            if (getattr(m, key) == 0 and (m.name, key) not in sized
                    and m.type_name not in _SIZED_BY_LIBBPF[key]):
                out.append((m.name, key, m.type_name))
    return out


def check_map_sizes(label: str, info: ObjectInfo, sizes: Sequence[MapSize]) -> None:
    """Maps sized from user space (0 in the source) must be sized by the manifest; every map the
    manifest sizes must exist."""
    names = {m.name for m in info.maps}
    for size in sizes:
        if size.map not in names:
            raise ManifestError(f"line {size.line}: maps: names '{size.map}', which is not a map "
                                f"of '{label}'",
                                hint=did_you_mean(size.map, sorted(names), "maps there"))
    sized = {(s.map, key) for s in sizes for key in ("max_entries", "value_size")
             if getattr(s, key) is not None}
    missing = unsized_maps(info, sized)
    if missing:
        name, key, kind = missing[0]
        example = '"ncpus * 1024"' if key == "max_entries" else "N"
        raise ManifestError(f"map '{name}' of '{label}' ({kind}) is declared with {key} 0: it is "
                            "sized from user space, and the manifest does not size it",
                            hint=f"add to the program in manifest.yaml: maps: {{{name}: {{{key}: "
                                 f"{example}}}}}")
