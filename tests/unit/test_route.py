"""The C side of processor routes on raw bytes: framing by hash key, and parsing the results."""

from __future__ import annotations

import os
import struct

import pytest

from loader.decoders.btf import OP_CHARS, OP_U
from loader.libbpf.encode import Channel, Op, ResultParser, RouteKey, WorkerBuffer, frames_span
from loader.processors.workers import frame_routes

EVENT = struct.Struct("<QI4s")  # seq, pid, comm (a made-up 16-byte event)


def event(seq: int, pid: int, comm: bytes = b"sh") -> bytes:
    return EVENT.pack(seq, pid, comm)


def frames(data: bytes) -> list[tuple[int, int, bytes, bytes]]:
    """(size, route, key, event) of each input frame."""
    out, at = [], 0
    while at < len(data):
        size, route, klen, _ts = struct.unpack_from("<IHHQ", data, at)
        key = data[at + 16:at + 16 + klen]
        out.append((size, route, key, data[at + 16 + klen:at + 16 + klen + size]))
        at += 16 + klen + size
    return out


def test_events_with_one_key_meet_one_worker_in_order() -> None:
    workers = [WorkerBuffer() for _ in range(3)]
    key = RouteKey(op=Op(kind=OP_U, offset=8, size=4), size=4)
    channel = Channel(event_size=EVENT.size, routes=[(key, workers, 7)])
    for seq in range(60):
        channel.feed(event(seq, pid=100 + seq % 5))
    got = [workers[i].take() for i in range(3)]
    assert sum(n for _, n in got) == 60 == channel.events == channel.sent(0)
    seen: dict[bytes, int] = {}
    for index, (data, n) in enumerate(got):
        parsed = frames(data)
        assert len(parsed) == n
        for size, route, k, raw in parsed:
            assert (size, route) == (EVENT.size, 7)
            assert k == str(EVENT.unpack(raw)[1]).encode()  # the key as text
            assert seen.setdefault(k, index) == index   # one key, one worker
        for k in {f[2] for f in parsed}:
            seqs = [EVENT.unpack(f[3])[0] for f in parsed if f[2] == k]
            assert seqs == sorted(seqs)
    assert len(set(seen.values())) >= 2  # 5 keys spread over the workers
    assert workers[0].take() == (b"", 0)  # taken means emptied


def test_string_keys_lose_their_quotes_and_unkeyed_routes_take_turns() -> None:
    keyed, turns = [WorkerBuffer()], [WorkerBuffer(), WorkerBuffer()]
    key = RouteKey(op=Op(kind=OP_CHARS, offset=12, size=4), size=4)
    channel = Channel(event_size=EVENT.size, routes=[(key, keyed, 0), (None, turns, 1)])
    for seq in range(4):
        channel.feed(event(seq, 1, b'a"b'))
    assert {f[2] for f in frames(keyed[0].take()[0])} == {b'a\\"b'}
    assert [n for _, n in (t.take() for t in turns)] == [2, 2]
    channel.feed(b"\x01" * 8)  # shorter than the struct: passed on (the processor checks size)
    assert channel.short_events == 1
    assert frames(keyed[0].take()[0])[0][2] == b""  # no key where the field is missing


def test_a_route_without_key_text_shards_alike_and_frames_no_key() -> None:
    key = RouteKey(op=Op(kind=OP_U, offset=8, size=4), size=4)
    texts, bare = [WorkerBuffer() for _ in range(3)], [WorkerBuffer() for _ in range(3)]
    channel = Channel(event_size=EVENT.size, routes=[(key, texts, 0), (key, bare, 1)])
    channel.key_text(1, False)  # no sink keys this route's records: the text is never made
    for seq in range(30):
        channel.feed(event(seq, pid=100 + seq % 5))
    for with_text, without in zip(texts, bare):
        a, b = frames(with_text.take()[0]), frames(without.take()[0])
        assert [f[3] for f in a] == [f[3] for f in b]  # the same events on the same worker
        assert all(f[2] for f in a) and not any(f[2] for f in b)


def test_frames_span_stops_at_whole_frames() -> None:
    workers = [WorkerBuffer()]
    channel = Channel(event_size=EVENT.size, routes=[(None, workers, 0)])
    for seq in range(3):
        channel.feed(event(seq, 1))
    data, _ = workers[0].take()
    one = 16 + EVENT.size
    assert frames_span(data, len(data)) == (3 * one, 3)
    assert frames_span(data, 2 * one + 5) == (2 * one, 2)
    assert frames_span(data, len(data), 1) == (one, 1)
    assert [r for _, _, r in frame_routes(data)] == [0, 0, 0]


MARKER = 0xBDF5E9A1  # the first four bytes of every output frame
RESULT = struct.Struct("<IIIHBb")  # marker, seq, len, key_len, route, rc


def result(route: int, rc: int, value: bytes = b"", key: bytes = b"", *, seq: int) -> bytes:
    """One output frame as the host writes it."""
    return RESULT.pack(MARKER, seq, len(value), len(key), route, rc) + key + value


def results(*frames: tuple) -> bytes:
    """Output frames numbered from 0, as one host incarnation answers its events in order."""
    return b"".join(result(*f, seq=n) for n, f in enumerate(frames))


