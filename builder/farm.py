"""The Celery app of the build farm: two thin tasks that take ids; the logic is in
builder/jobs.py.

    bpfdepot.build(build_id)                     fan out: one compile per (program × kernel)
    bpfdepot.compile(build_id, program, target)  compile one, or find it built, record the result

Messages are acknowledged after the task ends (``acks_late``) and put back when a worker dies
under them (``reject_on_worker_lost``), so a build survives ``kill -9``; each task is idempotent
(its result is keyed by content) and a Redis lock per build key makes redeliveries wait rather
than compile twice in parallel.
"""

from __future__ import annotations

import os

from celery import Celery, Task

from loader.settings import Settings

QUEUE = "bpfdepot"
app = Celery("bpfdepot")


def configure(settings: Settings) -> Celery:
    app.conf.update(
        broker_url=settings.broker,
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

    for program, target in jobs.fan_out(jobs.context(), build_id):
        compile_task.apply_async((build_id, program, target), queue=QUEUE)


@app.task(name="bpfdepot.compile", bind=True, max_retries=None)
def compile_task(self: Task, build_id: str, program: str, target: str) -> None:
    from builder import jobs

    again = jobs.compile_job(jobs.context(), build_id, program, target,
                             delivery=f"{self.request.id}:{self.request.retries}",
                             attempt=self.request.retries,
                             worker=self.request.hostname or "")
    if again is not None:
        raise self.retry(countdown=again)
