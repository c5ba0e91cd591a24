"""The Kafka sink, through confluent-kafka (librdkafka).

Each stream ``<program>.<channel>`` goes to its own topic (``topic_template``, created with the
admin API when missing), each record's key (the manifest's ``hash`` field) is the message key, so
one key stays in one partition and in order (the idempotent producer keeps that order across
retries). Every record ends in exactly one of two counts:

- ``delivered``: the broker acknowledged it (``acks``), seen in librdkafka's delivery report;
- ``failed``: its delivery report carried an error after ``retries`` attempts within
  ``delivery_timeout_s``, librdkafka refused it (too large, fatal producer error), the local queue
  stayed full for ``queue_full_timeout_s`` (backpressure: ``write`` blocks that long first), its
  topic could not be named, or ``close()`` found it still unreported.

Labels (``bpfdepot run --labels``) also travel as record headers, so a consumer can route by
unit or pod without parsing the value: the labels in ``HEADER_LABELS`` (``unit``,
``namespace``, ``pod``, ``container``, ``image``, ``pod_uid``; those the record has) become
headers of the same name, their values in UTF-8, and a filtered record's ``filter`` text the
header ``filter``. The value keeps every label (``slice``, ``container_id``, ``runtime``…):
headers are for routing, and each one costs librdkafka an allocation per message. Headers
need record batches v2 (Kafka 0.11+), which librdkafka writes to any broker that has them.

``pending`` is what was handed to librdkafka and not yet reported. A broker that does not answer
at start is an error within ``connect_timeout_s``. Delivery reports are served by ``write``,
``flush`` and ``close`` (librdkafka calls back only from ``poll``); use one sink per thread.

Tansu (the broker in the tests) differs from Apache Kafka in two ways that matter here: it
creates any topic a metadata request names (so existence is checked by listing all topics), and it
accepts topic names Kafka would refuse (so names are checked here).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from typing import Any, Literal, Mapping, Sequence

from loader.errors import BpfDepotError
from loader.sinks import LogThrottle, Record, SinkKind, SinkStats, register

log = logging.getLogger("bpfdepot.sink.kafka")
# librdkafka's own lines: what matters of them reaches error_cb (and is told once, throttled);
# raise this logger's level to see the rest while debugging a broker.
_rdkafka_log = logging.getLogger("bpfdepot.sink.kafka.rdkafka")
_rdkafka_log.setLevel(logging.CRITICAL)

MiB = 1024 * 1024
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")  # Kafka's own rule (clients/.../Topic.java)


_LABELS = b',"labels":{'
_FILTER = re.compile(rb',"filter":("(?:[^"\\]|\\.)*")')
HEADER_CACHE = 4096  # distinct label objects whose headers are kept ready
HEADER_LABELS = ("unit", "namespace", "pod", "container", "image", "pod_uid")


def label_headers(value: bytes, cache: dict[bytes, list[tuple[str, bytes]]] | None = None
                  ) -> list[tuple[str, bytes]] | None:
    """The Kafka headers of one record: the :data:`HEADER_LABELS` of its ``labels`` object
    (as the Stamper spliced it, the record's last member), in that order, and its ``filter``
    text; None without them."""
    headers: list[tuple[str, bytes]] = []
    at = value.rfind(_LABELS)
    if at >= 0 and value.endswith(b"}}"):
        frag = value[at + len(_LABELS) - 1:-1]
        found = cache.get(frag) if cache is not None else None
        if found is None:
            try:
                labels = json.loads(frag)
            except ValueError:
                labels = {}
            labels = labels if isinstance(labels, dict) else {}
            found = [(k, str(labels[k]).encode()) for k in HEADER_LABELS if k in labels]
            if cache is not None:
                if len(cache) >= HEADER_CACHE:
                    cache.clear()
                cache[frag] = found
        headers += found
    if b',"filter":' in value and (m := _FILTER.search(value)):
        headers.append(("filter", json.loads(m[1]).encode()))
    return headers or None


class KafkaSinkError(BpfDepotError):
    """The Kafka sink cannot start: broker unreachable, bad settings or topic names."""


def topic_name(template: str, stream: str) -> str:
    """The topic for ``stream`` ("<program>.<channel>"); fields: {program}, {channel}, {stream}."""
    program, _, channel = stream.partition(".")
    try:
        topic = template.format(program=program, channel=channel, stream=stream)
    except (KeyError, IndexError, ValueError) as e:
        raise KafkaSinkError(f"Kafka topic template {template!r} cannot be filled: {e!s}",
                             hint="use only the fields {program}, {channel} and {stream}") from None
    if not _TOPIC_NAME.fullmatch(topic) or topic in (".", ".."):
        raise KafkaSinkError(f"Kafka topic {topic!r} (stream {stream!r}, template {template!r}) is not "
                             "a valid topic name",
                             hint="topic names hold only letters, digits, '.', '_' and '-' (at most 249); "
                                  "change the topic template or the program/channel name")
    return topic


class KafkaSink:
    """Sends each record to the topic of its stream; counts every record delivered or failed."""

    def __init__(self, bootstrap: str, *, topic_template: str = "bpfdepot.{program}.{channel}",
                 retries: int = 5, max_in_flight_bytes: int = 32 * MiB,
                 acks: Literal["all", "1", "0"] | int = "all", enable_idempotence: bool = True,
                 delivery_timeout_s: float = 30.0, connect_timeout_s: float = 5.0,
                 queue_full_timeout_s: float = 5.0, linger_ms: int = 5, partitions: int = 1,
                 replication_factor: int = 1, streams: Sequence[str] = (),
                 config: Mapping[str, Any] | None = None, name: str = "kafka") -> None:
        try:
            from confluent_kafka import KafkaError, KafkaException, Producer
            from confluent_kafka.admin import AdminClient, NewTopic
        except ImportError:
            raise KafkaSinkError("the Kafka sink needs the confluent-kafka package, which is not installed",
                                 hint="pip install 'bpfdepot[kafka]' (or: pip install confluent-kafka)") from None
        self._KafkaError, self._KafkaException, self._NewTopic = KafkaError, KafkaException, NewTopic
        self.name = name
        self.bootstrap = bootstrap
        self.topic_template = topic_template
        self.partitions, self.replication_factor = partitions, replication_factor
        self.connect_timeout_s = connect_timeout_s
        self.queue_full_timeout_s = queue_full_timeout_s
        self.delivery_timeout_s = delivery_timeout_s
        self.last_error = ""
        self.failures: Counter[str] = Counter()  # reason -> records failed for it
        self._enqueued = self._delivered = self._failed = 0
        self._closed = False
        self._topic_of: dict[str, str | None] = {}
        self._headers: dict[bytes, list[tuple[str, bytes]]] = {}  # labels object → its headers

        topic_name(topic_template, "program.channel")  # a bad template fails at start, not per record
        # librdkafka's own log lines repeat what error_cb reports (each connection failure came
        # out twice): they go to a logger of their own, shown only when debugging.
        common = {"bootstrap.servers": bootstrap, "logger": _rdkafka_log, **(config or {})}
        self._throttle = LogThrottle(log)
        self._admin = AdminClient(common)
        try:
            self._topics = set(self._admin.list_topics(timeout=connect_timeout_s).topics)
        except KafkaException as e:
            self._admin = None
            raise KafkaSinkError(
                f"Kafka broker at {bootstrap} did not answer within {connect_timeout_s:g} s "
                f"({e.args[0].str()})",
                hint="start the broker, or point the Kafka sink's bootstrap (host:port) at one "
                     "that runs") from None
        conf = {
            **common,
            "acks": acks,
            "enable.idempotence": enable_idempotence,
            "message.send.max.retries": retries,
            "delivery.timeout.ms": int(delivery_timeout_s * 1000),
            "request.timeout.ms": min(30_000, int(delivery_timeout_s * 1000)),
            "queue.buffering.max.kbytes": max(1, max_in_flight_bytes // 1024),
            "linger.ms": linger_ms,
            **(config or {}),
            "on_delivery": self._on_delivery,  # last: the counts depend on these two
            "error_cb": self._on_error,
        }
        try:
            self._producer = Producer(conf)
        except (KafkaException, ValueError, TypeError) as e:
            why = e.args[0].str() if isinstance(e, KafkaException) else str(e)
            raise KafkaSinkError(f"Kafka producer settings for {bootstrap} refused: {why}",
                                 hint="fix the Kafka sink settings (librdkafka's CONFIGURATION.md names "
                                      "each property)") from None
        for stream in streams:  # topics named up front are checked and created now
            self._topic(stream, at_start=True)

    # -- topics ----------------------------------------------------------------------------------

    def _topic(self, stream: str, *, at_start: bool = False) -> str | None:
        if stream in self._topic_of:
            return self._topic_of[stream]
        try:
            topic = topic_name(self.topic_template, stream)
        except KafkaSinkError as e:
            if at_start:
                raise
            log.error("%s: %s", self.name, e)
            self._topic_of[stream] = None
            return None
        self._ensure_topic(topic, at_start=at_start)
        self._topic_of[stream] = topic
        return topic

    def _ensure_topic(self, topic: str, *, at_start: bool) -> None:
        if topic in self._topics:
            return
        new = self._NewTopic(topic, num_partitions=self.partitions,
                             replication_factor=self.replication_factor)
        future = self._admin.create_topics([new], request_timeout=self.connect_timeout_s)[topic]
        try:
            future.result(timeout=self.connect_timeout_s + 1)
        except self._KafkaException as e:
            if e.args[0].code() != self._KafkaError.TOPIC_ALREADY_EXISTS:
                self._topic_failed(topic, e.args[0].str(), at_start)
                return
        except Exception as e:  # the future timed out: the broker stopped answering
            self._topic_failed(topic, repr(e), at_start)
            return
        self._topics.add(topic)

    def _topic_failed(self, topic: str, why: str, at_start: bool) -> None:
        if at_start:
            raise KafkaSinkError(f"cannot create Kafka topic {topic!r} on {self.bootstrap}: {why}",
                                 hint="create it with your Kafka tools, or let this user create topics")
        # Records still go to librdkafka: a broker that creates topics on use (or comes back) takes
        # them; otherwise their delivery reports fail and they are counted.
        self.last_error = f"creating topic {topic!r}: {why}"
        log.warning("%s: %s", self.name, self.last_error)

    # -- writing ---------------------------------------------------------------------------------

    def write(self, stream: str, records: Sequence[Record]) -> None:
        """Hand ``records`` to librdkafka; blocks up to ``queue_full_timeout_s`` while its queue is full."""
        if self._closed:
            raise KafkaSinkError(f"Kafka sink {self.name} is closed", hint="open a new KafkaSink")
        topic = self._topic(stream)
        if topic is None:
            self._fail(len(records), f"no valid topic for stream {stream!r}")
            return
        produce, poll = self._producer.produce, self._producer.poll
        for i, record in enumerate(records):
            deadline = 0.0
            headers = (label_headers(record.value, self._headers)
                       if b'"labels":' in record.value or b'"filter":' in record.value else None)
            while True:
                try:
                    if headers is None:
                        produce(topic, record.value, record.key)
                    else:
                        produce(topic, record.value, record.key, headers=headers)
                    self._enqueued += 1
                    break
                except BufferError:
                    # Local queue full (queue.buffering.max.messages/kbytes): wait for reports.
                    now = time.monotonic()
                    if not deadline:
                        deadline = now + self.queue_full_timeout_s
                    elif now >= deadline:
                        self._fail(len(records) - i, f"local queue still full after "
                                   f"{self.queue_full_timeout_s:g} s (broker {self.bootstrap} slow or down)")
                        poll(0)
                        return
                    poll(0.05)
                except self._KafkaException as e:  # refused at once: too large, fatal producer error
                    self._fail(1, e.args[0].str())
                    break
        poll(0)

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if self._closed:
            return
        if err is None:
            self._delivered += 1
        else:
            self._failed += 1
            self._enqueued -= 1  # no longer pending; counted failed
            reason = err.str()
            self.failures[reason] += 1
            self.last_error = reason
            self._throttle.log(logging.ERROR, f"delivery {reason}",
                               f"{self.name}: delivery to {msg.topic()} failed: {reason}")

    def _on_error(self, err: Any) -> None:
        # Connection trouble arrives here too; librdkafka keeps retrying within the delivery timeout.
        self.last_error = err.str()
        self._throttle.log(logging.ERROR if err.fatal() else logging.WARNING, f"error {err.code()}",
                           f"{self.name}: {err.str()}")

    def _fail(self, count: int, why: str) -> None:
        if count <= 0:
            return
        self._failed += count
        self.failures[why] += count
        self.last_error = why
        self._throttle.log(logging.ERROR, f"not sent {why}",
                           f"{self.name}: {count} record(s) not sent: {why}")

    # -- the Sink protocol -------------------------------------------------------------------------

    def stats(self) -> SinkStats:
        """Counts since start: delivered, failed, and handed over but not yet reported."""
        return SinkStats(delivered=self._delivered, failed=self._failed,
                         pending=self._enqueued - self._delivered)

    def flush(self, timeout_s: float = 10.0) -> SinkStats:
        """Wait up to ``timeout_s`` for outstanding delivery reports."""
        if not self._closed:
            self._producer.flush(timeout_s)
        return self.stats()

    def close(self) -> SinkStats:
        """Wait for every report (at most the delivery timeout); what is left is counted failed."""
        if self._closed:
            return self.stats()
        self._producer.flush(self.delivery_timeout_s + 1)
        if len(self._producer):
            self._producer.purge()  # reports for purged records arrive as failures on the flush
            self._producer.flush(1)
        left = self._enqueued - self._delivered
        self._closed = True
        if left:
            self._enqueued -= left
            self._fail(left, "still unreported at close")
        self._throttle.summary()
        # Drop the clients now: the producer holds our callbacks (a reference cycle), and until it
        # is destroyed its connections stay open (Tansu then waits 5 s for them on SIGTERM).
        self._producer = self._admin = None
        return self.stats()

    def __enter__(self) -> KafkaSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_kafka(storage, topic: str, first: bool) -> KafkaSink:
    k = storage.kafka
    return KafkaSink(k.bootstrap, topic_template=topic, acks=k.acks, retries=k.retries,
                     delivery_timeout_s=k.delivery_timeout_s, connect_timeout_s=k.connect_timeout_s,
                     name="kafka" if first else f"kafka:{topic}")


register(SinkKind(name="kafka", order=2, target=lambda want: want.kafka_topic, open=_open_kafka))
