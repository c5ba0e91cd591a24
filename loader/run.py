"""Run built objects: check they fit this kernel, load, attach, stream events, detach.

Order of the checks, cheapest first and all before anything touches the kernel: privileges →
arch → required features → filesystems (tracefs/bpffs, mounted when missing) → open → load →
attach (rolled back on failure). Events are encoded to JSON lines in C (loader/decode.py) and
written in batches; on stop everything is detached before the last drain, and the summary
gives, per channel, the events received and those the program could not reserve (lost).
"""

from __future__ import annotations

import difflib
import errno
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from loader.artifact import ArtifactMeta
from loader.elfinfo import read_object_file
from loader.errors import KernelUnsupported, LoadError, PrivilegeError
from loader.kernel import Feature, KernelIdentity
from loader.libbpf import BpfObject, Encoder, RingReader

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
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
        self.encoders: list[tuple[ChannelStats, Encoder, BpfObject]] = []
        self.reader: RingReader | None = None

    def start(self, loadables: Sequence[Loadable], declared: dict[str, str | None],
              knobs: dict[str, int] | None = None) -> None:
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
                for name, chan in item.meta.channels.items():
                    if not obj.has_map(name):
                        raise LoadError(f"channel '{name}' is not a map in '{item.meta.name}'",
                                        hint="the manifest and the object disagree: rebuild")
                    decoder = info.decoder(name, declared.get(name))
                    enc = Encoder(decoder.ops, event_size=decoder.size, max_record=decoder.max_record)
                    stats = ChannelStats(program=item.meta.name, channel=name)
                    self.encoders.append((stats, enc, obj))
                obj.load()
            for item, obj in self.objects:
                obj.attach([p.name for p in obj.programs()])
            if self.encoders:  # a program may have no channel (counters, filters): nothing to poll
                self.reader = RingReader(
                    (obj.map_fd(stats.channel), enc) for stats, enc, obj in self.encoders)
        except BaseException:
            self.close()
            raise

    def flush(self, fd: int) -> None:
        for _, enc, _ in self.encoders:
            if enc.pending():
                enc.write_to(fd)

    def finish(self, fd: int) -> list[ChannelStats]:
        """Detach, drain what is left, count, and release everything."""
        for _, obj in self.objects:
            obj.detach()
        if self.reader is not None:
            self.reader.drain()
            self.flush(fd)
        out = []
        for stats, enc, obj in self.encoders:
            stats.received, stats.short = enc.events, enc.short_events
            lost_map = f"{stats.channel}_lost"
            stats.lost = obj.percpu_u64_sum(lost_map) if obj.has_map(lost_map) else 0
            out.append(stats)
        self.close()
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


def stream(session: Session, fd: int, *, duration: float | None,
           on_attached: Callable[[], None] | None = None) -> float:
    """Poll until Ctrl-C, SIGTERM or ``duration`` seconds; return the seconds streamed."""
    stop = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    started = time.monotonic()
    deadline = started + duration if duration is not None else None
    try:
        if on_attached:
            on_attached()
        while not stop:
            wait_ms = 100
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                wait_ms = max(1, min(wait_ms, int(left * 1000)))
            if session.reader is None:
                time.sleep(wait_ms / 1000)
                continue
            n = session.reader.poll(wait_ms)
            if n < 0 and n != -errno.EINTR:
                raise LoadError(f"reading the ring buffers failed: {os.strerror(-n)}")
            session.flush(fd)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return time.monotonic() - started
