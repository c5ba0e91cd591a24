"""The in-kernel process filter: what a run monitors (``--unit``, ``--cgroup``, ``--pid``,
``--container``, ``--pod``, a ``--filter-file``) turned into the two monitor maps of
bpf/include/bpfdepot.h.

    request    FilterRequest: units, cgroup2 paths, pids, container ids (or prefixes of 12+),
               pods as namespace/name (found through the label resolver: loader/labels/pods.py,
               reading the node's files under the ``--labels`` root, ``/`` by default)
    labels     each target gets a label id (1, 2, … in the order asked), which the kernel stamps
               into every event of that target: ``label: N`` in the records
    prepare    before load, per object: one that honours the filter (its program calls
               ``bpfdepot_monitored()``) shares the run's maps and gets the mode knob; one that
               does not is refused, naming it — never silently unfiltered
    refresh    units → their cgroup2 directories (found by name under the cgroup2 mount; ids
               are directory inodes), cgroups → inodes, pids that still live, containers → their
               scopes, pods → their pod cgroup; the maps are made to match. Once before attach,
               then every second while the run goes on (a unit or container started later, a
               cgroup re-created, a pid added to the filter file)

No filter asked: the objects are left alone and their mode knob stays 0 (off: one branch).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from loader.errors import ManifestError
from loader.model.yamldoc import did_you_mean

FILTER_OFF, FILTER_PIDS, FILTER_CGROUPS = 0, 1, 2  # bits of bpfdepot_filter_mode
MODE_KNOB = "bpfdepot_filter_mode"
MAP_NAMES = ("bpfdepot_monitor_cgroups", "bpfdepot_monitor_pids")
KEYS = ("units", "cgroups", "pids", "containers", "pods")
RESCAN_S = 1.0

Say = Callable[[str], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class FilterRequest:
    """What a run is limited to: these units, cgroup2 directories (and everything below them),
    processes, containers and pods; ``file`` is re-read while the run goes on and adds to them.
    ``files_root`` holds the node's var/log/pods and run/containerd (``--labels ROOT``)."""

    units: tuple[str, ...] = ()
    cgroups: tuple[str, ...] = ()
    pids: tuple[int, ...] = ()
    containers: tuple[str, ...] = ()
    pods: tuple[str, ...] = ()
    file: Path | None = None
    files_root: Path = Path("/")

    @property
    def active(self) -> bool:
        return bool(self.units or self.cgroups or self.pids or self.containers or self.pods
                    or self.file)

    @property
    def mode(self) -> int:
        """The knob's value: a filter file may add either kind later, so it turns on both."""
        if self.file is not None:
            return FILTER_PIDS | FILTER_CGROUPS
        return ((FILTER_CGROUPS if self.units or self.cgroups or self.containers or self.pods
                 else 0) | (FILTER_PIDS if self.pids else 0))


def filter_request(*, units: Iterable[str] = (), cgroups: Iterable[str] = (),
                   pids: Iterable[int] = (), containers: Iterable[str] = (),
                   pods: Iterable[str] = (), file: str | None = None,
                   labels_root: str | None = None) -> FilterRequest:
    """A request from the run's flags, each value checked (ManifestError naming it)."""
    from loader.labels.pods import container_id, pod_name

    request = FilterRequest(units=tuple(units), cgroups=tuple(cgroups),
                            pids=tuple(_pid(p, "--pid") for p in pids),
                            containers=tuple(container_id(c, "--container") for c in containers),
                            pods=tuple(pod_name(p, "--pod") for p in pods),
                            file=Path(file) if file else None,
                            files_root=Path(labels_root or "/"))
    for unit in request.units:
        _check_unit(unit, "--unit")
    return request


def parse_filter_doc(doc: object, where: str) -> FilterRequest:
    """A filter file's YAML: ``{units: [...], cgroups: [...], pids: [...], containers: [...],
    pods: [...]}``."""
    from loader.labels.pods import container_id, pod_name

    if doc is None:
        return FilterRequest()
    if not isinstance(doc, Mapping):
        raise ManifestError(f"{where}: a filter is a mapping of {'/'.join(KEYS)}, "
                            f"not {type(doc).__name__}", hint="e.g. {units: [shop-api.service]}")
    for key in doc:
        if key not in KEYS:
            raise ManifestError(f"{where}: unknown filter key '{key}'",
                                hint=did_you_mean(str(key), KEYS, "keys"))
        if not isinstance(doc[key], list):
            raise ManifestError(f"{where}: '{key}' is a list", hint=f"{key}: [...]")
    units = tuple(str(u) for u in doc.get("units") or ())
    for unit in units:
        _check_unit(unit, where)
    return FilterRequest(units=units, cgroups=tuple(str(c) for c in doc.get("cgroups") or ()),
                         pids=tuple(_pid(p, where) for p in doc.get("pids") or ()),
                         containers=tuple(container_id(c, where)
                                          for c in doc.get("containers") or ()),
                         pods=tuple(pod_name(p, where) for p in doc.get("pods") or ()))


