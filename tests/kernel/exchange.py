"""One loopback TCP exchange of exactly ``up`` bytes from the client and ``down`` bytes back,
for tests that trace real traffic and assert its byte counts. Imported in-process, and by the
child processes those tests start (``-c`` scripts run from the repository root), so every side
reads, answers and closes the same way."""

from __future__ import annotations

import socket


def receive(sock: socket.socket, n: int) -> int:
    """Read until ``n`` bytes came or the peer closed; the bytes read."""
    got = 0
    while got < n:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += len(chunk)
    return got


def answer(conn: socket.socket, up: int, down: int) -> None:
    """The server's side: read ``up`` bytes, answer ``down``, close after the peer."""
    with conn:
        receive(conn, up)
        conn.sendall(b"d" * down)
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(65536):
            pass
