"""Who this kernel is (release, arch, BTF digest) and which program types load on it.

Features are probed, never guessed from version numbers: each probe loads a two-instruction
program of one type (or creates one map) and the result is cached per kernel identity.
Attach points that are not program types (kprobes, uprobes) are checked by their PMU.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from loader.errors import KernelUnsupported

# Program types, attach types and BTF kinds: numbers from include/uapi/linux/bpf.h and btf.h.
_PROG = {"socket_filter": 1, "kprobe": 2, "sched_cls": 3, "tracepoint": 5, "xdp": 6,
         "perf_event": 7, "cgroup_skb": 8, "raw_tracepoint": 17, "tracing": 26, "lsm": 29}
_ATTACH = {"trace_raw_tp": 23, "trace_fentry": 24, "trace_fexit": 25, "lsm_mac": 27}
_BTF_KIND_TYPEDEF, _BTF_KIND_FUNC = 8, 12
_MAP_RINGBUF, _MAP_PERF_EVENT_ARRAY = 27, 4

# Every feature the project knows, in the order `bpfdepot kernel` prints them.
FEATURES = ("tracepoint", "raw_tracepoint", "tp_btf", "perf_event", "uprobe", "kprobe",
            "fentry", "fexit", "lsm", "socket_filter", "sched_cls", "xdp", "cgroup_skb",
            "ringbuf", "perf_event_array")


@dataclass(frozen=True, slots=True, kw_only=True)
class KernelIdentity:
    release: str
    arch: str
    btf_digest: str  # sha256 hex of the raw BTF

    @property
    def key(self) -> str:
        return f"{self.release}-{self.arch}-{self.btf_digest[:16]}"

    def __str__(self) -> str:
        return f"{self.release}/{self.arch}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Feature:
    name: str
    ok: bool
    why: str  # how it was decided: "loads", "EPERM", "no kprobe PMU", ...


_DIGESTS: dict[tuple, str] = {}


def file_digest(path: Path) -> str:
    """sha256 of a file, remembered while its inode, size and mtime stay (the node's BTF, ~6 MB,
    is hashed once per process rather than once per load)."""
    st = os.stat(path)
    key = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    digest = _DIGESTS.get(key)
    if digest is None:
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if len(_DIGESTS) >= 64:
            _DIGESTS.clear()
        _DIGESTS[key] = digest
    return digest


def running_kernel(btf: Path = Path("/sys/kernel/btf/vmlinux")) -> KernelIdentity:
    uname = os.uname()
    if not btf.exists():
        raise KernelUnsupported(
            f"kernel {uname.release} exposes no BTF at {btf}",
            hint="CO-RE programs need CONFIG_DEBUG_INFO_BTF=y; build with a minimal BTF "
                 "for this kernel instead (bpfdepot build --kernel-btf FILE)")
    return KernelIdentity(release=uname.release, arch=uname.machine, btf_digest=file_digest(btf))


# the kernel functions and types the tp_btf, fentry/fexit and lsm probes attach to
_BTF_NAMES = {"btf_trace_sched_switch": _BTF_KIND_TYPEDEF, "do_nanosleep": _BTF_KIND_FUNC,
              "bpf_lsm_file_open": _BTF_KIND_FUNC}


def _probe_one(name: str, btf_ids: dict[str, int]) -> Feature:
    """Probe one feature; ``btf_ids``: the kernel BTF ids the probes attach to (_BTF_NAMES)."""
    from loader.libbpf import core as libbpf  # cffi: imported here so identity needs no libbpf

    def prog(ptype: str, attach: str | None = None, btf_name: str | None = None,
             btf_kind: int = _BTF_KIND_FUNC) -> Feature:
        btf_id = 0
        if btf_name:
            btf_id = btf_ids[btf_name]
            if btf_id < 0:
                return Feature(name=name, ok=False, why=f"no {btf_name} in kernel BTF")
        rc = libbpf.probe_prog(_PROG[ptype], _ATTACH[attach] if attach else 0, btf_id)
        return Feature(name=name, ok=rc == 0, why="loads" if rc == 0 else errno.errorcode.get(-rc, str(rc)))

    def pmu(kind: str) -> Feature:
        # libbpf attaches kprobes/uprobes through these perf PMUs; CONFIG_KPROBES=n leaves no kprobe PMU
        if not Path(f"/sys/bus/event_source/devices/{kind}").exists():
            return Feature(name=name, ok=False, why=f"no {kind} PMU (/sys/bus/event_source/devices/{kind})")
        return prog("kprobe")

    match name:
        case "tp_btf":
            return prog("tracing", "trace_raw_tp", "btf_trace_sched_switch", _BTF_KIND_TYPEDEF)
        case "fentry" | "fexit":
            return prog("tracing", f"trace_{name}", "do_nanosleep")
        case "lsm":
            return prog("lsm", "lsm_mac", "bpf_lsm_file_open")
        case "kprobe" | "uprobe":
            return pmu(name)
        case "ringbuf" | "perf_event_array":
            rc = (libbpf.probe_map(_MAP_RINGBUF, 0, 0, 4096) if name == "ringbuf"
                  else libbpf.probe_map(_MAP_PERF_EVENT_ARRAY, 4, 4, 1))
            return Feature(name=name, ok=rc == 0, why="creates" if rc == 0 else errno.errorcode.get(-rc, str(rc)))
        case _:
            return prog(name)


def probe_features(identity: KernelIdentity, cache_dir: Path) -> dict[str, Feature]:
    """Probe (or read the cached probe of) every feature in FEATURES; needs root the first time."""
    cached = cache_dir / "kernels" / f"{identity.key}.json"
    if cached.exists():
        rows = json.loads(cached.read_text())
        return {row["name"]: Feature(**row) for row in rows}
    if os.geteuid() != 0:
        raise KernelUnsupported(
            f"cannot probe the features of {identity}: probing loads programs, which needs root",
            hint="run `sudo bpfdepot kernel` once; the result is cached per kernel")
    from loader.libbpf import core as libbpf

    ids = dict(zip(_BTF_NAMES, libbpf.vmlinux_btf_ids(list(_BTF_NAMES.items()))))
    found = {name: _probe_one(name, ids) for name in FEATURES}
    if all(not f.ok for f in found.values()):
        # nothing loads at all: most likely a permission problem, not a feature list to keep
        raise KernelUnsupported(f"no BPF program type loads on {identity} ({found['tracepoint'].why})",
                                hint="run as root with CAP_BPF; check kernel.unprivileged_bpf_disabled")
    cached.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cached.parent)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps([asdict(f) for f in found.values()], indent=1))
    os.replace(tmp, cached)
    return found
