"""tcp_rtt in the running kernel: a loopback request/response exchange made by the test gives a
histogram of smoothed RTT for the server's address and port, with every sample under 10 ms, and a
client moved into a cgroup of the test's own gets a histogram under that cgroup's id."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.kernel.conftest import Running, prog_names
from tests.kernel.monitor import workers

ROUND_TRIPS = 20


def _exchange(rounds: int) -> int:
    """A loopback server and client trading ``rounds`` requests and responses; the server port."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def serve() -> None:
            conn, _ = server.accept()
            with conn:
                for _ in range(rounds):
                    conn.sendall(conn.recv(64).upper())

        thread = threading.Thread(target=serve)
        thread.start()
        with socket.create_connection(("127.0.0.1", port)) as client:
            for i in range(rounds):
                client.sendall(b"ping %d" % i)
                assert client.recv(64) == b"PING %d" % i
        thread.join(10)
        assert not thread.is_alive()
        return port


def test_loopback_exchange_gives_an_rtt_histogram_for_the_server(home: Path, tmp_path: Path) -> None:
    run = Running(home, "bpf/tcp_rtt", tmp_path / "rtt.jsonl")
    port = _exchange(ROUND_TRIPS)
    other = _exchange(1)  # a second remote must get its own key, not add to the first
    done = run.stop()

    assert done.rc == 0, done.stderr
    mine = [r for r in done.events if (r.get("daddr"), r.get("dport")) == ("127.0.0.1", port)]
    assert mine, done.events
    last = mine[-1]  # cumulative map (no reset): the last read holds every sample
    assert set(last) == {"daddr", "family", "dport", "unit", "buckets", "count", "sum",
                         "p50", "p90", "p99"}
    assert last["unit"] == "us" and last["family"] == socket.AF_INET
    # The client receives one segment per response, each a tcp_probe sample with the remote
    # being the server; the handshake's last ACK and delayed ACKs may add a few.
    assert ROUND_TRIPS <= last["count"], last
    assert sum(b["count"] for b in last["buckets"]) == last["count"]
    assert all(b["le"] != "+Inf" and b["le"] < 10_000 for b in last["buckets"]), last
    assert last["sum"] < 10_000 * last["count"]
    assert last["p50"] is not None and 0 <= last["p50"] <= last["p90"] <= last["p99"] < 10_000
    assert any((r.get("daddr"), r.get("dport")) == ("127.0.0.1", other) for r in done.events)
    summary = next(line for line in done.stderr.splitlines() if "tcp_rtt/rtt_hists" in line)
    assert int(summary.split()[2]) == 0  # lost
    assert not {"tcp_rtt", "tcp_rtt_cgroup"} & prog_names()


CLIENT = """import os, socket, sys
# Join the test cgroup before the socket exists: a socket belongs to its creator's cgroup.
with open(sys.argv[1], "w") as procs:
    procs.write(str(os.getpid()))
with socket.create_connection(("127.0.0.1", int(sys.argv[2]))) as client:
    print(client.getsockname()[1], flush=True)
    for i in range(int(sys.argv[3])):
        client.sendall(b"ping %d" % i)
        assert client.recv(64) == b"PING %d" % i
"""


def _cgroup2_mount() -> Path:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[2] == "cgroup2":
            return Path(fields[1])
    pytest.skip("no cgroup2 mount in /proc/self/mounts")


def _own_cgroup(mount: Path) -> Path:
    """This process's cgroup2 directory (the "0::" line of /proc/self/cgroup)."""
    line = next(x for x in Path("/proc/self/cgroup").read_text().splitlines() if x.startswith("0::"))
    return mount / line[3:].lstrip("/")


def _last(records: list[dict], **key: object) -> dict:
    """The last (cumulative, read after detach) record whose fields match ``key``."""
    mine = [r for r in records if all(r.get(k) == v for k, v in key.items())]
    assert mine, (key, records)
    return mine[-1]


