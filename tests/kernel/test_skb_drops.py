"""bpf/skb_drops in the running kernel: drops per (reason, protocol, port, location) and TCP
resets sent per port. Packets are dropped in softirq context, where no pid says whose they are,
so each test sends to a port of its own (port 9 for the classic discard case) and reads only
the records of that port."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

from loader.decoders.names import enum_table
from loader.kernel.btf import Btf
from tests.kernel.conftest import Running
from tests.kernel.conftest import wait_for as _wait
from tests.kernel.monitor import workers

KSYM = re.compile(r"^[A-Za-z_][\w.]*\+0x[0-9a-f]+$")  # "symbol+0xoff", never a bare address
NOT_DROPS = {"SKB_NOT_DROPPED_YET", "SKB_CONSUMED", "SKB_DROP_REASON_NOT_SPECIFIED"}






def _last_read(records: list[dict]) -> dict[tuple, dict]:
    """The newest record of every key: the maps are cumulative, each read repeats them all."""
    latest: dict[tuple, dict] = {}
    for r in records:
        latest[tuple((k, v) for k, v in r.items() if k != "count")] = r
    return latest


def _drops(records: list[dict], port: int, protocol: str) -> list[dict]:
    return [r for r in _last_read(records).values()
            if "reason" in r and r["port"] == port and r["protocol"] == protocol]


def _free_port(kind: int) -> int:
    """A local port nothing listens on (bound, then closed, so it is free right now)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reasons() -> dict[int, str]:
    btf = Btf.parse(Path("/sys/kernel/btf/vmlinux").read_bytes())
    return dict(enum_table(btf, "skb_drop_reason").names)


