"""builder/jobs.py rules that need no services: the poison bound and idempotent redelivery.
(The farm tests run the same code with real Redis, S3 and workers.)"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from builder import jobs
from builder.records import Build, Job
from loader.settings import Settings


class FakeRecords:
    """In-memory stand-in for builder.records.Records: one build, delivery counts."""

    def __init__(self, job: Job) -> None:
        self.build = Build(id="b1", bundle="sha256:" + "0" * 64, name="demo", selector="all",
                           created=0.0, jobs={job.key: job})
        self.counts: dict[str, int] = {}
        self.updates: list[Job] = []

    def get(self, build_id: str) -> Build | None:
        return self.build if build_id == "b1" else None

    def update(self, build_id: str, job: Job) -> None:
        self.updates.append(job)
        self.build = replace(self.build, jobs={job.key: job})

    def delivered(self, delivery: str) -> int:
        self.counts[delivery] = self.counts.get(delivery, 0) + 1
        return self.counts[delivery]


class NoStore:
    def __getattr__(self, name: str):
        raise AssertionError(f"the store must not be used here (called {name})")


def _ctx(records: FakeRecords, tmp_path: Path) -> jobs.Context:
    return jobs.Context(settings=Settings(home=tmp_path, kernel_btf=tmp_path / "btf"),
                        store=NoStore(), records=records, redis=None)


def test_a_message_delivered_too_often_fails_the_job_without_compiling(tmp_path: Path) -> None:
    records = FakeRecords(Job(program="demo", target="x86_64-ab", release="6.1"))
    ctx = _ctx(records, tmp_path)
    # the first three deliveries died with their worker before finishing: simulate the counts
    records.counts["task-1:0"] = jobs.MAX_DELIVERIES
    again = jobs.compile_job(ctx, "b1", "demo", "x86_64-ab", delivery="task-1:0", attempt=0, worker="w")
    assert again is None
    [failed] = records.updates
    assert failed.state == "failed"
    assert failed.error.startswith(f"delivered {jobs.MAX_DELIVERIES + 1} times: a worker died each time")


def test_a_late_redelivery_of_a_finished_job_does_nothing(tmp_path: Path) -> None:
    done = Job(program="demo", target="x86_64-ab", release="6.1", state="built", digest="sha256:" + "1" * 64)
    records = FakeRecords(done)
    again = jobs.compile_job(_ctx(records, tmp_path), "b1", "demo", "x86_64-ab", delivery="t:0",
                             attempt=0, worker="w")
    assert again is None and records.updates == [] and records.counts == {}


def test_an_expired_build_is_dropped_quietly(tmp_path: Path) -> None:
    records = FakeRecords(Job(program="demo", target="x86_64-ab", release="6.1"))
    assert jobs.compile_job(_ctx(records, tmp_path), "gone", "demo", "x86_64-ab", delivery="t:0",
                            attempt=0, worker="w") is None
    assert records.updates == []
