"""Compile once per variant, check every kernel: real Redis, radosgw and workers.

The farm's catalog holds 6.1 and 6.12 (configs with kprobes), the reference 6.18 (config
without) and this machine's kernel (registered: probed, no kprobes). Bundles here are written
the usual libbpf way (vmlinux.h, bpf_helpers.h, bpf_core_read.h, plain SEC() programs)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from builder.farmcli import submit, wait
from builder.records import Build
from loader.artifacts.meta import read_meta
from loader.model.settings import Settings
from tests.farm.conftest import ROOT, cli

HEAD = """// SPDX-License-Identifier: GPL-2.0
/* {tag} */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";
"""

PLAIN = HEAD + """
__u32 last_pid;

SEC("tracepoint/syscalls/sys_enter_getppid")
int on_getppid(void *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	last_pid = BPF_CORE_READ(task, tgid);
	return 0;
}
"""

# the form a kernel with kprobes compiles, and a tracepoint form for the others
FORMS = HEAD + """
__u64 calls;

#ifdef BPFDEPOT_HAVE_KPROBE
SEC("kprobe/do_sys_openat2")
int BPF_KPROBE(on_open, int dfd)
#else
SEC("tracepoint/syscalls/sys_enter_openat")
int on_open(void *ctx)
#endif
{
	__sync_fetch_and_add(&calls, 1);
	return 0;
}
"""

# struct sock gained sk_ino after 6.12: an unguarded read cannot be relocated on 6.1 or 6.12
NEW_FIELD = HEAD + """
unsigned long last_ino;

