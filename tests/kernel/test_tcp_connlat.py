"""tcp_connlat in the running kernel: connections from this test, exact fields back."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from tests.kernel.conftest import Running, cli_env, prog_names

N4, N6 = 5, 3


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
    mine = [e for e in done.events if e["pid"] == os.getpid()]
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
        assert set(e) == {"delta_ns", "pid", "family", "sport", "dport", "comm", "saddr", "daddr"}
    assert "tcp_connlat/tcp_connlat_events" in done.stderr
    summary = next(line for line in done.stderr.splitlines() if "tcp_connlat/tcp_connlat_events" in line)
    received, lost = (int(x) for x in summary.split()[1:3])
    assert received == len(done.events) and lost == 0
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
    assert [(e["sport"], e["dport"]) for e in done.events if e["pid"] == os.getpid()] == [(client, server)]
