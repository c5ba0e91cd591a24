"""Build records in Redis: what was submitted, and the state of each (program × kernel).

    bpfdepot:build:<id>          hash: bundle, name, selector, created, total
    bpfdepot:build:<id>:jobs     hash: "<program>@<arch>-<btf>" → JSON state of that compile
    bpfdepot:build:<id>:events   list: one JSON line per change (``submit --wait`` reads it)
    bpfdepot:build:<id>:notify   list: a token per change, which a waiter BLPOPs
    bpfdepot:builds              sorted set of build ids by creation time
    bpfdepot:deliveries:<task>   how often a task message was delivered (poison bound)

Records are small and expire after RECORD_TTL_S; artifacts live in the store, not here.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

RECORD_TTL_S = 7 * 24 * 3600
STATES_DONE = ("built", "cached", "failed", "refused")


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    program: str
    target: str          # "<arch>-<btf digest>", the catalog key
    release: str
    # queued, compiling, waiting (an identical compile runs), load-testing (checked, waiting for
    # or in its kernel's load test), built, cached, failed (the compile), refused (this kernel:
    # relocation check or load test; builder/verdicts.py)
    state: str = "queued"
    digest: str = ""
    meta: str = ""
    size: int = 0
    seconds: float = 0.0
    error: str = ""
    worker: str = ""
    reference: str = ""    # the kernel whose header the object was compiled against
    object_key: str = ""   # the compile it shares with the other kernels of its variant
    compiled: bool = False  # this build ran that compile (a load test keeps it "built")

    @property
    def key(self) -> str:
        return f"{self.program}@{self.target}"

    @property
    def done(self) -> bool:
        return self.state in STATES_DONE


@dataclass(frozen=True, slots=True, kw_only=True)
class Build:
    id: str
    bundle: str          # blob digest of the .tar.gz
    name: str            # the manifest's name
    selector: str
    created: float
    jobs: dict[str, Job] = field(default_factory=dict)

    @property
    def references(self) -> dict[str, str]:
        """The reference kernel per arch ("<arch>-<btf digest>"): the build's newest, whose
        header its compiles read (builder/compile.py)."""
        from loader.kernel.catalog import release_order

        newest: dict[str, Job] = {}
        for job in self.jobs.values():
            arch = job.target.partition("-")[0]
            if arch not in newest or (release_order(job.release), job.target) > \
                    (release_order(newest[arch].release), newest[arch].target):
                newest[arch] = job
        return {arch: job.target for arch, job in newest.items()}

    @property
    def done(self) -> bool:
        return bool(self.jobs) and all(j.done for j in self.jobs.values())

    @property
    def failed(self) -> list[Job]:
        return [j for j in self.jobs.values() if j.state == "failed"]

    @property
    def refused(self) -> list[Job]:
        return [j for j in self.jobs.values() if j.state == "refused"]

    @property
    def state(self) -> str:
        if not self.done:
            return "running"
        return "failed" if self.failed else "done"


def _k(build_id: str, part: str = "") -> str:
    return f"bpfdepot:build:{build_id}" + (f":{part}" if part else "")


def connect(url: str):
    """A redis-py client that rides out a Redis restart: commands retry with backoff for ~30 s."""
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url, socket_connect_timeout=5, socket_timeout=30, health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=25),
        retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError])


class Records:
    """Reads and writes build records through a redis-py client."""

    def __init__(self, redis: Any) -> None:
        self.r = redis

    def create(self, *, bundle: str, name: str, selector: str, jobs: list[Job]) -> Build:
        build = Build(id=uuid.uuid4().hex[:12], bundle=bundle, name=name, selector=selector,
                      created=time.time(), jobs={j.key: j for j in jobs})
        pipe = self.r.pipeline()
        pipe.hset(_k(build.id), mapping={"bundle": bundle, "name": name, "selector": selector,
                                          "created": build.created, "total": len(jobs)})
        pipe.hset(_k(build.id, "jobs"), mapping={j.key: json.dumps(asdict(j)) for j in jobs})
        for key in (_k(build.id), _k(build.id, "jobs"), _k(build.id, "events")):
            pipe.expire(key, RECORD_TTL_S)
        pipe.zadd("bpfdepot:builds", {build.id: build.created})
        pipe.execute()
        return build

    def get(self, build_id: str) -> Build | None:
        head = self.r.hgetall(_k(build_id))
        if not head:
            return None
        jobs = {k.decode(): Job(**json.loads(v)) for k, v in self.r.hgetall(_k(build_id, "jobs")).items()}
        return Build(id=build_id, bundle=head[b"bundle"].decode(), name=head[b"name"].decode(),
                     selector=head[b"selector"].decode(), created=float(head[b"created"]), jobs=jobs)

    def recent(self, count: int = 20) -> list[Build]:
        ids = [i.decode() for i in self.r.zrevrange("bpfdepot:builds", 0, count - 1)]
        return [b for b in (self.get(i) for i in ids) if b is not None]

    def update(self, build_id: str, job: Job) -> None:
        """Record a job's new state, unless it is already done (a late redelivery cannot undo it)."""
        old = self.r.hget(_k(build_id, "jobs"), job.key)
        if old is not None and Job(**json.loads(old)).done and not job.done:
            return
        line = json.dumps(asdict(job))
        pipe = self.r.pipeline()
        pipe.hset(_k(build_id, "jobs"), job.key, line)
        pipe.rpush(_k(build_id, "events"), line)
        pipe.rpush(_k(build_id, "notify"), 1)  # wakes a waiter blocked in BLPOP
        pipe.expire(_k(build_id, "notify"), RECORD_TTL_S)
        pipe.execute()

    def jobs_of(self, build_id: str, keys: list[str]) -> dict[str, Job]:
        """These jobs of the build as recorded now (absent keys left out)."""
        found = self.r.hmget(_k(build_id, "jobs"), keys) if keys else []
        return {key: Job(**json.loads(v)) for key, v in zip(keys, found) if v is not None}

    def update_many(self, build_id: str, jobs: list[Job]) -> None:
        """``update`` for many jobs of one build in two round trips (a task ends 30 kernels'
        jobs at once; one by one they cost two round trips each)."""
        if not jobs:
            return
        olds = self.r.hmget(_k(build_id, "jobs"), [job.key for job in jobs])
        pipe = self.r.pipeline()
        for job, old in zip(jobs, olds):
            if old is not None and Job(**json.loads(old)).done and not job.done:
                continue
            line = json.dumps(asdict(job))
            pipe.hset(_k(build_id, "jobs"), job.key, line)
            pipe.rpush(_k(build_id, "events"), line)
        pipe.rpush(_k(build_id, "notify"), 1)
        pipe.expire(_k(build_id, "notify"), RECORD_TTL_S)
        pipe.execute()

    def decide(self, build_id: str, name: str, value: str) -> str:
        """The build's decision ``name``: ``value`` if this is the first to decide it, else
        the decision already taken (so every task of a build plans alike)."""
        pipe = self.r.pipeline()
        pipe.hsetnx(_k(build_id), f"decision:{name}", value)
        pipe.hget(_k(build_id), f"decision:{name}")
        return pipe.execute()[1].decode()

    def decide_many(self, build_id: str, values: dict[str, str]) -> dict[str, str]:
        """``decide`` for many decisions, in one round trip."""
        pipe, names = self.r.pipeline(), list(values)
        for name in names:
            pipe.hsetnx(_k(build_id), f"decision:{name}", values[name])
        for name in names:
            pipe.hget(_k(build_id), f"decision:{name}")
        return {n: v.decode() for n, v in zip(names, pipe.execute()[len(names):])}

    def claim(self, build_id: str, name: str) -> bool:
        """True for the first caller only (a step of the build that must run once)."""
        return bool(self.r.hsetnx(_k(build_id), f"claimed:{name}", time.time()))

    def claim_fanout(self, build_id: str) -> bool:
        """True for the first caller only: the build's compiles are enqueued once."""
        return bool(self.r.hsetnx(_k(build_id), "fanned_out", time.time()))

    def wait_event(self, build_id: str, cursor: int, timeout_s: float) -> tuple[list[Job], int]:
        """Jobs changed since ``cursor`` (an index into the events list), blocking up to timeout."""
        lines = self.r.lrange(_k(build_id, "events"), cursor, -1)
        if not lines:
            # block until a job changes (update() pushes a token), instead of polling
            if self.r.blpop([_k(build_id, "notify")], timeout=max(timeout_s, 0.01)):
                self.r.delete(_k(build_id, "notify"))
            lines = self.r.lrange(_k(build_id, "events"), cursor, -1)
        return [Job(**json.loads(x)) for x in lines], cursor + len(lines)

    def delivered(self, task_id: str) -> int:
        key = f"bpfdepot:deliveries:{task_id}"
        pipe = self.r.pipeline()
        pipe.incr(key)
        pipe.expire(key, RECORD_TTL_S)
        return int(pipe.execute()[0])
