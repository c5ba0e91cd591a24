"""cgroup and socket filter attach kinds in the running kernel: real traffic made here, exact
bytes and DNS ids back, and bad input refused by name with nothing left attached."""

from __future__ import annotations

import random
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from loader.attach.cgroup import cgroup2_mounts
from tests.kernel.conftest import ROOT, Running, bpfdepot, cgroup2_dirs, prog_names
from tests.kernel.exchange import answer
from tests.kernel.monitor import received, workers

UP, DOWN = 3000, 5000  # payload bytes the child sends and receives

# The child: moved into the test's cgroup before it makes its socket (a socket belongs to the
# cgroup of the process that creates it), then one exchange of exactly UP / DOWN bytes.
CHILD = r"""
import socket, sys
from tests.kernel.exchange import receive
port = int(sys.argv[1]); up = int(sys.argv[2]); down = int(sys.argv[3])
sys.stdin.readline()                      # go: we are in the cgroup now
with socket.create_connection(("127.0.0.1", port)) as s:
    print(s.getsockname()[1], flush=True)
    s.sendall(b"u" * up)
    got = receive(s, down)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)                             # the server's FIN
print(got, flush=True)
"""


def _serve(server: socket.socket, clients: int) -> threading.Thread:
    """Accept ``clients`` connections one after the other and answer each (``answer``)."""
    def run() -> None:
        for _ in range(clients):
            answer(server.accept()[0], UP, DOWN)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def cgroup() -> Iterator[Path]:
    """A fresh cgroup2 directory under the cgroup2 mount; removed at the end."""
    with cgroup2_dirs("test") as (path,):
        yield path


def _bundle(tmp_path: Path, name: str, manifest: str) -> Path:
    """A copy of a catalog bundle with its own manifest (e.g. another cgroup path)."""
    dest = tmp_path / name
    shutil.copytree(ROOT / "bpf" / name, dest)
    (dest / "manifest.yaml").write_text(manifest)
    return dest


def _tcp_bytes_manifest(path: str) -> str:
    return f"""kind: ebpfprogram
name: tcp_bytes
spec:
  programs:
    - name: tcp_bytes
      path: file://./tcp_bytes.bpf.c
      type: ebpf_object
      attach:
        tcp_egress: {{cgroup: {{path: {path}}}}}
        tcp_ingress: {{cgroup: {{path: {path}}}}}
  channels:
    tcp_bytes_events:
      type: ring_buffer
      event: tcp_bytes_event
"""


def test_cgroup_skb_counts_the_payload_of_the_cgroups_sockets_only(home: Path, tmp_path: Path,
                                                                    cgroup: Path) -> None:
    bundle = _bundle(tmp_path, "tcp_bytes", _tcp_bytes_manifest(str(cgroup)))
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    serving = _serve(server, clients=2)
    run = Running(home, str(bundle), tmp_path / "events.jsonl")
    try:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(port), str(UP), str(DOWN)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        (cgroup / "cgroup.procs").write_text(str(child.pid))
        child.stdin.write("go\n")
        child.stdin.flush()
        child_port = int(child.stdout.readline())
        assert int(child.stdout.readline()) == DOWN
        assert child.wait(timeout=30) == 0
        # a second client, outside the cgroup (this test's own process): not counted
        with socket.create_connection(("127.0.0.1", port)) as outside:
            outside_port = outside.getsockname()[1]
            outside.sendall(b"o" * UP)
            got = 0
            while got < DOWN:
                got += len(outside.recv(65536))
        serving.join(timeout=30)
    finally:
        done = run.stop()
        server.close()
    assert done.rc == 0, done.stderr
    events = done.events
    assert events, done.stderr
    # every event is of the child's one socket: its port, the server's port
    assert {(e["lport"], e["rport"], e["family"]) for e in events} == {(child_port, port, 2)}
    assert len({e["cookie"] for e in events}) == 1
    assert sum(e["payload"] for e in events if e["egress"]) == UP
    assert sum(e["payload"] for e in events if not e["egress"]) == DOWN
    for e in events:  # payload = IP length - 20 (IPv4) - TCP header (20 + options, 32 here)
        assert e["ip_len"] - e["payload"] in (40, 52, 60), e
    assert {e["label"] for e in events} == {0}  # no filter asked for
    flags = [e["tcp_flags"] for e in events if e["egress"]]
    assert flags[0] == 0x02, flags  # the child's SYN went out first
    assert not [e for e in events if outside_port in (e["lport"], e["rport"])]
    assert "tcp_bytes/tcp_bytes_events" in done.stderr
    assert {"tcp_egress", "tcp_ingress"}.isdisjoint(prog_names())


