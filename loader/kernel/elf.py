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

from elftools.common.exceptions import ELFError
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile

from loader.kernel.btf import Btf, BtfFormatError, MapDef
from loader.decoders.btf import EnumSource, EventDecoder, channel_struct, declared_decoder, event_decoder
from loader.decoders import UnionChoice
from loader.errors import BpfDepotError, BuildError

if TYPE_CHECKING:
    from loader.model.fields import FieldDecl

EM_BPF = 247

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
_CHANNEL_MAPS = {"ring_buffer": "ringbuf", "perf_buffer": "perf_event_array"}


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
    """A ``const volatile`` global in .rodata: set before load, constant for the verifier."""

    name: str
    offset: int  # in .rodata
    size: int    # bytes
    signed: bool


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

    def decoder(self, channel: str, declared: str | None = None,
                fields: Sequence[FieldDecl] = (), *, overrides: Sequence[tuple[str, str]] = (),
                unions: Sequence[tuple[str, UnionChoice]] = (),
                enums: EnumSource | None = None) -> EventDecoder:
        """How ``channel``'s events become JSON: the manifest's ``fields``, else every member
        (with its ``decoders:`` and ``unions:``; enum names from ``enums``, the node's BTF)."""
        if self.btf is None:
            raise BuildError(f"channel '{channel}': the object has no BTF to decode events with",
                             hint="compile with -g")
        struct = channel_struct(self.btf, channel, declared)
        if fields:
            return declared_decoder(self.btf, struct, fields, channel)
        return event_decoder(self.btf, struct, overrides=dict(overrides), unions=dict(unions),
                             enums=enums, channel=channel)


def read_object(data: bytes, label: str) -> ObjectInfo:
    """Parse an ELF BPF object; raise BuildError naming ``label`` when it is not one."""
    try:
        elf = ELFFile(io.BytesIO(data))
        machine = elf["e_machine"]
        names = tuple(s.name for s in elf.iter_sections())
        license_sec = elf.get_section_by_name("license")
        license_ = license_sec.data().split(b"\0")[0].decode(errors="replace") if license_sec else None
        programs, knob_syms = [], []
        symtab = elf.get_section_by_name(".symtab")
        rodata = elf.get_section_index(".rodata") if elf.get_section_by_name(".rodata") else None
        for sym in symtab.iter_symbols() if symtab else ():
            if (sym["st_info"]["type"] == "STT_OBJECT" and sym["st_info"]["bind"] == "STB_GLOBAL"
                    and sym["st_shndx"] == rodata and sym["st_size"] in (1, 2, 4, 8)):
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
        knobs = tuple(Knob(name=name, offset=off, size=size, signed=_signed(btf, name))
                      for name, off, size in knob_syms)
    except (ELFError, BtfFormatError, ValueError, KeyError) as exc:
        raise BuildError(f"'{label}' is not a valid BPF object: {exc}",
                         hint="rebuild it with clang -target bpf -g") from exc
    return ObjectInfo(machine=str(machine), license=license_, programs=tuple(programs), maps=maps,
                      sections=names, btf=btf, has_btf_ext=".BTF.ext" in names, knobs=knobs)


def _signed(btf: Btf | None, var: str) -> bool:
    found = btf.by_name(var, "var") if btf else None
    if found is None:
        return False
    base = btf.strip(found.type_id)
    return base.kind == "int" and base.int_signed


def read_object_file(path: Path) -> ObjectInfo:
    return read_object(path.read_bytes(), str(path))


def object_channels(info: ObjectInfo, channels: dict[str, tuple[str, str | None]], *,
                    several_objects: bool) -> dict[str, tuple[str, str | None]]:
    """The manifest channels this object carries. With one kernel program in the manifest, all of
    them (a missing map is an error); with several, those that are maps in this object (the run
    checks that each channel is in one of them)."""
    if not several_objects:
        return channels
    return {name: decl for name, decl in channels.items() if info.map(name) is not None}


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
    for name, (ctype, declared) in channels.items():
        found = info.map(name)
        want = _CHANNEL_MAPS[ctype]
        if found is None:
            maps = ", ".join(m.name for m in info.maps) or "none"
            problems.append(f"channel '{name}' is not a map in the object (maps: {maps})")
        elif found.type_name != want:
            problems.append(f"channel '{name}' is a {found.type_name} map, but the manifest says "
                            f"{ctype} (a {want} map)")
        elif info.btf is not None:
            try:
                info.decoder(name, declared)
            except BpfDepotError as exc:
                problems.append(f"{exc.message} ({exc.hint})")
    return problems
