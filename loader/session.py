"""Run built objects: check they fit this kernel, load, attach, stream events, detach.

Order of the checks, cheapest first and all before anything touches the kernel: privileges →
arch → required features → filesystems (tracefs/bpffs, mounted when missing) → open → load →
attach (rolled back on failure) → start the channels' readers (loader/outputs/). Where each
channel's events go is the caller's choice (loader/pipeline.py); on stop everything is detached
before the last read, and the stats give, per channel, the events received, those lost in the
kernel and those too short to decode.
"""

from __future__ import annotations

import difflib
import os
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from loader.artifacts.meta import ArtifactMeta
from loader.kernel.elf import ObjectInfo, check_map_sizes, read_object_file
from loader.kernel.hooks import Hook
from loader.errors import KernelUnsupported, LoadError, ManifestError, PrivilegeError
from loader.kernel.probe import Feature, KernelIdentity
from loader.libbpf.attach import size_map, write_rodata
from loader.libbpf.pins import (NotPinnable, adopt_links, pin_name, pin_object, reuse_pins,
                                 unpin)
from loader.libbpf.core import BpfObject, num_possible_cpus
from loader.model.controls import MapSize
from loader.model.yamldoc import did_you_mean
from loader.outputs import ChannelStats, Reader

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
TRACEFS, BPFFS = Path("/sys/kernel/tracing"), Path("/sys/fs/bpf")


@dataclass(frozen=True, slots=True, kw_only=True)
class Loadable:
    """One object to run: its meta (from the store) and a verified local file."""

    meta: ArtifactMeta
    path: Path
    btf_custom_path: Path | None = None


@dataclass(slots=True, kw_only=True)
class Summary:
    channels: list[ChannelStats] = field(default_factory=list)
    attach_ms: float = 0.0
    seconds: float = 0.0


def effective_caps() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def check_privileges(label: str) -> None:
    caps = effective_caps()
    if caps >> CAP_SYS_ADMIN & 1 or (caps >> CAP_BPF & 1 and caps >> CAP_PERFMON & 1):
        return
    raise PrivilegeError(f"loading '{label}' needs root, or CAP_BPF and CAP_PERFMON",
                         hint="run it with sudo, or grant the capabilities: "
                              "setcap cap_bpf,cap_perfmon+ep on the interpreter")


def check_fits(meta: ArtifactMeta, kernel: KernelIdentity, features: dict[str, Feature],
               off: Collection[str] = ()) -> None:
    """Arch and features; programs in ``off`` (autoload off, forms not chosen) need nothing."""
    if meta.target.arch != kernel.arch:
        raise KernelUnsupported(
            f"artifact {meta.digest[:19]} of '{meta.name}' is built for {meta.target.arch}, "
            f"this node is {kernel.arch}",
            hint=f"build it for this kernel: bpfdepot build <bundle> on a {kernel.arch} machine")
    loading = [p for p in meta.programs if p["name"] not in off]
    needed = {p["feature"] for p in loading if p["feature"]} | (
        set(meta.required_features) - {p["feature"] for p in meta.programs})
    for need in sorted(needed):
        have = features.get(need)
        if have is not None and not have.ok:
            users = [p["name"] for p in loading if p["feature"] == need] or [meta.name]
            raise KernelUnsupported(
                f"'{meta.name}' needs {need} ({', '.join(users)}), which {kernel} does not offer "
                f"({have.why})",
                hint="use a tracepoint/uprobe/perf_event form of the program on this kernel")


def _mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f)


def ensure_filesystems(need_tracefs: bool) -> list[str]:
    """Mount tracefs (tracepoint ids live there) and bpffs when missing; say what was mounted."""
    done = []
    for fstype, path, needed in (("tracefs", TRACEFS, need_tracefs), ("bpf", BPFFS, True)):
        if not needed or _mounted(path):
            continue
        if fstype == "tracefs" and (Path("/sys/kernel/debug/tracing/events")).is_dir():
            continue  # libbpf falls back to debugfs' copy
        rc = os.system(f"mount -t {fstype} {fstype} {path} 2>/dev/null")  # noqa: S605 - fixed strings
        if rc != 0:
            raise LoadError(f"{fstype} is not mounted at {path} and mounting it failed",
                            hint=f"run: mount -t {fstype} {fstype} {path}")
        done.append(f"{fstype} at {path}")
    return done


ChannelOpener = Callable[[Loadable, str, BpfObject, ObjectInfo], Reader]
# (BPF program name) → how to attach it; a name not in it is auto-attached by libbpf
AttachPlan = Mapping[str, Callable[[BpfObject, str], list] | None]


