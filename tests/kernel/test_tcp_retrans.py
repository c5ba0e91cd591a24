"""tcp_retrans in the running kernel: SYN retransmits from a listener that never accepts, a data
retransmit through a veth pair whose far end goes down, both with this test's pid, exact tuples,
and the per-remote counter agreeing with the events; a listener's SYN-ACK retransmits to a peer
that never answers (state SYN_RECV, kind SYNACK); a healthy connection gives none."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.kernel.conftest import Running, prog_names
from tests.kernel.conftest import wait_for as _wait
from tests.kernel.monitor import received, workers

EVENT_FIELDS = {"ts_ns", "pid", "state", "kind", "sport", "dport", "family", "saddr", "daddr", "comm",
                "label"}
COUNT_FIELDS = {"daddr", "dport", "family", "state", "count"}
COMM = Path("/proc/self/comm").read_text().strip()




def _events(records: list[dict], dport: int) -> list[dict]:
    """The ring buffer's events to ``dport`` (the counter records hold "count")."""
    return [r for r in records if "count" not in r and r["dport"] == dport]




def _lost(stderr: str, channel: str) -> int:
    line = next(x for x in stderr.splitlines() if f"tcp_retrans/{channel}" in x)
    return int(line.split()[2])


def _healthy_exchange() -> int:
    """A loopback connection that is accepted and answered: nothing to retransmit. Its port."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname()) as client:
            conn, _ = server.accept()
            with conn:
                client.sendall(b"ping")
                assert conn.recv(4) == b"ping"
                conn.sendall(b"pong")
                assert client.recv(4) == b"pong"
        return server.getsockname()[1]


def test_syn_retransmits_to_a_full_accept_queue(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "retrans.jsonl"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # never accepted: the queue fills and later SYNs are dropped
    port = listener.getsockname()[1]
    clients: list[socket.socket] = []
    run = Running(home, "bpf/tcp_retrans", out)
    try:
        healthy = _healthy_exchange()
        for _ in range(4):
            c = socket.socket()
            c.setblocking(False)
            assert c.connect_ex(("127.0.0.1", port)) == errno.EINPROGRESS
            clients.append(c)
        ports = {c.getsockname()[1] for c in clients}
        # Linear SYN timeouts (1 s each, net.ipv4.tcp_syn_linear_timeouts): 3 dropped SYNs
        # give 3 retransmits a second; ≥ 4 arrive within ~2 s.
        _wait(out, lambda r: len(_events(r, port)) >= 4, "4 SYN retransmits", timeout=6)
    finally:
        for c in clients:
            c.close()
        listener.close()
        done = run.stop()
    assert done.rc == 0, done.stderr
    assert _lost(done.stderr, "retrans_events") == _lost(done.stderr, "retrans_counts") == 0
    events = _events(done.events, port)
    assert len(events) >= 4
    for e in events:
        assert set(e) == EVENT_FIELDS
        assert (e["state"], e["kind"], e["family"]) == ("SYN_SENT", "SEGMENT", 2)
        assert (e["saddr"], e["daddr"]) == ("127.0.0.1", "127.0.0.1")
        assert e["sport"] in ports
        # fired from the retransmit timer (softirq): the pid is the connect() caller's
        assert (e["pid"], e["comm"]) == (os.getpid(), COMM)
    # The counter is cumulative and read once more after detach: its last value is every event.
    counts = [r for r in done.events if "count" in r and r["dport"] == port]
    assert counts and set(counts[-1]) == COUNT_FIELDS
    assert counts[-1] == {"daddr": "127.0.0.1", "dport": port, "family": 2, "state": "SYN_SENT",
                          "count": len(events)}
    # negative: the accepted, answered connection retransmitted nothing
    assert not _events(done.events, healthy)
    assert not [r for r in done.events if "count" in r and r["dport"] == healthy]
    assert not {n for n in prog_names() if n.startswith("tcp_retrans")}


SERVER = """import socket, time
s = socket.socket()
s.bind((ADDR, 5001))
s.listen()
print("ready", flush=True)
conn, _ = s.accept()
time.sleep(60)  # keeps the connection open; killed by the test
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def test_data_retransmits_when_the_peer_link_goes_down(home: Path, tmp_path: Path) -> None:
    """A connection through a veth pair into a network namespace; once ESTABLISHED the far end
    of the veth is set down, so the write is dropped on the wire and retransmitted."""
    tag = os.getpid()
    ns, near, far = f"bpfdepot-rt{tag}", f"rtA{tag}"[:15], f"rtB{tag}"[:15]
    net = f"10.211.{tag % 250}"  # a /30 of our own, so parallel runs do not meet
    local, remote = f"{net}.1", f"{net}.2"
    out = tmp_path / "retrans.jsonl"
    server = None
    client = None
    _ip("netns", "add", ns)
    try:
        _ip("link", "add", near, "type", "veth", "peer", "name", far, "netns", ns)
        _ip("addr", "add", f"{local}/30", "dev", near)
        _ip("link", "set", near, "up")
        _ip("-n", ns, "addr", "add", f"{remote}/30", "dev", far)
        _ip("-n", ns, "link", "set", far, "up")
        server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c",
                                   f"ADDR = {remote!r}\n" + SERVER], stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        run = Running(home, "bpf/tcp_retrans", out)
        try:
            client = socket.create_connection((remote, 5001), timeout=5)
            sport = client.getsockname()[1]
            _ip("-n", ns, "link", "set", far, "down")  # ESTABLISHED; now the wire is cut
            client.send(b"x" * 100)
            # RTO starts at 200 ms (TCP_RTO_MIN) and doubles: the first retransmit is < 1 s away
            _wait(out, lambda r: any(e["state"] == "ESTABLISHED" for e in _events(r, 5001)),
                  "a data retransmit", timeout=5)
            client.close()
        finally:
            done = run.stop()
    finally:
        if client is not None:
            client.close()
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", near], check=False, capture_output=True)  # gone with the netns
    assert done.rc == 0, done.stderr
    assert _lost(done.stderr, "retrans_events") == _lost(done.stderr, "retrans_counts") == 0
    events = [e for e in _events(done.events, 5001) if e["daddr"] == remote]
    established = [e for e in events if e["state"] == "ESTABLISHED"]
    assert established
    for e in events:
        assert set(e) == EVENT_FIELDS
        assert (e["kind"], e["family"], e["saddr"], e["sport"]) == ("SEGMENT", 2, local, sport)
        assert (e["pid"], e["comm"]) == (os.getpid(), COMM)
        # after close() the FIN is retransmitted too, in FIN_WAIT1
        assert e["state"] in ("ESTABLISHED", "FIN_WAIT1")
    for state in {e["state"] for e in events}:
        counts = [r for r in done.events
                  if "count" in r and (r["daddr"], r["dport"], r["state"]) == (remote, 5001, state)]
        assert counts and counts[-1]["count"] == sum(e["state"] == state for e in events)


