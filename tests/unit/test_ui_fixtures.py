"""A small store with exact, known numbers for the web view's tests (unit and browser), written
by the real TsdbSink. Each record carries a wall-clock ``ts_ns``, which the sink takes as the
event's time, so the numbers sit at known times: every record lies in [T0, T0 + 60 s).

What ``fill_small`` writes (and ``Expected`` states):
- topology edges (cumulative snapshots): curl (pid 100) → 127.0.0.1:8080 grows to tx 3000 /
  rx 5000 / 1 conn; python3 (pid 200) serves 127.0.0.1:8080 (its server edge mirrors it, so the
  map shows one curl → python3 edge); curl → 10.0.0.5:443 (external) tx 700 / rx 300 / 2 conns;
- tcp_connlat: 90 connects of 100 µs and 10 of 10 ms by curl to 127.0.0.1:8080, unit shop.service
  on the first 50, and one failure ECONNREFUSED to 127.0.0.1:9;
- l7 (http1, client curl, peer 127.0.0.1:8080): 3 calls of 50 ms status 200, 1 of 50 ms status
  500 with an error;
- skb_drops (cumulative): NO_SOCKET UDP port 9 at __udp4_lib_rcv+0x4a1 counts 3 then 5;
  SOCKET_RCVBUFF UDP port 5353 counts 2;
- cpu_profile stacks: burn;main;burn_mid;burn_leaf 10 + 10 samples, burn;main;do_syscall_64 5
  (one kernel frame);
- filelat: one 20 ms write by dd.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from loader.sinks import Record
from loader.sinks.tsdb import TsdbSink


@dataclass(frozen=True)
class Expected:
    t0_s: int                 # every record in [t0_s, t0_s + 60)
    edge_tx: int = 3000
    edge_rx: int = 5000
    external_bytes: int = 1000
    connects: int = 100
    drops_no_socket: int = 5
    drops_total: int = 7
    burn_leaf: int = 20
    cpu_total: int = 25


def _put(sink: TsdbSink, stream: str, t0_ns: int, rows: list[tuple[float, dict]]) -> None:
    sink.write(stream, [Record(key=None, value=json.dumps({**r, "ts_ns": t0_ns + int(dt * 1e9)})
                               .encode()) for dt, r in rows])


def fill_small(path: Path, t0_s: int | None = None) -> Expected:
    """Write the store described above at ``path``; T0 defaults to 5 minutes ago, aligned."""
    t0_s = t0_s if t0_s is not None else (int(time.time()) - 300) // 60 * 60
    t0 = t0_s * 10**9
    sink = TsdbSink(path, retention_s=None, max_bytes=None)
    client = {"direction": "client", "pid": 100, "comm": "curl", "cgroup": 7, "protocol": "TCP",
              "family": "AF_INET", "laddr": "127.0.0.1", "lport": 0, "raddr": "127.0.0.1", "rport": 8080}
    server = {"direction": "server", "pid": 200, "comm": "python3", "cgroup": 8, "protocol": "TCP",
              "family": "AF_INET", "laddr": "127.0.0.1", "lport": 8080, "raddr": "127.0.0.1", "rport": 0}
    ext = {**client, "raddr": "10.0.0.5", "rport": 443}
    _put(sink, "topology.topology_edges", t0, [
        (1, {**client, "bytes_tx": 1000, "bytes_rx": 2000, "conns": 1, "closed": 0}),
        (1, {**server, "bytes_tx": 2000, "bytes_rx": 1000, "conns": 1, "closed": 0}),
        (6, {**client, "bytes_tx": 3000, "bytes_rx": 5000, "conns": 1, "closed": 1}),
        (6, {**server, "bytes_tx": 5000, "bytes_rx": 3000, "conns": 1, "closed": 1}),
        (6, {**ext, "bytes_tx": 700, "bytes_rx": 300, "conns": 2, "closed": 2}),
        (11, {**client, "bytes_tx": 3000, "bytes_rx": 5000, "conns": 1, "closed": 1})])
    conn = {"pid": 100, "comm": "curl", "saddr": "127.0.0.1", "daddr": "127.0.0.1", "sport": 40000,
            "dport": 8080}
    _put(sink, "tcp_connlat.tcp_connlat_events", t0, [
        (2 + i * 0.1, {**conn, "latency_us": 100.0 if i < 90 else 10000.0,
                       **({"labels": {"unit": "shop.service"}} if i < 50 else {})})
        for i in range(100)])
    _put(sink, "tcp_connlat.tcp_connlat_failures", t0, [
        (3, {**conn, "dport": 9, "error": "ECONNREFUSED"})])
    call = {"protocol": "http1", "role": "client", "tls": False, "pid": 100, "comm": "curl",
            "cgroup": 7, "peer": "127.0.0.1:8080", "latency_us": 50000.0, "req_size": 73,
            "resp_size": 111, "method": "GET", "path": "/hello"}
    _put(sink, "l7.l7_events", t0, [(20 + i, {**call, "status": 200}) for i in range(3)]
         + [(24, {**call, "status": 500, "error": "HTTP 500"})])
    drop = {"reason": "SKB_DROP_REASON_NO_SOCKET", "protocol": "UDP", "ethertype": 2048, "port": 9,
            "location": "__udp4_lib_rcv+0x4a1"}
    _put(sink, "skb_drops.drops", t0, [
        (30, {**drop, "count": 3}), (31, {**drop, "count": 5}),
        (31, {**drop, "reason": "SKB_DROP_REASON_SOCKET_RCVBUFF", "port": 5353,
              "location": "__udp_enqueue_schedule_skb+0x2b", "count": 2})])
    leaf = {"pid": 300, "comm": "burn", "kernel": [], "user": ["burn_leaf", "burn_mid", "main"],
            "stack": "burn;main;burn_mid;burn_leaf", "value": 10, "unit": "samples"}
    _put(sink, "cpu_profile.counts", t0, [
        (40, leaf), (45, leaf),
        (45, {**leaf, "kernel": ["do_syscall_64+0x5d"], "user": ["main"],
              "stack": "burn;main;do_syscall_64", "value": 5})])
    _put(sink, "filelat.filelat_events", t0, [
        (50, {"pid": 400, "tid": 400, "comm": "dd", "fd": 3, "op": "write", "bytes": 4096,
              "latency_us": 20000.0, "file": "out"})])
    stats = sink.close()
    assert stats.failed == 0 and stats.delivered == 6 + 100 + 1 + 4 + 3 + 3 + 1, stats
    return Expected(t0_s=t0_s)


def test_the_small_store_holds_what_it_says(tmp_path: Path) -> None:
    """The fixture itself: every stream written, every record at its own time."""
    import sqlite3

    expected = fill_small(tmp_path / "e.sqlite", 1_700_000_000)
    db = sqlite3.connect(tmp_path / "e.sqlite")
    names = {n for (n,) in db.execute("SELECT name FROM streams")}
    assert names == {"topology.topology_edges", "tcp_connlat.tcp_connlat_events",
                     "tcp_connlat.tcp_connlat_failures", "l7.l7_events", "skb_drops.drops",
                     "cpu_profile.counts", "filelat.filelat_events"}
    lo, hi = db.execute("SELECT min(ts_ns), max(ts_ns) FROM events").fetchone()
    assert expected.t0_s * 10**9 <= lo and hi < (expected.t0_s + 60) * 10**9
