"""Prometheus metrics for the loader process (``bpfdepot run --metrics HOST:PORT``).

Dependency-free: counters, gauges and histograms by label set, rendered in the text exposition format
0.0.4 and served by ``http.server`` in a daemon thread. One lock guards every value, so the
HTTP thread renders a consistent snapshot while the loader updates them. Hooks registered with
``on_scrape`` run right before each render (e.g. to sum per-CPU kernel counters).
With ``--labels`` a :class:`SeriesLabels` adds unit/pod labels to series keyed by a cgroup id.
"""

from __future__ import annotations

import math
import re
import socket
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

from loader.errors import BpfDepotError
from loader.sinks.prometheus_labels import SeriesLabels, with_series_labels

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")  # no colons; "__" prefix is Prometheus's own
_INDEX = (b'<html><head><title>bpfdepot loader</title></head><body><h1>bpfdepot loader</h1>'
          b'<p><a href="/metrics">Metrics</a></p></body></html>\n')


def metric_name(*parts: str) -> str:
    """``parts`` joined by "_", with what a metric or label name may not hold made "_"
    (a field path such as ``inner.count`` or ``slots[2]``)."""
    name = re.sub(r"[^a-zA-Z0-9_]", "_", "_".join(p for p in parts if p))
    return re.sub(r"_+$", "", re.sub(r"__+", "_", name)) or "_"


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _format_value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if isinstance(v, int) or (v.is_integer() and abs(v) < 2**53):  # exact as an integer
        return str(int(v))
    return repr(float(v))


class Child:
    """The value of one label set. For counters, ``set()`` takes an absolute total from a
    source (a per-CPU map sum, a worker's count) and adds its growth since the last ``set()``;
    a smaller total means the source restarted from zero, so all of it is new. The exported
    counter therefore never decreases."""

    __slots__ = ("_lock", "_counter", "_value", "_source")

    def __init__(self, lock: threading.Lock, counter: bool) -> None:
        self._lock, self._counter = lock, counter
        self._value: float = 0
        self._source: float = 0  # counters: the source's total at the last set()

    def inc(self, n: float = 1) -> None:
        if self._counter and n < 0:
            raise ValueError(f"a counter only goes up; inc({n}) is negative")
        with self._lock:
            self._value += n

    def set(self, v: float) -> None:
        with self._lock:
            if not self._counter:
                self._value = v
                return
            if v < 0:
                raise ValueError(f"a counter total cannot be negative, got {v}")
            self._value += v - self._source if v >= self._source else v
            self._source = v

    @property
    def value(self) -> float:
        with self._lock:
            return self._value


class Family:
    """One metric name, its help and type, and a child per label values."""

    def __init__(self, name: str, help: str, kind: Literal["counter", "gauge"],
                 labelnames: tuple[str, ...], lock: threading.Lock,
                 series: SeriesLabels | None = None) -> None:
        self.name, self.help, self.kind, self.labelnames = name, help, kind, labelnames
        self._lock = lock
        self._children: dict[tuple[str, ...], Child] = {}
        self._series = series
        self._plan = series.plan(name, labelnames) if series is not None else None
        self._admitted: set[tuple[str, ...]] = set()
        if not labelnames:  # an unlabelled metric exists (as 0) from the start
            self._children[()] = Child(lock, kind == "counter")

    def labels(self, **values: str) -> Child:
        if values.keys() != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels ({', '.join(self.labelnames)}), "
                             f"got ({', '.join(values)})")
        key = tuple(str(values[k]) for k in self.labelnames)
        with self._lock:
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = Child(self._lock, self.kind == "counter")
                if self._plan is not None and self._series.admit(self.name):
                    self._admitted.add(key)
        return child

    def _render(self, out: list[str]) -> None:
        """Append this family's lines; the caller holds the lock."""
        out.append(f"# HELP {self.name} {_escape_help(self.help)}\n# TYPE {self.name} {self.kind}\n")
        for key, child in self._children.items():
            pairs = ",".join(with_series_labels(
                [f'{k}="{_escape_label(v)}"' for k, v in zip(self.labelnames, key)], key,
                self._plan, self._series, self._admitted))
            out.append(f"{self.name}{{{pairs}}} " if pairs else f"{self.name} ")
            out.append(_format_value(child._value) + "\n")