def test_socket_filter_sees_one_dns_query_and_its_answer(home: Path, tmp_path: Path) -> None:
    try:
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        server.bind(("127.0.0.1", 5353))
    except OSError as exc:
        pytest.skip(f"127.0.0.1:5353 is taken here: {exc}")
    dns_id = random.randrange(1, 0xFFFF)
    question = b"\x07example\x03com\x00" + struct.pack(">HH", 1, 1)  # A, IN
    query = struct.pack(">HHHHHH", dns_id, 0x0100, 1, 0, 0, 0) + question  # RD
    run = Running(home, "bpf/dns_filter", tmp_path / "events.jsonl")
    try:
        with server, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.bind(("127.0.0.1", 0))
            client.sendto(query, ("127.0.0.1", 5353))
            data, peer = server.recvfrom(512)
            answer = (data[:2] + struct.pack(">HHHHH", 0x8180, 1, 1, 0, 0) + question +
                      b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([10, 1, 2, 3]))
            server.sendto(answer, peer)
            assert client.recvfrom(512)[0] == answer
            client_port = client.getsockname()[1]
    finally:
        done = run.stop()
    assert done.rc == 0, done.stderr
    mine = [e for e in done.events if client_port in (e["sport"], e["dport"])]
    assert len(mine) == 2, mine  # lo shows each packet twice: the outgoing copy is skipped
    sent, back = mine
    for e, payload, sport, dport in ((sent, query, client_port, 5353),
                                     (back, answer, 5353, client_port)):
        assert (e["sport"], e["dport"], e["saddr"], e["daddr"]) == \
            (sport, dport, "127.0.0.1", "127.0.0.1")
        assert (e["family"], e["ifindex"], e["pkt_type"]) == (2, socket.if_nametoindex("lo"), 0)
        assert e["udp_len"] == len(payload) + 8 and e["data_len"] == len(payload)
        assert e["dns_id"] == dns_id
        assert bytes.fromhex(e["data"])[:len(payload)] == payload
    assert sent["dns_flags"] == 0x0100 and back["dns_flags"] == 0x8180  # QR: query, answer
    assert "dns_filter" not in prog_names()


def _run_fails(home: Path, tmp_path: Path, bundle: Path) -> subprocess.CompletedProcess[str]:
    done = bpfdepot(home, "run", str(bundle), "--duration", "1")
    assert "Traceback" not in done.stderr
    return done  # each caller checks its programs are gone: not loaded, so attached nowhere


def test_a_cgroup_that_does_not_exist_is_named(home: Path, tmp_path: Path) -> None:
    root = cgroup2_mounts()[0]
    missing = root / "bpfdepot-no-such-cgroup"
    done = _run_fails(home, tmp_path, _bundle(tmp_path, "tcp_bytes", _tcp_bytes_manifest(str(missing))))
    assert done.returncode == 5, done.stderr
    assert f"error: cgroup {missing} does not exist or is not a directory" in done.stderr
    assert f"cgroup2 is mounted at {root}" in done.stderr
    assert {"tcp_egress", "tcp_ingress"}.isdisjoint(prog_names())