SYN_SENDER = """import socket, struct, sys, time
LOCAL, PEER, PORT, CPORT = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])


def checksum(data: bytes) -> int:
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


listener = socket.socket()
listener.bind((LOCAL, PORT))
listener.listen()
# negative case: a handshake that completes retransmits no SYN-ACK
with socket.create_connection((LOCAL, PORT)) as healthy:
    conn, _ = listener.accept()
    print(healthy.getsockname()[1], flush=True)
# one SYN from PEER, whose neighbour entry points at a MAC nobody has: the SYN-ACK leaves on
# the veth and is never answered, so the listener resends it from its request timer
tcp = struct.pack("!HHIIBBHHH", CPORT, PORT, 1000, 0, 5 << 4, 0x02, 64240, 0, 0)
pseudo = socket.inet_aton(PEER) + socket.inet_aton(LOCAL) + struct.pack("!BBH", 0, 6, len(tcp))
tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, socket.IPPROTO_TCP, 0,
                 socket.inet_aton(PEER), socket.inet_aton(LOCAL))
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
raw.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)  # our own source address
raw.sendto(ip + tcp, (LOCAL, 0))
print("sent", flush=True)
time.sleep(60)  # keeps the listener; killed by the test
"""


def test_synack_retransmits_to_a_peer_that_never_answers(home: Path, tmp_path: Path) -> None:
    """In a network namespace of the test's own: a listener gets one SYN (a raw socket) from an
    address whose neighbour entry is a MAC nobody owns; its SYN-ACK is never answered, so the
    listener retransmits it after ~1 s (TCP_TIMEOUT_INIT)."""
    tag = os.getpid()
    ns, near, far = f"bpfdepot-sa{tag}", "saA", "saB"  # device names live in the namespace
    local, peer = "10.212.0.1", "10.212.0.2"            # so do addresses
    port, cport = 5002, 40123
    out = tmp_path / "retrans.jsonl"
    sender = None
    _ip("netns", "add", ns)
    try:
        _ip("-n", ns, "link", "set", "lo", "up")  # the SYN reaches the listener through lo
        _ip("-n", ns, "link", "add", near, "type", "veth", "peer", "name", far)
        _ip("-n", ns, "addr", "add", f"{local}/24", "dev", near)
        _ip("-n", ns, "link", "set", near, "up")
        _ip("-n", ns, "link", "set", far, "up")   # up, with no address: it drops the SYN-ACK
        _ip("-n", ns, "neigh", "add", peer, "lladdr", "02:00:00:00:00:99", "dev", near,
            "nud", "permanent")
        run = Running(home, "bpf/tcp_retrans", out)
        try:
            sender = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SYN_SENDER,
                                       local, peer, str(port), str(cport)],
                                      stdout=subprocess.PIPE, text=True)
            assert sender.stdout is not None
            healthy = int(sender.stdout.readline())
            assert sender.stdout.readline().strip() == "sent"
            _wait(out, lambda r: any(e["kind"] == "SYNACK" for e in _events(r, cport)),
                  "a SYN-ACK retransmit", timeout=5)
        finally:
            done = run.stop()
    finally:
        if sender is not None:
            sender.kill()
            sender.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
    assert done.rc == 0, done.stderr
    assert _lost(done.stderr, "retrans_events") == _lost(done.stderr, "retrans_counts") == 0
    events = [e for e in _events(done.events, cport) if e["daddr"] == peer]
    assert events
    for e in events:
        assert set(e) == EVENT_FIELDS
        assert {k: v for k, v in e.items() if k != "ts_ns"} == {
            "pid": 0, "comm": "", "label": 0, "state": "SYN_RECV", "kind": "SYNACK", "family": 2,
            "saddr": local, "sport": port, "daddr": peer, "dport": cport}
    counts = [r for r in done.events if "count" in r and (r["daddr"], r["dport"]) == (peer, cport)]
    assert counts and counts[-1] == {"daddr": peer, "dport": cport, "family": 2,
                                     "state": "SYN_RECV", "count": len(events)}
    # negative: the completed handshake in the same namespace resent nothing
    assert not [r for r in done.events if r["dport"] == healthy and r.get("daddr") == local]


