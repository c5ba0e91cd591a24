"""L7 capture (bpf/l7) in the running kernel: real clients and servers on 127.0.0.1, the calls
paired in the kernel and parsed by the C processor, exact records back.

HTTP/1: http.server (keep-alive, 50 ms handler) and http.client on ONE connection. MongoDB: real
pymongo against a small OP_MSG server in this test (it answers the OP_QUERY handshake too), plus
a hand-made OP_COMPRESSED (noop) message. DNS: dig against a dnspython-made UDP server; the
socket-filter variant (bpf/l7/dns_packets.yaml) sees the same two queries on lo.
"""

from __future__ import annotations

import http.client
import http.server
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.kernel.conftest import Finished, Running
from tests.kernel.monitor import received, workers

bson = pytest.importorskip("bson", reason="pymongo (the test extra) is not installed")
pymongo = pytest.importorskip("pymongo", reason="pymongo (the test extra) is not installed")
dns_message = pytest.importorskip("dns.message", reason="dnspython (the test extra) is not installed")
import dns.rcode  # noqa: E402  (after the skip above)
import dns.rrset  # noqa: E402

BUNDLE = "bpf/l7"
MINE = ["--set", f"targ_pid={os.getpid()}"]


def _run(home: Path, tmp_path: Path, bundle: str = BUNDLE, extra: list[str] | None = None) -> Running:
    return Running(home, bundle, tmp_path / "records.jsonl", extra=extra)


def _stop(run: Running) -> Finished:
    done = run.stop()
    assert done.rc == 0, done.stderr
    m = re.search(r"l7_events\s+(\d+)\s+(\d+)", done.stderr)
    assert m and m.group(2) == "0", done.stderr  # nothing lost
    return done


def _stats(done: Finished) -> dict[str, int]:
    """l7_stats at its last read (the loader leaves out array slots that are still zero)."""
    stats = dict.fromkeys(("L7_STAT_REPLACED", "L7_STAT_UNMATCHED", "L7_STAT_H2_UNSYNCED"), 0)
    stats.update({r["key"]: r["value"] for r in done.events if "key" in r})
    return stats


# ---- HTTP/1 ----------------------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: both calls on one connection

    def do_GET(self) -> None:  # noqa: N802
        time.sleep(0.05)
        body = b"hello"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(0.05)
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_http1_keepalive_calls_paired_both_roles(home: Path, tmp_path: Path, http_server: int) -> None:
    run = _run(home, tmp_path, extra=MINE)
    conn = http.client.HTTPConnection("127.0.0.1", http_server)
    conn.request("GET", "/hello")
    assert conn.getresponse().read() == b"hello"
    conn.request("POST", "/fail", body=b"x=1")
    assert conn.getresponse().read() == b""
    client_port = conn.sock.getsockname()[1]
    conn.close()
    done = _stop(run)

    calls = [r for r in done.events if r.get("protocol") == "http1"]
    client = [r for r in calls if r["role"] == "client" and r["peer"] == f"127.0.0.1:{http_server}"]
    server = [r for r in calls if r["role"] == "server" and r["peer"] == f"127.0.0.1:{client_port}"]
    assert [(r["method"], r["path"], r["status"]) for r in client] == [
        ("GET", "/hello", 200), ("POST", "/fail", 500)]
    assert [(r["method"], r["path"], r["status"]) for r in server] == [
        ("GET", "/hello", 200), ("POST", "/fail", 500)]
    for r in client + server:
        assert r["latency_us"] >= 50000, r
        assert r["pid"] == os.getpid() and r["tls"] is False and r["cgroup"] > 0
        assert r["label"] == 0  # no filter asked for
        assert r["req_size"] > 0 and r["resp_size"] > 0
    assert "error" not in client[0]
    assert client[1]["error"] == "500 Internal Server Error"
    assert len(calls) == 4, calls  # nothing else of this process looked like HTTP
    assert _stats(done) == {"L7_STAT_REPLACED": 0, "L7_STAT_UNMATCHED": 0,
                            "L7_STAT_H2_UNSYNCED": 0}


# Worker ops: `port P` names the HTTP server; `get N` makes N GETs on one keep-alive connection.
GET_OPS = """
import http.client as _http
PORT = [0]
def port(p):
    PORT[0] = p
def get(n):
    c = _http.HTTPConnection("127.0.0.1", PORT[0])
    for _ in range(n):
        c.request("GET", "/hello")
        assert c.getresponse().read() == b"hello"
    c.close()
"""


