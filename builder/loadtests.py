"""Load-testing a build's objects on the real target kernel before they are published there.

After its relocation check passes, an object whose kernel can be load-tested waits as a
*candidate* (job state ``load-testing``; its meta is stored, not published). When every job of
the build for that kernel is checked, one load test takes all of that kernel's candidates:

- ``node``: a farm worker running on that very kernel (``bpfdepot worker`` as root on a
  registered node announces itself; it takes the kernel's own queue) loads and attaches each
  object with the static libbpf loader (builder/vmtest/loadtest.c) and detaches it again;
- ``vm``: a farm worker boots the kernel's Debian image in QEMU with every object in one boot
  (builder/vmtest), the way libbpf's CI does.

A pass publishes the object for the kernel with ``load_tested_on`` in its meta; a refusal is
recorded with the verifier's words (builder/verdicts.py). Which way a kernel is tested is part
of its record key, so a kernel that gains a node or an image is tested on the next build.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from builder.compile import Compiled
from builder.verdicts import Checked, publish_kernel, record_refusal
from loader.artifacts.meta import ArtifactMeta
from loader.errors import BpfDepotError
from loader.kernel.catalog import KernelEntry

log = logging.getLogger(__name__)

NODE_TTL_S = 30          # a node that stopped announcing itself this long ago is gone
LOAD_TEST_TIMEOUT_S = 120
_NODES = "bpfdepot:loadtest-nodes:"  # + target: sorted set of node names by last announcement


def node_queue(target: str) -> str:
    """The queue a node of kernel ``target`` ("<arch>-<btf digest>") takes load tests from."""
    return f"bpfdepot.node.{target}"


def live_nodes_of(redis, targets: list[str]) -> dict[str, list[str]]:
    """The nodes of each kernel target that announced themselves within NODE_TTL_S, in one
    round trip."""
    pipe, now = redis.pipeline(transaction=False), time.time()
    for target in targets:
        pipe.zrangebyscore(_NODES + target, now - NODE_TTL_S, "+inf")
    return {t: [n.decode() for n in names] for t, names in zip(targets, pipe.execute())}


def announce(redis, target: str, name: str, stop: threading.Event) -> threading.Thread:
    """Keep telling the farm that node ``name`` load-tests kernel ``target`` (a thread)."""
    def loop() -> None:
        while True:
            try:
                redis.zadd(_NODES + target, {name: time.time()})
                redis.expire(_NODES + target, NODE_TTL_S * 4)
            except Exception:  # noqa: BLE001 - Redis away: announce again when it is back
                log.debug("node announcement failed", exc_info=True)
            if stop.wait(NODE_TTL_S / 3):
                try:
                    redis.zrem(_NODES + target, name)  # a clean stop leaves at once
                except Exception:  # noqa: BLE001
                    pass
                return
    thread = threading.Thread(target=loop, name="bpfdepot-node-announce", daemon=True)
    thread.start()
    return thread


def methods_for(redis, entries: list[KernelEntry]) -> list[str]:
    """How each entry is load-tested now: "node" (a node of it is live), "vm" (its image boots
    here), or "" (neither: the object is published after its relocation check alone); Redis is
    asked once for all of them."""
    from builder.vmtest import can_vm_test

    targets = [f"{e.arch}-{e.btf_digest}" for e in entries]
    live = live_nodes_of(redis, targets) if redis is not None and targets else {}
    vm = os.environ.get("BPFDEPOT_VM_TESTS", "1") != "0"
    return ["node" if live.get(t) else "vm" if vm and can_vm_test(e) is None else ""
            for t, e in zip(targets, entries)]


def candidate(store, checked: Checked) -> str:
    """Store a checked object's meta unpublished (a blob only); its digest names it."""
    return store.put_blob(checked.meta.to_json())


def run_load_test(store, entry: KernelEntry, method: str, objects: list[tuple[str, bytes]],
                  cache_dir: Path) -> tuple[dict[str, object], float, str]:
    """Load and attach ``objects`` on ``entry``'s kernel: (verdict per name, seconds, how)."""
    if method == "vm":
        from builder.vmtest import load_test

        report = load_test(store, entry, objects, cache_dir=cache_dir, timeout_s=LOAD_TEST_TIMEOUT_S)
        return report.verdicts, report.seconds, "vm"
    return _on_this_node(objects, cache_dir, entry)


def _on_this_node(objects: list[tuple[str, bytes]], cache_dir: Path,
                  entry: KernelEntry) -> tuple[dict[str, object], float, str]:
    """The static loader run here, on the kernel it tests (root; tracefs for tracepoints)."""
    from builder.vmtest.image import build_loader, object_file
    from builder.vmtest.run import parse_console
    from loader.kernel.probe import file_digest
    from loader.session import ensure_filesystems

    here = file_digest(Path("/sys/kernel/btf/vmlinux"))
    if here != entry.btf_digest:  # a node queue is per kernel: this should never happen
        raise BpfDepotError(f"this node runs kernel BTF {here[:12]}, not {entry}'s "
                            f"({entry.btf_digest[:12]}): it cannot load-test for it",
                            hint="start load-testing workers only on nodes of the kernel")
    ensure_filesystems(need_tracefs=True)
    loader = build_loader(cache_dir)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bpfdepot-loadtest-") as tmp:
        files = {}
        for i, (name, data) in enumerate(objects):
            (Path(tmp) / object_file(i)).write_bytes(data)
            files[object_file(i)] = name
        done = subprocess.run([str(loader), tmp], capture_output=True, text=True,
                              timeout=LOAD_TEST_TIMEOUT_S)
    what = f"the load test on node {socket.gethostname()}"
    return parse_console(done.stdout + done.stderr, files, what), \
        time.perf_counter() - started, f"node {socket.gethostname()}"


def settle(store, plans_and_metas: list[tuple[object, ArtifactMeta]], verdicts: dict[str, object],
           seconds: float, how: str) -> dict[str, object]:
    """Publish each candidate that passed (with ``load_tested_on``) and record a refusal for
    each that failed: {program: Built | KernelRefused}."""
    out: dict[str, object] = {}
    for plan, meta in plans_and_metas:
        verdict = verdicts.get(plan.program.name)
        if verdict is not None and verdict.ok:
            tested = ({"kernel": str(plan.target.identity), "how": how, "verdict": "pass",
                       "attached": list(verdict.attached), "skipped": list(verdict.skipped),
                       "seconds": round(seconds, 3)},)
            out[plan.program.name] = publish_kernel(store, Checked(plan=plan, meta=meta, warnings=""),
                                                    load_tested_on=tested)
            continue
        compiled = Compiled(meta=meta, meta_digest="", cached=True, seconds=0.0)
        if verdict is None:
            reasons = [f"kernel {plan.target.identity}: the load test ({how}) gave no verdict"]
        else:
            reasons = [f"kernel {plan.target.identity}: {how} refused it at {verdict.stage}: "
                       f"{verdict.error}"] + ([verdict.log_tail] if verdict.log_tail else [])
        reasons += [f"the relocation check had said: {r}" for r in meta.extra.get("check_reasons", ())]
        out[plan.program.name] = record_refusal(
            store, plan, compiled, reasons, stage="load", how=how,
            hint="fix what the verifier names (its log is above), or leave this kernel out")
    return out

