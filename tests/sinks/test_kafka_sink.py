"""Kafka sink against a real Tansu broker on 127.0.0.1: keys and per-key order, topic naming,
delivery counts, backpressure with a tiny local queue, a broker down at start, a broker killed
mid-stream. No mocks."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from collections import defaultdict

import pytest

pytest.importorskip("confluent_kafka", reason="confluent-kafka not installed (pip install -e '.[test]')")

from loader.errors import BpfDepotError  # noqa: E402
from loader.sinks import Record  # noqa: E402
from loader.sinks.kafka import KafkaSink, KafkaSinkError  # noqa: E402
from tests.services import Service, free_port  # noqa: E402
from tests.sinks.conftest import all_topics, consume, count_messages, records  # noqa: E402


@pytest.mark.skipif(not shutil.which("ss"), reason="ss (iproute2) not installed")
def test_tansu_listens_only_on_loopback(tansu: Service) -> None:
    pid = tansu.procs[0].pid
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    mine = [line.split()[3] for line in out.splitlines() if f"pid={pid}," in line]
    assert mine == [tansu.url], out


def test_records_arrive_with_keys_in_order_per_key(tansu: Service, program: str) -> None:
    n, stream = 3000, f"{program}.conn_events"
    sent = records(n, keys=7)
    with KafkaSink(tansu.url, partitions=3) as sink:
        for at in range(0, n, 250):
            sink.write(stream, sent[at:at + 250])
        stats = sink.flush()
    assert (stats.delivered, stats.failed, stats.pending) == (n, 0, 0)

    topic = f"bpfdepot.{program}.conn_events"
    assert len(all_topics(tansu.url)[topic].partitions) == 3
    got = consume(tansu.url, topic, n)
    assert len(got) == n
    by_key_sent, by_key_got = defaultdict(list), defaultdict(list)
    for r in sent:
        by_key_sent[r.key].append(r.value)
    for m in got:
        by_key_got[m.key()].append(m.value())
    assert by_key_got == by_key_sent
    # One key, one partition.
    assert all(len({m.partition() for m in got if m.key() == k}) == 1 for k in by_key_sent)


def test_records_without_a_key(tansu: Service, program: str) -> None:
    sent = records(50)
    with KafkaSink(tansu.url) as sink:
        sink.write(f"{program}.events", sent)
    assert sink.stats().delivered == 50
    got = consume(tansu.url, f"bpfdepot.{program}.events", 50)
    assert [m.value() for m in got] == [r.value for r in sent]
    assert {m.key() for m in got} == {None}


def test_topic_from_the_template(tansu: Service, program: str) -> None:
    with KafkaSink(tansu.url, topic_template="ebpf-{channel}-{program}") as sink:
        sink.write(f"{program}.tcp_events", records(5))
    with KafkaSink(tansu.url, topic_template="all.{stream}", streams=[f"{program}.x"]) as sink:
        assert f"all.{program}.x" in all_topics(tansu.url)  # named up front: created at start
        sink.write(f"{program}.x", records(3))
    topics = all_topics(tansu.url)
    assert count_messages(tansu.url, f"ebpf-tcp_events-{program}", 5) == 5
    assert count_messages(tansu.url, f"all.{program}.x", 3) == 3
    assert f"bpfdepot.{program}.tcp_events" not in topics


def test_bad_topic_names(tansu: Service, program: str) -> None:
    with pytest.raises(KafkaSinkError, match=r"template 'bpf\.\{prog\}' cannot be filled") as err:
        KafkaSink(tansu.url, topic_template="bpf.{prog}")
    assert "{program}, {channel} and {stream}" in err.value.hint
    with pytest.raises(KafkaSinkError, match="is not a valid topic name"):
        KafkaSink(tansu.url, streams=["bad program.chan"])
    # Found only while running: counted failed, not raised in the middle of a stream.
    with KafkaSink(tansu.url) as sink:
        sink.write("bad program.chan", records(4))
        sink.write(f"{program}.ok", records(2))
        stats = sink.flush()
    assert (stats.delivered, stats.failed) == (2, 4)
    assert "bpfdepot.bad program.chan" not in all_topics(tansu.url)  # Tansu would have taken it


def test_backpressure_tiny_queue_loses_nothing(tansu: Service, program: str) -> None:
    n, stream = 10_000, f"{program}.burst"
    sink = KafkaSink(tansu.url, config={"queue.buffering.max.messages": 10})
    sink.write(stream, records(n, keys=16))  # one burst, 1000× the local queue
    stats = sink.close()
    assert stats.delivered + stats.failed == n
    assert (stats.delivered, stats.failed, stats.pending) == (n, 0, 0)
    assert count_messages(tansu.url, f"bpfdepot.{program}.burst", n) == n


def test_broker_down_at_start_is_a_fast_clear_error() -> None:
    bootstrap = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(KafkaSinkError) as err:
        KafkaSink(bootstrap, connect_timeout_s=3)
    assert time.monotonic() - started < 10
    assert isinstance(err.value, BpfDepotError)
    assert err.value.message.startswith(f"Kafka broker at {bootstrap} did not answer within 3 s")
    assert "start the broker" in err.value.hint


def test_broker_killed_mid_stream_counts_every_record(fresh_tansu: Service, program: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    stream, sent = f"{program}.events", 0
    sink = KafkaSink(fresh_tansu.url, delivery_timeout_s=3, retries=2, queue_full_timeout_s=1)
    with caplog.at_level(logging.DEBUG, logger="bpfdepot.sink.kafka"):
        for batch in range(40):
            if batch == 20:
                sink.flush()
                os.killpg(fresh_tansu.procs[0].pid, signal.SIGKILL)
                fresh_tansu.procs[0].wait()
            sink.write(stream, records(100, keys=4, start=sent))
            sent += 100
        started = time.monotonic()
        stats = sink.close()
        time.sleep(1)  # librdkafka's threads report the refused reconnects meanwhile
    # One line per kind of trouble (it was every librdkafka error twice, 146 lines in 8 s);
    # librdkafka's own duplicate log lines stay at debug level.
    shown = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(shown) <= 8, [r.getMessage() for r in shown]
    assert not [r for r in shown if r.name.endswith(".rdkafka")]
    assert time.monotonic() - started < 10  # bounded by the delivery timeout, not a hang
    assert stats.pending == 0
    assert stats.delivered + stats.failed == sent
    assert stats.delivered >= 2000 and stats.failed >= 2000
    assert sum(sink.failures.values()) == stats.failed
    assert sink.last_error


def test_record_too_large_is_counted_failed(tansu: Service, program: str) -> None:
    big = Record(key=b"k", value=b'{"blob":"' + b"x" * 2_000_000 + b'"}')
    with KafkaSink(tansu.url) as sink:
        sink.write(f"{program}.big", [big] + records(3))
        stats = sink.flush()
    assert (stats.delivered, stats.failed) == (3, 1)
    assert "too large" in sink.last_error.lower()


def test_conflicting_producer_settings_are_a_clear_error(tansu: Service) -> None:
    with pytest.raises(KafkaSinkError, match=f"Kafka producer settings for {tansu.url} refused:.*acks") as err:
        KafkaSink(tansu.url, acks="1", enable_idempotence=True)
    assert "CONFIGURATION.md" in err.value.hint