class HistogramFamily:
    """A Prometheus histogram per label set: cumulative ``_bucket{le=...}`` counts over fixed
    upper bounds, then ``+Inf``, ``_sum`` (when the source knows it) and ``_count``."""

    kind = "histogram"

    def __init__(self, name: str, help: str, labelnames: tuple[str, ...],
                 bounds: tuple[float, ...], lock: threading.Lock,
                 series: SeriesLabels | None = None) -> None:
        self.name, self.help, self.labelnames, self.bounds = name, help, labelnames, bounds
        self._lock = lock
        self._series = series
        self._plan = series.plan(name, labelnames) if series is not None else None
        self._admitted: set[tuple[str, ...]] = set()
        # label values → [per-bucket counts (not cumulative), count, sum or None]
        self._children: dict[tuple[str, ...], list] = {}

    def observe(self, labels: dict[str, str], counts: list[int], *, count: int,
                total: float | None = None, add: bool) -> None:
        """Set (``add`` False: the source is cumulative) or add (a source reset after each
        read) one label set's bucket counts, aligned with ``bounds``; counts past the last
        bound belong to +Inf only."""
        key = tuple(str(labels[k]) for k in self.labelnames)
        counts = (list(counts) + [0] * len(self.bounds))[:len(self.bounds)]
        with self._lock:
            child = self._children.get(key)
            if child is None and self._plan is not None and self._series.admit(self.name):
                self._admitted.add(key)
            if child is None or not add:
                self._children[key] = [counts, count, total]
                return
            child[0] = [a + b for a, b in zip(child[0], counts)]
            child[1] += count
            child[2] = None if child[2] is None or total is None else child[2] + total

    def _render(self, out: list[str]) -> None:
        out.append(f"# HELP {self.name} {_escape_help(self.help)}\n# TYPE {self.name} histogram\n")
        for key, (counts, count, total) in self._children.items():
            pairs = with_series_labels(
                [f'{k}="{_escape_label(v)}"' for k, v in zip(self.labelnames, key)], key,
                self._plan, self._series, self._admitted)
            base = ",".join(pairs)
            running = 0
            for bound, n in zip(self.bounds, counts):
                running += n
                le = ",".join([*pairs, f'le="{_format_value(bound)}"'])
                out.append(f"{self.name}_bucket{{{le}}} {running}\n")
            le = ",".join([*pairs, 'le="+Inf"'])
            out.append(f"{self.name}_bucket{{{le}}} {count}\n")
            labels = f"{{{base}}}" if base else ""
            if total is not None:
                out.append(f"{self.name}_sum{labels} {_format_value(total)}\n")
            out.append(f"{self.name}_count{labels} {count}\n")


