"""Run built objects: check they fit this kernel, load, attach, stream events, detach.

Order of the checks, cheapest first and all before anything touches the kernel: privileges →
arch → required features → filesystems (tracefs/bpffs, mounted when missing) → open → load →
attach (rolled back on failure). Where each channel's events go is the caller's choice
(loader/pipeline.py builds the C side of each channel); on stop everything is detached before
the last drain, and the stats give, per channel, the events received and those the program
could not reserve (lost).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from loader.artifacts.meta import ArtifactMeta
from loader.kernel.elf import ObjectInfo, read_object_file
from loader.errors import KernelUnsupported, LoadError, PrivilegeError
from loader.kernel.probe import Feature, KernelIdentity
from loader.libbpf import BpfObject, Channel, RingReader

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
ChannelFactory = Callable[[str, str, ObjectInfo], Channel]  # (program, channel, object) → channel
TRACEFS, BPFFS = Path("/sys/kernel/tracing"), Path("/sys/fs/bpf")


@dataclass(frozen=True, slots=True, kw_only=True)
class Loadable:
    """One object to run: its meta (from the store) and a verified local file."""

    meta: ArtifactMeta
    path: Path
    btf_custom_path: Path | None = None


@dataclass(slots=True, kw_only=True)
class ChannelStats:
    program: str
    channel: str
    received: int = 0
    lost: int = 0
    short: int = 0


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


def check_fits(meta: ArtifactMeta, kernel: KernelIdentity, features: dict[str, Feature]) -> None:
    if meta.target.arch != kernel.arch:
        raise KernelUnsupported(
            f"artifact {meta.digest[:19]} of '{meta.name}' is built for {meta.target.arch}, "
            f"this node is {kernel.arch}",
            hint=f"build it for this kernel: bpfdepot build <bundle> on a {kernel.arch} machine")
    for need in meta.required_features:
        have = features.get(need)
        if have is not None and not have.ok:
            users = [p["name"] for p in meta.programs if p["feature"] == need] or [meta.name]
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


class Session:
    """Loaded and attached objects plus their ring-buffer channels; close() undoes all of it."""

    def __init__(self) -> None:
        self.objects: list[tuple[Loadable, BpfObject]] = []
        self.channels: list[tuple[ChannelStats, Channel, BpfObject]] = []
        self.reader: RingReader | None = None

    def start(self, loadables: Sequence[Loadable], make_channel: ChannelFactory,
              knobs: dict[str, int] | None = None,
              before_attach: Callable[[], None] | None = None) -> None:
        """Open, set knobs, load and attach every object; ``make_channel`` says where each
        channel's events go (given the program, the channel and its object), and
        ``before_attach`` runs once all is loaded (processors start there: no event comes
        before they are ready, and if they fail nothing was attached)."""
        knobs = knobs or {}
        try:
            infos = [read_object_file(item.path) for item in loadables]
            _check_knobs(knobs, infos, [item.meta.name for item in loadables])
            for item, info in zip(loadables, infos):
                obj = BpfObject(item.path, label=item.meta.name, btf_custom_path=item.btf_custom_path)
                self.objects.append((item, obj))
                for knob in info.knobs:
                    if knob.name in knobs:
                        obj.set_rodata(knob.name, knob.offset, knob.size, knobs[knob.name], knob.signed)
                for name in item.meta.channels:
                    if not obj.has_map(name):
                        raise LoadError(f"channel '{name}' is not a map in '{item.meta.name}'",
                                        hint="the manifest and the object disagree: rebuild")
                    channel = make_channel(item.meta.name, name, info)
                    self.channels.append((ChannelStats(program=item.meta.name, channel=name),
                                          channel, obj))
                obj.load()
            if before_attach is not None:
                before_attach()
            for item, obj in self.objects:
                obj.attach([p.name for p in obj.programs()])
            if self.channels:  # a program may have no channel (counters, filters): nothing to poll
                self.reader = RingReader(
                    (obj.map_fd(stats.channel), channel) for stats, channel, obj in self.channels)
        except BaseException:
            self.close()
            raise

    def detach(self) -> None:
        """Stop the programs and read what they left in the rings."""
        for _, obj in self.objects:
            obj.detach()
        if self.reader is not None:
            self.reader.drain()

    def kernel_lost(self, program: str, channel: str) -> int:
        """The program's count of events it could not reserve on ``channel`` (0 if it keeps none)."""
        for stats, _, obj in self.channels:
            if (stats.program, stats.channel) == (program, channel):
                lost_map = f"{channel}_lost"
                return obj.percpu_u64_sum(lost_map) if obj.has_map(lost_map) else 0
        return 0

    def stats(self) -> list[ChannelStats]:
        """Per channel: events received, and those the program could not reserve (lost)."""
        out = []
        for stats, channel, _ in self.channels:
            stats.received, stats.short = channel.events, channel.short_events
            stats.lost = self.kernel_lost(stats.program, stats.channel)
            out.append(stats)
        return out

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        for _, obj in self.objects:
            obj.close()
        self.objects.clear()


def _check_knobs(knobs: dict[str, int], infos: Sequence, names: Sequence[str]) -> None:
    known = sorted({k.name for info in infos for k in info.knobs})
    for name in knobs:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            raise LoadError(f"no knob '{name}' in {', '.join(names)}",
                            hint=f"did you mean '{close[0]}'?" if close else
                            f"knobs there: {', '.join(known) or 'none'} (const volatile globals)")
