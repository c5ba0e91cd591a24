"""tcp_rtt in the running kernel: a loopback request/response exchange made by the test gives a
histogram of smoothed RTT for the server's address and port, with every sample under 10 ms."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from tests.kernel.conftest import Running, prog_names

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
    mine = [r for r in done.events if (r["daddr"], r["dport"]) == ("127.0.0.1", port)]
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
    assert any((r["daddr"], r["dport"]) == ("127.0.0.1", other) for r in done.events)
    summary = next(line for line in done.stderr.splitlines() if "tcp_rtt/rtt_hists" in line)
    assert int(summary.split()[2]) == 0  # lost
    assert "tcp_rtt" not in prog_names()
