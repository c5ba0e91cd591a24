"""HTTP/2 + HPACK parser of the L7 processor (bpf/l7/l7_http2.h, bpf/l7/hpack.h) on real frames.

A small C harness (tests/unit/l7_h2_harness.c) feeds L7_FRAME events to l7_h2_frame() and prints
each result as JSON. The frames come from the PyPI ``hpack`` encoder and from real ``h2``
client/server H2Connection objects exchanging bytes in memory. Every case runs against two
builds: gcc -Wall -Werror, and the same with AddressSanitizer + UBSan.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

hpack = pytest.importorskip("hpack")
h2_config = pytest.importorskip("h2.config")
h2_connection = pytest.importorskip("h2.connection")

ROOT = Path(__file__).resolve().parents[2]
L7 = ROOT / "bpf" / "l7"
HARNESS = Path(__file__).with_name("l7_h2_harness.c")
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EGRESS, INGRESS = 1, 2
CLIENT, SERVER = 1, 2
HEADERS, CONTINUATION, DATA = 1, 9, 0
END_STREAM, END_HEADERS, PADDED, PRIORITY = 0x1, 0x4, 0x8, 0x20
REQ_MAX = 512  # L7_REQ_MAX in l7.h


@pytest.fixture(scope="module", params=["plain", "asan"])
def harness(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The harness binary, built with -Wall -Werror (and once more with ASan/UBSan)."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    out = tmp_path_factory.mktemp("h2") / f"harness-{request.param}"
    cmd = ["gcc", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-O1", "-g", f"-I{L7}",
           "-o", str(out), str(HARNESS)]
    if request.param == "asan":
        cmd[1:1] = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                    "-fno-omit-frame-pointer"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out


class Feed:
    """Events for one harness run: (conn, dir, ts_ns, bytes, req_size) lines, plus 'stats'."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.ts = 1_000_000

    def event(self, conn: int, direction: int, raw: bytes, *, size: int | None = None,
              ts: int | None = None, missed: bool = False) -> None:
        """Queue one L7_FRAME event; the kernel copies at most REQ_MAX bytes of it. ``missed``:
        the kernel side says frames of the connection were missed before this one."""
        if ts is None:
            self.ts += 1_000
            ts = self.ts
        size = len(raw) if size is None else size
        self.lines.append(f"{conn} {direction + 16 * missed} {ts} {size} {raw[:REQ_MAX].hex() or '-'}")

    def stats(self) -> None:
        """Queue a stats line."""
        self.lines.append("stats")

    def run(self, binary: Path) -> list[dict]:
        """Run the harness on the queued lines; one result dict per line."""
        env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0",
                   UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
        proc = subprocess.run([str(binary)], input="\n".join(self.lines) + "\n", text=True,
                              capture_output=True, env=env, timeout=60)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert "runtime error" not in proc.stderr, proc.stderr[-4000:]
        return [json.loads(line) for line in proc.stdout.splitlines()]


def frame(ftype: int, flags: int, stream: int, payload: bytes) -> bytes:
    """One HTTP/2 frame (RFC 9113 §4.1)."""
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def header_frames(raw: bytes) -> list[bytes]:
    """Split a byte stream written by an H2Connection into the events the kernel side sends:
    the client preface and every HEADERS / CONTINUATION frame, in order."""
    out, pos = [], 0
    if raw.startswith(PREFACE):
        out.append(PREFACE)
        pos = len(PREFACE)
    while pos < len(raw):
        length = int.from_bytes(raw[pos:pos + 3], "big")
        if raw[pos + 3] in (HEADERS, CONTINUATION):
            out.append(raw[pos:pos + 9 + length])
        pos += 9 + length
    return out


def calls(results: Iterable[dict]) -> list[dict]:
    """The calls among the results."""
    return [r["call"] for r in results if r.get("rc") == 1]


GRPC_REQ = [(":method", "POST"), (":scheme", "http"), (":path", "/shop.Cart/Add"),
            (":authority", "127.0.0.1:50051"), ("content-type", "application/grpc"), ("te", "trailers")]