SEC("tracepoint/sock/inet_sock_set_state")
int on_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
	const struct sock *sk = ctx->skaddr;

	last_ino = BPF_CORE_READ(sk, sk_ino);
	return 0;
}
"""

# the same read, guarded the libbpf-tools way: loads everywhere
GUARDED = NEW_FIELD.replace("	last_ino = BPF_CORE_READ(sk, sk_ino);",
                            "	if (bpf_core_field_exists(sk->sk_ino))\n"
                            "		last_ino = BPF_CORE_READ(sk, sk_ino);")


def _bundle(dest: Path, name: str, source: str, tag: str, extra: str = "") -> Path:
    folder = dest / name
    folder.mkdir(parents=True)
    (folder / f"{name}.bpf.c").write_text(source.replace("{tag}", tag))
    (folder / "manifest.yaml").write_text(
        f"kind: ebpfprogram\nname: {name}\nspec:\n  programs:\n    - name: {name}\n"
        f"      path: file://./{name}.bpf.c\n      type: ebpf_object\n{extra}")
    return folder


def _run(farm, bundle: Path) -> Build:
    settings = Settings.from_env(farm["env"])
    return wait(settings, submit(settings, str(bundle), "all"), 300, live=False)


def _by_release(build: Build) -> dict[str, object]:
    return {job.release: job for job in build.jobs.values()}


def test_kernels_of_one_variant_share_one_compile(farm, tmp_path: Path) -> None:
    build = _run(farm, _bundle(tmp_path, "plain", PLAIN, f"plain {tmp_path.name}"))
    jobs = _by_release(build)
    assert len(jobs) == len(set(farm["releases"])) >= 4
    assert {job.state for job in jobs.values()} == {"built"}, jobs
    # one compile: every kernel's artifact is the same object, compiled against the newest
    assert len({job.object_key for job in jobs.values()}) == 1
    assert len({job.digest for job in jobs.values()}) == 1
    newest = max(jobs, key=lambda r: [int(p) if p.isdigit() else p for p in r.replace("-", ".").split(".")])
    assert {job.reference.split("/")[0] for job in jobs.values()} == {newest}
    # each kernel has its own meta, naming it
    metas = {r: json.loads(read_meta(_store(farm), j.meta).to_json()) for r, j in jobs.items()}
    assert {r: m["target"]["release"] for r, m in metas.items()} == {r: r for r in jobs}
    assert all(m["extra"]["relocations"]["ok"] for m in metas.values())
    # this machine's kernel has a node (the farm's worker): loaded and attached there first
    here = metas[os.uname().release]["load_tested_on"]
    assert [(t["kernel"], t["how"].split()[0], t["verdict"], t["attached"]) for t in here] == \
        [(f"{os.uname().release}/x86_64", "node", "pass", ["on_getppid"])]
    # the others have neither a node nor a boot image here: checked, not load-tested
    assert all(metas[r]["load_tested_on"] == [] for r in jobs if r != os.uname().release)


def test_a_kernel_with_kprobes_is_a_second_variant(farm, tmp_path: Path) -> None:
    build = _run(farm, _bundle(tmp_path, "forms", FORMS, f"forms {tmp_path.name}"))
    jobs = _by_release(build)
    assert {job.state for job in jobs.values()} == {"built"}, jobs
    keys = {r: j.object_key for r, j in jobs.items()}
    assert len(set(keys.values())) == 2
    assert keys["6.1.0-50-amd64"] == keys["6.12.100+deb12-amd64"]  # both have kprobes
    assert keys["6.18.44-fc-v669"] != keys["6.1.0-50-amd64"]
    metas = {r: json.loads(read_meta(_store(farm), j.meta).to_json()) for r, j in jobs.items()}
    assert metas["6.1.0-50-amd64"]["programs"][0]["section"] == "kprobe/do_sys_openat2"
    assert metas["6.18.44-fc-v669"]["programs"][0]["section"] == "tracepoint/syscalls/sys_enter_openat"


def test_a_field_only_newer_kernels_have_is_refused_on_the_older_ones(farm, tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, "newfield", NEW_FIELD, f"newfield {tmp_path.name}")
    env = farm["env"]
    done = cli(env, "submit", str(bundle), "--kernels", "all", "--wait")
    rows = {line.split()[1]: line.split()[2:] for line in done.stdout.splitlines() if line.strip()}
    assert rows["6.1.0-50-amd64"] == ["REFUSED"] and rows["6.12.100+deb12-amd64"] == ["REFUSED"]
    passed = {r for r, row in rows.items() if row[0].startswith("sha256:")}
    assert passed >= {"6.18.44-fc-v669"} and len(passed) == len(rows) - 2, done.stdout
    assert done.returncode == 0, done.stderr  # it runs somewhere: the refusals are reported
    for release in ("6.1.0-50-amd64", "6.12.100+deb12-amd64"):
        assert f"'newfield' is refused for kernel {release}/x86_64 (relocation check)" in done.stderr
    assert "sk_ino" in done.stderr and "struct sock" in done.stderr
    assert "lock` pins only the kernels that passed" in done.stderr
    # one compile, against the newest kernel: none for 6.1
    build = _run(farm, bundle)
    assert len({job.object_key for job in build.jobs.values()}) == 1
    assert {job.state for job in build.jobs.values()} == {"cached", "refused"}
    # the lock pins only what passed and says why the others are missing
    locked = cli(env, "lock", str(bundle), "--kernels", "all")
    assert locked.returncode == 0, locked.stderr
    lock = json.loads((bundle / "bpfdepot.lock").read_text())
    assert {p["release"] for p in lock["pins"]} == passed
    assert {r["release"] for r in lock["refused"]} == {"6.1.0-50-amd64", "6.12.100+deb12-amd64"}
    assert all("sk_ino" in r["reason"] for r in lock["refused"])


def test_the_guarded_read_passes_everywhere(farm, tmp_path: Path) -> None:
    build = _run(farm, _bundle(tmp_path, "guarded", GUARDED, f"guarded {tmp_path.name}"))
    jobs = _by_release(build)
    assert {job.state for job in jobs.values()} == {"built"}, jobs
    meta = json.loads(read_meta(_store(farm), jobs["6.1.0-50-amd64"].meta).to_json())
    problems = meta["extra"]["relocations"]["problems"]
    assert problems and all(p["guarded"] for p in problems)
    assert any("sk_ino" in p["spec"] for p in problems)


def test_per_kernel_headers_compile_for_each_kernel(farm, tmp_path: Path) -> None:
    build = _run(farm, _bundle(tmp_path, "perkernel", PLAIN, f"perkernel {tmp_path.name}",
                               extra="      headers: per-kernel\n"))
    jobs = _by_release(build)
    assert {job.state for job in jobs.values()} == {"built"}, jobs
    assert len({job.object_key for job in jobs.values()}) == len(jobs)
    assert {r: j.reference.split("/")[0] for r, j in jobs.items()} == {r: r for r in jobs}


def _store(farm):
    from loader.artifacts.store import open_store

    return open_store(Settings.from_env(farm["env"]))


def test_a_program_the_verifier_rejects_is_refused_on_the_node_with_its_words(
        farm, tmp_path: Path) -> None:
    source = (ROOT / "tests" / "vm" / "bpf" / "unbounded.bpf.c").read_text()
    build = _run(farm, _bundle(tmp_path, "unbounded", f"/* {tmp_path.name} */\n" + source, ""))
    jobs = _by_release(build)
    here = jobs[os.uname().release]
    assert here.state == "refused", here
    assert f"'unbounded' is refused for kernel {os.uname().release}/x86_64 (load test)" in here.error
    assert "refused it at load: load err=-13 (Permission denied): R0 unbounded memory access" \
        in here.error
    assert (here.digest, here.meta) == ("", "")  # nothing published for it
    # kernels without a node or an image pass on their relocation check alone
    assert {r: j.state for r, j in jobs.items() if r != os.uname().release} == \
        {r: "built" for r in jobs if r != os.uname().release}
