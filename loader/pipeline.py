"""Where events go once they leave the kernel: decoding or processors, then sinks.

A channel without consumers in the manifest is decoded by default (BTF) or as its declared
fields, in C, into JSON lines. A channel with ``events:`` routes is framed in C for each route's
processor pool (loader/processors/workers.py), hashed by the route's ``hash`` field when it has one. Every
batch of records ends in ``Outlets.deliver`` for its stream, which hands it to that stream's
sinks. One ``poll`` loop moves all of it; nothing in it runs per event in Python.

While a ring buffer is busy the loop goes round on its reader's timer, at most every
MIN_ROUND_S: each round takes what the ring holds, writes each worker its frames in one write
and reads back all the records it has, so the loader and every worker wake once per round,
not per event nor per worker's reply (``pump``).

Streams are named "<program>.<channel>" (a Kafka topic and a TSDB stream each), with
".<processor>" added when a channel feeds more than one processor.

The counts add up (``Pipeline.report``): per channel, received + lost in the kernel is what the
program produced; per route, sent = kept + dropped + errors + bad + lost; per sink, kept records
are delivered or failed.
"""

from __future__ import annotations

import math
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from loader.decoders.btf import EventDecoder, encoder_for
from loader.errors import ManifestError
from loader.libbpf.encode import Channel, Op, RouteKey
from loader.model.manifest import ChannelSpec, EventRoute, Manifest
from loader.outputs import ChannelStats, Reader
from loader.sinks.prometheus import LoaderMetrics, Metrics
from loader.sinks import Record, Sink, SinkStats
from loader.processors.workers import Pool, Route, RouteCounts

WORKER_WAIT_S = 0.010  # the longest a worker's records wait for a timed round (see pump)
MIN_ROUND_S = 0.002    # rounds at most this often while a reader reads on its timer (see pump)
_SCALAR_KINDS = {1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 13, 14}  # every op but literals, bitfields,
# lists and jumps (a named enum hashes and keys by its number: the key encoder has no names)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessorRuntime:
    """A resolved user_so program: the library file and the hooks the host calls."""

    name: str
    so_path: str
    initfile: str | None
    init: str
    pre: str | None
    post: str | None
    abi: int
    default: str           # the function routes call when they name none


class Outlets:
    """The sinks of each stream; a sink may serve many streams."""

    def __init__(self) -> None:
        self.streams: dict[str, list[Sink]] = {}
        self.sinks: dict[str, Sink] = {}
        self.counts: dict[tuple[str, str], list[int]] = {}  # (stream, sink) → [delivered, failed]
        self.labels: dict[str, tuple[str, str]] = {}  # stream → (program, channel)
        # see every batch before its sinks do: (stream, lines, count); e.g. the stack collector
        # of ``bpfdepot run --flamegraph`` (loader/flamegraph/)
        self.taps: list[Callable[[str, bytes, int], None]] = []
        # applied to every batch before taps and sinks: ``--labels`` adds each record's labels
        # (loader/labels/run.py); it keeps the line count, so keys stay aligned
        self.stamp: Callable[[bytes], bytes] | None = None

    def add(self, stream: str, sinks: Sequence[Sink], program: str, channel: str) -> None:
        for sink in sinks:
            self.sinks.setdefault(sink.name, sink)
        self.streams[stream] = list(sinks)
        self.labels[stream] = (program, channel)

    def wants_keys(self, stream: str) -> bool:
        return any(not hasattr(s, "write_lines") for s in self.streams.get(stream, ()))

    def deliver(self, stream: str, lines: bytes, keys: bytes | None, count: int) -> None:
        if self.stamp is not None:
            lines = self.stamp(lines)
        for tap in self.taps:
            tap(stream, lines, count)
        records: list[Record] | None = None
        for sink in self.streams.get(stream, ()):
            before = sink.stats()
            if hasattr(sink, "write_lines"):
                sink.write_lines(stream, lines, count)
            else:
                if records is None:
                    values = lines.split(b"\n")[:-1]
                    names = keys.split(b"\n")[:-1] if keys is not None else [b""] * len(values)
                    records = [Record(k or None, v) for k, v in zip(names, values)]
                sink.write(stream, records)
            after = sink.stats()
            c = self.counts.setdefault((stream, sink.name), [0, 0])
            # a sink that confirms later (Kafka) counts at close: see close()
            c[0] += after.delivered - before.delivered
            c[1] += after.failed - before.failed

    def close(self) -> dict[str, SinkStats]:
        return {name: sink.close() for name, sink in self.sinks.items()}


@dataclass(slots=True)
class ChannelState:
    program: str
    name: str
    stream: str | None            # default decoding's stream
    channel: Channel
    routes: list[tuple[Pool, int, int]] = field(default_factory=list)  # pool, pool route, channel route