def test_the_filter_keeps_the_units_calls_labelled(home: Path, tmp_path: Path, http_server: int,
                                                   tree: dict[str, Path]) -> None:
    """Each call is judged at its entry in the calling process: N GETs of a client in the unit's
    child cgroup arrive as N client records labelled 1; the other service's client's N, and the
    server's side (this test, outside the unit), never reach the ring."""
    n = 3
    with workers("/dev/null", 2, ops=GET_OPS) as (inside, outside):
        inside.move(tree["child"])
        outside.move(tree["other"])
        for w in (inside, outside):
            w.do("port", http_server)
        run = _run(home, tmp_path, extra=["--unit", tree["unit"].name])
        try:
            inside.do("get", n)
            outside.do("get", n)
        finally:
            done = _stop(run)
    calls = [r for r in done.events if "protocol" in r]
    assert [(r["protocol"], r["role"], r["pid"], r["label"], r["path"], r["status"]) for r in calls] \
        == [("http1", "client", inside.pid, 1, "/hello", 200)] * n
    assert {r["peer"] for r in calls} == {f"127.0.0.1:{http_server}"}
    assert received(done, "l7/l7_events") == (n, 0)
    assert _stats(done) == {"L7_STAT_REPLACED": 0, "L7_STAT_UNMATCHED": 0,
                            "L7_STAT_H2_UNSYNCED": 0}


def test_capture_server_off_keeps_client_records_only(home: Path, tmp_path: Path,
                                                      http_server: int) -> None:
    run = _run(home, tmp_path, extra=[*MINE, "--set", "capture_server=0"])
    conn = http.client.HTTPConnection("127.0.0.1", http_server)
    conn.request("GET", "/hello")
    conn.getresponse().read()
    conn.close()
    done = _stop(run)

    calls = [r for r in done.events if r.get("protocol") == "http1"]
    assert [(r["role"], r["path"]) for r in calls] == [("client", "/hello")]


def test_pipelined_request_replacing_an_unanswered_one_is_counted(home: Path, tmp_path: Path) -> None:
    """Two requests written before any answer: the kernel keeps one pending request per
    connection, so the first is replaced and counted (never dropped silently); an answer
    that arrives with no request pending is counted as unmatched."""
    run = _run(home, tmp_path, extra=[*MINE, "--set", "capture_server=0"])
    answer = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        with client, server:
            client.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            client.sendall(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.1)
            server.sendall(answer)  # pairs with /b, the one pending
            time.sleep(0.1)
            assert client.recv(65536) == answer
            server.sendall(answer)  # no request pending any more
            time.sleep(0.1)
            assert client.recv(65536) == answer
    done = _stop(run)

    calls = [r for r in done.events if r.get("protocol") == "http1"]
    assert [(r["role"], r["path"], r["status"]) for r in calls] == [("client", "/b", 204)]
    assert _stats(done) == {"L7_STAT_REPLACED": 1, "L7_STAT_UNMATCHED": 1,
                            "L7_STAT_H2_UNSYNCED": 0}


# ---- HTTP/2 frames ----------------------------------------------------------------------------