class H2Pair:
    """A real h2 client and server exchanging bytes in memory; every HEADERS/CONTINUATION frame
    either one writes is queued as the client side would see it (client writes = EGRESS)."""

    def __init__(self, feed: Feed, conn: int, *, server_view: bool = False) -> None:
        self.feed, self.conn = feed, conn
        self.out_dir = INGRESS if server_view else EGRESS
        self.client = h2_connection.H2Connection(h2_config.H2Configuration(client_side=True))
        self.server = h2_connection.H2Connection(
            h2_config.H2Configuration(client_side=False, header_encoding="utf-8"))
        self.client.initiate_connection()
        self.server.initiate_connection()
        self.flush()

    def flush(self) -> None:
        """Move bytes both ways until quiet, queueing the header frames."""
        for _ in range(8):
            c2s, s2c = self.client.data_to_send(), self.server.data_to_send()
            if not c2s and not s2c:
                return
            for raw in header_frames(c2s):
                self.feed.event(self.conn, self.out_dir, raw)
            for raw in header_frames(s2c):
                self.feed.event(self.conn, INGRESS if self.out_dir == EGRESS else EGRESS, raw)
            if c2s:
                self.server.receive_data(c2s)
            if s2c:
                self.client.receive_data(s2c)

    def request(self, headers: list[tuple[str, str]], body: bytes = b"") -> int:
        """Send a request (gRPC-framed body when given); returns its stream id."""
        sid = self.client.get_next_available_stream_id()
        self.client.send_headers(sid, headers, end_stream=not body)
        if body:
            self.client.send_data(sid, b"\x00" + struct.pack(">I", len(body)) + body, end_stream=True)
        self.flush()
        return sid

    def grpc_reply(self, sid: int, status: int, *, message: str = "", body: bytes = b"",
                   trailers_only: bool = False) -> None:
        """Answer like a gRPC server: headers, data, trailers; or one trailers-only block."""
        head = [(":status", "200"), ("content-type", "application/grpc")]
        tail = [("grpc-status", str(status))] + ([("grpc-message", message)] if message else [])
        if trailers_only:
            self.server.send_headers(sid, head + tail, end_stream=True)
        else:
            self.server.send_headers(sid, head)
            self.flush()
            if body:
                self.server.send_data(sid, b"\x00" + struct.pack(">I", len(body)) + body)
            self.server.send_headers(sid, tail, end_stream=True)
        self.flush()


def test_tables_are_the_generator_output() -> None:
    """hpack.h holds exactly what scripts/gen_hpack_tables.py prints (RFC 7541 Appendices A, B)."""
    text = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_hpack_tables.py")],
                          check=True, capture_output=True, text=True).stdout
    assert text in (L7 / "hpack.h").read_text()


@pytest.mark.parametrize("huffman", [True, False])
def test_second_request_reuses_the_dynamic_table(harness: Path, huffman: bool) -> None:
    """Two requests on one connection: the second's :path is an index into the dynamic table."""
    feed, enc_req, enc_resp = Feed(), hpack.Encoder(), hpack.Encoder()
    path = "/api/v1/carts/4711/items?expand=price"
    req = [(":method", "GET"), (":scheme", "http"), (":path", path), (":authority", "shop.test"),
           ("user-agent", "unit/1.0")]
    feed.event(7, EGRESS, PREFACE)
    blocks = []
    for sid in (1, 3):
        blocks.append(enc_req.encode(req, huffman=huffman))
        feed.event(7, EGRESS, frame(HEADERS, END_HEADERS | END_STREAM, sid, blocks[-1]), ts=10_000 * sid)
        resp = enc_resp.encode([(":status", "200" if sid == 1 else "404"), ("server", "x")], huffman=huffman)
        feed.event(7, INGRESS, frame(HEADERS, END_HEADERS, sid, resp), ts=10_000 * sid + 2500)
    # The second block names every field by index (one byte each): nothing literal is left.
    assert len(blocks[1]) == len(req) and all(b & 0x80 for b in blocks[1])
    assert (path.encode() in blocks[0]) != huffman
    got = calls(feed.run(harness))
    assert [(c["method"], c["path"], c["authority"], c["status"], c["stream"], c["latency_ns"],
             c["role"], c["grpc_status"], c["grpc"]) for c in got] == [
        ("GET", path, "shop.test", 200, 1, 2500, CLIENT, -1, 0),
        ("GET", path, "shop.test", 404, 3, 2500, CLIENT, -1, 0)]


