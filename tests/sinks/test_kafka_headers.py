"""Labels as Kafka record headers, read back from a real Tansu broker (tests/sinks/conftest.py)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("confluent_kafka", reason="confluent-kafka not installed (pip install -e '.[test]')")

from loader.sinks import Record
from loader.sinks.kafka import KafkaSink, label_headers
from tests.services import Service
from tests.sinks.conftest import consume

UNIT = {"unit": "shop-api.service", "slice": "system.slice"}
POD = {"container_id": "a1" * 32, "runtime": "containerd", "pod_uid":
       "7d3f1c2a-1b2c-4d5e-8f90-0123456789ab", "container": "cart", "pod": "cart-7c9f8-x2x4q",
       "namespace": "shop", "image": "registry.local/shop/cart:1.4.2", "container_type": "container"}
# the headers: HEADER_LABELS in their order, the rest stays in the value only
POD_HEADERS = [(k, POD[k]) for k in ("namespace", "pod", "container", "image", "pod_uid")]


def labelled(i: int, labels: dict[str, str] | None, filter_: str | None = None) -> Record:
    """A record as the run's stampers leave it: ``filter`` then ``labels`` spliced at its end."""
    value = json.dumps({"seq": i, "pid": 4242}, separators=(",", ":"))[:-1]
    if filter_ is not None:
        value += ',"filter":' + json.dumps(filter_)
    if labels is not None:
        value += ',"labels":' + json.dumps(labels, separators=(",", ":"))
    return Record(key=None, value=(value + "}").encode())


def test_label_headers_from_the_stamped_record() -> None:
    assert label_headers(labelled(0, POD).value) == [(k, v.encode()) for k, v in POD_HEADERS]
    assert label_headers(labelled(1, UNIT, "unit:shop-api.service").value) == [
        ("unit", b"shop-api.service"), ("filter", b"unit:shop-api.service")]  # no slice
    assert label_headers(labelled(2, None, "pid:7").value) == [("filter", b"pid:7")]
    assert label_headers(labelled(3, None).value) is None
    assert label_headers(b'{"labels":{"a":1},"x":2}') is None  # not the stamper's last member
    cache: dict = {}
    first = label_headers(labelled(4, UNIT).value, cache)
    assert label_headers(labelled(5, UNIT).value, cache) == first
    assert len(cache) == 1  # one parse per distinct labels object


def test_headers_read_back_from_the_broker(tansu: Service, program: str) -> None:
    sent = [labelled(0, UNIT, "unit:shop-api.service"), labelled(1, POD), labelled(2, None),
            labelled(3, {"unit": "naïve.service"})]
    with KafkaSink(tansu.url) as sink:
        sink.write(f"{program}.events", sent)
        assert sink.flush().delivered == 4
    got = consume(tansu.url, f"bpfdepot.{program}.events", 4)
    assert [m.value() for m in got] == [r.value for r in sent]
    assert [m.headers() for m in got] == [
        [("unit", b"shop-api.service"), ("filter", b"unit:shop-api.service")],
        [(k, v.encode()) for k, v in POD_HEADERS],
        None,
        [("unit", "naïve.service".encode())]]
