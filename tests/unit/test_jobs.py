"""builder/jobs.py rules that need no services: the poison bound and idempotent redelivery.
(The farm tests run the same code with real Redis, S3 and workers.)"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from builder import jobs
from builder.records import Build, Job
from loader.model.settings import Settings


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


def test_a_bundle_whose_manifest_blows_the_stack_fails_the_job(tmp_path: Path, monkeypatch) -> None:
    """An exception nobody foresaw ends the job "failed" with its type, never "queued" for ever."""
    records = FakeRecords(Job(program="demo", target="x86_64-ab", release="6.1"))

    def deep(ctx: jobs.Context, bundle: str):  # what PyYAML does with a manifest 600 levels deep
        raise RecursionError("maximum recursion depth exceeded while calling a Python object")
    monkeypatch.setattr(jobs, "unpacked", deep)
    again = jobs.compile_job(_ctx(records, tmp_path), "b1", "demo", "x86_64-ab", delivery="t:0",
                             attempt=0, worker="w")
    assert again is None
    [failed] = records.updates
    assert failed.state == "failed" and failed.worker == "w"
    assert failed.error.startswith("the farm's compile of 'demo' failed: RecursionError: "
                                   "maximum recursion depth exceeded")
    assert records.counts == {"t:0": 1}  # the delivery counted toward MAX_DELIVERIES


def test_an_unexpected_error_in_planning_fails_the_job_with_its_message(tmp_path: Path,
                                                                        monkeypatch) -> None:
    records = FakeRecords(Job(program="demo", target="x86_64-ab", release="6.1"))

    class Manifest:
        root = tmp_path

        def program(self, name: str) -> str:
            return name

    def plan(*args: object, **kwargs: object) -> None:
        raise ValueError("a field no code path expected")
    monkeypatch.setattr(jobs, "unpacked", lambda ctx, bundle: Manifest())
    monkeypatch.setattr(jobs, "target_of", lambda ctx, target: target)
    monkeypatch.setattr(jobs, "toolchain", lambda cache: None)
    monkeypatch.setattr(jobs, "plan_build", plan)
    monkeypatch.setattr(jobs, "load_method", lambda ctx, build_id, target: "")
    monkeypatch.setattr(jobs, "load_methods", lambda ctx, build_id, targets: dict.fromkeys(targets, ""))
    monkeypatch.setattr(jobs, "closure_of", lambda *args: ())
    jobs.compile_job(_ctx(records, tmp_path), "b1", "demo", "x86_64-ab", delivery="t:0",
                     attempt=0, worker="w")
    [failed] = records.updates
    assert failed.state == "failed"
    assert "ValueError: a field no code path expected" in failed.error
    assert "hint: " in failed.error


def test_recorded_errors_name_the_bundle_not_the_workers_cache(tmp_path: Path) -> None:
    root = tmp_path / "cache" / "bundles" / ("ab" * 32)
    text = (f"clang failed\n{root}/x.bpf.c:3:10: error: expected ';'\n"
            f"program 'x' includes {tmp_path}/cache/bundles/y.h, outside its bundle")
    assert jobs.bundle_paths(text, root) == (
        "clang failed\n<bundle>/x.bpf.c:3:10: error: expected ';'\n"
        "program 'x' includes <bundle>/../y.h, outside its bundle")


class CountingStore:
    """A LocalStore that counts the calls made to it."""

    def __init__(self, root: Path) -> None:
        from loader.artifacts.store import LocalStore

        self.inner, self.calls = LocalStore(root), []

    def __getattr__(self, name: str):
        self.calls.append(name)
        return getattr(self.inner, name)


def test_kernel_entries_come_from_one_listing_and_a_new_kernel_is_listed_at_once(
        tmp_path: Path, monkeypatch) -> None:
    from loader.kernel.catalog import put_kernel
    from tests.unit.test_catalog import CATALOG

    monkeypatch.setattr(jobs, "_CATALOG", jobs._Catalog())
    store = CountingStore(tmp_path / "store")
    first, second = CATALOG[0], CATALOG[1]
    put_kernel(store.inner, first)
    ctx = jobs.Context(settings=Settings(home=tmp_path, kernel_btf=tmp_path / "btf"), store=store, records=None, redis=None)

    def key(e) -> str:
        return f"{e.arch}-{e.btf_digest}"
    assert [jobs.kernel_entry(ctx, key(first)) for _ in range(20)] == [first] * 20
    assert store.calls.count("read_refs") == 1 and store.calls.count("read_blob") == 1
    put_kernel(store.inner, second)  # added after the listing: listed again, not refused
    assert jobs.kernel_entry(ctx, key(second)) == second
    assert store.calls.count("read_refs") == 2
    assert jobs.kernel_entry(ctx, "x86_64-" + "ff" * 32) is None
    monkeypatch.setattr(jobs, "ENTRY_TTL_S", -1.0)  # an entry a node re-registered is seen
    probed = replace(first, features_from="probed")
    put_kernel(store.inner, probed)
    assert jobs.kernel_entry(ctx, key(first)) == probed


def test_load_methods_are_decided_for_many_kernels_in_one_go(tmp_path: Path, monkeypatch) -> None:
    from tests.unit.test_catalog import CATALOG

    decided: list[dict[str, str]] = []

    class Records:
        def decide_many(self, build_id: str, values: dict[str, str]) -> dict[str, str]:
            decided.append(values)
            return {n: "node" if n.endswith("-first") else v for n, v in values.items()}

    monkeypatch.setattr(jobs, "kernel_entry", lambda ctx, t: None if t == "gone" else CATALOG[0])
    monkeypatch.setenv("BPFDEPOT_VM_TESTS", "0")
    ctx = jobs.Context(settings=Settings(home=tmp_path, kernel_btf=tmp_path / "btf"), store=None, records=Records(), redis=None)
    got = jobs.load_methods(ctx, "b-many", ["a-first", "b", "gone", "b"])
    assert got == {"a-first": "node", "b": "", "gone": ""}  # a decision taken first wins
    assert len(decided) == 1 and set(decided[0]) == {"load-test:a-first", "load-test:b", "load-test:gone"}
    assert jobs.load_method(ctx, "b-many", "b") == "" and len(decided) == 1  # known: not asked again