def test_grpc_status_0_after_data_and_5_trailers_only(harness: Path) -> None:
    """Real h2 endpoints: a gRPC call answered with DATA then trailers (0), and a trailers-only
    error (5, NOT_FOUND) on the same connection; both ends' views give client and server roles."""
    for view, role in ((False, CLIENT), (True, SERVER)):
        feed = Feed()
        pair = H2Pair(feed, 42, server_view=view)
        one = pair.request(GRPC_REQ, b"item=1")
        pair.grpc_reply(one, 0, body=b"ok")
        two = pair.request(GRPC_REQ, b"item=2")
        pair.grpc_reply(two, 5, message="cart 9 not found", trailers_only=True)
        results = feed.run(harness)
        assert all(r["rc"] >= 0 for r in results), results
        got = calls(results)
        assert [(c["path"], c["method"], c["status"], c["grpc_status"], c["stream"], c["role"], c["grpc"])
                for c in got] == [("/shop.Cart/Add", "POST", 200, 0, one, role, 1),
                                  ("/shop.Cart/Add", "POST", 200, 5, two, role, 1)]
        assert got[1]["grpc_message"] == "cart 9 not found"
        assert got[0]["authority"] == "127.0.0.1:50051"
        # gRPC completes at the trailers: two response blocks counted for the first call.
        assert got[0]["resp_size"] > got[1]["resp_size"] > 9


def test_recorded_grpcio_exchange(harness: Path) -> None:
    """The bytes of a real grpcio 1.85 client and server (tests/unit/l7_grpc_record.py): grpc-core's
    own HPACK choices (indexed literals, grpc-timeout, trailers-only errors) decode to both calls,
    seen from the client end and from the server end."""
    recorded = json.loads(Path(__file__).with_name("l7_grpc_exchange.json").read_text())
    for view, role in (("client", CLIENT), ("server", SERVER)):
        feed, pending = Feed(), {"client": b"", "server": b""}
        for side, hexed in recorded["chunks"]:
            pending[side] += bytes.fromhex(hexed)
            # whole frames only: the kernel side walks each write or read by frame headers
            raw, cut = pending[side], 0
            if raw.startswith(PREFACE):
                cut = len(PREFACE)
            while len(raw) - cut >= 9 and len(raw) - cut >= 9 + int.from_bytes(raw[cut:cut + 3], "big"):
                cut += 9 + int.from_bytes(raw[cut:cut + 3], "big")
            for ev in header_frames(raw[:cut]):
                feed.event(77, EGRESS if side == view else INGRESS, ev)
            pending[side] = raw[cut:]
        results = feed.run(harness)
        assert all(r["rc"] >= 0 for r in results), results
        assert [(c["method"], c["path"], c["status"], c["grpc_status"], c["grpc_message"], c["role"])
                for c in calls(results)] == [
            ("POST", "/shop.Cart/Add", 200, 0, "", role),
            ("POST", "/shop.Cart/Add", 200, 5, "cart 9 not found", role)]


def test_interleaved_streams_pair_by_stream_id(harness: Path) -> None:
    """Three open streams answered out of order each keep their own path."""
    feed = Feed()
    pair = H2Pair(feed, 5)
    sids = [pair.request([(":method", "GET"), (":scheme", "http"), (":path", f"/item/{i}"),
                          (":authority", "a")]) for i in range(3)]
    for i in (2, 0, 1):
        pair.server.send_headers(sids[i], [(":status", str(200 + i))], end_stream=True)
        pair.flush()
    got = calls(feed.run(harness))
    assert [(c["stream"], c["path"], c["status"]) for c in got] == [
        (sids[2], "/item/2", 202), (sids[0], "/item/0", 200), (sids[1], "/item/1", 201)]