def test_results_split_by_route_and_outcome_across_reads() -> None:
    parser = ResultParser(2, keys=True)
    stream = results((0, 0, b'{"a":1}', b"k1"), (1, 0, b'{"b":2}'), (0, 1), (0, -1),
                     (1, 0, b'{"bad":"\n"}'), (1, 0, b""), (0, 0, b'{"a":3}'))
    cut = 11  # inside the first header: the parser keeps the partial one for the next read
    assert parser.feed(stream[:cut]) == 0 and parser.partial == cut
    assert parser.feed(stream[cut:]) == 7 and parser.frames == 7
    assert parser.violation is None and parser.partial == 0
    assert parser.take(0) == (b'{"a":1}\n{"a":3}\n', b"k1\n\n")
    assert parser.take(1) == (b'{"b":2}\n', b"\n")
    assert parser.counts(0) == (2, 1, 1, 0)   # kept, dropped, errors, bad
    assert parser.counts(1) == (1, 0, 0, 2)   # a newline inside, or an empty record: bad
    assert parser.take(0) == (b"", b"")
    parser.close()


GOOD = results((0, 0, b'{"a":1}', b"k1"), (1, 1))  # two valid frames: 25 + 16 bytes
AFTER = result(0, 0, b'{"a":9}', seq=3)             # a valid-looking frame behind the bad one


@pytest.mark.parametrize(("bad", "why"), [
    (b"garbage!" * 4, "bad marker 0x62726167 at byte 41"),
    (result(0, 0, b'{"a":2}', seq=5), "sequence number 5 where 2 was due at byte 41"),
    (result(0, 0, b'{"a":2}', seq=0), "sequence number 0 where 2 was due at byte 41"),
    (RESULT.pack(MARKER, 2, 0xFFFFFFF0, 0, 0, 0),
     "record length 4294967280 over the 65536 bytes a worker can write at byte 41"),
    (RESULT.pack(MARKER, 2, 7, 513, 0, 0) + b"k" * 513 + b'{"a":2}',
     "key length 513 over the 512 bytes a worker can write at byte 41"),
    (result(2, 0, b'{"a":2}', seq=2), "route 2 (the worker has 2) at byte 41"),
    (result(0, 7, seq=2), "outcome 7 (not -1, 0 or 1) at byte 41"),
    (result(0, -2, seq=2), "outcome -2 (not -1, 0 or 1) at byte 41"),
], ids=["marker", "seq-ahead", "seq-again", "length", "key-length", "route", "rc-high", "rc-low"])
def test_a_frame_the_host_cannot_write_stops_the_parser(bad: bytes, why: str) -> None:
    parser = ResultParser(2, keys=True)
    assert len(GOOD) == 41
    assert parser.feed(GOOD + bad + AFTER) == 2  # the frames before it are delivered
    assert parser.violation == why and parser.violation_at == 41
    assert parser.take(0) == (b'{"a":1}\n', b"k1\n")
    assert parser.counts(0) == (1, 0, 0, 0) and parser.counts(1) == (0, 1, 0, 0)
    assert parser.feed(result(0, 0, b'{"a":3}', seq=2)) == 0  # nothing after it is trusted
    assert parser.frames == 2 and parser.partial == 0 and parser.take(0) == (b"", b"")
    parser.close()


def test_a_huge_length_is_refused_from_its_header_without_waiting_for_the_body() -> None:
    parser = ResultParser(1, keys=False)
    stream = results((0, 0, b'{"a":1}')) + RESULT.pack(MARKER, 1, 1 << 31, 0, 0, 0)
    assert parser.feed(stream[:30]) == 1 and parser.violation is None
    assert parser.feed(stream[30:]) == 0  # only the header has come: refused all the same
    assert parser.violation == "record length 2147483648 over the 65536 bytes a worker can " \
                               "write at byte 23"
    parser.close()


def test_the_violation_offset_counts_the_whole_stream_across_reads() -> None:
    parser = ResultParser(1, keys=False)
    stream = results(*[(0, 0, b'{"n":%d}' % i) for i in range(10)])
    for at in range(0, len(stream), 7):  # reads that cut headers and records anywhere
        parser.feed(stream[at:at + 7])
    assert parser.frames == 10 and parser.violation is None
    parser.feed(b"\x00" * 3)
    assert parser.violation is None and parser.partial == 3  # less than a header: wait
    parser.feed(b"\x00" * 13)
    assert parser.violation == f"bad marker 0x00000000 at byte {len(stream)}"
    assert parser.take(0)[0].count(b"\n") == 10
    parser.close()


def test_output_read_from_a_pipe_in_pieces_with_record_counts() -> None:
    parser = ResultParser(2, keys=False)
    stream = results(*[(n % 2, 0 if n % 3 else 1, b'{"n":%d}' % n) for n in range(3000)])
    r, w = os.pipe2(os.O_NONBLOCK)
    try:
        got: list[bytes] = [b"", b""]
        counts = [0, 0]
        for at in range(0, len(stream), 4093):  # writes that cut frames anywhere
            os.write(w, stream[at:at + 4093])
            assert parser.read_from(r) > 0
            for route in (0, 1):
                lines, _, n = parser.take_records(route)
                got[route] += lines
                counts[route] += n
        with pytest.raises(BlockingIOError):
            parser.read_from(r)  # nothing more yet
        os.close(w)
        w = -1
        assert parser.read_from(r) == 0  # the end of the output
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    kept = [n for n in range(3000) if n % 3]
    assert parser.frames == 3000 and parser.partial == 0 and parser.violation is None
    assert got[0] == b"".join(b'{"n":%d}\n' % n for n in kept if n % 2 == 0)
    assert got[1] == b"".join(b'{"n":%d}\n' % n for n in kept if n % 2 == 1)
    assert counts == [got[0].count(b"\n"), got[1].count(b"\n")]
    parser.close()
