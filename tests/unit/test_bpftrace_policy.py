"""The farm's policy and probe list for bpftrace scripts (builder/bpftrace.py), on script text."""

from __future__ import annotations

import pytest

from builder import bpftrace
from builder.bpftrace import Probe, blank, check_policy, hook_of_probe, probes_of
from loader.errors import BuildError
from loader.kernel.hooks import Hook

SCRIPT = '''// count getppid; system("x") in a comment is fine
tracepoint:syscalls:sys_enter_getppid,
tracepoint:sched:sched_switch
/comm == "cat(" /
{
  /* signal(9) in a block comment */
  @calls[pid] = count();
  printf("{\\"s\\": \\"system(\\"}\\n");
}

t:tcp:tcp_sendmsg_locked { @g = max(args->size_goal); }
END { clear(@g); }
'''


def refused(text: str) -> BuildError:
    with pytest.raises(BuildError) as caught:
        check_policy(text, "x.bt")
    assert caught.value.exit_code == 8
    return caught.value


def test_comments_and_strings_are_blanked_keeping_lines_and_columns() -> None:
    code = blank(SCRIPT)
    assert len(code) == len(SCRIPT) and code.count("\n") == SCRIPT.count("\n")
    assert "system" not in code and "signal" not in code and "cat(" not in code
    assert "@calls[pid] = count();" in code


def test_names_only_in_comments_and_strings_pass() -> None:
    check_policy(SCRIPT, "x.bt")


@pytest.mark.parametrize("call", ["system", "cat", "signal", "override"])
def test_each_forbidden_call_is_refused_with_its_line(call: str) -> None:
    err = refused(SCRIPT.replace("END { clear(@g); }", f'END {{ {call} ("/etc/passwd"); }}'))
    assert err.message == (f"x.bt:12: {call}() is not allowed in a bpftrace program bpfdepot "
                           "runs: it acts on every node as root")


def test_unsafe_mode_is_refused_in_the_shebang_and_in_code() -> None:
    assert refused("#!/usr/bin/bpftrace --unsafe\nBEGIN { exit(); }\n").message.startswith(
        "x.bt:1: the script asks for bpftrace's unsafe mode")
    assert refused("BEGIN {\n unsafe\n}\n").message.startswith("x.bt:2: the script asks")


def test_a_name_that_merely_contains_a_forbidden_one_passes() -> None:
    check_policy("BEGIN { @concat = 1; @syscat = 2; }\n", "x.bt")


def test_probes_are_listed_with_their_lines_predicates_left_out() -> None:
    assert probes_of(SCRIPT) == [Probe("tracepoint:syscalls:sys_enter_getppid", 2),
                                 Probe("tracepoint:sched:sched_switch", 2),
                                 Probe("t:tcp:tcp_sendmsg_locked", 11), Probe("END", 12)]


def test_probes_map_to_hooks_the_kernel_btf_can_answer() -> None:
    assert hook_of_probe("tracepoint:tcp:tcp_sendmsg_locked") == Hook("tracepoint",
                                                                      "tcp_sendmsg_locked", "tcp")
    assert hook_of_probe("rawtracepoint:sched_switch") == Hook("raw_tracepoint", "sched_switch")
    assert hook_of_probe("tracepoint:syscalls:sys_enter_*") is None  # wildcards: bpftrace expands
    assert hook_of_probe("interval:s:1") is None
    assert not Hook("tracepoint", "sys_enter_getppid", "syscalls").in_btf


@pytest.mark.parametrize(("script", "needs"), [
    ('t:sched:sched_switch { @[comm] = count(); } // a struct in a comment', False),
    ('tracepoint:syscalls:sys_enter_getppid /comm == "x->y"/ { printf("struct\\n"); }', False),
    ('profile:hz:99 { @[kstack] = count(); } interval:s:1 { print(@); }', False),
    ('kfunc:vfs_read { @[comm] = count(); }', True),
    ('iter:task { printf("x"); }', True),
    ('t:syscalls:sys_enter_openat { printf("%s", str(args->filename)); }', True),
    ('k:tcp_sendmsg { $s = (struct sock *)arg0; }', True),
    ('#include <linux/sched.h>\nk:do_exit { @ = count(); }', True),
])
def test_scripts_whose_type_check_cannot_depend_on_kernel_btf(script: str, needs: bool) -> None:
    assert bpftrace.uses_btf(script) is needs


def test_a_btf_free_script_is_type_checked_once_for_every_kernel(monkeypatch, tmp_path) -> None:
    runs: list[str] = []
    monkeypatch.setattr(bpftrace, "_check_types", lambda binary, data, btf, path, kernel: runs.append(kernel))
    monkeypatch.setattr(bpftrace, "_TYPES_PASSED", set())
    free, typed = b"t:sched:sched_switch { @ = count(); }", b"kfunc:vfs_read { @ = count(); }"
    for kernel in ("6.1", "6.12", "6.18"):
        bpftrace.check_types("/usr/bin/bpftrace", free, tmp_path / kernel, "a.bt", kernel)
        bpftrace.check_types("/usr/bin/bpftrace", typed, tmp_path / kernel, "b.bt", kernel)
    assert runs == ["6.1", "6.1", "6.12", "6.18"]  # the free one once; the typed one per kernel

    def refuse(binary, data, btf, path, kernel):
        raise BuildError(f"{path}:1: syntax error in {kernel}")
    monkeypatch.setattr(bpftrace, "_check_types", refuse)
    for kernel in ("6.1", "6.12"):  # a refusal is never remembered: each kernel is named
        with pytest.raises(BuildError, match=f"in {kernel}"):
            bpftrace.check_types("/usr/bin/bpftrace", b"t:a:b { oops }", tmp_path, "c.bt", kernel)


def test_the_bpftrace_version_is_asked_once_per_binary_until_it_is_replaced(tmp_path) -> None:
    """A check's key holds bpftrace's version and a farm plans one check per kernel: asking
    ``bpftrace --version`` each time cost ~30 ms of CPU per kernel."""
    import os
    import time

    asked = tmp_path / "asked"
    binary = tmp_path / "bpftrace"
    binary.write_text(f"#!/bin/sh\necho x >> {asked}\necho 'bpftrace v0.17.0'\n")
    binary.chmod(0o755)
    assert [bpftrace.bpftrace_version(str(binary)) for _ in range(3)] == ["v0.17.0"] * 3
    assert asked.read_text().count("x") == 1
    binary.write_text(f"#!/bin/sh\necho x >> {asked}\necho 'bpftrace v0.21.2'\n")  # upgraded
    later = time.time() + 5
    os.utime(binary, (later, later))
    assert bpftrace.bpftrace_version(str(binary)) == "v0.21.2"
    assert asked.read_text().count("x") == 2