def test_continuation_padded_priority(harness: Path) -> None:
    """A request split over HEADERS + 2 CONTINUATIONs, and a PADDED+PRIORITY response."""
    feed, enc_req, enc_resp = Feed(), hpack.Encoder(), hpack.Encoder()
    block = enc_req.encode(GRPC_REQ + [("x-note", "n" * 120)], huffman=False)
    parts = [block[:40], block[40:90], block[90:]]
    feed.event(1, EGRESS, PREFACE)
    feed.event(1, EGRESS, frame(HEADERS, 0, 1, parts[0]))
    feed.event(1, EGRESS, frame(CONTINUATION, 0, 1, parts[1]))
    feed.event(1, EGRESS, frame(CONTINUATION, END_HEADERS, 1, parts[2]))
    resp = enc_resp.encode([(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "0")])
    pad = 7
    payload = bytes([pad]) + struct.pack(">IB", 0x80000000 | 0, 15) + resp + b"\0" * pad
    # The kernel may copy less than the padding: the fragment is whole, so it still decodes.
    feed.event(1, INGRESS, frame(HEADERS, PADDED | PRIORITY | END_HEADERS | END_STREAM, 1, payload))
    results = feed.run(harness)
    assert [r["rc"] for r in results] == [0, 0, 0, 0, 1]
    call = results[-1]["call"]
    assert (call["path"], call["grpc_status"], call["req_size"]) == (
        "/shop.Cart/Add", 0, 27 + len(block))


def test_continuation_on_another_stream_loses_the_connection(harness: Path) -> None:
    """RFC 9113 §6.10: a header block is contiguous; anything else breaks the HPACK sequence."""
    feed, enc = Feed(), hpack.Encoder()
    block = enc.encode(GRPC_REQ)
    feed.event(1, EGRESS, PREFACE)
    feed.event(1, EGRESS, frame(HEADERS, 0, 1, block[:10]))
    feed.event(1, EGRESS, frame(CONTINUATION, END_HEADERS, 3, block[10:]))
    feed.event(1, EGRESS, frame(HEADERS, END_HEADERS, 5, hpack.Encoder().encode(GRPC_REQ)))
    results = feed.run(harness)
    assert results[2]["rc"] == -1 and "CONTINUATION without an open header block" in results[2]["why"]
    assert results[3]["rc"] == -1 and "waiting for the next preface" in results[3]["why"]


def test_eviction_and_table_size_updates(harness: Path) -> None:
    """Large unique headers evict old entries (4096-byte table); size updates shrink and grow
    the table; the decoder mirrors the encoder through all of it, so every path comes out."""
    feed, enc_req, enc_resp = Feed(), hpack.Encoder(), hpack.Encoder()
    feed.event(3, EGRESS, PREFACE)
    expect = []
    for i in range(40):
        if i == 12:
            enc_req.header_table_size = 300    # update to 300 bytes: most entries evicted
        if i == 24:
            enc_req.header_table_size = 8192   # grow beyond the 4096 default (within limits)
        path = f"/cart/{i % 5}"
        hdrs = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "a"),
                ("x-trace", f"{i:04d}-" + "t" * 150)]
        block = enc_req.encode(hdrs, huffman=bool(i % 2))
        if i in (12, 24):
            assert block[0] & 0xe0 == 0x20   # the block starts with a size update
        sid = 2 * i + 1
        feed.event(3, EGRESS, frame(HEADERS, END_HEADERS | END_STREAM, sid, block))
        feed.event(3, INGRESS, frame(HEADERS, END_HEADERS | END_STREAM, sid,
                                     enc_resp.encode([(":status", "200")])))
        expect.append((sid, path))
    feed.stats()
    results = feed.run(harness)
    assert [(c["stream"], c["path"]) for c in calls(results)] == expect
    assert results[-1]["rejected"] == 0 and results[-1]["conns_lost"] == 0


