"""What the topology snapshot costs: ``bpf/topology`` run by ``bpfdepot run`` with its edge map
(``topology_edges``, read whole and decoded every 5 s) holding 10,000 edges, against the same
run with only the node's own edges (the baseline), back to back in one run.

    python bench/bench_topology.py [--reps 2] [--seconds 30]

The 10,000 edges are written from user space once the run has attached: the map is found by
name among the maps the ``bpfdepot run`` process holds (the ``map_id`` of its fds' fdinfo),
opened by id and filled with ``bpf_map_update_elem`` through ctypes (about 10 ms);
each edge is a distinct {pid, remote address, remote port} client edge. Loader CPU = utime +
stime of the ``bpfdepot run`` process (/proc/PID/stat) over ``--seconds`` of wall time after
the fill, as % of one CPU (goal < 1%); the records written are counted to check every snapshot
held the 10,000 edges.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import struct
import sys
import time
from pathlib import Path

import harness
from bench_probes import start, stop
from harness import ROOT, Row, median

EDGES = 10_000
INTERVAL = 5.0  # s, the manifest's topology_edges interval
TICKS = os.sysconf("SC_CLK_TCK")
EDGE = struct.Struct("<QIIIHHH6s16s16s16s")  # struct topology_edge (bpf/topology/topology.h)
COUNTS = struct.Struct("<QQQQ")              # struct topology_counts


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (/proc/PID/stat fields 14 and 15), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _libbpf() -> ctypes.CDLL:
    lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    lib.bpf_map_get_fd_by_id.argtypes = [ctypes.c_uint32]
    lib.bpf_map_update_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                        ctypes.c_uint64]
    return lib


def _edges_map_id(pid: int) -> int:
    """The id of the ``topology_edges`` map the ``bpfdepot run`` process ``pid`` holds: the
    map ids in its fds' fdinfo, matched by name against ``bpftool -j map show``."""
    held = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd) != "anon_inode:bpf-map":
                continue
            info = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
        except OSError:
            continue  # closed meanwhile
        held |= {int(line.split()[1]) for line in info.splitlines() if line.startswith("map_id:")}
    out = harness.run(["bpftool", "-j", "map", "show"])
    for m in json.loads(out.stdout or "[]"):
        if m.get("name") == "topology_edges" and m["id"] in held:
            return m["id"]
    raise SystemExit(f"bench: no topology_edges map held by pid {pid}")


def fill(lib: ctypes.CDLL, pid: int) -> None:
    """Write EDGES distinct client edges into the run's edge map."""
    fd = lib.bpf_map_get_fd_by_id(_edges_map_id(pid))
    if fd < 0:
        raise SystemExit(f"bench: bpf_map_get_fd_by_id: {os.strerror(ctypes.get_errno())}")
    try:
        for i in range(EDGES):
            raddr = bytes([10, 77, i >> 8, i & 0xFF]) + bytes(12)
            key = EDGE.pack(4242, 200_000 + i, 1, 6, 2, 0, 8000 + i % 100, bytes(6),
                            bytes([127, 0, 0, 1]) + bytes(12), raddr, b"bench-client")
            value = COUNTS.pack(1000 + i, 2000 + i, 1, 0)
            if lib.bpf_map_update_elem(fd, key, value, 0):
                raise SystemExit(f"bench: bpf_map_update_elem: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


def one_run(home: Path, out: Path, seconds: float, lib: ctypes.CDLL | None) -> tuple[float, int]:
    """(loader CPU as a share of one CPU, edge records written) for one run; ``lib`` given:
    the map is filled first."""
    p = start(home, ROOT / "bpf" / "topology", out)
    try:
        if lib is not None:
            fill(lib, p.pid)
        cpu0, t0 = cpu_seconds(p.pid), time.monotonic()
        time.sleep(seconds)
        cpu1, t1 = cpu_seconds(p.pid), time.monotonic()
    finally:
        stop(p)
    records = sum(1 for line in out.read_text().splitlines() if '"conns":' in line)
    return (cpu1 - cpu0) / (t1 - t0), records


def measure(args: argparse.Namespace) -> list[Row]:
    lib = _libbpf()
    with harness.scratch("topology") as tmp:
        home = tmp / "home"
        harness.run([*harness.bpfdepot_exe(), "build", str(ROOT / "bpf" / "topology")],
                    env=harness.env_for(home), cwd=ROOT)
        full, empty, records = [], [], []
        for i in range(args.reps):
            share, count = one_run(home, tmp / f"full-{i}.jsonl", args.seconds, lib)
            full.append(share)
            records.append(count)
            share, _ = one_run(home, tmp / f"empty-{i}.jsonl", args.seconds, None)
            empty.append(share)
    reads = int(args.seconds // INTERVAL)
    if min(records) < EDGES * reads:
        raise SystemExit(f"bench: {min(records)} edge records, expected ≥ {EDGES * reads} "
                         f"({reads} reads of {EDGES:,})")
    print(f"  edge records written per run: {records} (≥ {reads} snapshots of {EDGES:,})",
          file=sys.stderr)
    cpu, base = median(full), median(empty)
    return [Row(metric=f"topology, {EDGES:,} edges snapshotted every {INTERVAL:.0f} s "
                       f"(loader CPU, {args.seconds:.0f} s)",
                value=f"{cpu * 100:.3f}% of one CPU", baseline=f"{base * 100:.3f}% (no filled edges)",
                ratio=cpu / base if base else None, goal="< 1%", met=cpu < 0.01)]


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=30.0,
                   help="measured wall time per run (default 30)")


if __name__ == "__main__":
    sys.exit(harness.main("bench_topology", measure, reps=2, add_args=_args))
