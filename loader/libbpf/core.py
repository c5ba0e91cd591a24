"""libbpf objects: open → set autoload → load → attach, each failure a LoadError in libbpf's
own words (attach failures roll back what was attached); libbpf's log captured so a verifier
rejection shows its last lines; links; feature probes."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from loader._libbpf import ffi, lib
from loader.errors import LoadError

lib.bpfdepot_log_capture(0)  # from here on libbpf's messages go to our buffer, not stderr


def take_log() -> str:
    """Return and clear what libbpf printed since the last call (its tail, at most 4 MiB)."""
    size = lib.bpfdepot_log_size()
    if not size:
        return ""
    buf = ffi.new("char[]", size)
    n = lib.bpfdepot_log_take(buf, size)
    return ffi.unpack(buf, n).decode("utf-8", "replace")


def verifier_tail(log: str, lines: int = 25) -> str:
    """The last lines of the verifier log inside libbpf's output (where the reason is)."""
    match = re.search(r"-- BEGIN PROG LOAD LOG --\n(.*?)-- END PROG LOAD LOG --", log, re.S)
    body = match.group(1) if match else log
    kept = [line for line in body.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def _err(code: int) -> str:
    return os.strerror(abs(code)) if code else "unknown error"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgramRef:
    name: str
    section: str


class BpfObject:
    """An opened (and later loaded and attached) BPF object; close() releases everything."""

    def __init__(self, path: Path, *, label: str, btf_custom_path: Path | None = None) -> None:
        self.label = label
        self._links: list[object] = []
        take_log()
        btf = str(btf_custom_path).encode() if btf_custom_path else ffi.NULL
        obj = lib.bpfdepot_open(str(path).encode(), btf)
        if obj == ffi.NULL:
            code, log = ffi.errno, take_log()
            known = explain_open_failure(label, log)  # an intact object with a known fault
            if known is not None:
                raise LoadError(known[0], detail=log, hint=known[1])
            raise LoadError(
                f"cannot open BPF object '{label}' ({path}): {_err(code)}",
                detail=log,
                hint="run `bpfdepot inspect` on it; rebuild it if it is damaged",
            )
        self._obj = obj

    def programs(self) -> list[ProgramRef]:
        out, prog = [], lib.bpf_object__next_program(self._obj, ffi.NULL)
        while prog != ffi.NULL:
            out.append(ProgramRef(name=_str(lib.bpf_program__name(prog)),
                                  section=_str(lib.bpf_program__section_name(prog))))
            prog = lib.bpf_object__next_program(self._obj, prog)
        return out

    def set_autoload(self, name: str, on: bool) -> None:
        lib.bpf_program__set_autoload(self._program(name), on)

    def set_rodata(self, name: str, offset: int, size: int, value: int, signed: bool) -> None:
        """Write a knob into the object's .rodata (only before load: then it is frozen)."""
        rodata = None
        m = lib.bpf_object__next_map(self._obj, ffi.NULL)
        while m != ffi.NULL:
            if lib.bpf_map__is_internal(m) and _str(lib.bpf_map__name(m)).endswith(".rodata"):
                rodata = m
                break
            m = lib.bpf_object__next_map(self._obj, m)
        psize = ffi.new("size_t *")
        data = lib.bpf_map__initial_value(rodata, psize) if rodata is not None else ffi.NULL
        if data == ffi.NULL or offset + size > psize[0]:
            raise LoadError(f"'{self.label}' has no .rodata room for knob '{name}'",
                            hint="knobs are `const volatile` globals of the program")
        try:
            raw = value.to_bytes(size, "little", signed=signed)
        except OverflowError:
            raise LoadError(f"{value} does not fit knob '{name}' of '{self.label}' "
                            f"({'signed' if signed else 'unsigned'}, {size} bytes)") from None
        ffi.memmove(ffi.cast("char *", data) + offset, raw, size)

    def load(self) -> None:
        take_log()
        rc = lib.bpf_object__load(self._obj)
        if rc:
            log = take_log()
            failed = re.search(r"prog '([^']+)': BPF program load failed", log)
            known = None if failed else explain_load_failure(self, log)
            if known is not None:
                raise LoadError(known[0], detail=log.strip()[-4000:], hint=known[1])
            what = f"program '{failed.group(1)}'" if failed else "an object"
            raise LoadError(
                f"the kernel rejected {what} of '{self.label}': {_err(rc)}",
                detail=verifier_tail(log) if failed else log.strip()[-4000:],
                hint="the verifier's reason is on the last lines above; fix the source and rebuild"
                if failed else "see libbpf's message above",
            )

    def attach(self, plan: Sequence[tuple[str, Callable[[BpfObject, str], list] | None]]) -> None:
        """Attach programs in order: by libbpf's auto-attach (None), or by the given function,
        which returns the links it made. On failure, detach the ones before it."""
        for index, (name, how) in enumerate(plan):
            take_log()
            try:
                if how is not None:
                    self._links.extend(how(self, name))
                    continue
                link = lib.bpf_program__attach(self._program(name))
                if link == ffi.NULL:
                    code = ffi.errno
                    raise LoadError(
                        f"cannot attach program '{name}' of '{self.label}' "
                        f"({index + 1} of {len(plan)}): {_err(code)}",
                        detail=take_log().strip(),
                        hint="the attach point may not exist on this kernel: "
                             "`bpfdepot kernel` lists what loads here")
                self._links.append(LibbpfLink(link))
            except BaseException:
                self.detach()
                raise

    def program_handle(self, name: str) -> object:
        """The ``struct bpf_program *`` of ``name`` (for attach kinds, through this module)."""
        return self._program(name)

    def autoloaded(self) -> list[str]:
        """The programs that will load (autoload on)."""
        out, prog = [], lib.bpf_object__next_program(self._obj, ffi.NULL)
        while prog != ffi.NULL:
            if lib.bpf_program__autoload(prog):
                out.append(_str(lib.bpf_program__name(prog)))
            prog = lib.bpf_object__next_program(self._obj, prog)
        return out

    @property
    def attached_links(self) -> int:
        """Programs of this object attached now."""
        return len(self._links)

    def detach(self) -> None:
        for link in self.take_links():
            link.destroy()

    def take_links(self) -> list:
        """The links, newest first, handed to the caller to destroy (the object forgets them)."""
        links, self._links = self._links[::-1], []
        return links

    def map_fd(self, name: str) -> int:
        return lib.bpf_map__fd(self._map(name))

    def has_map(self, name: str) -> bool:
        return self._find_map(name) is not None

    def percpu_u64_sum(self, name: str) -> int:
        """Sum of the per-CPU u64 values at key 0 of a per-CPU array (the loss counters)."""
        ncpu = lib.libbpf_num_possible_cpus()
        values = ffi.new("uint64_t[]", max(ncpu, 1))
        key = ffi.new("uint32_t *", 0)
        if lib.bpf_map_lookup_elem(self.map_fd(name), key, values):
            raise LoadError(f"cannot read map '{name}' of '{self.label}': {_err(ffi.errno)}")
        return sum(values[i] for i in range(ncpu))

    def close(self) -> None:
        self.detach()
        if self._obj is not None:
            lib.bpf_object__close(self._obj)
            self._obj = None

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _program(self, name: str) -> object:
        prog = lib.bpf_object__next_program(self._obj, ffi.NULL)
        while prog != ffi.NULL:
            if _str(lib.bpf_program__name(prog)) == name:
                return prog
            prog = lib.bpf_object__next_program(self._obj, prog)
        raise LoadError(f"no program '{name}' in '{self.label}'",
                        hint=f"programs there: {', '.join(p.name for p in self.programs())}")

    def _find_map(self, name: str) -> object | None:
        m = lib.bpf_object__next_map(self._obj, ffi.NULL)
        while m != ffi.NULL:
            if _str(lib.bpf_map__name(m)) == name:
                return m
            m = lib.bpf_object__next_map(self._obj, m)
        return None

    def _map(self, name: str) -> object:
        m = self._find_map(name)
        if m is None:
            raise LoadError(f"no map '{name}' in '{self.label}'")
        return m


class LibbpfLink:
    """A ``struct bpf_link *`` from libbpf; destroy() detaches it."""

    def __init__(self, link: object) -> None:
        self._link = link

    def destroy(self) -> None:
        if self._link is not None:
            lib.bpf_link__destroy(self._link)
            self._link = None


def _str(p: object) -> str:
    return ffi.string(p).decode() if p != ffi.NULL else ""


def probe_prog(prog_type: int, attach_type: int = 0, attach_btf_id: int = 0) -> int:
    """Load a two-instruction program of this type; 0 when it loads, else -errno."""
    return lib.bpfdepot_probe_prog(prog_type, attach_type, attach_btf_id)


def probe_map(map_type: int, key_size: int, value_size: int, max_entries: int) -> int:
    return lib.bpfdepot_probe_map(map_type, key_size, value_size, max_entries)


def vmlinux_btf_id(name: str, kind: int) -> int:
    """The id of a type in the running kernel's BTF, or -errno."""
    return lib.bpfdepot_vmlinux_btf_id(name.encode(), kind)


def vmlinux_btf_ids(wanted: list[tuple[str, int]]) -> list[int]:
    """``vmlinux_btf_id`` of each (name, kind), reading the kernel's BTF once; all -errno when
    it cannot be read."""
    keep = [ffi.new("char[]", name.encode()) for name, _ in wanted]
    ids = ffi.new("int[]", len(wanted))
    rc = lib.bpfdepot_vmlinux_btf_ids(ffi.new("char *[]", keep), [k for _, k in wanted], ids,
                                      len(wanted))
    return [rc] * len(wanted) if rc < 0 else list(ids)


# --- Attach kinds (perf_event, uprobe) and program controls (map sizing, byte knobs) ---------
# Used by loader/attach/perf_event.py, loader/attach/uprobe.py and loader/session.py.

def num_possible_cpus() -> int:
    """CPUs the kernel may ever bring up (per-CPU maps are this wide); libbpf's count."""
    n = lib.libbpf_num_possible_cpus()
    if n <= 0:
        raise LoadError(f"cannot count the possible CPUs: {_err(n)}",
                        hint="check /sys/devices/system/cpu/possible")
    return n


_EXTERN = re.compile(r"(?:failed to find BTF for extern|extern \((?:kcfg|ksym)\)|"
                     r"unrecognized extern section)[^']*'([^']+)'[^\n]*")
_MAP_CREATE = re.compile(r"map '([^']+)': failed to create")


def explain_open_failure(label: str, log: str) -> tuple[str, str] | None:
    """(message, hint) for an object that is intact but cannot open: an extern nothing defines.
    None when libbpf's log holds nothing known (then the object may be damaged)."""
    match = _EXTERN.search(log)
    if match is None:
        return None
    return (f"'{label}' uses extern '{match.group(1)}', which libbpf cannot resolve "
            f"({match.group(0).removeprefix('libbpf: ').strip()})",
            "libbpf resolves only __kconfig externs (CONFIG_*, LINUX_KERNEL_VERSION) and __ksym "
            "kernel symbols: define the symbol in the program (static) or declare it __ksym/"
            "__kconfig; `bpfdepot build` refuses such an object")


def explain_load_failure(obj: BpfObject, log: str) -> tuple[str, str] | None:
    """(message, hint) for a map the kernel would not create because it has no size; None when
    the failure is something else."""
    match = _MAP_CREATE.search(log)
    m = obj._find_map(match.group(1)) if match else None
    if m is None:
        return None
    entries, value = lib.bpf_map__max_entries(m), lib.bpf_map__value_size(m)
    if entries and value:
        return None
    what = "max_entries 0" if not entries else "value_size 0"
    name = match.group(1)
    return (f"map '{name}' of '{obj.label}' has {what}: it is meant to be sized from user space, "
            "and nothing sized it",
            f"add maps: {{{name}: {{max_entries: N}}}} to the program in the manifest, or give "
            f"the map __uint({'max_entries' if not entries else 'value_size'}, N) in the source")