class Session:
    """Loaded and attached objects plus their channels' readers; close() undoes all of it."""

    def __init__(self) -> None:
        self.objects: list[tuple[Loadable, BpfObject]] = []
        self.readers: list[Reader] = []
        self.attached = 0  # programs attached (tail-call targets load without attaching)
        self.pinned = True  # with start(pins=...): False when an attachment cannot be pinned
        self.pin_note = ""

    def start(self, loadables: Sequence[Loadable], open_channel: ChannelOpener,
              knobs: Mapping[str, int | str] | None = None,
              before_attach: Callable[[], None] | None = None,
              attach: Mapping[str, AttachPlan] | None = None,
              autoload_off: Mapping[str, Sequence[str]] | None = None,
              maps: Mapping[str, Sequence[MapSize]] | None = None,
              prepare: Callable[[Loadable, BpfObject, ObjectInfo], None] | None = None,
              pins: Path | None = None, adopt: bool = False) -> None:
        """Open, set knobs, load and attach every object, then start each channel's reader.

        ``open_channel`` opens a channel's reader (before load: processor routes must exist
        when the processors start); ``before_attach`` runs once all is loaded (processors start
        there: no event comes before they are ready, and if they fail nothing was attached);
        ``attach`` maps an object's name to how its programs attach, ``autoload_off`` to the
        programs not to load at all, ``maps`` to the map sizes to set before load; ``prepare``
        runs on each opened object before it loads (the process filter's shared maps).
        ``pins``: the agent's bpffs folder for this run — maps and links are pinned there once
        attached, or, with ``adopt``, an earlier agent's pins are taken over: maps reused, no
        program loaded or attached (loader/libbpf/pins.py)."""
        knobs = knobs or {}
        attach = attach or {}
        maps = maps or {}
        try:
            infos = [read_object_file(item.path) for item in loadables]
            _check_knobs(knobs, infos, [item.meta.name for item in loadables])
            for item, info in zip(loadables, infos):
                off = (autoload_off or {}).get(item.meta.name, ())
                check_attach_plan(item.meta.name, info, attach.get(item.meta.name, {}), off)
                check_map_sizes(item.meta.name, info, maps.get(item.meta.name, ()))
            for item, info in zip(loadables, infos):
                obj = BpfObject(item.path, label=item.meta.name, btf_custom_path=item.btf_custom_path)
                self.objects.append((item, obj))
                for knob in info.knobs:
                    if knob.name in knobs:
                        write_rodata(obj, knob.name, knob.offset,
                                     knob.encode(knobs[knob.name], item.meta.name))
                for name in (autoload_off or {}).get(item.meta.name, ()):
                    obj.set_autoload(name, False)
                _size_maps(obj, maps.get(item.meta.name, ()))
                if prepare is not None:
                    prepare(item, obj, info)
                for name in item.meta.channels:
                    # an iterator channel names a program (checked at build), the rest a map
                    is_program = item.meta.channels[name].get("type") == "iterator"
                    if not is_program and not obj.has_map(name):
                        raise LoadError(f"channel '{name}' is not a map in '{item.meta.name}'",
                                        hint="the manifest and the object disagree: rebuild")
                    self.readers.append(open_channel(item, name, obj, info))
                if adopt:
                    reuse_pins(obj, pins / pin_name(item.meta.name))
                obj.load()
            if before_attach is not None:
                before_attach()
            for (item, obj), info in zip(self.objects, infos):
                if adopt:
                    self.attached += adopt_links(obj, pins / pin_name(item.meta.name))
                    continue
                how = attach.get(item.meta.name, {})
                loaded_only = {p.name for p in info.programs if p.section in NO_TARGET}
                plan = [(name, how.get(name)) for name in obj.autoloaded()
                        if name not in loaded_only or name in how]
                obj.attach(plan)
                self.attached += len(plan)
                if pins is not None and self.pinned:
                    try:
                        pin_object(obj, pins / pin_name(item.meta.name))
                    except NotPinnable as exc:  # runs, but will not outlive its process
                        unpin(pins)
                        self.pinned, self.pin_note = False, exc.message
            for reader in self.readers:
                reader.start()
        except BaseException:
            self.close()
            raise

    def detach(self) -> None:
        """Stop the programs and read what they left in the channels (a pinned run's pins
        must be gone first: ``unpin``). Links are destroyed
        side by side: closing a tracepoint's perf event waits for an RCU grace period (tens of
        ms each), and the waits overlap when the closes run on their own threads."""
        links = [link for _, obj in self.objects for link in obj.take_links()]
        if len(links) > 1:  # at most 16 at once: a run can hold a link per CPU or library
            with ThreadPoolExecutor(min(16, len(links)), thread_name_prefix="detach") as pool:
                for _ in pool.map(_try_destroy, links):
                    pass
        for link in links:
            link.destroy()  # idempotent: the one link, or any a thread could not destroy
        for reader in self.readers:
            reader.final()

    def stats(self) -> list[ChannelStats]:
        """Per channel: events received, those lost in the kernel, those too short."""
        return [reader.stats() for reader in self.readers]

    def close(self) -> None:
        for reader in self.readers:
            reader.close()
        self.readers.clear()
        for _, obj in self.objects:
            obj.close()
        self.objects.clear()


