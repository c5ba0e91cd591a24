"""Labels in every sink's own form, from real runs: a process moved by the test between a
cgroup2 directory named like a systemd unit and one named like a kubepods container scope
(kubelet/containerd fixture files under a temp root, tests/unit/labels_tree).

- opensnoop with ``--labels`` and the in-kernel filter on both directories: the file, Kafka
  (record headers read back from a real broker) and the tsdb (``bpfdepot query --group-by
  unit``) hold exactly the opens made in each, with their labels and ``filter`` names;
- pagefault with ``--labels --metrics``: the Prometheus series of its per-cgroup map carry the
  unit's and the pod's labels.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.kernel.conftest import Running, bpfdepot
from tests.kernel.test_labels import CART_LABELS, SCOPE, TREE, cg2, mkcg  # noqa: F401 (fixture)
from tests.services import free_port
from tests.sinks.conftest import consume, tansu  # noqa: F401  (the broker fixture)

CALLER = """
import mmap, os, sys
marker = sys.argv[1]
for line in sys.stdin:
    what, n = line.split()
    if what == "open":
        for _ in range(int(n)):
            os.close(os.open(marker, os.O_RDONLY))
    else:  # touch n fresh anonymous pages: n user page faults
        m = mmap.mmap(-1, int(n) * 4096)
        for i in range(int(n)):
            m[i * 4096] = 1
        m.close()
    print("ok", flush=True)
"""
POD_LABELS = {k: CART_LABELS[k] for k in ("namespace", "pod", "container")}


def unit_name() -> str:
    """A unit name of this test's own: the filter finds units by name in the whole tree."""
    return f"bpfdepot-d{os.getpid()}.service"


def drive(caller: subprocess.Popen, base: Path, steps: list[tuple[str, str, int]]) -> None:
    """Move ``caller`` into each cgroup and have it open or touch ``n`` times there."""
    for where, what, n in steps:
        (base / where / "cgroup.procs").write_text(str(caller.pid))
        caller.stdin.write(f"{what} {n}\n")
        caller.stdin.flush()
        assert caller.stdout.readline() == "ok\n"


