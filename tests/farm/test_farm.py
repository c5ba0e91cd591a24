"""The farm end to end: real Redis, radosgw and worker processes; bundles from this repo."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from builder.farmcli import submit, wait
from loader.artifacts.meta import read_meta
from loader.model.settings import Settings
from loader.artifacts.store import open_store
from tests.farm.conftest import ROOT, cli, copy_bundle


def _fresh(name: str, dest: Path, tag: str) -> Path:
    """A copy of a catalog bundle whose source differs by a comment: a build key never seen."""
    bundle = copy_bundle(name, dest)
    source = bundle / f"{name}.bpf.c"
    source.write_text(f"/* {tag} */\n" + source.read_text())
    return bundle


def _rows(stdout: str) -> list[list[str]]:
    return [line.split() for line in stdout.splitlines() if line.strip()]


def test_submit_builds_every_kernel_then_hits_the_cache(farm, tmp_path: Path) -> None:
    env, releases = farm["env"], farm["releases"]
    bundle = _fresh("tcp_connlat", tmp_path, "submit-every-kernel")
    first = cli(env, "submit", str(bundle), "--kernels", "all", "--wait")
    assert first.returncode == 0, first.stderr
    rows = _rows(first.stdout)
    assert sorted(r[1] for r in rows) == sorted(releases)
    assert {r[5] for r in rows} == {"built"}
    again = cli(env, "submit", str(bundle), "--kernels", "all", "--wait")
    assert again.returncode == 0, again.stderr
    assert {r[5] for r in _rows(again.stdout)} == {"cached"}
    assert {(r[1], r[2]) for r in _rows(again.stdout)} == {(r[1], r[2]) for r in rows}
    # every artifact and meta is in S3 and reads back with a matching sha256: a load-tested
    # kernel's meta as a blob of its own, the others' from their compile's verdict sheet
    store = open_store(Settings.from_env(env))
    for row in rows:
        assert store.read_blob(row[2])[:4] == b"\x7fELF"
        meta = read_meta(store, row[-1])
        assert meta.digest == row[2]
        assert ("#" in row[-1]) == (not meta.load_tested_on), row
    listing = cli(env, "builds")
    assert listing.returncode == 0 and "tcp_connlat" in listing.stdout


def test_selector_picks_kernels_and_bad_selector_is_refused(farm, tmp_path: Path) -> None:
    env = farm["env"]
    bundle = _fresh("tcp_connlat", tmp_path, "selector")
    one = os.uname().release
    done = cli(env, "submit", str(bundle), "--kernels", f"release={one}", "--wait")
    assert done.returncode == 0, done.stderr
    assert [r[1] for r in _rows(done.stdout)] == [one]
    bad = cli(env, "submit", str(bundle), "--kernels", "relase=6.1.*")
    assert bad.returncode == 2
    assert "did you mean 'release'" in bad.stderr


@pytest.mark.parametrize("kernel", ["this machine's", "6.1 reference"])
def test_identical_concurrent_submissions_compile_once(farm, tmp_path: Path, kernel: str) -> None:
    """On this machine's kernel (load-tested on this node, published at its index ref) and on
    a reference kernel (relocation-checked, published in a verdict sheet)."""
    settings = Settings.from_env(farm["env"])
    bundle = _fresh("tcp_connlat", tmp_path, f"concurrent {kernel}")
    release = os.uname().release if kernel == "this machine's" else "6.1.0-50-amd64"
    if release not in farm["releases"]:
        pytest.skip(f"no {release} in the farm's catalog (../shared/kernels is not here)")
    one = f"release={release}"
    with ThreadPoolExecutor(max_workers=10) as pool:
        builds = list(pool.map(lambda _: submit(settings, str(bundle), one), range(20)))
        done = list(pool.map(lambda b: wait(settings, b, 180, live=False), builds))
    states = [job.state for build in done for job in build.jobs.values()]
    assert len(states) == 20
    assert states.count("built") == 1, states
    assert states.count("cached") == 19, [(job.state, job.error) for build in done for job in build.jobs.values() if job.state != "cached"]
    assert len({job.digest for build in done for job in build.jobs.values()}) == 1
    if kernel == "6.1 reference":  # published once: the tasks that waited for the compile
        # found its verdict, they did not publish a verdict sheet each
        [meta] = {job.meta for build in done for job in build.jobs.values()}
        assert "#x86_64-" in meta


def test_failing_and_succeeding_bundles_side_by_side(farm, tmp_path: Path) -> None:
    settings = Settings.from_env(farm["env"])
    good = _fresh("tcp_connlat", tmp_path / "good", "side-by-side")
    bad = _fresh("tcp_connlat", tmp_path / "bad", "side-by-side-bad")
    source = bad / "tcp_connlat.bpf.c"
    source.write_text(source.read_text().replace("return 0;\n}", "return 0\n}", 1))
    one = f"release={os.uname().release}"
    builds = [submit(settings, str(b), one) for b in (bad, good)]
    bad_done, good_done = (wait(settings, b, 180, live=False) for b in builds)
    [bad_job], [good_job] = bad_done.jobs.values(), good_done.jobs.values()
    assert bad_job.state == "failed"
    assert "clang failed on program 'tcp_connlat'" in bad_job.error
    assert "tcp_connlat.bpf.c:" in bad_job.error and "error: expected ';'" in bad_job.error
    assert good_job.state == "built" and good_job.digest.startswith("sha256:")


def test_untrusted_bundle_cannot_read_the_workers_files(farm, tmp_path: Path) -> None:
    secret = f"canary-{os.urandom(8).hex()}"
    canary = Path(f"/root/.bpfdepot-farm-canary-{os.getpid()}")
    canary.write_text(secret + "\n")
    try:
        bundle = _fresh("tcp_connlat", tmp_path, "canary")
        source = bundle / "tcp_connlat.bpf.c"
        source.write_text(f'asm(".incbin \\"{canary}\\"");\n#include "{canary}"\n' + source.read_text())
        done = cli(farm["env"], "submit", str(bundle), "--kernels", f"release={os.uname().release}",
                   "--wait")
        assert done.returncode == 8
        assert "outside its bundle" in done.stderr
        assert secret not in done.stdout + done.stderr
        build_id = done.stderr.split("build ", 1)[1].split(":", 1)[0]
        record = cli(farm["env"], "builds", build_id)
        assert secret not in record.stdout + record.stderr
    finally:
        canary.unlink()


def test_lock_pins_and_locked_run_loads_only_the_pin(farm, tmp_path: Path) -> None:
    env = farm["env"]
    bundle = _fresh("tcp_connlat", tmp_path, "lock")
    unbuilt = cli(env, "lock", str(bundle), "--kernels", "all")
    assert unbuilt.returncode == 3 and "not built for" in unbuilt.stderr
    assert not (bundle / "bpfdepot.lock").exists()

    assert cli(env, "submit", str(bundle), "--kernels", "all", "--wait").returncode == 0
    locked = cli(env, "lock", str(bundle), "--kernels", "all")
    assert locked.returncode == 0, locked.stderr
    lock = json.loads((bundle / "bpfdepot.lock").read_text())
    assert sorted(p["release"] for p in lock["pins"]) == sorted(farm["releases"])

    run = cli(env, "run", str(bundle), "--locked", "--duration", "0.5")
    assert run.returncode == 0, run.stderr
    assert "building" not in run.stderr and "attached" in run.stderr

    # a pin that does not match its meta: refused, nothing loaded
    mine = next(p for p in lock["pins"] if p["release"] == os.uname().release)
    mine["artifact"] = "sha256:" + "0" * 64  # no longer the object its meta describes
    (bundle / "bpfdepot.lock").write_text(json.dumps(lock))
    tampered = cli(env, "run", str(bundle), "--locked", "--duration", "0.5")
    assert tampered.returncode == 9, tampered.stderr
    assert "lock pins" in tampered.stderr and "attached" not in tampered.stderr

    # a lock without this kernel: --locked never falls through to a build
    only = cli(env, "lock", str(bundle), "--kernels", "6.1.*")
    if only.returncode == 0:  # the reference kernels are here
        missing = cli(env, "run", str(bundle), "--locked", "--duration", "0.5")
        assert missing.returncode == 3
        assert "pins no artifact of 'tcp_connlat'" in missing.stderr


def test_minimal_btf_artifact_loads_without_the_system_btf(redis_service, rgw, tmp_path: Path) -> None:
    """A kernel whose nodes have no /sys/kernel/btf/vmlinux: the artifact carries its own."""
    from tests.farm.conftest import _bucket, farm_env
    from tests.services import start_workers

    env = farm_env(redis_service, rgw, tmp_path / "home", BPFDEPOT_BROKER=redis_service.url[:-1] + "2")
    _bucket(env)
    release = os.uname().release
    added = cli(env, "kernels", "add", "--btf", "/sys/kernel/btf/vmlinux", "--release", release,
                "--no-node-btf")
    assert added.returncode == 0, added.stderr
    workers = start_workers(env, concurrency=1, logdir=tmp_path)
    try:
        bundle = copy_bundle("tcp_connlat", tmp_path)
        built = cli(env, "submit", str(bundle), "--kernels", "all", "--wait")
        assert built.returncode == 0, built.stderr
        meta = read_meta(open_store(Settings.from_env(env)), built.stdout.split()[-1])
        assert meta.extra["min_btf"].startswith("sha256:")
        assert cli(env, "lock", str(bundle)).returncode == 0

        node = dict(env, BPFDEPOT_KERNEL_BTF=str(tmp_path / "no-btf-here"))
        out = tmp_path / "events.jsonl"
        proc = subprocess.Popen([sys.executable, "-m", "builder.cli", "run", str(bundle), "--locked",
                                 "--output", str(out)], cwd=ROOT, env=node, stderr=subprocess.PIPE,
                                text=True)
        line = proc.stderr.readline()
        assert "attached" in line, line + proc.stderr.read()
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen()
            with socket.create_connection(server.getsockname()) as client:
                port = client.getsockname()[1]
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=30)
        assert proc.returncode == 0, rest
        events = [json.loads(x) for x in out.read_text().splitlines()]
        # latency events only: tcp_connlat's histogram records carry no pid
        mine = [e for e in events if "delta_ns" in e and e["pid"] == os.getpid()]
        assert [(e["sport"], e["saddr"]) for e in mine] == [(port, "127.0.0.1")]
    finally:
        workers.stop()


def _tiny_bundle(dest: Path, name: str, source: str) -> Path:
    bundle = dest / name
    bundle.mkdir(parents=True)
    (bundle / "x.bpf.c").write_text(source)
    (bundle / "manifest.yaml").write_text(
        f"kind: ebpfprogram\nname: {name}\nspec:\n  programs:\n    - name: x\n"
        "      path: file://./x.bpf.c\n      type: ebpf_object\n")
    return bundle


def test_farm_compile_errors_name_files_in_the_users_bundle_folder(farm, tmp_path: Path) -> None:
    """As a local build does: clang's file:line points at the user's file, not the worker's copy."""
    source = ("// SPDX-License-Identifier: GPL-2.0\n#include \"vmlinux.h\"\n#include <bpf/bpf_helpers.h>\n"
              f"/* {tmp_path.name} */\nSEC(\"tp/syscalls/sys_enter_getppid\")\n"
              "int x(void *ctx) { return 0 }\n"  # line 6: the ';' is missing
              "char LICENSE[] SEC(\"license\") = \"GPL\";\n")
    bundle = _tiny_bundle(tmp_path, "user_paths", source)
    done = cli(farm["env"], "submit", str(bundle), "--kernels", f"release={os.uname().release}",
               "--wait")
    assert done.returncode == 8, done.stderr
    assert re.search(rf"(?m)^  {re.escape(str(bundle.resolve()))}/x\.bpf\.c:6:\d+: error: expected ';'",
                     done.stderr), done.stderr
    assert "cache/bundles" not in done.stderr and str(farm["home"]) not in done.stderr
    # the record itself names no folder of the worker's: `builds` shows the bundle's own names
    build_id = done.stderr.split("build ", 1)[1].split(":", 1)[0]
    shown = cli(farm["env"], "builds", build_id)
    assert shown.returncode == 8 and "<bundle>/x.bpf.c:6:" in shown.stderr, shown.stderr