def with_manifest(request: FilterRequest, wanted: Mapping[str, Sequence[str]],
                  where: str) -> FilterRequest:
    """The command line's request plus the manifest's ``spec.filter`` (checked here, where a
    unit's name and a pid are checked for the command line too)."""
    if not wanted:
        return request
    extra = parse_filter_doc({key: list(values) for key, values in wanted.items()}, where)
    return replace(request, units=request.units + extra.units,
                   cgroups=request.cgroups + extra.cgroups, pids=request.pids + extra.pids,
                   containers=request.containers + extra.containers,
                   pods=request.pods + extra.pods)


def _pid(value: object, where: str) -> int:
    try:
        pid = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        pid = 0
    if pid <= 0:
        raise ManifestError(f"{where}: {value!r} is not a process id", hint="a pid is a number > 0")
    return pid


def _check_unit(unit: str, where: str) -> None:
    if "/" in unit or not unit.endswith((".service", ".scope", ".slice")):
        raise ManifestError(f"{where}: {unit!r} is not a systemd unit name",
                            hint="give NAME.service, NAME.scope or NAME.slice (a path: --cgroup)")


@dataclass(frozen=True, slots=True)
class Target:
    kind: str   # unit, cgroup, pid, container or pod
    value: str  # as asked (a container id as given: a prefix stays a prefix)


