"""Load tests before publishing: real Redis, radosgw and workers; the 6.1 and 6.12 reference
kernels added from their Debian packages (so the farm boots them in QEMU) and this machine's
kernel registered with a worker that load-tests on it (a node). Objects are the libbpf-style
sources of tests/vm/bpf."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from builder.farmcli import submit, wait
from builder.records import Build
from loader.artifacts.meta import read_meta
from loader.artifacts.store import open_store
from loader.model.settings import Settings
from tests.farm.conftest import _bucket, cli, farm_env
from tests.services import start_workers
from tests.vm.debian import ArchiveUnreachable, cache_root, fetch_package

SOURCES = Path(__file__).resolve().parents[1] / "vm" / "bpf"
PACKAGES = {"6.1.0-50-amd64": "linux-image-6.1.0-50-amd64",
            "6.12.100+deb12-amd64": "linux-image-6.12.100+deb12-amd64"}
HERE = os.uname().release


@pytest.fixture(scope="module")
def vm_farm(redis_service, rgw, tmp_path_factory: pytest.TempPathFactory):
    if not any(Path(p, "qemu-system-x86_64").exists() for p in os.environ["PATH"].split(":")):
        pytest.skip("QEMU is not installed (scripts/test installs qemu-system-x86)")
    try:
        debs = {r: fetch_package(p, cache_root(os.environ)) for r, p in PACKAGES.items()}
    except ArchiveUnreachable as exc:
        pytest.skip(str(exc))
    home = tmp_path_factory.mktemp("vm-farm-home")
    env = farm_env(redis_service, rgw, home, prefix="vmfarm")
    # a Redis database of its own: the session farm's workers (another store prefix, the same
    # node queue for this kernel) must not take these builds' tasks
    env["BPFDEPOT_BROKER"] = redis_service.url.rsplit("/", 1)[0] + "/5"
    _bucket(env)
    for deb in debs.values():
        added = cli(env, "kernels", "add", "--package", str(deb))
        assert added.returncode == 0, added.stderr
    assert cli(env, "kernels", "register").returncode == 0
    workers = start_workers({**env, "BPFDEPOT_LOAD_TEST_NODE": "1"}, count=1, concurrency=2,
                            logdir=home)
    yield env
    workers.stop()


def _bundle(dest: Path, name: str, tag: str) -> Path:
    folder = dest / name
    folder.mkdir(parents=True)
    source = (SOURCES / f"{name}.bpf.c").read_text()
    (folder / f"{name}.bpf.c").write_text(f"/* {tag} */\n{source}")
    (folder / "manifest.yaml").write_text(
        f"kind: ebpfprogram\nname: {name}\nspec:\n  programs:\n    - name: {name}\n"
        f"      path: file://./{name}.bpf.c\n      type: ebpf_object\n")
    return folder


def _build(env: dict[str, str], bundle: Path) -> Build:
    settings = Settings.from_env(env)
    return wait(settings, submit(settings, str(bundle), "all"), 600, live=False)


def _metas(env: dict[str, str], build: Build) -> dict[str, dict]:
    store = open_store(Settings.from_env(env))
    return {j.release: json.loads(read_meta(store, j.meta).to_json()) for j in build.jobs.values() if j.meta}


def test_a_good_program_is_load_tested_on_each_kernel_before_it_is_published(
        vm_farm, tmp_path: Path) -> None:
    build = _build(vm_farm, _bundle(tmp_path, "getpid", f"good {tmp_path.name}"))
    assert {j.release: j.state for j in build.jobs.values()} == \
        {"6.1.0-50-amd64": "built", "6.12.100+deb12-amd64": "built", HERE: "built"}
    tested = {r: [(t["kernel"], t["how"].split()[0], t["verdict"]) for t in m["load_tested_on"]]
              for r, m in _metas(vm_farm, build).items()}
    assert tested == {r: [(f"{r}/x86_64", "vm" if r in PACKAGES else "node", "pass")]
                      for r in (*PACKAGES, HERE)}
    # the second build finds every kernel's record: no compile, no VM
    again = _build(vm_farm, _bundle(tmp_path / "again", "getpid", f"good {tmp_path.name}"))
    assert {j.state for j in again.jobs.values()} == {"cached"}


def test_a_program_every_verifier_rejects_is_refused_with_its_words(vm_farm, tmp_path: Path) -> None:
    build = _build(vm_farm, _bundle(tmp_path, "unbounded", f"bad {tmp_path.name}"))
    for job in build.jobs.values():
        assert job.state == "refused", job
        assert f"is refused for kernel {job.release}/x86_64 (load test)" in job.error
        assert "R0 unbounded memory access" in job.error
    how = {j.release: re.search(r": (vm|node) ?\S* refused it at load: ", j.error)[1]
           for j in build.jobs.values()}
    assert how == {r: "vm" if r in PACKAGES else "node" for r in how}
    # refused everywhere: submit --wait fails, and there is nothing to lock
    bundle = tmp_path / "unbounded"
    done = cli(vm_farm, "submit", str(bundle), "--kernels", "all", "--wait")
    assert done.returncode == 8 and "refused everywhere: unbounded" in done.stderr
    assert cli(vm_farm, "lock", str(bundle), "--kernels", "all").returncode != 0


def test_a_6_4_kfunc_passes_on_6_12_and_is_refused_on_6_1_by_libbpf(vm_farm, tmp_path: Path) -> None:
    build = _build(vm_farm, _bundle(tmp_path, "iter_num", f"kfunc {tmp_path.name}"))
    jobs = {j.release: j for j in build.jobs.values()}
    assert (jobs["6.12.100+deb12-amd64"].state, jobs[HERE].state) == ("built", "built")
    old = jobs["6.1.0-50-amd64"]
    assert old.state == "refused"
    assert re.search(r"vm refused it at load: extern \(func ksym\) 'bpf_iter_num_\w+': not found "
                     r"in kernel or module BTFs", old.error), old.error
    # the relocation check saw it first, in its own words, and the VM had the last word
    assert "the relocation check had said: kernel 6.1.0-50-amd64/x86_64: kfunc not in this " \
           "kernel's BTF" in old.error
