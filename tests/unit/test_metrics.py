"""The Prometheus exporter: exact exposition text, escaping, counters fed from totals, threads,
and the HTTP endpoint on a free loopback port."""

from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.request

import pytest

from loader.errors import BpfDepotError
from loader.sinks.prometheus import CONTENT_TYPE, Metrics, loader_families, serve


def test_render_is_the_exposition_text() -> None:
    m = Metrics()
    received = m.counter("bpfdepot_events_received_total", "Events read.", ("program", "channel"))
    up = m.gauge("bpfdepot_processor_up", "1 while up.", ("processor", "worker"))
    ratio = m.gauge("ratio", "No labels.", ())
    received.labels(program="tcp_connlat", channel="events").inc()
    received.labels(program="tcp_connlat", channel="events").inc(41)
    received.labels(channel="lost", program="tcp_connlat").inc(2.0)
    up.labels(processor="enrich", worker="0").set(1)
    ratio.labels().set(0.25)
    assert m.render().decode() == (
        "# HELP bpfdepot_events_received_total Events read.\n"
        "# TYPE bpfdepot_events_received_total counter\n"
        'bpfdepot_events_received_total{program="tcp_connlat",channel="events"} 42\n'
        'bpfdepot_events_received_total{program="tcp_connlat",channel="lost"} 2\n'
        "# HELP bpfdepot_processor_up 1 while up.\n"
        "# TYPE bpfdepot_processor_up gauge\n"
        'bpfdepot_processor_up{processor="enrich",worker="0"} 1\n'
        "# HELP ratio No labels.\n"
        "# TYPE ratio gauge\n"
        "ratio 0.25\n")


def test_special_values() -> None:
    m = Metrics()
    g = m.gauge("g", "h", ("k",))
    for k, v in [("nan", float("nan")), ("inf", float("inf")), ("ninf", float("-inf")),
                 ("neg", -3.0), ("big", 2**64), ("small", 1e-9)]:
        g.labels(k=k).set(v)
    assert m.render().decode().splitlines()[2:] == [
        'g{k="nan"} NaN', 'g{k="inf"} +Inf', 'g{k="ninf"} -Inf', 'g{k="neg"} -3',
        'g{k="big"} 18446744073709551616', 'g{k="small"} 1e-09']


def test_label_values_and_help_are_escaped() -> None:
    m = Metrics()
    m.counter("c_total", 'a \\ back\nslash "quoted"', ("path",)).labels(path='C:\\x "y"\nz').inc()
    assert m.render().decode() == (
        '# HELP c_total a \\\\ back\\nslash "quoted"\n'
        "# TYPE c_total counter\n"
        'c_total{path="C:\\\\x \\"y\\"\\nz"} 1\n')


@pytest.mark.parametrize(("name", "labels", "error"), [
    ("1st", (), "bad metric name '1st': must match [a-zA-Z_:][a-zA-Z0-9_:]*"),
    ("a-b", (), "bad metric name 'a-b'"),
    ("ok:name", ("a:b",), "bad label name 'a:b' in ok:name"),
    ("ok", ("__name__",), "bad label name '__name__' in ok"),
    ("ok", ("a", "a"), "duplicate label names in ok"),
])
def test_bad_names_are_rejected(name: str, labels: tuple[str, ...], error: str) -> None:
    with pytest.raises(ValueError) as info:
        Metrics().counter(name, "h", labels)
    assert str(info.value).startswith(error)


def test_labels_are_cached_and_checked() -> None:
    m = Metrics()
    f = m.counter("c_total", "h", ("program", "channel"))
    assert f.labels(program="p", channel="c") is f.labels(channel="c", program="p")
    with pytest.raises(ValueError) as info:
        f.labels(program="p")
    assert str(info.value) == "c_total takes labels (program, channel), got (program)"
    with pytest.raises(ValueError, match="already defined"):
        m.gauge("c_total", "h", ())
    with pytest.raises(TypeError, match="tuple of names"):
        m.gauge("g", "h", "program")  # type: ignore[arg-type]


def test_counter_set_takes_absolute_totals_and_never_decreases() -> None:
    c = Metrics().counter("c_total", "h", ()).labels()
    c.set(10)
    c.set(15)
    assert c.value == 15
    c.set(4)  # the source restarted from zero: 4 new events
    assert c.value == 19
    c.inc()
    c.set(6)
    assert c.value == 22
    with pytest.raises(ValueError, match="only goes up"):
        c.inc(-1)
    g = Metrics().gauge("g", "h", ()).labels()
    g.set(5)
    g.inc(-2)
    g.set(1)
    assert g.value == 1