def start_caller(marker: Path) -> subprocess.Popen:
    marker.write_text("x")
    return subprocess.Popen([sys.executable, "-c", CALLER, str(marker)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def test_labels_reach_file_kafka_headers_and_tsdb_groups(
        home: Path, tmp_path: Path, cg2: tuple[Path, Path], tansu) -> None:  # noqa: F811
    """5 opens in the unit's worker cgroup, 7 in the pod's container scope, 3 in a cgroup the
    filter leaves out: exactly 12 records, each with its filter name and labels, in the file,
    in Kafka (as headers too) and in the tsdb, where --group-by unit / pod counts 5 and 7."""
    _mount, base = cg2
    root = tmp_path / "root"
    shutil.copytree(TREE, root)
    unit_dir = f"system.slice/{unit_name()}/worker"
    mkcg(base, unit_dir)
    mkcg(base, SCOPE)
    mkcg(base, "elsewhere")
    db = tmp_path / "events.sqlite"
    caller = start_caller(tmp_path / f"marker-{os.getpid()}")
    try:
        run = Running(home, "bpf/opensnoop", tmp_path / "events.jsonl",
                      extra=["--labels", str(root), "--unit", unit_name(),
                             "--cgroup", str(base / SCOPE), "--kafka", tansu.url,
                             "--tsdb", str(db)])
        drive(caller, base, [(unit_dir, "open", 5), ("elsewhere", "open", 3), (SCOPE, "open", 7)])
        done = run.stop()
    finally:
        caller.kill()
        caller.wait()
    assert done.rc == 0, done.stderr
    unit_labels = {"unit": unit_name(), "slice": "system.slice"}
    mine = [r for r in done.events if r["pid"] == caller.pid]
    assert len(mine) == len(done.events) == 12
    assert {r["filename"] for r in mine} == {str(tmp_path / f"marker-{os.getpid()}")}
    assert [(r["filter"], r["labels"]) for r in mine] == (
        [(f"unit:{unit_name()}", unit_labels)] * 5 + [(f"cgroup:{base / SCOPE}", CART_LABELS)] * 7)

    messages = [m for m in consume(tansu.url, "bpfdepot.opensnoop.opensnoop_events", 12)
                if json.loads(m.value())["pid"] == caller.pid]
    assert [json.loads(m.value()) for m in messages] == mine
    pod_headers = [(k, CART_LABELS[k].encode())
                   for k in ("namespace", "pod", "container", "image", "pod_uid")]
    assert [m.headers() for m in messages] == (
        [[("unit", unit_name().encode()), ("filter", f"unit:{unit_name()}".encode())]] * 5
        + [[*pod_headers, ("filter", f"cgroup:{base / SCOPE}".encode())]] * 7)

    def group(field: str, *where: str) -> list[list]:
        args = ["query", "opensnoop", "--db", str(db), "--json", "--group-by", field]
        for w in (f"pid={caller.pid}", *where):
            args += ["--where", w]
        out = bpfdepot(home, *args)
        assert out.returncode == 0, out.stderr
        return [[row[field], row["count"]] for row in json.loads(out.stdout)["rows"]]

    assert group("unit") == [[None, 7], [unit_name(), 5]]
    assert group("pod") == [[CART_LABELS["pod"], 7], [None, 5]]
    assert group("container", "namespace=shop") == [["cart", 7]]
    assert group("filter") == [[f"cgroup:{base / SCOPE}", 7], [f"unit:{unit_name()}", 5]]


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def test_prometheus_series_keyed_by_cgroup_carry_labels(
        home: Path, tmp_path: Path, cg2: tuple[Path, Path]) -> None:  # noqa: F811
    """pagefault counts faults per {cgroup, pid, comm}: the series of the caller's faults in
    the unit's cgroup carry unit="…", those in the pod's scope namespace/pod/container."""
    _mount, base = cg2
    root = tmp_path / "root"
    shutil.copytree(TREE, root)
    unit_dir = f"system.slice/{unit_name()}/worker"
    unit_id, scope_id = mkcg(base, unit_dir), mkcg(base, SCOPE)
    port = free_port()
    caller = start_caller(tmp_path / "marker")
    name = "bpfdepot_pagefault_fault_counts_user_faults_total"
    try:
        run = Running(home, "bpf/pagefault", tmp_path / "events.jsonl",
                      extra=["--labels", str(root), "--metrics", f"127.0.0.1:{port}"])
        drive(caller, base, [(unit_dir, "touch", 64), (SCOPE, "touch", 64)])
        series: list[dict[str, str]] = []
        deadline = time.monotonic() + 15
        while len(series) < 2 and time.monotonic() < deadline:
            time.sleep(0.3)
            series = [parse_series(line) for line in scrape(port).splitlines()
                      if line.startswith(name + "{") and f'pid="{caller.pid}"' in line]
        done = run.stop()
    finally:
        caller.kill()
        caller.wait()
    assert done.rc == 0, done.stderr
    business = ("unit", "namespace", "pod", "container")
    found = sorted(({k: v for k, v in labels.items() if k in ("cgroup", *business)}
                    for labels in series), key=lambda labels: labels["cgroup"] != str(unit_id))
    assert found == [
        {"cgroup": str(unit_id), "unit": unit_name()},
        {"cgroup": str(scope_id), "namespace": "shop", "pod": CART_LABELS["pod"],
         "container": "cart"}]
    assert all(int(labels["value"]) >= 64 for labels in series)


def parse_series(line: str) -> dict[str, str]:
    """``name{a="x",b="y"} 3`` → {"a": "x", "b": "y", "value": "3"} (values without quotes,
    commas or escapes here)."""
    inside, _, value = line.partition("{")[2].rpartition("} ")
    pairs = dict(pair.split("=", 1) for pair in inside.split(","))
    return {k: v.strip('"') for k, v in pairs.items()} | {"value": value}