def _try_destroy(link) -> None:
    """A detach thread's part: an error is left to the retry that follows on the caller's."""
    try:
        link.destroy()
    except Exception:  # noqa: BLE001 — raised again, in order, by the caller's own destroy
        pass


# SEC() names libbpf cannot auto-attach, and the manifest entry that says how to attach them.
# Sections that name no attach point: loaded but not attached (as libbpf's skeletons do), for
# programs reached through a BPF_MAP_TYPE_PROG_ARRAY tail call from an attached one.
NO_TARGET = frozenset({"tp", "tracepoint", "raw_tp", "raw_tracepoint"})

NEEDS_ATTACH = {
    "perf_event": "say how to sample it in the manifest: attach: {{{name}: {{perf_event: "
                  "{{frequency: 99}}}}}}",
    "uprobe": "name its binary and function in the manifest: attach: {{{name}: {{uprobe: "
              "{{binary: /path/or/libname.so, function: NAME}}}}}}",
    "uretprobe": "name its binary and function in the manifest: attach: {{{name}: {{uretprobe: "
                 "{{binary: /path/or/libname.so, function: NAME}}}}}}",
}


def check_attach_plan(label: str, info: ObjectInfo, plan: AttachPlan, off: Collection[str]) -> None:
    """Before anything loads: each program that will load can be attached (a SEC("perf_event")
    or bare SEC("uprobe") program needs an ``attach:`` entry; libbpf cannot guess its target)."""
    for prog in info.programs:
        base = prog.section.removesuffix(".s")
        if prog.name in off or prog.name in plan or base not in NEEDS_ATTACH:
            continue
        raise ManifestError(f"program '{prog.name}' of '{label}' is SEC(\"{prog.section}\"): "
                            + NEEDS_ATTACH[base].format(name=prog.name),
                            hint="libbpf cannot attach this section by itself; add the attach: "
                                 "entry to the ebpf_object program in manifest.yaml")


def _size_maps(obj: BpfObject, sizes: Sequence[MapSize]) -> None:
    if not sizes:
        return
    ncpus = num_possible_cpus()
    for size in sizes:
        size_map(obj, size.map,
                 max_entries=size.max_entries.value(ncpus) if size.max_entries else None,
                 value_size=size.value_size.value(ncpus) if size.value_size else None)


def choose_forms(forms: Sequence[Sequence[str]], program_features: Mapping[str, str | None],
                 features: Mapping[str, Feature], label: str,
                 missing: Mapping[str, Hook] | None = None) -> tuple[int, tuple[str, ...]]:
    """The first form whose programs need only features and tracepoints this kernel has: (its
    index, the programs of every other form, to keep out). KernelUnsupported when none fits.
    ``missing``: programs whose tracepoint this kernel lacks (loader/kernel/hooks.py)."""
    missing = missing or {}
    why = []
    for index, form in enumerate(forms):
        unknown = [p for p in form if p not in program_features]
        if unknown:
            raise ManifestError(f"forms of '{label}' name program '{unknown[0]}', which the "
                                "object does not have",
                                hint=did_you_mean(unknown[0], sorted(program_features),
                                                  "programs there"))
        lacking = [program_features[p] for p in form if program_features[p]
                   and features.get(program_features[p]) is not None
                   and not features[program_features[p]].ok]
        hooks = [f"{missing[p]} ({p})" for p in form if p in missing]
        if not lacking and not hooks:
            return index, tuple(p for other in forms if other is not form for p in other)
        why.append(f"form {index + 1} ({', '.join(form)}) needs "
                   + ", ".join([f"{feat} ({features[feat].why})" for feat in dict.fromkeys(lacking)]
                               + [f"{h}, which this kernel does not have" for h in hooks]))
    raise KernelUnsupported(f"no form of '{label}' fits this kernel: " + "; ".join(why),
                            hint="add a form whose hooks this kernel offers (`bpfdepot kernel` "
                                 "lists them), e.g. a tracepoint form")


def _check_knobs(knobs: Mapping[str, int | str], infos: Sequence, names: Sequence[str]) -> None:
    known = sorted({k.name for info in infos for k in info.knobs})
    for name in knobs:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            raise LoadError(f"no knob '{name}' in {', '.join(names)}",
                            hint=f"did you mean '{close[0]}'?" if close else
                            f"knobs there: {', '.join(known) or 'none'} (const volatile globals)")