def test_on_scrape_runs_before_render() -> None:
    m = Metrics()
    attached = loader_families(m).programs_attached
    m.on_scrape(lambda: attached.labels(program="biolatency").set(3))
    assert b'bpfdepot_programs_attached{program="biolatency"} 3\n' in m.render()


def test_increments_from_two_threads_add_up() -> None:
    m = Metrics()
    f = m.counter("c_total", "h", ("t",))
    start = threading.Barrier(3)

    def bump() -> None:
        start.wait()
        for i in range(20_000):
            f.labels(t=str(i % 2)).inc()

    threads = [threading.Thread(target=bump) for _ in range(2)]
    for t in threads:
        t.start()
    start.wait()
    while any(t.is_alive() for t in threads):
        m.render()  # reads while the writers run
    for t in threads:
        t.join()
    assert f.labels(t="0").value + f.labels(t="1").value == 40_000
    assert b'c_total{t="0"} 20000\nc_total{t="1"} 20000\n' in m.render()


def test_loader_families_names_and_types() -> None:
    m = Metrics()
    fams = loader_families(m)
    fams.processor_events.labels(program="p", channel="c", processor="x", outcome="drop").inc()
    lines = [line for line in m.render().decode().splitlines() if line.startswith("# TYPE")]
    assert lines == [
        "# TYPE bpfdepot_events_received_total counter",
        "# TYPE bpfdepot_events_lost_total counter",
        "# TYPE bpfdepot_records_delivered_total counter",
        "# TYPE bpfdepot_sink_failures_total counter",
        "# TYPE bpfdepot_processor_events_total counter",
        "# TYPE bpfdepot_processor_restarts_total counter",
        "# TYPE bpfdepot_processor_violations_total counter",
        "# TYPE bpfdepot_processor_up gauge",
        "# TYPE bpfdepot_programs_attached gauge",
    ]
    assert fams.records_delivered.labelnames == ("program", "channel", "sink")
    assert fams.processor_up.labelnames == ("processor", "worker")


def _fetch(url: str, method: str = "GET") -> tuple[int, str, bytes]:
    with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as r:
        return r.status, r.headers["Content-Type"], r.read()


def test_serve_on_a_free_port() -> None:
    m = Metrics()
    m.counter("c_total", "h", ()).labels().inc(7)
    with serve(m, "127.0.0.1:0") as server:
        host, port = server.address
        assert host == "127.0.0.1" and port > 0
        base = f"http://127.0.0.1:{port}"
        assert _fetch(base + "/metrics") == (200, CONTENT_TYPE, m.render())
        assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")
        status, ctype, body = _fetch(base + "/")
        assert (status, ctype) == (200, "text/html; charset=utf-8") and b'href="/metrics"' in body
        with urllib.request.urlopen(urllib.request.Request(base + "/metrics", method="HEAD")) as r:
            assert (r.status, r.headers["Content-Type"], r.read()) == (200, CONTENT_TYPE, b"")
            assert int(r.headers["Content-Length"]) == len(m.render())
        with pytest.raises(urllib.error.HTTPError) as info:
            _fetch(base + "/nope")
        assert info.value.code == 404


def test_a_failing_scrape_hook_answers_500() -> None:
    m = Metrics()
    m.on_scrape(lambda: 1 / 0)  # type: ignore[func-returns-value]
    with serve(m, "127.0.0.1:0") as server:
        with pytest.raises(urllib.error.HTTPError) as info:
            _fetch(f"http://127.0.0.1:{server.address[1]}/metrics")
        assert info.value.code == 500 and b"ZeroDivisionError" in info.value.read()


def test_port_only_means_all_interfaces() -> None:
    with serve(Metrics(), ":0") as server:
        assert server.address[0] == "0.0.0.0"


@pytest.mark.parametrize("address", ["abc", "127.0.0.1:70000", "127.0.0.1:x", "127.0.0.1:", "::1:80"])
def test_bad_address_names_it(address: str) -> None:
    with pytest.raises(BpfDepotError) as info:
        serve(Metrics(), address)
    assert info.value.message == (f"bad metrics address '{address}': expected HOST:PORT or :PORT "
                                  "with a port from 0 to 65535")
    assert info.value.hint == "e.g. --metrics 127.0.0.1:9435, or --metrics :9435 for all interfaces"


def test_port_in_use_names_the_address_and_the_fix() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(BpfDepotError) as info:
            serve(Metrics(), address)
    assert info.value.message == f"cannot serve metrics on '{address}': Address already in use"
    assert info.value.hint == "choose another port with --metrics HOST:PORT"
    assert info.value.exit_code == 1