def _frame(ftype: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def _sent_to_processor(stderr: str) -> int:
    m = re.search(r"l7_events → l7_user" + r"\s+(\d+)" * 7, stderr)
    assert m, stderr
    return int(m.group(1))


def test_http2_headers_frames_go_out_one_event_each(home: Path, tmp_path: Path) -> None:
    """The preface marks the connection; HEADERS and CONTINUATION frames go out (both ends),
    SETTINGS and DATA are passed by their length, and a HEADERS frame cut by the end of a write
    is carried over: its rest in the next write is skipped, not read as a frame header."""
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    headers1 = _frame(1, 0x4, 1, b"\x82\x84\x86")          # GET / http, END_HEADERS
    headers3 = _frame(1, 0x0, 3, b"\x83\x86" + b"\x00" * 18)  # POST, continued below
    cont3 = _frame(9, 0x4, 3, b"\x84")
    first = preface + _frame(4, 0, 0, b"") + headers1 + _frame(0, 0, 1, b"d" * 100) + headers3[:14]
    run = _run(home, tmp_path, extra=MINE)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        with client, server:
            client.sendall(first)
            time.sleep(0.05)
            client.sendall(headers3[14:])  # the rest of the HEADERS frame: 15 bytes, no header
            time.sleep(0.05)
            client.sendall(cont3)
            time.sleep(0.2)
            got = server.recv(65536)  # everything in one read on the other end
            assert got == first + headers3[14:] + cont3
    done = _stop(run)

    # client writes: preface, headers1, headers3 (cut), cont3; the server's one read: the same 4
    assert _sent_to_processor(done.stderr) == 8
    assert _stats(done)["L7_STAT_H2_UNSYNCED"] == 0


# ---- MongoDB ---------------------------------------------------------------------------------

def _hello() -> dict:
    # no topologyVersion (no streaming monitor), no logicalSessionTimeoutMinutes (no lsid)
    return {"ismaster": True, "helloOk": True, "isWritablePrimary": True, "maxWireVersion": 17,
            "minWireVersion": 0, "maxBsonObjectSize": 16 * 1024 * 1024,
            "maxMessageSizeBytes": 48000000, "maxWriteBatchSize": 100000, "ok": 1.0}


def _answer(cmd: dict) -> dict:
    name = next(iter(cmd))
    if name.lower() in ("hello", "ismaster"):
        return _hello()
    if name == "find":
        time.sleep(0.03)
        return {"cursor": {"firstBatch": [], "id": bson.int64.Int64(0),
                           "ns": f"{cmd['$db']}.{cmd['find']}"}, "ok": 1.0}
    if name == "boom":
        return {"ok": 0.0, "errmsg": "no such command: 'boom'", "code": 59}
    return {"ok": 1.0}


def _op_msg_body(doc: dict) -> bytes:
    return struct.pack("<I", 0) + b"\x00" + bson.encode(doc)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


class MongoServer:
    """A MongoDB wire server: OP_QUERY handshakes (OP_REPLY), OP_MSG, OP_COMPRESSED (noop)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                while True:
                    head = _recv_exact(conn, 16)
                    length, req_id, _, op = struct.unpack("<iiii", head)
                    conn.sendall(self._reply(req_id, op, _recv_exact(conn, length - 16)))
            except (ConnectionError, OSError):
                return

    def _reply(self, req_id: int, op: int, body: bytes) -> bytes:
        if op == 2004:  # OP_QUERY: flags, cstring collection, skip, return, query
            end = body.index(b"\x00", 4)
            query = bson.decode(body[end + 9:end + 9 + struct.unpack_from("<i", body, end + 9)[0]])
            doc = bson.encode(_answer(query))
            out = struct.pack("<iqii", 0, 0, 0, 1) + doc
            return struct.pack("<iiii", 16 + len(out), 1, req_id, 1) + out
        if op == 2012:  # OP_COMPRESSED: original opcode, size, compressor 0 = noop
            inner_op, _, compressor = struct.unpack_from("<iiB", body)
            assert inner_op == 2013 and compressor == 0
            out = _op_msg_body(_answer(bson.decode(body[9 + 5:])))
            out = struct.pack("<iiB", 2013, len(out), 0) + out
            return struct.pack("<iiii", 16 + len(out), 1, req_id, 2012) + out
        assert op == 2013 and body[4] == 0, (op, body[:8])
        out = _op_msg_body(_answer(bson.decode(body[5:])))
        return struct.pack("<iiii", 16 + len(out), 1, req_id, 2013) + out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def mongo_server():
    server = MongoServer()
    yield server
    server.close()


def test_mongo_pymongo_find_and_compressed(home: Path, tmp_path: Path, mongo_server: MongoServer) -> None:
    run = _run(home, tmp_path, extra=MINE)
    client = pymongo.MongoClient("127.0.0.1", mongo_server.port, directConnection=True,
                                 serverSelectionTimeoutMS=5000)
    assert list(client.shop.users.find({})) == []
    with pytest.raises(pymongo.errors.OperationFailure):
        client.shop.command("boom")
    client.close()
    # OP_COMPRESSED with the noop compressor, made by hand: {ping: 1, $db: "admin"}
    with socket.create_connection(("127.0.0.1", mongo_server.port)) as s:
        inner = _op_msg_body({"ping": 1, "$db": "admin"})
        body = struct.pack("<iiB", 2013, len(inner), 0) + inner
        s.sendall(struct.pack("<iiii", 16 + len(body), 77, 0, 2012) + body)
        length = struct.unpack_from("<i", _recv_exact(s, 16))[0]  # header, then body: as drivers do
        _recv_exact(s, length - 16)
    done = _stop(run)

    mongo = [r for r in done.events
             if r.get("protocol") == "mongo" and r["peer"] == f"127.0.0.1:{mongo_server.port}"]
    finds = [r for r in mongo if r.get("op") == "find"]
    assert len(finds) == 1, mongo
    f = finds[0]
    assert (f["role"], f["collection"], f["db"], f["ok"]) == ("client", "users", "shop", 1)
    assert f["latency_us"] >= 30000 and "error" not in f and "compressed" not in f
    boom = [r for r in mongo if r.get("op") == "boom"]
    assert len(boom) == 1 and boom[0]["ok"] == 0 and boom[0]["error"] == "no such command: 'boom'"
    ping = [r for r in mongo if r.get("compressed")]
    assert len(ping) == 1, mongo
    assert (ping[0]["role"], ping[0]["op"], ping[0]["db"], ping[0]["ok"]) == ("client", "ping", "admin", 1)
    assert ping[0]["req_size"] == 16 + 9 + 5 + len(bson.encode({"ping": 1, "$db": "admin"}))
    # the server thread is this process too: the same find, seen from the other side
    served = [r for r in done.events if r.get("protocol") == "mongo" and r["role"] == "server"
              and r.get("op") == "find"]
    assert len(served) == 1 and served[0]["collection"] == "users" and served[0]["latency_us"] >= 30000


# ---- DNS -------------------------------------------------------------------------------------

class DnsServer:
    """example.test A → 10.1.2.3, nx.test → NXDOMAIN, over UDP on 127.0.0.1."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(4096)
            except OSError:
                return
            query = dns_message.from_wire(data)
            reply = dns_message.make_response(query)
            name = query.question[0].name.to_text()
            if name == "example.test.":
                reply.answer.append(dns.rrset.from_text(name, 60, "IN", "A", "10.1.2.3"))
            else:
                reply.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(reply.to_wire(), addr)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def dns_server_factory():
    """Started by the test after attach: a recvfrom already blocked when the tracepoints
    attached has no entry recorded, so its datagram would be missed."""
    if not shutil.which("dig"):
        pytest.skip("dig is not installed (Debian bind9-dnsutils, scripts/debian-test-packages.txt)")
    made: list[DnsServer] = []
    yield lambda: made.append(DnsServer()) or made[-1]
    for server in made:
        server.close()


def _dig(port: int, name: str) -> int:
    """dig @127.0.0.1 -p PORT NAME A; the query id dig printed."""
    out = subprocess.run(["dig", "@127.0.0.1", "-p", str(port), name, "A", "+tries=1", "+time=3"],
                         capture_output=True, text=True, timeout=20, check=True).stdout
    return int(re.search(r"id: (\d+)", out).group(1))


def _check_dns(records: list[dict], ids: tuple[int, int]) -> None:
    assert len(records) == 2, records
    # two dig runs are two connections, which may reach two processor workers: any order
    ok, nx = sorted(records, key=lambda r: r["qname"])
    assert (ok["id"], ok["qname"], ok["qtype"], ok["rcode"], ok["answers"]) == (
        ids[0], "example.test", "A", "NOERROR", ["10.1.2.3"])
    assert "error" not in ok
    assert (nx["id"], nx["qname"], nx["qtype"], nx["rcode"], nx["answers"], nx["error"]) == (
        ids[1], "nx.test", "A", "NXDOMAIN", [], "NXDOMAIN")
    for r in records:
        assert r["latency_us"] > 0 and r["req_size"] > 12 and r["resp_size"] > 12


def test_dns_dig_noerror_and_nxdomain(home: Path, tmp_path: Path, dns_server_factory) -> None:
    run = _run(home, tmp_path)  # every process: dig is not this test
    dns_server = dns_server_factory()
    ids = (_dig(dns_server.port, "example.test"), _dig(dns_server.port, "nx.test"))
    done = _stop(run)

    dns_records = [r for r in done.events if r.get("protocol") == "dns"]
    client = [r for r in dns_records
              if r["role"] == "client" and r["peer"] == f"127.0.0.1:{dns_server.port}"]
    _check_dns(client, ids)
    server = [r for r in dns_records if r["role"] == "server" and r["pid"] == os.getpid()]
    _check_dns(server, ids)
    assert all(r["peer"].startswith("127.0.0.1:") and r["peer"] != f"127.0.0.1:{dns_server.port}"
               for r in server)


def test_dns_socket_filter_sees_the_same_calls(home: Path, tmp_path: Path, dns_server_factory) -> None:
    dns_server = dns_server_factory()  # no syscall state here: packets are seen on lo
    run = _run(home, tmp_path, bundle="bpf/l7/dns_packets.yaml",
               extra=["--set", f"targ_port={dns_server.port}"])
    ids = (_dig(dns_server.port, "example.test"), _dig(dns_server.port, "nx.test"))
    done = _stop(run)

    dns_records = [r for r in done.events if r.get("protocol") == "dns"]
    _check_dns(dns_records, ids)  # each packet once: lo's outgoing copies are skipped
    for r in dns_records:
        assert (r["role"], r["pid"], r["comm"], r["peer"]) == (
            "client", 0, "", f"127.0.0.1:{dns_server.port}")
    assert not [r for r in done.events if "key" in r]  # nothing replaced or unmatched
