"""Map snapshots: reading a 10,000-entry hash map whole and decoding it to JSON records, against
a C loop of bpf_map_lookup_batch on the same map (no decoding) in the same run; and the CPU a
64-key histogram channel costs when read every second.

    python bench/bench_maps.py [--reps 7] [--seconds 20]

The object is bench/maps (built into a fresh store); its maps are filled from user space
(bpf_map_update_elem through ctypes). The hash map is pinned under /sys/fs/bpf for the C
baseline (bench/maps/batch_read.c, built with gcc in the run) and unpinned afterwards. Each
repetition runs the C reader (its own median of 20 reads) and bpfdepot's reader (the median of
20 reads: loader.libbpf.readers.MapReader.read into the channel's C encoder, then take() of the JSON
lines), back to back. The histogram part runs loader.outputs.histogram's reader in this process
every second for --seconds and reports its user+system CPU (time.process_time, which has ns
resolution where os.times() counts 10 ms ticks) as % of one CPU.
"""

from __future__ import annotations

import ctypes
import os
import random
import statistics
import struct
import sys
import time

import harness
from harness import BENCH, BPFFS, Row, build_blob, gcc, paired, run, scratch

ENTRIES = 10_000
HIST_KEYS = 64
INNER = 20  # reads per repetition, each side


def _libbpf() -> ctypes.CDLL:
    lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    lib.bpf_map_update_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64]
    lib.bpf_obj_pin.argtypes = [ctypes.c_int, ctypes.c_char_p]
    return lib


def _fill(lib: ctypes.CDLL, fd: int, items: list[tuple[bytes, bytes]]) -> None:
    for key, value in items:
        if lib.bpf_map_update_elem(fd, key, value, 0):
            raise SystemExit(f"bench: bpf_map_update_elem: {os.strerror(ctypes.get_errno())}")


class _NullSink:
    """Counts what it is given and drops it (the bench measures reading and decoding)."""

    name = "null"

    def __init__(self) -> None:
        from loader.sinks import SinkStats

        self._stats = SinkStats()

    def write_lines(self, stream: str, data: bytes, count: int) -> None:
        self._stats.delivered += count

    def stats(self):
        return self._stats

    def close(self):
        return self._stats


def measure(args) -> list[Row]:
    from loader.decoders.btf import encoder_for
    from loader.kernel.elf import read_object_file
    from loader.libbpf.core import BpfObject
    from loader.libbpf.encode import Channel
    from loader.libbpf.readers import MapReader
    from loader.outputs import ChannelContext
    from loader.outputs.hash_map import int_spans, map_def, open_reader
    from loader.outputs.histogram import HistogramReader
    from loader.pipeline import Pipeline

    harness.ensure_bpffs()
    lib = _libbpf()
    rows: list[Row] = []
    with scratch("maps") as tmp:
        blob = build_blob(BENCH / "maps", tmp / "home")
        baseline = gcc(BENCH / "maps" / "batch_read.c", tmp / "batch_read", "-lbpf")
        info = read_object_file(blob)
        obj = BpfObject(blob, label="maps")
        pin = BPFFS / f"bpfdepot-bench-maps-{os.getpid()}"
        try:
            obj.load()
            fd = obj.map_fd("entries")
            rnd = random.Random(1)
            _fill(lib, fd, [(struct.pack("<II", 1000 + i // 300, i % 300),
                             struct.pack("<QQ", rnd.randrange(1, 10**6), rnd.randrange(10**9)))
                            for i in range(ENTRIES)])
            if lib.bpf_obj_pin(fd, str(pin).encode()):
                raise SystemExit(f"bench: pin {pin}: {os.strerror(ctypes.get_errno())}")

            class Ctx:  # what open_reader needs of a ChannelContext
                name, program = "entries", "maps"

            Ctx.obj, Ctx.info = obj, info
            mdef = map_def(Ctx, "hash_map")
            channel = Channel(encoder=encoder_for(info.map_decoder("entries")))
            reader: MapReader = open_reader(Ctx, mdef, {}, spans=int_spans(info.btf, mdef.value_type_id))
            ours, theirs, lines = [], [], 0
            for _ in range(args.reps):
                out = run([str(baseline), str(pin), str(INNER)])
                ns, got = (int(x) for x in out.stdout.split())
                if got != ENTRIES:
                    raise SystemExit(f"bench: the C reader got {got} entries, not {ENTRIES}")
                theirs.append(ns / 1e9)
                times = []
                for _ in range(INNER):
                    t0 = time.perf_counter()
                    reader.read(channel)
                    data = channel.encoder.take()
                    times.append(time.perf_counter() - t0)
                lines = data.count(b"\n")
                ours.append(statistics.median(times))
            if lines != ENTRIES:
                raise SystemExit(f"bench: bpfdepot made {lines} records, not {ENTRIES}")
            ratio = paired(ours, theirs)
            rows.append(Row(metric=f"read {ENTRIES:,}-entry hash map → JSON records",
                            value=f"{statistics.median(ours) * 1000:.2f} ms",
                            baseline=f"{statistics.median(theirs) * 1000:.2f} ms (C lookup_batch, no decoding)",
                            ratio=ratio, goal="≤ 2×", met=ratio <= 2.0))
            print(f"  sample record: {data.splitlines()[0].decode()}; reads used batch ops: "
                  f"{reader.batch}", file=sys.stderr)

            # -- the histogram: 64 keys, read every second for --seconds -------------------
            hfd = obj.map_fd("hists")
            _fill(lib, hfd, [(struct.pack("<I", k), struct.pack("<27I", *[
                rnd.randrange(0, 1000) if i < 20 else 0 for i in range(27)]))
                for k in range(HIST_KEYS)])
            sink = _NullSink()
            pipeline = Pipeline(manifest=None, processors={}, open_sinks=lambda *a: [sink],
                                workers=lambda route: 1)
            ctx = ChannelContext(program="maps", name="hists", spec=None, obj=obj, info=info,
                                 pipeline=pipeline, options={"unit": "us", "interval": 1.0})
            hist = HistogramReader(ctx)
            hist.start()
            # process CPU time (user + system, ns resolution: os.times() ticks in 10 ms)
            before, t0 = time.process_time(), time.monotonic()
            deadline = t0 + args.seconds
            while True:
                now = time.monotonic()
                if now >= deadline:
                    break
                hist.read(now)
                time.sleep(max(0.0, min(hist.due() or deadline, deadline) - time.monotonic()))
            cpu, wall = time.process_time() - before, time.monotonic() - t0
            pct = 100 * cpu / wall
            per_read = cpu / max(1, hist.records // HIST_KEYS) * 1000
            rows.append(Row(metric=f"histogram, {HIST_KEYS} keys read every 1 s ({args.seconds:.0f} s)",
                            value=f"{pct:.3f}% of one CPU ({per_read:.2f} ms a read)",
                            goal="< 0.5%", met=pct < 0.5))
            if sink.stats().delivered != hist.records or hist.records < HIST_KEYS * (args.seconds - 1):
                raise SystemExit(f"bench: histogram records {hist.records}, delivered "
                                 f"{sink.stats().delivered}")
        finally:
            obj.close()
            pin.unlink(missing_ok=True)
    return rows


def add_args(p) -> None:
    p.add_argument("--seconds", type=float, default=20.0, help="histogram run length (default 20)")


if __name__ == "__main__":
    sys.exit(harness.main("bench_maps", measure, reps=7, add_args=add_args))