@pytest.mark.parametrize("block,why", [
    (b"\x3f\xe2\xff\x03", "table size update above 65536 bytes"),     # 31 + 65506 = 65537
    (b"\x82\x20", "size update after a header field"),
    (b"\xff\x80\x01", "index beyond the static and dynamic tables"),  # 127 + 128: no such entry
    (b"\x80", "index 0"),
    (b"\x40\x85\xff\xff\xff\xff\xff\x00", "Huffman"),                 # EOS inside a name
    (b"\x40\x05abc", "runs past the header block"),
])
def test_bad_hpack_loses_the_connection(harness: Path, block: bytes, why: str) -> None:
    """An encoding error makes that direction's table unreliable: rejected until a new preface."""
    feed = Feed()
    feed.event(9, EGRESS, PREFACE)
    feed.event(9, EGRESS, frame(HEADERS, END_HEADERS, 1, block))
    feed.event(9, EGRESS, frame(HEADERS, END_HEADERS, 3, hpack.Encoder().encode(GRPC_REQ)))
    feed.stats()
    results = feed.run(harness)
    assert results[1]["rc"] == -1 and why in results[1]["why"], results[1]
    assert results[2]["rc"] == -1 and "waiting for the next preface" in results[2]["why"]
    assert results[3]["conns_lost"] == 1


def test_truncated_frame_poisons_until_the_next_preface(harness: Path) -> None:
    """A HEADERS frame longer than the kernel's copy cannot be decoded: the connection is lost,
    its next frames are rejected, and a new preface (a new connection on the fd) starts over."""
    feed, enc = Feed(), hpack.Encoder()
    big = enc.encode(GRPC_REQ + [("x-blob", "b" * 600)], huffman=False)
    assert len(big) + 9 > REQ_MAX
    feed.event(4, EGRESS, PREFACE)
    feed.event(4, EGRESS, frame(HEADERS, END_HEADERS, 1, big))
    feed.event(4, INGRESS, frame(HEADERS, END_HEADERS | END_STREAM, 1,
                                 hpack.Encoder().encode([(":status", "200")])))
    feed.event(4, EGRESS, PREFACE)
    enc = hpack.Encoder()
    feed.event(4, EGRESS, frame(HEADERS, END_HEADERS | END_STREAM, 1, enc.encode(GRPC_REQ)))
    feed.event(4, INGRESS, frame(HEADERS, END_HEADERS | END_STREAM, 1,
                                 hpack.Encoder().encode([(":status", "200"), ("grpc-status", "0")])))
    results = feed.run(harness)
    assert results[1]["rc"] == -1 and "truncated" in results[1]["why"]
    assert results[2]["rc"] == -1 and "truncated" in results[2]["why"] and "next preface" in results[2]["why"]
    assert [r["rc"] for r in results[3:]] == [0, 0, 1]
    assert results[5]["call"]["path"] == "/shop.Cart/Add"


def test_frames_missed_by_the_kernel_side_lose_the_connection(harness: Path) -> None:
    """An event marked `missed` (the ring was full, or frames were past the kernel's walk) means
    a HEADERS frame may be gone: the tables are out of step, so that connection is lost until
    its next preface, and nothing is decoded with a shifted index."""
    feed, enc = Feed(), hpack.Encoder()
    feed.event(5, EGRESS, PREFACE)
    feed.event(5, EGRESS, frame(HEADERS, END_HEADERS, 1, enc.encode(GRPC_REQ)))
    enc.encode(GRPC_REQ)  # a request the kernel side never sent: the tables move on without us
    feed.event(5, EGRESS, frame(HEADERS, END_HEADERS, 5, enc.encode(GRPC_REQ)), missed=True)
    feed.event(5, INGRESS, frame(HEADERS, END_HEADERS | END_STREAM, 1,
                                 hpack.Encoder().encode([(":status", "200"), ("grpc-status", "0")])))
    feed.event(5, EGRESS, PREFACE)
    enc = hpack.Encoder()
    feed.event(5, EGRESS, frame(HEADERS, END_HEADERS, 1, enc.encode(GRPC_REQ)))
    feed.event(5, INGRESS, frame(HEADERS, END_HEADERS | END_STREAM, 1,
                                 hpack.Encoder().encode([(":status", "200"), ("grpc-status", "0")])))
    results = feed.run(harness)
    assert [r["rc"] for r in results] == [0, 0, -1, -1, 0, 0, 1]
    assert "missed frames" in results[2]["why"] and "next preface" in results[3]["why"]
    assert results[6]["call"]["path"] == "/shop.Cart/Add"


