"""topology in the running kernel: two clients, each in a cgroup2 directory of its own, exchange
exactly 3000 / 5000 bytes with a loopback server run by this test → one client edge each (the
child's pid, comm and cgroup id, bytes both ways, one connection), one server edge for both
(the clients' ephemeral ports are not in its key) and an open and a close event per socket;
the same through the 6.1 form (cgroup_skb); a connection opened before the run is seeded by
iter/tcp (pid 0) and its later bytes counted exactly; a refused connect is no edge; IPv6
loopback edges carry IPv6 addresses."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from loader.attach.cgroup import cgroup2_mounts
from tests.kernel.conftest import ROOT, Running, cgroup2_dirs, prog_names
from tests.kernel.conftest import wait_for as _wait
from tests.kernel.monitor import received, workers
from tests.kernel.exchange import answer
from tests.kernel.test_net_attach import CHILD, DOWN, UP, _serve

COMM = Path("/proc/self/comm").read_text().strip()
PROGRAMS = {"topology_state", "topology_destroy", "topology_accept4", "topology_accept",
            "topology_send", "topology_recv", "topology_egress", "topology_ingress",
            "topology_seed"}
EDGE_KEY = ("cgroup", "pid", "direction", "protocol", "family", "lport", "rport", "laddr",
            "raddr", "comm")

# A client: waits until the test has moved it into its cgroup (a socket belongs to the cgroup
# of the process that creates it), then one exchange of exactly UP / DOWN bytes and a close.
def _own_cgroup() -> int:
    """The cgroup2 id (directory inode) of this test process."""
    line = next(x for x in Path("/proc/self/cgroup").read_text().splitlines() if x.startswith("0::"))
    return os.stat(str(cgroup2_mounts()[0]) + line[3:]).st_ino


@pytest.fixture
def cgroups() -> Iterator[list[Path]]:
    """Two fresh cgroup2 directories; their processes go back to the root and they are removed."""
    with cgroup2_dirs("topology", 2) as paths:
        yield paths


def _client(port: int, cgroup: Path) -> dict:
    """One child moved into ``cgroup`` before it connects; what it was (pid, comm, port)."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(port), str(UP), str(DOWN)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    (cgroup / "cgroup.procs").write_text(str(child.pid))
    comm = Path(f"/proc/{child.pid}/comm").read_text().strip()
    child.stdin.write("go\n")
    child.stdin.flush()
    sport = int(child.stdout.readline())
    assert int(child.stdout.readline()) == DOWN
    assert child.wait(timeout=30) == 0
    return {"pid": child.pid, "comm": comm, "sport": sport, "cgroup": os.stat(cgroup).st_ino}


def _edges(events: list[dict]) -> dict[tuple, dict]:
    """The last snapshot record of each edge (hash_map records carry "conns")."""
    return {tuple(r[k] for k in EDGE_KEY): r for r in events if "conns" in r}


def _sock_events(events: list[dict], lport: int, rport: int) -> list[dict]:
    return [e for e in events if "kind" in e and (e["lport"], e["rport"]) == (lport, rport)]


def _bundle(tmp_path: Path, forms: str) -> Path:
    """A copy of bpf/topology whose manifest lists other forms (e.g. only the 6.1 one first)."""
    dest = tmp_path / "topology"
    shutil.copytree(ROOT / "bpf" / "topology", dest)
    manifest = dest / "manifest.yaml"
    text = manifest.read_text()
    old = "forms: [[topology_send, topology_recv], [topology_egress, topology_ingress]]"
    assert old in text
    manifest.write_text(text.replace(old, f"forms: {forms}"))
    return dest


