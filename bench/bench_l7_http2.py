"""HTTP/2 + HPACK parsing in the L7 processor: bpf/l7/l7_http2.h (C, per-connection tables,
stream pairing) against the PyPI ``hpack`` Decoder (the pure-Python decode the catalog named as
the simple way), on the same frames: a real grpcio exchange (tests/unit/l7_grpc_exchange.json:
two calls, grpc-core's own HPACK choices) replayed on CONNS connections interleaved, the frames
as the kernel side sends them (preface, HEADERS, CONTINUATION). Both sides decode every header
block; the C side also pairs streams and completes calls, the baseline only decodes and picks
:path and grpc-status. No BPF program is loaded (root is still asked for by the harness).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness
from harness import ROOT, Row, median, paired

EXCHANGE = ROOT / "tests" / "unit" / "l7_grpc_exchange.json"
SOURCE = ROOT / "bench" / "l7_http2" / "bench_h2.c"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CONNS = 1000
ROUNDS = 5  # passes of the C parser per sample (each pass starts every connection again)


def client_frames() -> list[tuple[int, bytes]]:
    """(dir, frame) of the recorded exchange as the client's kernel side sends them."""
    recorded = json.loads(EXCHANGE.read_text())
    out, pending = [], {"client": b"", "server": b""}
    for side, hexed in recorded["chunks"]:
        raw, cut = pending[side] + bytes.fromhex(hexed), 0
        if raw.startswith(PREFACE):
            out.append((1, PREFACE))
            cut = len(PREFACE)
        while len(raw) - cut >= 9 and len(raw) - cut >= 9 + int.from_bytes(raw[cut:cut + 3], "big"):
            size = 9 + int.from_bytes(raw[cut:cut + 3], "big")
            if raw[cut + 3] in (1, 9):
                out.append((1 if side == "client" else 2, raw[cut:cut + size]))
            cut += size
        pending[side] = raw[cut:]
    return out


def python_decode(events: list[tuple[int, int, bytes]]) -> int:
    """Baseline: one hpack.Decoder per connection and direction; returns the trailers seen."""
    import hpack

    decoders: dict[tuple[int, int], hpack.Decoder] = {}
    done = 0
    for conn, direction, raw in events:
        if raw == PREFACE:
            decoders[(conn, 1)], decoders[(conn, 2)] = hpack.Decoder(), hpack.Decoder()
            continue
        fields = dict(decoders[(conn, direction)].decode(raw[9:], raw=True))
        if b"grpc-status" in fields and b":path" not in fields:
            done += 1
    return done


def measure(args: argparse.Namespace) -> list[Row]:
    frames = client_frames()
    events = [(conn, d, raw) for d_raw in enumerate(frames) for conn in range(1, CONNS + 1)
              for _, (d, raw) in [d_raw]]
    text = "".join(f"{c} {d} {1000 + i} {len(raw)} {raw.hex()}\n" for i, (c, d, raw) in enumerate(events))
    with tempfile.TemporaryDirectory(prefix="bench-h2-") as tmp:
        binary = Path(tmp) / "bench_h2"
        harness.run(["gcc", "-O2", "-Wall", "-Werror", f"-I{ROOT / 'bpf' / 'l7'}", "-o", str(binary),
                     str(SOURCE)])
        c_per, py_per, c_calls, py_done = [], [], 0, 0
        for _ in range(args.reps):
            out = json.loads(subprocess.run([str(binary), str(ROUNDS)], input=text, text=True,
                                            capture_output=True, check=True).stdout)
            assert out["rejected"] == 0, out
            c_calls = out["calls"] // ROUNDS
            c_per.append(out["seconds"] / out["frames"])
            t0 = time.perf_counter()
            py_done = python_decode(events)
            py_per.append((time.perf_counter() - t0) / len(events))
    print(f"  {len(events)} frame events on {CONNS} connections: C calls {c_calls}, "
          f"Python trailers decoded {py_done}")
    return [Row(metric=f"HTTP/2 header frame → HPACK decoded ({len(frames)} per gRPC connection, "
                       f"{CONNS} connections)",
                value=f"{median(c_per) * 1e9:.0f} ns/frame (calls {c_calls})",
                baseline=f"{median(py_per) * 1e9:.0f} ns/frame (PyPI hpack Decoder, decode only)",
                ratio=paired(c_per, py_per), goal="≤ 0.2×", met=paired(c_per, py_per) <= 0.2)]


if __name__ == "__main__":
    sys.exit(harness.main("bench_l7_http2", measure, reps=5))