def test_a_bundle_the_worker_cannot_parse_fails_and_says_why(farm, tmp_path: Path) -> None:
    """A manifest nested 600 levels deep (PyYAML recurses: it used to escape as RecursionError
    and leave the job "queued" for ever). `submit` parses the manifest first and refuses it, so
    the bundle is put in the store and enqueued here as submit() does after that parse."""
    from builder.farm import QUEUE, build_task, configure
    from builder.records import Job, Records, connect
    from loader.kernel.catalog import list_kernels, parse_selector, select

    settings = Settings.from_env(farm["env"])
    store = open_store(settings)
    manifest = ("kind: ebpfprogram\nname: deep\nspec:\n  programs: " + "[" * 600 + "]" * 600 + "\n").encode()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, data in (("manifest.yaml", manifest), ("x.bpf.c", b"int x;\n")):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    digest = store.put_blob(raw.getvalue())
    [kernel] = select(list_kernels(store), parse_selector(f"release={os.uname().release}"))
    records = Records(connect(settings.broker))
    build = records.create(bundle=digest, name="deep", selector="one", jobs=[
        Job(program="x", target=f"{kernel.arch}-{kernel.btf_digest}", release=kernel.release)])
    with configure(settings).connection_for_write(settings.broker) as conn:
        build_task.apply_async((build.id,), queue=QUEUE, connection=conn)
    done = wait(settings, build, 180, live=False)
    [job] = done.jobs.values()
    assert job.state == "failed", job
    shown = cli(farm["env"], "builds", build.id)
    assert shown.returncode == 8, shown.stderr
    assert "x " in shown.stdout and "FAILED" in shown.stdout
    assert "<bundle>/manifest.yaml: not valid YAML: nested too deeply for a manifest" in shown.stderr, \
        shown.stderr