def _two_clients(home: Path, tmp_path: Path, bundle: str, cgroups: list[Path], form: str) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    serving = _serve(server, clients=2)
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))  # bound, never listening: a connect to it is refused
    closed_port = refused.getsockname()[1]
    run = Running(home, bundle, tmp_path / "events.jsonl")
    try:
        kids = [_client(port, cgroup) for cgroup in cgroups]
        serving.join(timeout=30)
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", closed_port)):
            pass
    finally:
        done = run.stop()
        server.close()
        refused.close()
    assert done.rc == 0, done.stderr
    assert f"form 1 of 2 ({form}) fits this kernel" in done.stderr
    edges = _edges(done.events)
    for kid in kids:
        key = (kid["cgroup"], kid["pid"], "client", "tcp", 2, 0, port, "127.0.0.1", "127.0.0.1",
               kid["comm"])
        assert key in edges, (key, list(edges))
        edge = edges[key]
        assert (edge["bytes_tx"], edge["bytes_rx"], edge["conns"], edge["closed"]) == (UP, DOWN, 1, 1)
        assert edge["label"] == 0  # no filter asked for
        opened, closed = _sock_events(done.events, kid["sport"], port)
        assert opened["kind"] == "open" and closed["kind"] == "close"
        assert opened["cookie"] == closed["cookie"]
        for e in (opened, closed):
            assert (e["pid"], e["comm"], e["cgroup"], e["direction"]) == \
                (kid["pid"], kid["comm"], kid["cgroup"], "client")
            assert (e["laddr"], e["raddr"], e["family"], e["protocol"]) == \
                ("127.0.0.1", "127.0.0.1", 2, "tcp")
        assert (closed["bytes_tx"], closed["bytes_rx"]) == (UP, DOWN)
        assert closed["duration_ns"] > 0
        assert opened["label"] == closed["label"] == 0
        # the server's socket of this exchange: opened at accept() by this process
        s_open, s_close = _sock_events(done.events, port, kid["sport"])
        assert (s_open["kind"], s_open["direction"], s_open["pid"]) == ("open", "server", os.getpid())
        assert (s_close["kind"], s_close["bytes_tx"], s_close["bytes_rx"]) == ("close", DOWN, UP)
    assert len({k["cgroup"] for k in kids}) == 2
    # one server edge for both clients: keyed by the listening port and the remote address
    server_edges = [e for e in edges.values() if e["direction"] == "server" and e["lport"] == port]
    assert len(server_edges) == 1, server_edges
    edge = server_edges[0]
    assert (edge["pid"], edge["comm"], edge["cgroup"], edge["rport"], edge["raddr"]) == \
        (os.getpid(), COMM, _own_cgroup(), 0, "127.0.0.1")
    assert (edge["bytes_tx"], edge["bytes_rx"], edge["conns"], edge["closed"]) == \
        (2 * DOWN, 2 * UP, 2, 2)
    # the refused connect: no edge, no event
    assert not [e for e in edges.values() if e["rport"] == closed_port]
    assert not [e for e in done.events if "kind" in e and closed_port in (e["lport"], e["rport"])]
    assert "topology/topology_edges" in done.stderr
    assert PROGRAMS.isdisjoint(prog_names())


def test_edges_per_process_and_cgroup_from_send_and_recv_lengths(home: Path, tmp_path: Path,
                                                                 cgroups: list[Path]) -> None:
    _two_clients(home, tmp_path, "bpf/topology", cgroups, "topology_send, topology_recv")


def test_edges_per_process_and_cgroup_from_cgroup_skb(home: Path, tmp_path: Path,
                                                      cgroups: list[Path]) -> None:
    # the 6.1 form first: it fits here too, so it loads and the tracepoint form stays out
    bundle = _bundle(tmp_path, "[[topology_egress, topology_ingress], [topology_send, topology_recv]]")
    _two_clients(home, tmp_path, str(bundle), cgroups, "topology_egress, topology_ingress")


def test_a_connection_open_before_the_run_is_seeded_and_counted(home: Path, tmp_path: Path) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    client.sendall(b"before")  # moved before the run: not counted
    assert conn.recv(6) == b"before"
    sport = client.getsockname()[1]
    run = Running(home, "bpf/topology", tmp_path / "events.jsonl")
    try:
        answering = threading.Thread(target=answer, args=(conn, UP, DOWN), daemon=True)
        answering.start()
        client.sendall(b"u" * UP)
        got = 0
        while got < DOWN:
            got += len(client.recv(65536))
        client.shutdown(socket.SHUT_WR)
        client.recv(1)
        client.close()
        answering.join(timeout=30)
    finally:
        done = run.stop()
        server.close()
    assert done.rc == 0, done.stderr
    seeds = {(r["lport"], r["rport"]): r for r in done.events if "cookie" in r and "kind" not in r}
    cgroup = _own_cgroup()
    for (lport, rport), direction in (((sport, port), "client"), ((port, sport), "server")):
        seed = seeds[(lport, rport)]
        assert (seed["direction"], seed["cgroup"], seed["laddr"], seed["raddr"], seed["label"]) == \
            (direction, cgroup, "127.0.0.1", "127.0.0.1", 0)
        (closed,) = _sock_events(done.events, lport, rport)  # opened before: only the close
        assert (closed["kind"], closed["cookie"], closed["pid"], closed["comm"]) == \
            ("close", seed["cookie"], 0, "")
    edges = _edges(done.events)
    client_edge = edges[(cgroup, 0, "client", "tcp", 2, 0, port, "127.0.0.1", "127.0.0.1", "")]
    server_edge = edges[(cgroup, 0, "server", "tcp", 2, port, 0, "127.0.0.1", "127.0.0.1", "")]
    for edge, tx, rx in ((client_edge, UP, DOWN), (server_edge, DOWN, UP)):
        assert (edge["bytes_tx"], edge["bytes_rx"], edge["conns"], edge["closed"]) == (tx, rx, 1, 1)