class Pipeline:
    """Channels, processor pools and outlets of one ``bpfdepot run``."""

    def __init__(self, *, manifest: Manifest | None, processors: dict[str, ProcessorRuntime],
                 open_sinks: Callable[[str, EventRoute | None, str, str], Sequence[Sink]],
                 workers: Callable[[EventRoute], int], hang_timeout: float = 5.0) -> None:
        self.manifest = manifest
        self.processors = processors
        self.open_sinks = open_sinks
        self.outlets = Outlets()
        self.pools: dict[str, Pool] = {}
        self.channels: list[ChannelState] = []
        self._workers = workers
        self._hang_timeout = hang_timeout
        self._specs: dict[str, ChannelSpec] = {c.name: c for c in manifest.channels} if manifest else {}
        self._when_loaded: list[Callable[[], None]] = []
        # the Prometheus registry once --metrics serves one (its server refreshes once before
        # anything loads, so channels that export their records see it when they open)
        self.metrics: Metrics | None = None
        self._round_at = 0.0  # when pump last read its readers

    # -- set-up (called by Session.start for each channel of each object) ---------------------

    def channel(self, program: str, name: str, decoder: EventDecoder) -> Channel:
        spec = self._specs.get(name)
        routes = spec.events if spec else ()
        if not routes:
            stream = f"{program}.{name}"
            self.outlets.add(stream, self.open_sinks(stream, None, program, name), program, name)
            enc = encoder_for(decoder)
            state = ChannelState(program=program, name=name, stream=stream,
                                 channel=Channel(encoder=enc))
            self.channels.append(state)
            return state.channel
        plans = []
        for route in routes:
            runtime = self.processors[route.name]
            pool = self._pool(runtime, route)
            stream = f"{program}.{name}" + (f".{route.name}" if len(routes) > 1 else "")
            if stream not in self.outlets.streams:
                self.outlets.add(stream, self.open_sinks(stream, route, program, name), program, name)
            index = pool.add_route(Route(channel=name, function=route.target_processor or
                                         runtime.default, stream=stream))
            key = route_key(decoder, route, name) if route.hash else None
            plans.append((pool, index, key))
        channel = Channel(event_size=decoder.size,
                          routes=[(key, pool.buffers, index) for pool, index, key in plans])
        state = ChannelState(program=program, name=name, stream=None, channel=channel,
                             routes=[(pool, index, n) for n, (pool, index, _) in enumerate(plans)])
        self.channels.append(state)
        return channel

    def records(self, program: str, name: str) -> Callable[[bytes, int], None]:
        """The stream "<program>.<name>" for records made in Python (e.g. iterator lines), with
        its sinks; the function returned delivers ``count`` newline-ended JSON lines to them."""
        stream = f"{program}.{name}"
        if stream not in self.outlets.streams:
            self.outlets.add(stream, self.open_sinks(stream, None, program, name), program, name)
        return lambda lines, count: self.outlets.deliver(stream, lines, None, count)

    def flush(self, channel: Channel, tap: Callable[[bytes], None] | None = None) -> None:
        """Deliver the lines ``channel``'s encoder holds now (a map read's records) to its
        sinks, showing them to ``tap`` first (a map channel's Prometheus export)."""
        enc = channel.encoder
        if enc is None or not enc.pending():
            return
        state = next(s for s in self.channels if s.channel is channel)
        data = enc.take()
        if tap is not None:
            tap(data)
        self.outlets.deliver(state.stream, data, None, data.count(b"\n"))

    def _pool(self, runtime: ProcessorRuntime, route: EventRoute) -> Pool:
        pool = self.pools.get(runtime.name)
        wanted = self._workers(route)
        if pool is None:
            pool = Pool(name=runtime.name, so_path=runtime.so_path, initfile=runtime.initfile,
                        init=runtime.init, pre=runtime.pre, post=runtime.post, abi=runtime.abi,
                        workers=wanted, hang_timeout=self._hang_timeout, keys=False,
                        deliver=self._deliver_route)
            self.pools[runtime.name] = pool
        elif wanted > len(pool.workers):
            raise ManifestError(
                f"processor '{runtime.name}' is asked for {wanted} workers at line {route.line} "
                f"but for {len(pool.workers)} by an earlier route",
                hint="give every route of one processor the same workers")
        return pool

    def when_loaded(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in ``start``: the objects are loaded and nothing is attached yet. A perf
        buffer opens its rings there, since the kernel drops (uncounted) what a program sends
        to a CPU no reader has opened yet."""
        self._when_loaded.append(fn)

    def start(self) -> None:
        """Run the when_loaded hooks, then start every processor pool (their init runs now: a
        failure stops the run here)."""
        for fn in self._when_loaded:
            fn()
        for pool in self.pools.values():
            pool.keys = any(self.outlets.wants_keys(r.stream) for r in pool.routes)
            pool.start()
        for state in self.channels:  # a hash field framed as text only for sinks that key records
            for pool, _, n in state.routes:
                state.channel.key_text(n, pool.keys)

    def _deliver_route(self, route: Route, lines: bytes, keys: bytes | None, count: int) -> None:
        self.outlets.deliver(route.stream, lines, keys, count)

    # -- the loop -------------------------------------------------------------------------

    def pump(self, readers: Sequence[Reader], timeout_ms: int) -> None:
        """Wait up to ``timeout_ms`` (less when a reader's read is due sooner) for anything to
        do, then move everything that is ready."""
        now = time.monotonic()
        dues = [d for d in (r.due() for r in readers) if d is not None]
        if dues:
            timeout_ms = max(0, min(timeout_ms, int((min(dues) - now) * 1000) + 1))
        # A reader on a short timer (a busy ring buffer) brings the loop round within
        # WORKER_WAIT_S anyway, and every worker's output is moved then: waking for each
        # worker's reply would cost a round (and a context switch) per reply and per worker.
        on_timer = bool(dues) and min(dues) - now <= WORKER_WAIT_S
        # Nor are the timed readers' fds polled within MIN_ROUND_S of the last round: a ring
        # buffer's fd stays readable while the ring holds anything (level-triggered epoll on
        # the map), so while events keep coming each poll would return at once and the loop
        # would spin, one round of a few events (and a write waking each worker) at a time.
        hold = on_timer and now - self._round_at < MIN_ROUND_S
        if hold:
            wait_ms = math.ceil((self._round_at + MIN_ROUND_S - now) * 1000)
            timeout_ms = min(timeout_ms, max(1, wait_ms))
        poller = select.poll()
        fds: dict[int, tuple[str, Pool | None, object]] = {}
        readable: dict[int, Reader] = {}
        for reader in readers:
            if hold and reader.due() is not None:
                continue
            for fd in reader.fds():
                poller.register(fd, select.POLLIN)
                readable[fd] = reader
        for pool in self.pools.values():
            for w in pool.workers:
                if w.proc is None:
                    continue
                poller.register(w.err_fd, select.POLLIN)
                fds[w.err_fd] = ("err", pool, w)
                if on_timer:
                    continue
                poller.register(w.from_fd, select.POLLIN)
                fds[w.from_fd] = ("out", pool, w)
                if w.pending:
                    poller.register(w.to_fd, select.POLLOUT)
                    fds[w.to_fd] = ("in", pool, w)
        try:
            ready = poller.poll(timeout_ms)
        except InterruptedError:
            ready = []
        now = self._round_at = time.monotonic()
        woken = {readable[fd] for fd, _ in ready if fd in readable}
        for reader in readers:
            due = reader.due()
            if reader in woken or (due is not None and due <= now) or reader.fds():
                reader.read(now)  # an event reader's read is a cheap consume: always run it
        self.move()
        for fd, _ in ready:
            kind, pool, w = fds.get(fd, ("", None, None))
            if kind == "err" and w.proc is not None:
                pool.read_stderr(w)
        now = time.monotonic()
        for pool in self.pools.values():
            pool.watch(now)

    def move(self) -> None:
        """Decoded lines to their sinks; records from the workers to theirs; frames to the
        workers last: a worker woken by its frames then finds the loader done with its round
        (on a shared core it would take over the loader mid-round)."""
        for state in self.channels:
            enc = state.channel.encoder
            if enc is not None and enc.pending():
                data = enc.take()
                self.outlets.deliver(state.stream, data, None, data.count(b"\n"))
        for pool in self.pools.values():
            for w in pool.workers:
                if w.proc is not None and not pool.read_ready(w):
                    pool.reap(w)
        for pool in self.pools.values():
            pool.take_dispatched()
            for w in pool.workers:
                if w.proc is not None and w.pending:
                    pool.write_ready(w)

    def run(self, readers: Sequence[Reader], *, duration: float | None,
            on_attached: Callable[[], None] | None = None,
            stop: StopSignal | None = None) -> float:
        """Move events until ``duration`` seconds, ``stop`` (the agent's unload: it wakes the
        poll at once) or, on the main thread, Ctrl-C or SIGTERM; return the seconds run."""
        stopped = False

        def _stop(signum: int, frame: object) -> None:
            nonlocal stopped
            stopped = True

        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        waker = [stop] if stop is not None else []
        started = time.monotonic()
        deadline = started + duration if duration is not None else None
        try:
            if on_attached:
                on_attached()
            while not stopped and not (stop is not None and stop.is_set()):
                wait_ms = 100 if stop is None else 1000  # the stop signal wakes the poll
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    wait_ms = max(1, min(wait_ms, int(left * 1000)))
                self.pump([*readers, *waker], wait_ms)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return time.monotonic() - started

    def drain(self, timeout_s: float = 30.0) -> None:
        """After detach: hand every event to its worker, close their input, collect the rest."""
        self.move()
        deadline = time.monotonic() + timeout_s
        for pool in self.pools.values():
            pool.closing = True
        while time.monotonic() < deadline:
            busy = False
            for pool in self.pools.values():
                for w in pool.workers:
                    if w.proc is None:
                        if w.pending and time.monotonic() >= w.restart_at:
                            pool.restart(w)  # a dead worker with work left: once more
                        busy = busy or bool(w.pending)
                        continue
                    busy = True
                    if not w.pending and w.to_fd >= 0:
                        os.close(w.to_fd)  # end of input: it finishes and exits
                        w.to_fd = -1
            if not busy:
                break
            self.pump((), 20)
        for pool in self.pools.values():
            for w in pool.workers:
                if w.pending:
                    for data, _ in w.pending:
                        pool._lose(data, f"processor '{pool.name}' was not running at stop")
                    w.pending.clear()
            pool.stop(kill=True)

    # -- the counts -----------------------------------------------------------------------

    def refresh_metrics(self, fam: LoaderMetrics, channels: Sequence[ChannelStats]) -> None:
        """Set the loader's Prometheus families from the counts (called at each scrape)."""
        self.metrics = fam.registry
        for stats in channels:
            labels = {"program": stats.program, "channel": stats.channel}
            fam.events_received.labels(**labels).set(stats.received)
            fam.events_lost.labels(**labels).set(stats.lost)
        for state, pool, c in self.route_counts():
            for outcome, n in (("keep", c.kept), ("drop", c.dropped),
                               ("error", c.errors + c.bad), ("lost", c.lost)):
                fam.processor_events.labels(program=state.program, channel=state.name,
                                            processor=pool.name, outcome=outcome).set(n)
        for pool in self.pools.values():
            fam.processor_restarts.labels(processor=pool.name).set(pool.restarts)
            fam.processor_violations.labels(processor=pool.name).set(pool.violations)
            for w in pool.workers:
                fam.processor_up.labels(processor=pool.name, worker=str(w.index)).set(
                    1 if w.proc is not None and w.handled()[2] else 0)
        for (stream, sink), (delivered, failed) in list(self.outlets.counts.items()):
            program, channel = self.outlets.labels[stream]
            fam.records_delivered.labels(program=program, channel=channel, sink=sink).set(delivered)
            fam.sink_failures.labels(program=program, channel=channel, sink=sink).set(failed)

    def route_counts(self) -> list[tuple[ChannelState, Pool, RouteCounts]]:
        out = []
        for state in self.channels:
            for pool, index, n in state.routes:
                c = pool.counts_of(index)
                c.sent = state.channel.sent(n)
                out.append((state, pool, c))
        return out


def route_key(decoder: EventDecoder, route: EventRoute, channel: str) -> RouteKey:
    """The op that prints the route's ``hash`` field, from the event's decoder."""
    wanted = f'"{route.hash}":'.encode()
    top = [op for op in decoder.ops if op.prefix.endswith(wanted) and op.prefix.count(b'"') == 2]
    if not top or top[0].kind not in _SCALAR_KINDS:
        names = [f.name for f in decoder.fields if "." not in f.name and "[" not in f.name]
        raise ManifestError(
            f"hash field '{route.hash}' of the route to '{route.name}' (line {route.line}) is not "
            f"a scalar field of struct {decoder.struct} on channel '{channel}'",
            hint=f"hash on one of: {', '.join(names)}")
    op = top[0]
    size = 16 if op.kind == 8 else op.size  # ip by family: hash the 16 address bytes
    return RouteKey(op=Op(kind=op.kind, offset=op.offset, size=op.size, aux=op.aux,
                          aux_size=op.aux_size), size=size)


class StopSignal:
    """Stops a run from another thread and wakes its poll at once: a pipe whose read end the
    loop polls like a reader's fd (``set`` writes one byte). Looks like a Reader with nothing
    to read, so ``pump`` needs no special case."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._set = False

    def set(self) -> None:
        if not self._set:
            self._set = True
            try:
                os.write(self._w, b"x")
            except OSError:
                pass  # closed: the run is over anyway

    def is_set(self) -> bool:
        return self._set

    def fds(self) -> Sequence[int]:
        return (self._r,)

    def due(self) -> float | None:
        return None

    def read(self, now: float) -> None:
        pass  # the byte stays: the fd stays readable until the loop sees is_set()

    def close(self) -> None:
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._r = self._w = -1