def test_udp_to_a_closed_port_is_no_socket_with_port_and_location(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "drops.jsonl"
    run = Running(home, "bpf/skb_drops", out)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            rx.bind(("127.0.0.1", 0))  # the negative case: a port whose socket reads everything
            for _ in range(5):
                s.sendto(b"bpfdepot", ("127.0.0.1", 9))  # discard port: nothing listens here
                s.sendto(b"bpfdepot", rx.getsockname())
                assert rx.recv(64) == b"bpfdepot"
            read_port = rx.getsockname()[1]
        _wait(out, lambda r: sum(x["count"] for x in _drops(r, 9, "UDP")
                                 if x["reason"] == "SKB_DROP_REASON_NO_SOCKET") >= 5,
              "the NO_SOCKET drops on port 9")
    finally:
        done = run.stop()
    assert done.rc == 0, done.stderr
    table = _reasons()
    number = next(v for v, n in table.items() if n == "SKB_DROP_REASON_NO_SOCKET")
    assert number == 3  # this kernel's value (2 on 6.1): the name came from its BTF
    drops = [r for r in done.events if "reason" in r]
    no_socket = [r for r in _drops(done.events, 9, "UDP") if r["reason"] == "SKB_DROP_REASON_NO_SOCKET"]
    # ≥ 5: the map is cumulative (no reset), and other processes may send to port 9 too
    assert sum(r["count"] for r in no_socket) >= 5
    assert all(r["ethertype"] == 0x0800 and KSYM.match(r["location"]) for r in no_socket), no_socket
    assert any(r["location"].startswith("__udp4_lib_rcv+") for r in no_socket), no_socket
    assert not _drops(done.events, read_port, "UDP")  # delivered datagrams are no drops
    # every reason is a name of this kernel's enum, and never "not a drop"
    assert all(r["reason"] in table.values() for r in drops)
    assert not {r["reason"] for r in drops} & NOT_DROPS
    assert set(drops[0]) == {"location", "reason", "protocol", "ethertype", "port", "count"}


def test_a_full_udp_receive_buffer_is_socket_rcvbuff(home: Path, tmp_path: Path) -> None:
    sent, size = 200, 1024
    out = tmp_path / "drops.jsonl"
    run = Running(home, "bpf/skb_drops", out)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 0)  # the kernel's minimum
            rx.bind(("127.0.0.1", 0))
            rcvbuf = rx.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            port = rx.getsockname()[1]
            for _ in range(sent):
                s.sendto(b"x" * size, ("127.0.0.1", port))
            time.sleep(0.2)  # loopback delivers in softirq: let the last datagram arrive
            rx.setblocking(False)
            received = 0
            while True:
                try:
                    rx.recv(size)
                except BlockingIOError:
                    break
                received += 1
        _wait(out, lambda r: sum(x["count"] for x in _drops(r, port, "UDP")) >= sent - received,
              f"the drops on port {port}")
    finally:
        done = run.stop()
    assert done.rc == 0, done.stderr
    rcvbuff = next(n for n in _reasons().values() if n.endswith("_SOCKET_RCVBUFF"))
    drops = _drops(done.events, port, "UDP")
    # UDP queues a datagram only while the queue holds at most rcvbuf bytes (a datagram's
    # truesize is at least its 1024 bytes), so at most rcvbuf // size + 1 were queued
    assert received <= rcvbuf // size + 1
    assert sum(r["count"] for r in drops) == sent - received  # every datagram not read: counted
    full = sum(r["count"] for r in drops if r["reason"] == rcvbuff)
    assert full >= sent - (rcvbuf // size + 1) >= 150, (rcvbuf, received, drops)
    assert all(KSYM.match(r["location"]) for r in drops)


def test_a_connect_to_a_closed_tcp_port_counts_one_reset(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "drops.jsonl"
    run = Running(home, "bpf/skb_drops", out)
    port = _free_port(socket.SOCK_STREAM)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as c:
            try:
                c.connect(("127.0.0.1", port))
                raise AssertionError(f"port {port} was expected closed")
            except ConnectionRefusedError:
                pass
        _wait(out, lambda r: any("reason" not in x and x["port"] == port for x in r),
              f"the reset on port {port}")
    finally:
        done = run.stop()
    assert done.rc == 0, done.stderr
    resets = [r for r in _last_read(done.events).values() if "reason" not in r and r["port"] == port]
    assert resets == [{"port": port, "ethertype": 0x0800, "state": "NO_SOCKET", "count": 1}]
    # the SYN the RST answered was itself dropped: no socket on that port
    syn = _drops(done.events, port, "TCP")
    assert [(r["reason"], r["count"]) for r in syn] == [("SKB_DROP_REASON_NO_SOCKET", 1)]


# Worker ops: `bind P` makes a UDP socket with the smallest receive buffer on 127.0.0.1:P (the
# socket, and so its cgroup, is the worker's); `drain N` reads what was queued and writes the
# number of datagrams read to the file named in {out!r}, plus the buffer size.
RX_OPS = """
import socket as _socket
_rx = []
def bind(p):
    s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    s.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF, 0)
    s.bind(("127.0.0.1", p))
    _rx.append(s)
def drain(n):
    s = _rx[-1]
    s.setblocking(False)
    got = 0
    while True:
        try:
            s.recv(65536)
        except BlockingIOError:
            break
        got += 1
    with __builtins__.open({out!r}, "w") as f:
        f.write("%d %d" % (got, s.getsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF)))
"""


def test_the_filter_counts_the_drops_of_the_units_sockets_only(home: Path, tmp_path: Path,
                                                               tree: dict[str, Path]) -> None:
    """Drops happen in softirq: the filter judges the receiving socket (6.12+: kfree_skb's
    rx_sk). Datagrams overflowing a socket of a worker in the unit's child cgroup are counted,
    exactly; the same overflow on a socket of the other service is not, nor are drops with no
    socket at all (port 9), which belong to no process."""
    sent, size = 100, 1024
    out = tmp_path / "drops.jsonl"
    port_in, port_out = _free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_DGRAM)
    said_in, said_out = tmp_path / "inside", tmp_path / "outside"
    inside_ops, outside_ops = RX_OPS.format(out=str(said_in)), RX_OPS.format(out=str(said_out))
    with workers("/dev/null", 1, ops=inside_ops) as (inside,), \
            workers("/dev/null", 1, ops=outside_ops) as (outside,):
        inside.move(tree["child"])
        outside.move(tree["other"])
        inside.do("bind", port_in)   # after the move: the socket takes its creator's cgroup
        outside.do("bind", port_out)
        run = Running(home, "bpf/skb_drops", out, extra=["--unit", tree["unit"].name])
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for _ in range(sent):
                    s.sendto(b"x" * size, ("127.0.0.1", port_in))
                    s.sendto(b"x" * size, ("127.0.0.1", port_out))
                    s.sendto(b"x", ("127.0.0.1", 9))
            time.sleep(0.2)  # loopback delivers in softirq: let the last datagram arrive
            inside.do("drain", 1)
            outside.do("drain", 1)
            got_in = int(said_in.read_text().split()[0])
            _wait(out, lambda r: sum(x["count"] for x in _drops(r, port_in, "UDP")) >= sent - got_in,
                  f"the drops on port {port_in}")
        finally:
            done = run.stop()
    assert done.rc == 0, done.stderr
    got_out = int(said_out.read_text().split()[0])
    assert got_in < sent - 50 and got_out < sent - 50  # both sockets overflowed alike
    assert sum(r["count"] for r in _drops(done.events, port_in, "UDP")) == sent - got_in
    # nothing else: not the other's socket, not the socketless port-9 drops, not the resets
    assert {r["port"] for r in _last_read(done.events).values()} == {port_in}
    rows = {row[0]: int(row[2]) for row in (x.split() for x in done.stderr.splitlines())
            if row and row[0] in ("skb_drops/drops", "skb_drops/resets")}
    assert rows == {"skb_drops/drops": 0, "skb_drops/resets": 0}, done.stderr