# Worker op: `syn N` opens N non-blocking connections to PORT and keeps them (their SYNs go
# unanswered while the listener's accept queue is full, so the timer retransmits them).
SYN_OPS = """
import socket as _socket
_held = []
def syn(n):
    for _ in range(n):
        c = _socket.socket()
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", {port}))
        _held.append(c)
"""


def test_the_filter_judges_the_retransmitting_sockets_cgroup(home: Path, tmp_path: Path,
                                                            tree: dict[str, Path]) -> None:
    """Retransmits run from the timer in softirq: the filter must judge each by its socket's
    cgroup. Two connections from a worker in the unit's child cgroup and two from one in the
    other service retransmit their SYNs alike; only the unit's reach the ring and the counter."""
    out = tmp_path / "retrans.jsonl"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = [socket.create_connection(("127.0.0.1", port)) for _ in range(1)]  # the queue's slot
    with workers("/dev/null", 2, ops=SYN_OPS.format(port=port)) as (inside, outside):
        inside.move(tree["child"])
        outside.move(tree["other"])
        run = Running(home, "bpf/tcp_retrans", out, extra=["--unit", tree["unit"].name])
        try:
            inside.do("syn", 2)
            outside.do("syn", 2)
            _wait(out, lambda r: len(_events(r, port)) >= 4, "4 SYN retransmits", timeout=8)
        finally:
            done = run.stop()
            for c in fillers:
                c.close()
            listener.close()
    assert done.rc == 0, done.stderr
    events = _events(done.events, port)
    assert len(events) >= 4
    assert {e["pid"] for e in done.events if "count" not in e} == {inside.pid}
    assert {e["label"] for e in done.events if "count" not in e} == {1}
    assert {(e["state"], e["kind"]) for e in events} == {("SYN_SENT", "SEGMENT")}
    assert len({e["sport"] for e in events}) == 2  # both of the inside worker's connections
    # the counter is gated alike: it holds exactly the events that arrived
    counts = [r for r in done.events if "count" in r and r["dport"] == port]
    assert counts[-1]["count"] == len(events)
    assert received(done, "tcp_retrans/retrans_events") == (len(done.events) - len(
        [r for r in done.events if "count" in r]), 0)
