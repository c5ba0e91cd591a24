"""bpf/tcp_socks under the process filter: the tcp iterator lists only the sockets whose cgroup2
is the unit's (or below it), each with the label id that matched; sockets of another service,
and of this test, are left out."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.kernel.conftest import Running
from tests.kernel.monitor import received, workers

TCP_LISTEN, TCP_ESTABLISHED = 10, 1

# Worker ops: `listen P` opens a listener on 127.0.0.1:P; `dial P` connects to port P and keeps
# the connection. Sockets belong to the cgroup of the process that creates them.
SOCK_OPS = """
import socket as _socket
_held = []
def listen(p):
    s = _socket.socket()
    s.bind(("127.0.0.1", p))
    s.listen()
    _held.append(s)
def dial(p):
    _held.append(_socket.create_connection(("127.0.0.1", p)))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_filter_lists_the_units_sockets_only(home: Path, tmp_path: Path,
                                                 tree: dict[str, Path]) -> None:
    """A listener in the unit's child cgroup and one in the other service, each dialled once by
    the other worker: the walk prints the inside listener and the inside worker's client socket
    (label 1); the other's listener, its client socket, and the accepted sockets (which take
    their listener's cgroup) follow their listener."""
    port_in, port_out = _free_port(), _free_port()
    with workers("/dev/null", 2, ops=SOCK_OPS) as (inside, outside):
        inside.move(tree["child"])
        outside.move(tree["other"])
        inside.do("listen", port_in)
        outside.do("listen", port_out)
        inside.do("dial", port_out)    # the inside worker's client socket: listed
        outside.do("dial", port_in)    # accepted (not yet) by the inside listener: listed
        done = Running(home, "bpf/tcp_socks", tmp_path / "socks.jsonl",
                       extra=["--unit", tree["unit"].name]).stop()
    assert done.rc == 0, done.stderr
    assert {e["label"] for e in done.events} == {1}
    ports = {(e["state"], e["lport"], e["rport"]) for e in done.events}
    # the inside listener; the connection the inside worker dialled; the connection the
    # inside listener holds in its accept queue (an established child of that listener)
    out_client = next(e["lport"] for e in done.events if e["rport"] == port_out)
    in_child = next(e["rport"] for e in done.events if e["lport"] == port_in and e["rport"])
    assert ports == {(TCP_LISTEN, port_in, 0), (TCP_ESTABLISHED, out_client, port_out),
                     (TCP_ESTABLISHED, port_in, in_child)}, done.events
    assert received(done, "tcp_socks/dump_tcp") == (len(done.events), 0)