@pytest.mark.parametrize("hdrs,why", [
    ([(":method", "G ET"), (":path", "/")], "not an HTTP token"),
    ([(":method", "GET"), (":path", "index.html")], "does not start with '/'"),
    ([(":method", "GET"), (":path", "*")], "does not start with '/'"),
    ([(":method", "CONNECT"), (":authority", "a:443")], "without :path"),
    ([(":path", "/x")], "without :method"),
    ([(":status", "200")], "without :method"),
    ([(":method", "GET"), ("accept", "*/*"), (":path", "/")], "pseudo-header after a regular"),
    ([(":method", "GET"), (":path", "/"), (":path", "/b")], "two :path"),
])
def test_false_positive_requests_rejected(harness: Path, hdrs: list, why: str) -> None:
    """Well-encoded blocks that are not valid requests are rejected, with the reason; the table
    stays in step (the next valid request on the connection is decoded)."""
    feed, enc = Feed(), hpack.Encoder()
    feed.event(2, EGRESS, PREFACE)
    feed.event(2, EGRESS, frame(HEADERS, END_HEADERS, 1, enc.encode(hdrs)))
    feed.event(2, EGRESS, frame(HEADERS, END_HEADERS, 3, enc.encode([(":method", "OPTIONS"), (":path", "*")])))
    feed.event(2, INGRESS, frame(HEADERS, END_HEADERS, 3, hpack.Encoder().encode([(":status", "204")])))
    results = feed.run(harness)
    assert results[1]["rc"] == -1 and why in results[1]["why"], results[1]
    assert results[3]["rc"] == 1 and results[3]["call"]["path"] == "*"


def test_garbage_is_rejected(harness: Path) -> None:
    """Random bytes and HTTP/1 text never become calls: without a preface they are refused, and
    after one they break the connection (until its next preface)."""
    rng = random.Random(1131)
    feed = Feed()
    http1 = b"GET /index.html HTTP/1.1\r\nHost: a\r\n\r\n"
    feed.event(11, EGRESS, http1)
    feed.event(12, EGRESS, bytes(rng.randrange(256) for _ in range(64)))
    feed.event(11, EGRESS, PREFACE)
    feed.event(11, EGRESS, http1)
    for conn in range(100, 400):
        feed.event(conn, EGRESS, PREFACE)
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        flags = rng.choice([END_HEADERS, END_HEADERS | END_STREAM, PADDED | END_HEADERS, PRIORITY | END_HEADERS])
        feed.event(conn, EGRESS, frame(HEADERS, flags, 1 + 2 * rng.randrange(4), body))
        feed.event(conn, INGRESS, frame(HEADERS, END_HEADERS | END_STREAM, 1, bytes([0x88])))
        feed.event(conn, EGRESS, bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40))))
    results = feed.run(harness)
    assert "no client preface" in results[0]["why"] and "no client preface" in results[1]["why"]
    assert results[3]["rc"] == -1 and "neither HEADERS nor CONTINUATION" in results[3]["why"]
    assert not calls(results)
    assert sum(r["rc"] == -1 for r in results) > 600


