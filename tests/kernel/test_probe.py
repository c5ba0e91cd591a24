"""Kernel feature probes on this machine's kernel: each decided by loading a probe program,
and those that attach to kernel BTF types find them (the kernel's BTF read once for all)."""

from __future__ import annotations

import errno
from pathlib import Path

from loader.kernel.probe import _BTF_NAMES, probe_features, running_kernel
from loader.libbpf import core as libbpf


def test_the_btf_ids_the_probes_need_are_found_in_one_read() -> None:
    wanted = [*_BTF_NAMES.items(), ("no_such_function_in_any_kernel", 12)]
    ids = libbpf.vmlinux_btf_ids(wanted)
    assert all(i > 0 for i in ids[:-1]), ids
    assert ids[-1] == -errno.ENOENT
    assert ids[:-1] == [libbpf.vmlinux_btf_id(name, kind) for name, kind in _BTF_NAMES.items()]


def test_probed_features_match_what_this_machine_allows(tmp_path: Path) -> None:
    kernel = running_kernel()
    found = probe_features(kernel, tmp_path)
    assert found["tracepoint"].ok and found["ringbuf"].ok and found["perf_event_array"].ok
    # tp_btf attaches to btf_trace_sched_switch: loading it proves the id was found and right
    assert (found["tp_btf"].ok, found["tp_btf"].why) == (True, "loads")
    # fentry/fexit/lsm load or are refused (EPERM here), never for want of their BTF targets
    assert {found[n].why for n in ("fentry", "fexit", "lsm")} <= {"EPERM", "loads"}
    assert probe_features(kernel, tmp_path) == found  # the second call reads the cache
    assert (tmp_path / "kernels" / f"{kernel.key}.json").exists()
