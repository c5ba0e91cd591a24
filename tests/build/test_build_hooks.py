"""A tracepoint a target kernel lacks is named at build time for that kernel, and `forms:` picks,
per kernel, the programs whose tracepoints exist (loader/kernel/hooks.py).

``sock:sock_send_length`` is in 6.12 and 6.18 and not in 6.1 (../shared/CATALOG.md §1). The
subject is written the usual libbpf way: plain SEC() programs, no bpfdepot macros."""

from __future__ import annotations

from pathlib import Path

import pytest

from loader.errors import BuildError, KernelUnsupported
from loader.kernel.hooks import Hook, hook_of, kernel_btf, missing_hooks
from loader.kernel.probe import Feature
from loader.session import choose_forms
from tests.build.test_build import KERNELS, _build

OLD = KERNELS / "6.1.0-50-amd64.btf"      # no sock_send_length
NEW = KERNELS / "6.18.44-fc-v669.btf"     # has it

SOURCE = """\
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

__u64 sent;

SEC("tp/sock/sock_send_length")
int on_send(void *ctx)
{
	__sync_fetch_and_add(&sent, 1);
	return 0;
}

SEC("tp/sock/sock_recv_length")
int on_recv(void *ctx)
{
	return 0;
}

SEC("cgroup_skb/egress")
int on_egress(struct __sk_buff *skb)
{
	__sync_fetch_and_add(&sent, 1);
	return 1;
}

SEC("tp/syscalls/sys_enter_sendto")
int on_sendto(void *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
"""


def _bundle(tmp_path: Path, controls: str) -> Path:
    folder = tmp_path / "sendlen"
    folder.mkdir()
    (folder / "sendlen.bpf.c").write_text(SOURCE)
    (folder / "manifest.yaml").write_text(
        "kind: ebpfprogram\nname: sendlen\nspec:\n  programs:\n"
        "    - name: sendlen\n      path: file://./sendlen.bpf.c\n      type: ebpf_object\n"
        + controls)
    return folder


needs_kernels = pytest.mark.skipif(not OLD.exists() or not NEW.exists(),
                                   reason=f"no reference kernels at {KERNELS}")


@needs_kernels
def test_a_tracepoint_the_target_lacks_is_named_at_build_time(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, "")
    with pytest.raises(BuildError) as caught:
        _build(tmp_path / "home", bundle, OLD)
    err = caught.value
    assert err.exit_code == 8
    assert "'sendlen'" in err.message and "on_recv (tracepoint sock:sock_recv_length)" in err.message
    assert "'sendlen'" in err.message and "6.1.0-50-amd64/x86_64" in err.message
    assert "on_send (tracepoint sock:sock_send_length)" in err.message
    assert "forms:" in err.hint
    # the kernel that has it builds the same bundle without a word
    built = _build(tmp_path / "home", bundle, NEW)
    assert "hooks_missing" not in built.meta.extra and "sock_send_length" not in built.warnings


@needs_kernels
def test_forms_let_the_build_pick_per_kernel(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, "      forms: [[on_send, on_recv], [on_egress]]\n")
    old = _build(tmp_path / "home", bundle, OLD)
    assert old.meta.extra["hooks_missing"] == {"on_send": "tracepoint sock:sock_send_length",
                                              "on_recv": "tracepoint sock:sock_recv_length"}
    assert ("kernel 6.1.0-50-amd64/x86_64 has no tracepoint sock:sock_recv_length, "
            "tracepoint sock:sock_send_length; "
            "form 2 (on_egress) loads there") in old.warnings
    new = _build(tmp_path / "home", bundle, NEW)
    assert "hooks_missing" not in new.meta.extra


@needs_kernels
def test_no_form_fitting_the_target_is_a_build_error(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, "      forms: [[on_send], [on_recv, on_sendto]]\n")
    with pytest.raises(BuildError) as caught:
        _build(tmp_path / "home", bundle, OLD)
    assert "no form of program 'sendlen' fits kernel 6.1.0-50-amd64/x86_64" in caught.value.message
    assert "form 2 (on_recv, on_sendto) needs on_recv: tracepoint sock:sock_recv_length" \
        in caught.value.detail


@needs_kernels
def test_a_program_left_out_by_autoload_needs_no_hook(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, "      attach:\n        on_send: {autoload: false}\n"
                     "        on_recv: {autoload: false}\n")
    built = _build(tmp_path / "home", bundle, OLD)
    assert "those programs stay unloaded there" in built.warnings


def test_sections_name_their_tracepoints() -> None:
    assert hook_of("tp/sock/sock_send_length") == Hook("tracepoint", "sock_send_length", "sock")
    assert hook_of("tracepoint/sched/sched_switch") == Hook("tracepoint", "sched_switch", "sched")
    assert hook_of("tp_btf/kfree_skb") == Hook("tp_btf", "kfree_skb")
    assert hook_of("raw_tp/sched_wakeup") == Hook("raw_tracepoint", "sched_wakeup")
    assert str(hook_of("raw_tracepoint.w/x")) == "raw_tracepoint x"
    for other in ("tp", "tp/", "tp/sock", "kprobe/tcp_connect", "uprobe", "cgroup_skb/egress",
                  "tp_btf/"):
        assert hook_of(other) is None, other
    assert not hook_of("tp/syscalls/sys_enter_openat").in_btf  # never in BTF: never "missing"


def test_the_node_btf_answers_and_forms_skip_what_it_lacks() -> None:
    btf = kernel_btf("/sys/kernel/btf/vmlinux")
    if btf is None:
        pytest.skip("this kernel exposes no BTF")
    missing = missing_hooks([("a", "tp/bpfdepot/no_such_event"), ("b", "tp_btf/sched_switch"),
                             ("c", "tp/syscalls/sys_enter_whatever"), ("d", "perf_event")], btf)
    assert missing == {"a": Hook("tracepoint", "no_such_event", "bpfdepot")}
    assert missing_hooks([("a", "tp/bpfdepot/no_such_event")], None) == {}  # no BTF: not asked
    feats = {"tracepoint": Feature(name="tracepoint", ok=True, why="loads"),
             "tp_btf": Feature(name="tp_btf", ok=True, why="loads")}
    progs = {"a": "tracepoint", "b": "tp_btf"}
    assert choose_forms([["a"], ["b"]], progs, feats, "x", missing) == (1, ("a",))
    with pytest.raises(KernelUnsupported) as caught:
        choose_forms([["a"]], progs, feats, "x", missing)
    assert "tracepoint bpfdepot:no_such_event (a), which this kernel does not have" \
        in caught.value.message
