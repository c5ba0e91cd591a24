"""What is inside a BPF object, read with pyelftools: programs, maps, license, BTF, events.

The builder validates every object it makes with ``check_object``; ``bpfdepot inspect``
prints ``ObjectInfo``; the loader reads the event layouts from the same place.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile

from loader.btf import Btf, BtfFormatError, MapDef
from loader.decode import EventDecoder, channel_struct, event_decoder
from loader.errors import BpfDepotError, BuildError

EM_BPF = 247

# libbpf's section names (libbpf.c section_defs, 1.1) → the kernel feature the program needs.
# None: a section libbpf knows that `bpfdepot kernel` does not probe.
SECTION_FEATURES: tuple[tuple[str, str | None], ...] = (
    ("tp_btf/", "tp_btf"), ("tp/", "tracepoint"), ("tracepoint/", "tracepoint"),
    ("raw_tp.w/", "raw_tracepoint"), ("raw_tracepoint.w/", "raw_tracepoint"),
    ("raw_tp/", "raw_tracepoint"), ("raw_tracepoint/", "raw_tracepoint"),
    ("kprobe.multi/", "kprobe"), ("kretprobe.multi/", "kprobe"), ("kprobe/", "kprobe"),
    ("kretprobe/", "kprobe"), ("ksyscall/", "kprobe"), ("kretsyscall/", "kprobe"),
    ("uprobe", "uprobe"), ("uretprobe", "uprobe"), ("usdt", "uprobe"),
    ("fentry", "fentry"), ("fmod_ret", "fentry"), ("fexit", "fexit"), ("lsm", "lsm"),
    ("perf_event", "perf_event"), ("socket", "socket_filter"), ("sk_reuseport", None),
    ("tc", "sched_cls"), ("classifier", "sched_cls"), ("action", None), ("xdp", "xdp"),
    ("cgroup_skb/", "cgroup_skb"), ("cgroup/skb", "cgroup_skb"), ("cgroup/", None),
    ("iter", None), ("iter.s/", None), ("syscall", None), ("freplace/", None),
    ("lwt_", None), ("sockops", None), ("sk_skb", None), ("sk_msg", None), ("lirc_mode2", None),
    ("flow_dissector", None), ("struct_ops", None), ("sk_lookup", None),
)
_CHANNEL_MAPS = {"ring_buffer": "ringbuf", "perf_buffer": "perf_event_array"}


def section_feature(section: str) -> tuple[bool, str | None]:
    """(libbpf knows this section, the feature it needs)."""
    for prefix, feature in SECTION_FEATURES:
        if section == prefix.rstrip("/") or section.startswith(prefix):
            return True, feature
    return False, None


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgramInfo:
    name: str
    section: str
    insns: int
    feature: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectInfo:
    machine: str
    license: str | None
    programs: tuple[ProgramInfo, ...]
    maps: tuple[MapDef, ...]
    sections: tuple[str, ...]
    btf: Btf | None
    has_btf_ext: bool

    @property
    def required_features(self) -> tuple[str, ...]:
        need = {p.feature for p in self.programs if p.feature}
        need |= {m.type_name for m in self.maps if m.type_name in ("ringbuf", "perf_event_array")}
        return tuple(sorted(need))

    def map(self, name: str) -> MapDef | None:
        return next((m for m in self.maps if m.name == name), None)

    def decoder(self, channel: str, declared: str | None = None) -> EventDecoder:
        if self.btf is None:
            raise BuildError(f"channel '{channel}': the object has no BTF to decode events with",
                             hint="compile with -g")
        return event_decoder(self.btf, channel_struct(self.btf, channel, declared))


def read_object(data: bytes, label: str) -> ObjectInfo:
    """Parse an ELF BPF object; raise BuildError naming ``label`` when it is not one."""
    try:
        elf = ELFFile(io.BytesIO(data))
        machine = elf["e_machine"]
        names = tuple(s.name for s in elf.iter_sections())
        license_sec = elf.get_section_by_name("license")
        license_ = license_sec.data().split(b"\0")[0].decode(errors="replace") if license_sec else None
        programs = []
        symtab = elf.get_section_by_name(".symtab")
        for sym in symtab.iter_symbols() if symtab else ():
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
    except (ELFError, BtfFormatError, ValueError, KeyError) as exc:
        raise BuildError(f"'{label}' is not a valid BPF object: {exc}",
                         hint="rebuild it with clang -target bpf -g") from exc
    return ObjectInfo(machine=str(machine), license=license_, programs=tuple(programs), maps=maps,
                      sections=names, btf=btf, has_btf_ext=".BTF.ext" in names)


def read_object_file(path: Path) -> ObjectInfo:
    return read_object(path.read_bytes(), str(path))


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
