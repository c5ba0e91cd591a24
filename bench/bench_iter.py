"""Listing every TCP socket: the ``iter/tcp`` iterator of ``bpf/tcp_socks`` read the way a
``type: iterator`` channel reads it (a fresh iterator fd read to EOF, lines checked as JSON
records), against the classic way, reading ``/proc/net/tcp`` and ``/proc/net/tcp6`` and
parsing their hex columns in Python (what ``ss``-less agents do). Both give one record per
socket with state, ports, addresses and uid; the bench opens 500 loopback connections (1,001
sockets of its own) first, so the walk has something to do.
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import sys
import time

import harness
from harness import ROOT, Row, median, paired

BUNDLE = ROOT / "bpf" / "tcp_socks"
PAIRS = 500
LOOPS = 20  # listings per timed sample


def proc_net_tcp() -> list[dict]:
    """/proc/net/tcp{,6} → records like tcp_socks prints (addresses left as hex: cheaper for
    the baseline)."""
    out = []
    for name, family in (("/proc/net/tcp", 2), ("/proc/net/tcp6", 10)):
        with open(name) as f:
            next(f)
            for line in f:
                cols = line.split()
                laddr, lport = cols[1].split(":")
                raddr, rport = cols[2].split(":")
                out.append({"family": family, "state": int(cols[3], 16), "lport": int(lport, 16),
                            "rport": int(rport, 16), "laddr": laddr, "raddr": raddr,
                            "uid": int(cols[7])})
    return out


def measure(args: argparse.Namespace) -> list[Row]:
    from loader.libbpf.attach import attach_iter, iter_link_fd, iter_read
    from loader.libbpf.core import BpfObject
    from loader.outputs.iterator import records

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), max(hard, 4096)))
    with harness.scratch("iter") as tmp:
        blob = harness.build_blob(BUNDLE, tmp / "home")
        server = socket.create_server(("127.0.0.1", 0), backlog=PAIRS)
        socks = [server]
        for _ in range(PAIRS):
            socks.append(socket.create_connection(server.getsockname()))
            socks.append(server.accept()[0])
        obj = BpfObject(blob, label="tcp_socks")
        try:
            obj.load()
            link = attach_iter(obj, "dump_tcp")
            obj._links.append(link)  # closed with the object
            fd = iter_link_fd(obj, "dump_tcp")
            seen = records(iter_read(fd), as_json=True)[1]
            baseline = len(proc_net_tcp())
            bpf, raw, proc = [], [], []
            for _ in range(args.reps):
                t0 = time.perf_counter()
                for _ in range(LOOPS):
                    records(iter_read(fd), as_json=True)
                bpf.append((time.perf_counter() - t0) / LOOPS)
                t0 = time.perf_counter()
                for _ in range(LOOPS):
                    iter_read(fd)
                raw.append((time.perf_counter() - t0) / LOOPS)
                t0 = time.perf_counter()
                for _ in range(LOOPS):
                    "".join(json.dumps(r) + "\n" for r in proc_net_tcp())
                proc.append((time.perf_counter() - t0) / LOOPS)
        finally:
            obj.close()
            for s in socks:
                s.close()
    print(f"  sockets listed: iterator {seen}, /proc/net/tcp{{,6}} {baseline} "
          f"(the bench's own {2 * PAIRS + 1} among them)")
    return [
        Row(metric=f"list {seen} TCP sockets: iter/tcp read + JSON records",
            value=f"{median(bpf) * 1000:.2f} ms",
            baseline=f"{median(proc) * 1000:.2f} ms (/proc/net/tcp{{,6}} parsed, JSON)",
            ratio=paired(bpf, proc)),
        Row(metric="  of which the kernel's walk (iterator fd read to EOF)",
            value=f"{median(raw) * 1000:.2f} ms",
            baseline=f"{median(proc) * 1000:.2f} ms (/proc/net/tcp{{,6}} parsed, JSON)",
            ratio=paired(raw, proc)),
        Row(metric="per socket", value=f"{median(bpf) / max(seen, 1) * 1e6:.2f} µs",
            baseline=f"{median(proc) / max(baseline, 1) * 1e6:.2f} µs"),
    ]


if __name__ == "__main__":
    sys.exit(harness.main("bench_iter", measure, reps=7))
