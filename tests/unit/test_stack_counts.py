"""stack_counts: folding, records from map entries (ids resolved, lost ids counted, names merged)
with a fake stack map and symbolizer, and the manifest options."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from loader.errors import ManifestError
from loader.model.manifest import parse_manifest
from loader.outputs.stack_counts import LOST_FRAME, StackFolder, fold

KSYMS = {0xffff0001: "do_nanosleep+0x5e", 0xffff0002: "hrtimer_nanosleep+0x10",
         0xffff0003: "__x64_sys_nanosleep+0x9"}
USYMS = {0x401000: "burn_leaf", 0x401100: "burn_mid", 0x401200: "main"}


class FakeSymbols:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def warm(self) -> None:
        pass

    def seen(self, pid: int) -> None:
        self.calls.append(("seen", pid))

    def kernel(self, addrs):
        self.calls.append(("kernel", tuple(addrs)))
        return [KSYMS.get(a, "[unknown]") for a in addrs]

    def user(self, pid, addrs):
        self.calls.append(("user", pid, tuple(addrs)))
        return [USYMS.get(a, "[unknown]") for a in addrs]

    def forget(self, pid: int) -> None:
        self.calls.append(("forget", pid))


STACKS = {1: [0xffff0001, 0xffff0002, 0xffff0003],   # innermost first, as the kernel keeps them
          2: [0x401000, 0x401100, 0x401200],
          3: [0x401000, 0x401100, 0x401200]}         # another call site, same names


def folder() -> tuple[StackFolder, FakeSymbols]:
    sym = FakeSymbols()
    return StackFolder(sym, STACKS.get, "ns"), sym


def records(lines: list[bytes]) -> list[dict]:
    return [json.loads(line) for line in lines]


def test_fold_is_root_first_user_then_kernel_without_kernel_offsets() -> None:
    assert fold("nap", ["nap", "main", "_start"], ["do_nanosleep+0x5e", "hrtimer_nanosleep+0x10"]) \
        == "nap;_start;main;nap;hrtimer_nanosleep;do_nanosleep"
    assert fold("a;b", ["f;g"], []) == "a:b;f:g"
    assert fold("idle", [], []) == "idle"


def test_entries_become_records_with_names_and_the_ids_to_free() -> None:
    f, sym = folder()
    lines, ids = f.records_of([({"pid": 7, "kern_stack_id": 1, "user_stack_id": 2,
                                 "comm": "nap"}, 500)])
    [r] = records(lines)
    assert r == {"pid": 7, "comm": "nap",
                 "kernel": ["do_nanosleep+0x5e", "hrtimer_nanosleep+0x10", "__x64_sys_nanosleep+0x9"],
                 "user": ["burn_leaf", "burn_mid", "main"],
                 "stack": "nap;main;burn_mid;burn_leaf;__x64_sys_nanosleep;hrtimer_nanosleep;"
                          "do_nanosleep",
                 "value": 500, "unit": "ns"}
    assert ids == {1, 2}
    assert ("user", 7, (0x401000, 0x401100, 0x401200)) in sym.calls
    assert f.lost == 0 and f.records == 1


def test_efault_is_no_stack_and_lost_ids_are_counted_and_shown() -> None:
    f, _ = folder()
    lines, ids = f.records_of([
        ({"pid": 7, "kern_stack_id": -errno.EFAULT, "user_stack_id": 2, "comm": "burn"}, 10),
        ({"pid": 7, "kern_stack_id": -errno.EEXIST, "user_stack_id": 2, "comm": "burn"}, 3),
        ({"pid": 8, "kern_stack_id": 1, "user_stack_id": -errno.ENOMEM, "comm": "x"}, 4),
        ({"pid": 9, "kern_stack_id": 99, "user_stack_id": -errno.EFAULT, "comm": "k"}, 5),
    ])
    got = {(r["pid"], r["value"]): r for r in records(lines)}
    assert got[(7, 10)]["kernel"] == [] and got[(7, 10)]["stack"] == "burn;main;burn_mid;burn_leaf"
    assert got[(7, 3)]["kernel"] == [LOST_FRAME]
    assert got[(7, 3)]["stack"] == "burn;main;burn_mid;burn_leaf;[lost stack]"
    assert got[(8, 4)]["user"] == [LOST_FRAME]
    assert got[(9, 5)]["kernel"] == [LOST_FRAME]   # id 99: gone from the stack map
    assert ids == {1, 2, 99}
    assert f.lost == 3


def test_ids_with_the_same_names_merge_and_zero_counts_are_left_out() -> None:
    f, sym = folder()
    lines, ids = f.records_of([
        ({"pid": 7, "kern_stack_id": -errno.EFAULT, "user_stack_id": 2, "comm": "burn"}, 10),
        ({"pid": 7, "kern_stack_id": -errno.EFAULT, "user_stack_id": 3, "comm": "burn"}, 5),
        ({"pid": 8, "kern_stack_id": -errno.EFAULT, "user_stack_id": 3, "comm": "burn"}, 1),
        ({"pid": 9, "kern_stack_id": 1, "user_stack_id": 2, "comm": "burn"}, 0),
    ])
    got = records(lines)
    assert [(r["pid"], r["value"]) for r in got] == [(7, 15), (8, 1)]
    assert ids == {2, 3}
    assert f.records == 2
    kernel_calls = [c for c in sym.calls if c[0] == "kernel"]
    assert kernel_calls == []   # nothing asked of a stack no record holds


MANIFEST = """\
kind: ebpfprogram
name: t
spec:
  programs:
    - {name: t, path: file://./t.bpf.c, type: ebpf_object}
  channels:
    counts:
      type: stack_counts
%s"""


def _parse(tmp_path: Path, options: str):
    (tmp_path / "t.bpf.c").write_text("")
    path = tmp_path / "manifest.yaml"
    path.write_text(MANIFEST % "".join(f"      {line}\n" for line in options.splitlines()))
    return parse_manifest(path)


def test_options_parse_with_defaults(tmp_path: Path) -> None:
    assert dict(_parse(tmp_path, "").channels[0].options) == {
        "interval": 5.0, "unit": "samples", "stacks": None, "peek": 0.25}
    m = _parse(tmp_path, "interval: 1s\nunit: ns\nstacks: stackmap\npeek: 0")
    assert dict(m.channels[0].options) == {"interval": 1.0, "unit": "ns", "stacks": "stackmap",
                                           "peek": 0.0}


@pytest.mark.parametrize(("options", "said"), [
    ("unit: furlongs", "unit"),
    ("interval: later", "interval 'later' in spec.channels.counts is not a duration"),
    ("stacks: 9lives", "stack-trace map '9lives' is not a C identifier"),
    ("reset: maybe", "reset"),
])
def test_bad_options_are_refused(tmp_path: Path, options: str, said: str) -> None:
    with pytest.raises(ManifestError) as err:
        _parse(tmp_path, options)
    assert said in err.value.message


def test_stack_channels_carry_no_events_for_processors(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as err:
        _parse(tmp_path, "events: [{name: p}]")
    assert "stack_counts channel carries no events for processors" in err.value.message