class Metrics:
    """Counters and gauges by label set; thread-safe reads while the loader updates them."""

    def __init__(self, *, series_labels: SeriesLabels | None = None) -> None:
        self._lock = threading.Lock()
        self._families: dict[str, Family] = {}
        self._hooks: list[Callable[[], None]] = []
        # --labels: unit/pod labels on series keyed by a cgroup id (rendered last)
        self.series_labels = series_labels

    def counter(self, name: str, help: str, labels: tuple[str, ...]) -> Family:
        return self._add(name, help, "counter", labels)

    def gauge(self, name: str, help: str, labels: tuple[str, ...]) -> Family:
        return self._add(name, help, "gauge", labels)

    def histogram(self, name: str, help: str, labels: tuple[str, ...],
                  bounds: tuple[float, ...]) -> HistogramFamily:
        """A histogram family with fixed bucket upper bounds (in the unit of its source)."""
        self._check(name, labels)
        with self._lock:
            if name in self._families:
                raise ValueError(f"metric {name} is already defined")
            family = HistogramFamily(name, help, tuple(labels), tuple(bounds), self._lock,
                                     self.series_labels)
            self._families[name] = family  # type: ignore[assignment]
        return family

    def family(self, name: str) -> Family | HistogramFamily | None:
        """The family called ``name``, if defined."""
        with self._lock:
            return self._families.get(name)

    def refresh(self) -> None:
        """Run the on_scrape hooks now, as a scrape would (``serve`` does it once at start)."""
        with self._lock:
            hooks = list(self._hooks)
        for fn in hooks:
            fn()

    def on_scrape(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` before every render, outside the lock, to refresh values."""
        with self._lock:
            self._hooks.append(fn)

    def render(self) -> bytes:
        """The exposition text: families in the order they were added."""
        with self._lock:
            hooks = list(self._hooks)
        for fn in hooks:
            fn()
        out: list[str] = []
        with self._lock:
            for family in self._families.values():
                family._render(out)
            if self.series_labels is not None:
                self.series_labels._render(out)
        return "".join(out).encode()

    def _add(self, name: str, help: str, kind: Literal["counter", "gauge"],
             labels: tuple[str, ...]) -> Family:
        self._check(name, labels)
        with self._lock:
            if name in self._families:
                raise ValueError(f"metric {name} is already defined")
            family = self._families[name] = Family(name, help, kind, tuple(labels), self._lock,
                                                   self.series_labels)
        return family

    def _check(self, name: str, labels: tuple[str, ...]) -> None:
        if isinstance(labels, str):
            raise TypeError(f"labels of {name} must be a tuple of names, not the string {labels!r}")
        if not _NAME.fullmatch(name):
            raise ValueError(f"bad metric name {name!r}: must match {_NAME.pattern}")
        for label in labels:
            if not _LABEL.fullmatch(label) or label.startswith("__"):
                raise ValueError(f"bad label name {label!r} in {name}: must match "
                                 f"{_LABEL.pattern} and not start with '__'")
        if len(set(labels)) != len(labels):
            raise ValueError(f"duplicate label names in {name}: {labels}")


@dataclass(frozen=True, slots=True, kw_only=True)
class LoaderMetrics:
    events_received: Family
    events_lost: Family
    records_delivered: Family
    sink_failures: Family
    processor_events: Family
    processor_restarts: Family
    processor_violations: Family
    processor_up: Family
    programs_attached: Family
    registry: Metrics | None = None   # where channels export their records (map channels)


def loader_families(m: Metrics) -> LoaderMetrics:
    """Define the standard bpfdepot families on ``m``."""
    pc = ("program", "channel")
    return LoaderMetrics(
        events_received=m.counter("bpfdepot_events_received_total",
                                  "Events read from the program's ring buffer.", pc),
        events_lost=m.counter("bpfdepot_events_lost_total",
                              "Events the program could not reserve in the ring buffer.", pc),
        records_delivered=m.counter("bpfdepot_records_delivered_total",
                                    "Records written by a sink.", (*pc, "sink")),
        sink_failures=m.counter("bpfdepot_sink_failures_total",
                                "Failed writes to a sink.", (*pc, "sink")),
        processor_events=m.counter("bpfdepot_processor_events_total",
                                   "Events through a processor by outcome (keep, drop, error, lost).",
                                   (*pc, "processor", "outcome")),
        processor_restarts=m.counter("bpfdepot_processor_restarts_total",
                                     "Restarts of a processor's workers.", ("processor",)),
        processor_violations=m.counter("bpfdepot_processor_violations_total",
                                       "Workers of a processor killed for writing a corrupt "
                                       "result frame.", ("processor",)),
        processor_up=m.gauge("bpfdepot_processor_up",
                             "1 while a processor worker runs, else 0.", ("processor", "worker")),
        programs_attached=m.gauge("bpfdepot_programs_attached",
                                  "Attach points of a program currently attached.", ("program",)),
        registry=m,
    )


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], metrics: Metrics) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.metrics = metrics
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), a reverse DNS lookup that can stall startup
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self._respond(body=True)

    def do_HEAD(self) -> None:
        self._respond(body=False)

    def _respond(self, *, body: bool) -> None:
        path = self.path.partition("?")[0]
        status, ctype, data = 200, CONTENT_TYPE, b""
        if path == "/metrics":
            try:
                data = self.server.metrics.render()
            except Exception as exc:  # a failing on_scrape hook: answer 500 so the target shows down
                status, ctype = 500, "text/plain; charset=utf-8"
                data = f"scrape failed: {exc!r}\n".encode()
        elif path == "/":
            ctype, data = "text/html; charset=utf-8", _INDEX
        else:
            status, ctype, data = 404, "text/plain; charset=utf-8", b"not found; see /metrics\n"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass  # a line per scrape would flood the loader's log


class MetricsServer:
    """The metrics endpoint running in a daemon thread; ``close()`` stops it."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="bpfdepot-metrics",
                                        kwargs={"poll_interval": 0.1}, daemon=True)  # s; bounds close()
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``:PORT`` (all interfaces); port 0 picks a free one."""
    host, sep, port = address.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if (not sep or not (port.isascii() and port.isdigit()) or int(port) > 65535
            or (":" in host and not bracketed)):
        raise BpfDepotError(f"bad metrics address '{address}': expected HOST:PORT or :PORT "
                            "with a port from 0 to 65535",
                            hint="e.g. --metrics 127.0.0.1:9435, or --metrics :9435 for all interfaces")
    return (host[1:-1] if bracketed else host), int(port)


def serve(metrics: Metrics, address: str) -> MetricsServer:
    """Serve ``metrics`` at http://ADDRESS/metrics until ``close()``.

    The on_scrape hooks run once first: the loader's hook hands the registry to the pipeline,
    so channels that export their records (map snapshots, histograms) do so from their first
    read, not from the first scrape."""
    try:
        metrics.refresh()
    except Exception:  # noqa: BLE001 - a failing hook answers 500 at each scrape instead
        pass
    try:
        server = _Server(parse_address(address), metrics)
    except OSError as exc:  # in use, not an address of this host, unresolvable name
        raise BpfDepotError(f"cannot serve metrics on '{address}': {exc.strerror or exc}",
                            hint="choose another port with --metrics HOST:PORT") from exc
    return MetricsServer(server)