def test_rtt_per_cgroup_is_the_sockets_cgroup(home: Path, tmp_path: Path) -> None:
    """A client process moved into a test cgroup2 directory before it connects: its socket's
    samples form that cgroup's histogram, the server's (in this test's cgroup) go elsewhere."""
    mount = _cgroup2_mount()
    own_id = _own_cgroup(mount).stat().st_ino
    group = mount / f"bpfdepot-rtt-{os.getpid()}"
    group.mkdir()
    client: subprocess.Popen[str] | None = None
    try:
        group_id = group.stat().st_ino  # a cgroup2 directory's inode number is the cgroup id
        run = Running(home, "bpf/tcp_rtt", tmp_path / "rtt.jsonl")
        try:
            with socket.socket() as server:
                server.bind(("127.0.0.1", 0))
                server.listen()
                port = server.getsockname()[1]
                client = subprocess.Popen(
                    [sys.executable, "-c", CLIENT, str(group / "cgroup.procs"), str(port),
                     str(ROUND_TRIPS)], stdout=subprocess.PIPE, text=True)
                conn, (_, client_port) = server.accept()
                with conn:
                    for _ in range(ROUND_TRIPS):
                        conn.sendall(conn.recv(64).upper())
                    out, _ = client.communicate(timeout=10)
                assert client.returncode == 0 and int(out) == client_port
        finally:
            done = run.stop()
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait()
        group.rmdir()  # empty: the client has exited (a socket left in TIME_WAIT does not count)

    assert done.rc == 0, done.stderr
    assert group_id != own_id
    # Only the client's socket lives in the test cgroup, and its remote is the server: the two
    # programs run for the same tcp_probe samples, so that cgroup's histogram is exactly the
    # per-remote histogram of {127.0.0.1, port} — same buckets, count and sum.
    by_remote = _last(done.events, daddr="127.0.0.1", dport=port)
    by_cgroup = _last(done.events, cgroup=group_id)
    assert set(by_cgroup) == {"cgroup", "unit", "buckets", "count", "sum", "p50", "p90", "p99"}
    assert ROUND_TRIPS <= by_cgroup["count"], by_cgroup
    assert {k: v for k, v in by_cgroup.items() if k != "cgroup"} == \
        {k: v for k, v in by_remote.items() if k not in ("daddr", "family", "dport")}
    # The server's accepted socket inherits the listener's cgroup, this test's; other sockets
    # of this cgroup (other processes) may add to it, never take away.
    server_side = _last(done.events, daddr="127.0.0.1", dport=client_port)
    assert _last(done.events, cgroup=own_id)["count"] >= server_side["count"] > 0
    rows = [line.split() for line in done.stderr.splitlines()]
    lost = {row[0]: int(row[2]) for row in rows
            if row and row[0] in ("tcp_rtt/rtt_hists", "tcp_rtt/rtt_cgroup_hists")}
    assert lost == {"tcp_rtt/rtt_hists": 0, "tcp_rtt/rtt_cgroup_hists": 0}, done.stderr
    assert not {"tcp_rtt", "tcp_rtt_cgroup"} & prog_names()


# Worker op: `ping N` connects to the port in the module global PORT (set by `port P`) and
# makes N request/response round trips on that one connection.
PING_OPS = """
import socket as _socket
PORT = [0]
def port(p):
    PORT[0] = p
def ping(n):
    with _socket.create_connection(("127.0.0.1", PORT[0])) as c:
        for i in range(n):
            c.sendall(b"ping %d" % i)
            assert c.recv(64) == b"PING %d" % i
"""


def _echo_server() -> tuple[socket.socket, threading.Thread]:
    """A loopback listener (in this test's cgroup) answering one connection's pings."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(64):
                conn.sendall(data.upper())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


def test_the_filter_judges_the_sockets_cgroup(home: Path, tmp_path: Path,
                                              tree: dict[str, Path]) -> None:
    """tcp_probe runs in softirq: the filter judges the socket's cgroup. A client in the unit's
    child cgroup and one in the other service each ping a server of their own; only the inside
    client's socket is sampled (its remote, its cgroup), not the other's nor the servers'."""
    (srv_in, t_in), (srv_out, t_out) = _echo_server(), _echo_server()
    port_in, port_out = srv_in.getsockname()[1], srv_out.getsockname()[1]
    with workers("/dev/null", 2, ops=PING_OPS) as (inside, outside):
        inside.move(tree["child"])
        outside.move(tree["other"])
        inside.do("port", port_in)
        outside.do("port", port_out)
        run = Running(home, "bpf/tcp_rtt", tmp_path / "rtt.jsonl",
                      extra=["--unit", tree["unit"].name])
        try:
            inside.do("ping", ROUND_TRIPS)
            outside.do("ping", ROUND_TRIPS)
            t_in.join(10)
            t_out.join(10)
        finally:
            done = run.stop()
            srv_in.close()
            srv_out.close()
    assert done.rc == 0, done.stderr
    child_id = tree["child"].stat().st_ino
    remotes = {(r["daddr"], r["dport"]) for r in done.events if "daddr" in r}
    assert remotes == {("127.0.0.1", port_in)}, remotes
    assert {r["cgroup"] for r in done.events if "cgroup" in r} == {child_id}
    by_remote = _last(done.events, daddr="127.0.0.1", dport=port_in)
    by_cgroup = _last(done.events, cgroup=child_id)
    assert ROUND_TRIPS <= by_cgroup["count"] == by_remote["count"]
    assert by_cgroup["sum"] == by_remote["sum"]