def test_preface_resets_state(harness: Path) -> None:
    """A preface on a known connection clears its streams (counted) and its HPACK tables."""
    feed, enc = Feed(), hpack.Encoder()
    feed.event(6, EGRESS, PREFACE)
    feed.event(6, EGRESS, frame(HEADERS, END_HEADERS, 1, enc.encode(GRPC_REQ)))
    feed.event(6, EGRESS, PREFACE)
    # The old encoder's dynamic index 62 would be stale now: a fresh table has no entry 62.
    feed.event(6, EGRESS, frame(HEADERS, END_HEADERS, 1, enc.encode(GRPC_REQ)))
    feed.stats()
    results = feed.run(harness)
    assert results[3]["rc"] == -1 and "index beyond" in results[3]["why"]
    assert results[4]["streams_evicted"] == 1


def test_non_grpc_completes_at_final_headers_and_skips_1xx(harness: Path) -> None:
    """Plain HTTP/2: 100-continue is not the answer; the 200 without END_STREAM completes the
    call; its trailers are absorbed. A long :path is cut at 255 bytes and flagged."""
    feed, enc_req, enc_resp = Feed(), hpack.Encoder(), hpack.Encoder()
    long_path = "/" + "p" * 300
    feed.event(8, EGRESS, PREFACE)
    feed.event(8, EGRESS, frame(HEADERS, END_HEADERS, 1, enc_req.encode(
        [(":method", "PUT"), (":path", long_path), ("expect", "100-continue")], huffman=False)), ts=100)
    feed.event(8, INGRESS, frame(HEADERS, END_HEADERS, 1, enc_resp.encode([(":status", "100")])), ts=200)
    feed.event(8, INGRESS, frame(HEADERS, END_HEADERS, 1, enc_resp.encode([(":status", "503")])), ts=900)
    feed.event(8, INGRESS, frame(HEADERS, END_HEADERS | END_STREAM, 1, enc_resp.encode([("x-trailer", "1")])))
    results = feed.run(harness)
    assert [r["rc"] for r in results] == [0, 0, 0, 1, 0]
    call = results[3]["call"]
    assert (call["method"], call["status"], call["grpc_status"], call["latency_ns"], call["path_cut"]) == (
        "PUT", 503, -1, 800, 1)
    assert call["path"] == long_path[:255]


def test_pending_streams_are_bounded(harness: Path) -> None:
    """130 unanswered requests on one connection: the 2 oldest are evicted and counted."""
    feed, enc_req, enc_resp = Feed(), hpack.Encoder(), hpack.Encoder()
    feed.event(10, EGRESS, PREFACE)
    for i in range(130):
        feed.event(10, EGRESS, frame(HEADERS, END_HEADERS | END_STREAM, 2 * i + 1,
                                     enc_req.encode([(":method", "GET"), (":path", f"/{i}")])))
    for i in range(130):
        feed.event(10, INGRESS, frame(HEADERS, END_HEADERS | END_STREAM, 2 * i + 1,
                                      enc_resp.encode([(":status", "200")])))
    feed.stats()
    results = feed.run(harness)
    assert [c["path"] for c in calls(results)] == [f"/{i}" for i in range(2, 130)]
    assert results[-1]["streams_evicted"] == 2


def test_connections_are_bounded_lru(harness: Path) -> None:
    """4096 connections are followed: the 4097th evicts the least recently used one."""
    feed, req = Feed(), hpack.Encoder().encode([(":method", "GET"), (":path", "/lru")])
    resp = hpack.Encoder().encode([(":status", "200")])
    for conn in range(1, 4097):
        feed.event(conn, EGRESS, PREFACE)
    feed.event(1, EGRESS, frame(HEADERS, END_HEADERS, 1, req))    # 1 used again: 2 is now LRU
    feed.event(5000, EGRESS, PREFACE)                             # evicts 2
    for conn in (1, 2, 3, 5000):
        feed.event(conn, INGRESS if conn == 1 else EGRESS,
                   frame(HEADERS, END_HEADERS | END_STREAM, 1, resp if conn == 1 else req))
    feed.stats()
    results = feed.run(harness)[4096:]
    assert [r["rc"] for r in results[:6]] == [0, 0, 1, -1, 0, 0]
    assert "no client preface" in results[3]["why"]
    assert results[6]["conns_evicted"] == 1
