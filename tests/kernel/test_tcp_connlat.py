"""tcp_connlat in the running kernel: connections from this test, exact fields back; refused
connects as failure events; the per-remote latency histogram."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from tests.kernel.conftest import Running, cli_env, prog_names
from tests.kernel.monitor import received, workers

N4, N6 = 5, 3


def _events(records: list[dict]) -> list[dict]:
    """The latency events (failures hold "error", the histogram channel's records "buckets")."""
    return [r for r in records if "delta_ns" in r]


def _failures(records: list[dict]) -> list[dict]:
    return [r for r in records if "error" in r]


def _closed_port() -> tuple[int, socket.socket]:
    """A loopback port nothing listens on: bound, never listened, so a connect gets a RST."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1], s  # the socket is kept so no other test takes the port


def _connect(family: int, host: str) -> tuple[int, int]:
    """One loopback TCP connection; (client port, server port)."""
    with socket.socket(family, socket.SOCK_STREAM) as server:
        server.bind((host, 0))
        server.listen()
        with socket.create_connection(server.getsockname()[:2]) as client:
            conn, _ = server.accept()
            conn.close()
            return client.getsockname()[1], server.getsockname()[1]


def test_connections_give_exact_events(home: Path, tmp_path: Path) -> None:
    run = Running(home, "bpf/tcp_connlat", tmp_path / "events.jsonl")
    v4 = [_connect(socket.AF_INET, "127.0.0.1") for _ in range(N4)]
    v6 = [_connect(socket.AF_INET6, "::1") for _ in range(N6)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:  # must give no event
        udp.sendto(b"x", ("127.0.0.1", 9))
    done = run.stop()

    assert done.rc == 0, done.stderr
    events = _events(done.events)
    mine = [e for e in events if e["pid"] == os.getpid()]
    assert len(mine) == N4 + N6, mine
    comm = Path("/proc/self/comm").read_text().strip()
    got4 = [(e["sport"], e["dport"]) for e in mine if e["family"] == socket.AF_INET]
    got6 = [(e["sport"], e["dport"]) for e in mine if e["family"] == socket.AF_INET6]
    assert got4 == v4
    assert got6 == v6
    for e in mine:
        loop = "127.0.0.1" if e["family"] == socket.AF_INET else "::1"
        assert (e["saddr"], e["daddr"], e["comm"]) == (loop, loop, comm)
        assert e["delta_ns"] > 0
        assert set(e) == {"delta_ns", "pid", "family", "sport", "dport", "label", "comm", "saddr",
                          "daddr"}
        assert e["label"] == 0  # no process filter asked
    assert "tcp_connlat/tcp_connlat_events" in done.stderr
    summary = next(line for line in done.stderr.splitlines() if "tcp_connlat/tcp_connlat_events" in line)
    received, lost = (int(x) for x in summary.split()[1:3])
    assert received == len(events) and lost == 0
    assert "tcp_connlat" not in prog_names()


def test_second_run_is_a_cache_hit_without_clang(home: Path, tmp_path: Path) -> None:
    Running(home, "bpf/tcp_connlat", tmp_path / "first.jsonl").stop()
    # a PATH without clang: the second run must find its artifact in the store
    env = cli_env(home, PATH=str(tmp_path / "empty-bin") + ":/nonexistent")
    (tmp_path / "empty-bin").mkdir()
    run = Running(home, "bpf/tcp_connlat", tmp_path / "second.jsonl", env=env)
    client, server = _connect(socket.AF_INET, "127.0.0.1")
    done = run.stop()
    assert done.rc == 0, done.stderr
    assert "building" not in done.stderr
    assert [(e["sport"], e["dport"]) for e in _events(done.events) if e["pid"] == os.getpid()] == [(client, server)]


def test_a_connect_gives_a_latency_event_and_a_histogram_count_for_its_port(home: Path, tmp_path: Path) -> None:
    run = Running(home, "bpf/tcp_connlat", tmp_path / "events.jsonl")
    client, server = _connect(socket.AF_INET, "127.0.0.1")
    time.sleep(1.2)  # one histogram read (interval 1 s) while the program still runs
    done = run.stop()

    assert done.rc == 0, done.stderr
    [event] = [e for e in _events(done.events) if e["pid"] == os.getpid()]
    assert (event["sport"], event["dport"]) == (client, server)
    assert not [f for f in _failures(done.events) if f["pid"] == os.getpid()]
    hists = [r for r in done.events if "buckets" in r and (r["daddr"], r["dport"]) == ("127.0.0.1", server)]
    assert hists, done.events
    for h in hists:  # cumulative: every read of it says the same
        assert set(h) == {"daddr", "family", "dport", "unit", "buckets", "count", "sum", "p50", "p90", "p99"}
        assert (h["family"], h["unit"], h["count"]) == (socket.AF_INET, "us", 1)
        # the one connect sits in the slot holding its latency, in whole microseconds
        latency_us = event["delta_ns"] // 1000
        [slot] = [b for b in h["buckets"] if b["count"]]
        assert slot["count"] == 1 and slot["le"] >= latency_us and h["sum"] == latency_us
        assert h["buckets"][-1] is slot  # listed through the last non-empty slot
        assert latency_us <= 1 or slot["le"] < 2 * latency_us
    summary = next(line for line in done.stderr.splitlines() if "tcp_connlat/connlat_hists" in line)
    assert int(summary.split()[2]) == 0  # lost
    assert "tcp_connlat" not in prog_names()


def test_a_refused_connect_gives_a_failure_event_and_no_latency(home: Path, tmp_path: Path) -> None:
    port, holder = _closed_port()
    run = Running(home, "bpf/tcp_connlat", tmp_path / "events.jsonl")
    with holder, socket.socket() as client:
        with pytest.raises(ConnectionRefusedError):
            client.connect(("127.0.0.1", port))
        sport = client.getsockname()[1]
        time.sleep(1.2)  # one histogram read: the refused connect must not be in it
    done = run.stop()

    assert done.rc == 0, done.stderr
    assert not [e for e in _events(done.events) if e["pid"] == os.getpid()]  # no latency for it
    [fail] = [f for f in _failures(done.events) if f["pid"] == os.getpid()]
    elapsed = fail.pop("elapsed_ns")
    assert elapsed > 0  # how long the attempt lasted: its own field, never a delta_ns
    comm = Path("/proc/self/comm").read_text().strip()
    assert fail == {"pid": os.getpid(), "error": "ECONNREFUSED", "family": socket.AF_INET,
                    "sport": sport, "dport": port, "comm": comm, "saddr": "127.0.0.1",
                    "daddr": "127.0.0.1", "label": 0}
    assert not [r for r in done.events if "buckets" in r and r["dport"] == port]
    summary = next(line for line in done.stderr.splitlines() if "tcp_connlat/tcp_connlat_failures" in line)
    assert [int(x) for x in summary.split()[1:3]] == [len(_failures(done.events)), 0]


# Worker op: `refuse N` makes N connects to the closed port {port}, each refused by a RST.
REFUSE_OPS = """
import socket as _socket
def refuse(n):
    for _ in range(n):
        with _socket.socket() as c:
            try:
                c.connect(("127.0.0.1", {port}))
            except ConnectionRefusedError:
                continue
            raise AssertionError("port {port} was expected closed")
"""


def test_failures_under_the_filter_are_the_units_and_labelled(home: Path, tmp_path: Path,
                                                             tree: dict[str, Path]) -> None:
    """Failed connects are judged like the completed ones, in connect()'s context: N refused
    from a worker in the unit's child cgroup arrive with label 1, N from the other service's
    worker never do."""
    n = 4
    port, holder = _closed_port()
    with holder, workers("/dev/null", 2, ops=REFUSE_OPS.format(port=port)) as (inside, outside):
        inside.move(tree["child"])
        outside.move(tree["other"])
        run = Running(home, "bpf/tcp_connlat", tmp_path / "events.jsonl",
                      extra=["--unit", tree["unit"].name])
        try:
            inside.do("refuse", n)
            outside.do("refuse", n)
        finally:
            done = run.stop()
    assert done.rc == 0, done.stderr
    fails = _failures(done.events)
    assert len(fails) == n
    assert {(f["pid"], f["error"], f["dport"], f["label"]) for f in fails} == \
        {(inside.pid, "ECONNREFUSED", port, 1)}
    assert not _events(done.events)  # refused: no latency, inside or out
    assert received(done, "tcp_connlat/tcp_connlat_failures") == (n, 0)