def test_ipv6_edges_carry_ipv6_addresses(home: Path, tmp_path: Path) -> None:
    try:
        server = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    port = server.getsockname()[1]
    serving = _serve(server, clients=1)
    run = Running(home, "bpf/topology", tmp_path / "events.jsonl")
    try:
        with socket.create_connection(("::1", port)) as client:
            client.sendall(b"u" * UP)
            got = 0
            while got < DOWN:
                got += len(client.recv(65536))
            client.shutdown(socket.SHUT_WR)
            client.recv(1)
        serving.join(timeout=30)
    finally:
        done = run.stop()
        server.close()
    assert done.rc == 0, done.stderr
    edges = _edges(done.events)
    me, cgroup = os.getpid(), _own_cgroup()
    client_edge = edges[(cgroup, me, "client", "tcp", 10, 0, port, "::1", "::1", COMM)]
    server_edge = edges[(cgroup, me, "server", "tcp", 10, port, 0, "::1", "::1", COMM)]
    assert (client_edge["bytes_tx"], client_edge["bytes_rx"], client_edge["conns"]) == (UP, DOWN, 1)
    assert (server_edge["bytes_tx"], server_edge["bytes_rx"], server_edge["conns"]) == (DOWN, UP, 1)


# Worker ops: `serve P` listens on 127.0.0.1:P and, in a thread, accepts one connection and
# reads it to the end; `port P` names the port `send N` connects to, sends N bytes and closes.
PEER_OPS = """
import socket as _socket, threading as _threading
PORT = [0]
def serve(p):
    s = _socket.socket()
    s.bind(("127.0.0.1", p))
    s.listen()
    def _run():
        conn, _ = s.accept()
        with conn:
            while conn.recv(65536):
                pass
    _threading.Thread(target=_run, daemon=True).start()
def port(p):
    PORT[0] = p
def send(n):
    with _socket.create_connection(("127.0.0.1", PORT[0])) as c:
        c.sendall(b"u" * n)
        c.shutdown(_socket.SHUT_WR)
        c.recv(1)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _filtered_edges(home: Path, tmp_path: Path, tree: dict[str, Path], bundle: str) -> None:
    """A worker in the unit's child cgroup and one in the other service each serve a port and
    send to the other's: under --unit only the inside worker's two edges exist (its client
    edge to the other's port, its server edge on its own port), labelled 1, with exact bytes;
    nothing of the outside worker's sockets is counted, not even as untracked."""
    up_in, up_out = 3000, 5000
    port_in, port_out = _free_port(), _free_port()
    with workers("/dev/null", 2, ops=PEER_OPS) as (inside, outside):
        inside.move(tree["child"])
        outside.move(tree["other"])
        out = tmp_path / "events.jsonl"
        run = Running(home, bundle, out, extra=["--unit", tree["unit"].name])
        try:
            inside.do("serve", port_in)
            outside.do("serve", port_out)
            inside.do("port", port_out)
            outside.do("port", port_in)
            inside.do("send", up_in)
            outside.do("send", up_out)
            # both sockets of each exchange closed: the inside's close events are in
            _wait(out, lambda r: len([e for e in r if e.get("kind") == "close"]) >= 2,
                  "the two close events")
        finally:
            done = run.stop()
    assert done.rc == 0, done.stderr
    child = tree["child"].stat().st_ino
    edges = _edges(done.events)
    assert {(e["pid"], e["cgroup"], e["label"]) for e in edges.values()} == {(inside.pid, child, 1)}
    by_dir = {e["direction"]: e for e in edges.values()}
    assert set(by_dir) == {"client", "server"}, edges
    client, server = by_dir["client"], by_dir["server"]
    assert (client["rport"], client["bytes_tx"], client["bytes_rx"], client["conns"]) == \
        (port_out, up_in, 0, 1)
    assert (server["lport"], server["bytes_tx"], server["bytes_rx"], server["conns"]) == \
        (port_in, 0, up_out, 1)
    socks = [e for e in done.events if "kind" in e]
    assert {(e["pid"], e["label"]) for e in socks} == {(inside.pid, 1)}
    assert sorted(e["kind"] for e in socks) == ["close", "close", "open", "open"]
    assert received(done, "topology/topology_events") == (len(socks), 0)
    # the outside worker's bytes are filtered, not "untracked"
    misses = [r for r in done.events if "untracked_tx" in r]
    assert all(r["untracked_tx"] == r["untracked_rx"] == 0 for r in misses), misses


def test_the_filter_keeps_the_units_edges_only(home: Path, tmp_path: Path,
                                               tree: dict[str, Path]) -> None:
    _filtered_edges(home, tmp_path, tree, "bpf/topology")


def test_the_filter_keeps_the_units_edges_only_with_cgroup_skb(home: Path, tmp_path: Path,
                                                               tree: dict[str, Path]) -> None:
    bundle = _bundle(tmp_path, "[[topology_egress, topology_ingress], [topology_send, topology_recv]]")
    _filtered_edges(home, tmp_path, tree, str(bundle))
