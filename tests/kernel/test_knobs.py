"""`bpfdepot run --set`: a program's const volatile knobs are set before load."""

from __future__ import annotations

import os
from pathlib import Path

from tests.kernel.conftest import Running, bpfdepot, cli_env


def test_targ_tgid_keeps_only_this_process(home: Path, tmp_path: Path) -> None:
    env = cli_env(home)
    out = tmp_path / "events.jsonl"
    run = Running(home, "bpf/opensnoop", out, env=env, extra=["--set", f"targ_tgid={os.getpid()}"])
    target = tmp_path / f"knob-{os.getpid()}"
    target.write_text("x")
    fd = os.open(target, os.O_RDONLY)
    os.close(fd)
    done = run.stop()
    assert done.rc == 0, done.stderr
    assert {e["pid"] for e in done.events} == {os.getpid()}  # bpfdepot's own opens are filtered out
    assert str(target) in {e["filename"] for e in done.events}


def test_unknown_knob_and_bad_value_are_refused(home: Path) -> None:
    typo = bpfdepot(home, "run", "bpf/opensnoop", "--set", "targ_tgd=1", "--duration", "1")
    assert typo.returncode == 5
    assert "no knob 'targ_tgd' in opensnoop" in typo.stderr and "did you mean 'targ_tgid'?" in typo.stderr
    negative = bpfdepot(home, "run", "bpf/opensnoop", "--set", "targ_tgid=-1", "--duration", "1")
    assert negative.returncode == 5
    assert "-1 does not fit knob 'targ_tgid' of 'opensnoop' (unsigned, 4 bytes)" in negative.stderr
    malformed = bpfdepot(home, "run", "bpf/opensnoop", "--set", "targ_tgid", "--duration", "1")
    assert malformed.returncode == 1 and "is not NAME=INTEGER" in malformed.stderr
