"""The Celery app of the build farm: two thin tasks that take ids; the logic is in
builder/jobs.py.

    bpfdepot.build(build_id)                      fan out: one compile per (program × variant)
    bpfdepot.compile(build_id, program, targets)  compile once for those kernels (or check a .bt
                                                  script), or find it done; then check and
                                                  publish (or refuse) it for each kernel
    bpfdepot.loadtest(build_id, target)           load and attach a kernel's candidates on it (a
                                                  VM, or a node of it: its own queue), publish

Messages are acknowledged after the task ends (``acks_late``) and put back when a worker dies
under them (``reject_on_worker_lost``), so a build survives ``kill -9``; each task is idempotent
(its result is keyed by content) and a Redis lock per build key makes redeliveries wait rather
than compile twice in parallel.

The broker transport is kombu's Redis transport with one fix (``RedisTransport``) that lets a
worker of concurrency > 1 survive a Redis restart; the worker is also meant to run supervised
(scripts/bpfdepot-worker.service, the Containerfile's scripts/worker-loop).
"""

from __future__ import annotations

import logging
import os
from urllib.parse import urlparse

import redis
from celery import Celery, Task
from kombu.transport import redis as kombu_redis

from loader.model.settings import Settings

QUEUE = "bpfdepot"
app = Celery("bpfdepot")
log = logging.getLogger(__name__)


class _Channel(kombu_redis.Channel):
    """kombu's Redis channel, refusing with a connection error (not an AttributeError) to
    reconnect once its connection is closed.

    Why: when Redis goes away, Celery collects the broken connection (which detaches the
    transport: ``transport.client = None``) and then closes it. A worker with a free pool slot
    has a BRPOP pending, so the channel's first close fails reading that reply, before the
    channel is marked closed; the second close then restores the unacked messages through a
    new pool, whose ``_connparams`` reads ``None.hostname``. That AttributeError is not a
    connection error, so Celery calls it unrecoverable and the worker exits (kombu #582 and
    #970 are the same read on other paths). The late ack of a build that ran on through the
    outage takes the same path. As a connection error, the close is ignored and the ack is
    logged and skipped; the message stays in Redis's unacked set and the visibility timeout
    brings it back, where the finished job makes it a no-op. A worker of concurrency 1 never
    has the BRPOP pending while it builds, which is why it survived.
    """

    def _connparams(self, asynchronous: bool = False) -> dict:
        if self.connection.client is None:
            raise redis.exceptions.ConnectionError(
                "this channel's broker connection is closed (the worker reconnects on a new one)")
        return super()._connparams(asynchronous=asynchronous)


class RedisTransport(kombu_redis.Transport):
    """kombu's Redis transport with ``_Channel``."""

    Channel = _Channel


def _transport(broker: str) -> str | None:
    """Our transport for redis:// brokers; any other scheme keeps kombu's own."""
    return f"{__name__}:RedisTransport" if urlparse(broker).scheme == "redis" else None


def configure(settings: Settings) -> Celery:
    app.conf.update(
        broker_url=settings.broker,
        broker_transport=_transport(settings.broker),
        result_backend=None,  # results live in the build records and the store
        task_ignore_result=True,
        task_default_queue=QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a restarted Redis is waited for, not given up on
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            # kombu scans for messages whose worker vanished every interval × throttle seconds
            # (10 × 10 by default): scan every few seconds so a kill -9 costs little more than
            # the visibility timeout itself (a scan is one ZRANGE)
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout // 3)),
            "unacked_restore_throttle": 1,
        },
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


configure(Settings.from_env(os.environ))


@app.task(name="bpfdepot.build", bind=True)
def build_task(self: Task, build_id: str) -> None:
    from builder import jobs

    ctx = jobs.context()
    enqueued: set[str] = set()
    try:
        for program, targets in jobs.fan_out(ctx, build_id):
            compile_task.apply_async((build_id, program, targets), queue=QUEUE)
            enqueued.update(f"{program}@{target}" for target in targets)
    except Exception as exc:  # noqa: BLE001 - the fan-out runs once: jobs it did not enqueue
        # would stay "queued" for ever, so they fail here, naming the cause
        log.exception("build %s: the fan-out failed", build_id)
        jobs.fail_unfinished(ctx, build_id, jobs.unexpected(exc, "fan-out of the build"),
                             skip=enqueued)


@app.task(name="bpfdepot.compile", bind=True, max_retries=None)
def compile_task(self: Task, build_id: str, program: str, targets: str | list[str]) -> None:
    from builder import jobs

    again = jobs.compile_job(jobs.context(), build_id, program, targets,
                             delivery=f"{self.request.id}:{self.request.retries}",
                             attempt=self.request.retries,
                             worker=self.request.hostname or "")
    if again is not None:
        raise self.retry(countdown=again)


@app.task(name="bpfdepot.loadtest", bind=True, max_retries=None)
def loadtest_task(self: Task, build_id: str, target: str) -> None:
    from builder import jobs

    again = jobs.load_test_job(jobs.context(), build_id, target, attempt=self.request.retries,
                               worker=self.request.hostname or "")
    if again is not None:
        raise self.retry(countdown=again)