def test_a_directory_outside_cgroup2_is_refused(home: Path, tmp_path: Path) -> None:
    root = cgroup2_mounts()[0]
    done = _run_fails(home, tmp_path, _bundle(tmp_path, "tcp_bytes", _tcp_bytes_manifest(str(tmp_path))))
    assert done.returncode == 5, done.stderr
    assert f"error: cgroup {tmp_path} is not a cgroup2 directory" in done.stderr
    assert f"hint: cgroup programs attach to cgroup2 only; cgroup2 is mounted at {root}" in done.stderr
    assert {"tcp_egress", "tcp_ingress"}.isdisjoint(prog_names())


def test_a_relative_cgroup_path_is_a_manifest_error(home: Path, tmp_path: Path) -> None:
    done = _run_fails(home, tmp_path, _bundle(tmp_path, "tcp_bytes", _tcp_bytes_manifest("unified/x")))
    assert done.returncode == 2, done.stderr
    assert "path 'unified/x' in spec.programs[0].attach.tcp_egress.cgroup is not absolute" \
        in done.stderr
    assert {"tcp_egress", "tcp_ingress"}.isdisjoint(prog_names())


def test_an_unknown_interface_is_named_with_the_ones_there(home: Path, tmp_path: Path) -> None:
    manifest = (ROOT / "bpf" / "dns_filter" / "manifest.yaml").read_text()
    bundle = _bundle(tmp_path, "dns_filter", manifest.replace("interface: lo", "interface: nosuch0"))
    done = _run_fails(home, tmp_path, bundle)
    assert done.returncode == 5, done.stderr
    assert "error: no network interface 'nosuch0' for socket filter 'dns_filter' of 'dns_filter'" \
        in done.stderr
    assert "hint: interfaces here: " in done.stderr and "lo" in done.stderr
    assert "dns_filter" not in prog_names()


# Worker ops: `port P` sets the server port; `xfer N` is one exchange on a fresh connection:
# N bytes up, DOWN bytes back (the server is answer's), then the worker's local port is kept.
XFER_OPS = """
import socket as _socket
PORT, LPORTS = [0], []
def port(p):
    PORT[0] = p
def xfer(n):
    with _socket.create_connection(("127.0.0.1", PORT[0])) as s:
        LPORTS.append(s.getsockname()[1])
        s.sendall(b"u" * n)
        got = 0
        while got < %d:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += len(chunk)
        s.shutdown(_socket.SHUT_WR)
        s.recv(1)
""" % DOWN


def test_tcp_bytes_under_the_filter_counts_the_units_sockets_only(home: Path, tmp_path: Path,
                                                                   tree: dict[str, Path]) -> None:
    """The catalog tcp_bytes (attached at the cgroup2 root) under --unit: the segments of a
    worker in the unit's child cgroup arrive, labelled 1, with exact payloads both ways; those
    of a worker in the other service and of the test's own server socket never do."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    serving = _serve(server, clients=2)
    with workers("/dev/null", 2, ops=XFER_OPS) as (inside, outside):
        inside.move(tree["child"])
        outside.move(tree["other"])
        for w in (inside, outside):
            w.do("port", port)
        run = Running(home, "bpf/tcp_bytes", tmp_path / "events.jsonl",
                      extra=["--unit", tree["unit"].name])
        try:
            inside.do("xfer", UP)
            outside.do("xfer", UP)
            serving.join(timeout=30)
        finally:
            done = run.stop()
            server.close()
    assert done.rc == 0, done.stderr
    events = done.events
    assert events, done.stderr
    assert {e["label"] for e in events} == {1}
    assert {(e["rport"], e["family"]) for e in events} == {(port, 2)}  # the client side only
    assert len({e["cookie"] for e in events}) == 1 and len({e["lport"] for e in events}) == 1
    assert sum(e["payload"] for e in events if e["egress"]) == UP
    assert sum(e["payload"] for e in events if not e["egress"]) == DOWN
    assert received(done, "tcp_bytes/tcp_bytes_events") == (len(events), 0)