class Monitor:
    """The run's monitor maps and what fills them; ``maps`` is ``(cgroups, pids)``, each with
    ``put(key, label)``, ``remove(key)``, ``items()``, ``share(obj)`` and ``close()``."""

    def __init__(self, request: FilterRequest, maps, *, root: Path, say: Say,
                 pods=None) -> None:
        self.request = request
        # containers and pods → cgroups (loader/labels/pods.py PodFinder); made when first
        # needed (a filter file may ask later), or given (tests)
        self.pods = pods
        self.pinned: dict[Target, str] = {}  # a container prefix → the full id it resolved to
        self._notes: dict[Target, str] = {}  # why a container/pod has no cgroup now (said once)
        self.cgroups, self.pids = maps
        self.root = root
        self.say = say
        self.labels: dict[Target, int] = {}
        self.gone: set[int] = set()      # pids that exited: never re-added (pid reuse)
        self._file_stamp: tuple[int, int] | str | None = None
        self._file_request = FilterRequest()
        self._where: dict[Target, tuple[int, ...]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0                  # rescans that failed (said, not fatal)

    # --- before load --------------------------------------------------------------------------

    def prepare(self, label: str, path: Path, obj, info) -> None:
        """Hand ``obj`` (opened from ``path``) the run's maps and set its mode; refuse it when
        it cannot filter."""
        offset = honours_filter(path, info)
        if offset is None:
            raise ManifestError(
                f"'{label}' does not honour the process filter this run asks for: none of its "
                "programs calls bpfdepot_monitored()",
                hint="run it without --unit/--cgroup/--pid, or add the filter to it: "
                     "#define BPFDEPOT_FILTER, #include \"bpfdepot.h\", and return early when "
                     "!bpfdepot_monitored(&label) (see bpf/opensnoop)")
        from loader.libbpf.attach import write_rodata

        self.cgroups.share(obj)
        self.pids.share(obj)
        write_rodata(obj, MODE_KNOB, offset, bytes([self.request.mode]))

    # --- filling ------------------------------------------------------------------------------

    def targets(self) -> list[Target]:
        req, extra = self.request, self._file_request
        out = ([Target("unit", u) for u in req.units + extra.units]
               + [Target("cgroup", c) for c in req.cgroups + extra.cgroups]
               + [Target("pid", str(p)) for p in req.pids + extra.pids]
               + [Target("container", c) for c in req.containers + extra.containers]
               + [Target("pod", p) for p in req.pods + extra.pods])
        return list(dict.fromkeys(out))

    def label_of(self, target: Target) -> int:
        if target not in self.labels:
            self.labels[target] = len(self.labels) + 1
        return self.labels[target]

    def cgroup_ids(self, label: int) -> tuple[int, ...]:
        """The cgroup ids filter label ``label`` stands for now (a unit's, cgroup's,
        container's or pod's directories); ``()`` for a pid target or an unknown label."""
        where = self._where  # replaced whole by refresh(): safe to read from another thread
        return next((ids for t, ids in where.items()
                     if t.kind != "pid" and self.labels.get(t) == label), ())

    def check(self) -> None:
        """Before anything loads: a --cgroup that is no cgroup2 directory, a --pid that is no
        process, or a --container prefix that matches two containers is an error (a unit, a
        container or a pod may start later: each is looked for every second)."""
        self._read_file(strict=True)
        for target in self.targets():
            if target.kind == "cgroup":
                _cgroup_dir(self.root, target.value)
            elif target.kind == "pid" and not Path(f"/proc/{target.value}").exists():
                raise ManifestError(f"--pid {target.value}: no such process",
                                    hint="give the pid of a running process (its tgid)")
            elif target.kind == "container":
                found = self._finder().container(target.value)
                if found.problem:
                    raise ManifestError(f"--container {found.problem}",
                                        hint="give more digits of the id (`crictl ps "
                                             "--no-trunc` prints all 64)")

    def refresh(self) -> None:
        """Make both maps hold exactly what the targets resolve to now."""
        self._read_file(strict=False)
        want_cg: dict[int, int] = {}
        want_pid: dict[int, int] = {}
        found: dict[Target, tuple[int, ...]] = {}
        for target in self.targets():
            label = self.label_of(target)
            if target.kind == "unit":
                ids = tuple(p.stat().st_ino for p in unit_dirs(self.root, target.value))
                for cid in ids:
                    want_cg.setdefault(cid, label)
            elif target.kind == "cgroup":
                try:
                    ids = (_cgroup_dir(self.root, target.value).stat().st_ino,)
                except (ManifestError, OSError):
                    ids = ()
                for cid in ids:
                    want_cg.setdefault(cid, label)
            elif target.kind in ("container", "pod"):
                ids = self._find(target)
                for cid in ids:
                    want_cg.setdefault(cid, label)
            else:
                pid = int(target.value)
                alive = pid not in self.gone and Path(f"/proc/{pid}").exists()
                if not alive:
                    self.gone.add(pid)
                ids = (pid,) if alive else ()
                for p in ids:
                    want_pid.setdefault(p, label)
            found[target] = ids
            if self._where.get(target) != ids:
                self._said(target, label, ids)
        self._where = found
        _sync(self.cgroups, want_cg)
        _sync(self.pids, want_pid)

    def _finder(self):
        if self.pods is None:
            from loader.labels.pods import PodFinder

            self.pods = PodFinder.open(root=self.request.files_root, cgroup2=self.root)
        return self.pods

    def _find(self, target: Target) -> tuple[int, ...]:
        """A container's or pod's cgroup ids now; a container prefix is pinned to the full id
        it first resolved to, so a later container sharing the prefix is not taken instead."""
        finder = self._finder()
        if target.kind == "pod":
            return finder.pod(target.value).ids
        found = finder.container(self.pinned.get(target, target.value))
        note = found.problem and f"{found.problem}: none monitored; give more digits"
        if note and self._notes.get(target) != note:
            self.say(f"bpfdepot: filter: label {self.label_of(target)} = container "
                     f"{target.value}: {note}")
        self._notes[target] = note
        if found.container:
            self.pinned.setdefault(target, found.container)
        return found.ids

    def _said(self, target: Target, label: int, ids: tuple[int, ...]) -> None:
        if target.kind == "pid":
            what = "monitored" if ids else "has exited"
        elif target.kind in ("container", "pod") and not ids:
            if self._notes.get(target):
                return  # said by _find
            what = f"no {target.kind} {target.value} on this node yet; waiting"
        elif ids:
            what = f"cgroup id {', '.join(map(str, ids))}"
        else:
            what = "no cgroup2 directory yet (looked for every second)"
        self.say(f"bpfdepot: filter: label {label} = {target.kind} {target.value}: {what}")

    def _read_file(self, *, strict: bool) -> None:
        path = self.request.file
        if path is None:
            return
        stamp = None
        try:
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp == self._file_stamp:
                return
            request = parse_filter_doc(yaml.safe_load(path.read_text()), str(path))
        except (OSError, yaml.YAMLError, ManifestError) as exc:
            if strict:
                raise ManifestError(f"filter file {path}: {exc}",
                                    hint="a YAML mapping: {units: [...], cgroups: [...], "
                                         "pids: [...]}") from exc
            seen = stamp or "missing"
            if seen != self._file_stamp:  # say it once, until the file changes
                self.say(f"bpfdepot: filter: {path} not applied ({exc}); the last one stays")
            self._file_stamp = seen
            return
        self._file_stamp, self._file_request = stamp, request

    # --- while running ------------------------------------------------------------------------

    def start(self) -> None:
        """Rescan every second until stop()."""
        self._thread = threading.Thread(target=self._loop, name="bpfdepot-monitor", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(RESCAN_S):
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - a rescan failing must not stop the run
                self.errors += 1
                self.say(f"bpfdepot: filter: rescan failed: {exc}")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.pods is not None:
            self.pods.close()
        self.cgroups.close()
        self.pids.close()


def honours_filter(path: Path, info) -> int | None:
    """The .rodata offset of the mode knob when the object's programs call
    ``bpfdepot_monitored()`` (clang keeps the static knob only then); None when they do not.
    The offset comes from the ELF symbol (BTF's DATASEC offsets are 0 until libbpf fixes them)."""
    if not all(any(m.name == n for m in info.maps) for n in MAP_NAMES):
        return None
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        rodata = elf.get_section_by_name(".rodata")
        if symtab is None or rodata is None:
            return None
        index = elf.get_section_index(".rodata")
        for sym in symtab.get_symbol_by_name(MODE_KNOB) or ():
            if sym["st_shndx"] == index and sym["st_size"] == 1:
                return int(sym["st_value"])
    return None


def unit_dirs(root: Path, unit: str) -> list[Path]:
    """Every cgroup2 directory named ``unit`` under ``root`` (a unit has one; a name may repeat
    under user slices). Sorted for a stable order."""
    out = []
    for dirpath, dirnames, _ in os.walk(root):
        if unit in dirnames:
            out.append(Path(dirpath) / unit)
            dirnames.remove(unit)  # its children are matched through the ancestor walk
    return sorted(out)


def _cgroup_dir(root: Path, value: str) -> Path:
    path = Path(value) if value.startswith("/") else root / value
    try:
        inside = path.resolve().is_relative_to(root.resolve())
    except OSError:
        inside = False
    if not inside:
        raise ManifestError(f"--cgroup {value}: not under the cgroup2 mount {root}",
                            hint=f"give a directory under {root} (this host's cgroup2 tree)")
    if not path.is_dir():
        raise ManifestError(f"--cgroup {value}: no such cgroup2 directory",
                            hint=f"directories under {root} are cgroups; `ls {root}`")
    return path


def _sync(monitor_map, want: Mapping[int, int]) -> None:
    have = monitor_map.items()
    for key in have.keys() - want.keys():
        monitor_map.remove(key)
    for key, label in want.items():
        if have.get(key) != label:
            monitor_map.put(key, label)


def open_monitor(request: FilterRequest, *, say: Say) -> Monitor | None:
    """The run's monitor, its maps created, checked and filled; None when no filter is asked."""
    if not request.active:
        return None
    from loader.attach.cgroup import cgroup2_mounts
    from loader.libbpf.monitor import monitor_maps

    mounts = cgroup2_mounts()
    if not mounts and (request.units or request.cgroups or request.containers or request.pods):
        raise ManifestError("filtering by unit, cgroup, container or pod needs a cgroup2 mount, "
                            "and this host has none", hint="filter by --pid, or mount cgroup2")
    if (request.containers or request.pods) and not request.files_root.is_dir():
        raise ManifestError(f"--labels root {request.files_root} is not a directory",
                            hint="give the directory holding the node's var/log/pods and "
                                 "run/containerd (--container/--pod read them)")
    monitor = Monitor(request, monitor_maps(), root=mounts[0] if mounts else Path("/"), say=say)
    try:
        monitor.check()
        monitor.refresh()
    except BaseException:
        monitor.close()
        raise
    return monitor
