"""``fields:`` of a bpftrace_object: printed lines that are not JSON, split into named fields;
the manifest key parsed and refused where it does not belong."""

from __future__ import annotations

from pathlib import Path

import pytest

from loader.errors import ManifestError
from loader.model.manifest import parse_manifest
from loader.outputs import ChannelStats
from loader.programs.bpftrace import (
    UNMATCHED_MEANS,
    BpftraceChild,
    printf_records,
    route,
    split_fields,
)

FIELDS = ("pid", "comm", "latency_ns")


def test_words_become_the_named_fields_integers_as_numbers_the_last_takes_the_rest() -> None:
    assert split_fields("4242 bash 1500", FIELDS) == {"pid": 4242, "comm": "bash",
                                                      "latency_ns": 1500}
    assert split_fields("  -1\tbash   open /etc/passwd  ", ("ret", "comm", "rest")) == {
        "ret": -1, "comm": "bash", "rest": "open /etc/passwd"}
    assert split_fields("7 x", ("n", "name")) == {"n": 7, "name": "x"}
    assert split_fields("0x10 12a", ("a", "b")) == {"a": "0x10", "b": "12a"}  # decimal only
    assert split_fields("4242 bash", FIELDS) is None


def test_printed_lines_json_first_then_fields_then_text_and_the_misses_counted() -> None:
    text = '4242 bash 1500\n{"pid": 1, "json": true}\nshort line\n\n7 sh 9 and more\n'
    events, unmatched = printf_records(text, FIELDS)
    assert events == [{"pid": 4242, "comm": "bash", "latency_ns": 1500},
                      {"pid": 1, "json": True},
                      {"text": "short line"},
                      {"pid": 7, "comm": "sh", "latency_ns": "9 and more"}]
    assert unmatched == 1
    # without fields nothing is split and nothing counts as a miss
    assert printf_records("4242 bash 1500\n", ()) == ([{"text": "4242 bash 1500"}], 0)
    assert printf_records("[1, 2]\n", ("a", "b")) == ([{"a": "[1,", "b": "2]"}], 0)


def test_route_and_the_child_count_lines_that_missed_fields_in_the_summary(tmp_path: Path) -> None:
    routed = route({"type": "printf", "data": "1 a 2\noops\n"}, FIELDS)
    assert (routed.events, routed.unmatched) == ([{"pid": 1, "comm": "a", "latency_ns": 2},
                                                  {"text": "oops"}], 1)
    delivered: list[bytes] = []
    child = BpftraceChild("p", tmp_path / "x.bt", lambda data, n: delivered.append(data),
                          lambda data, n: None, lambda line: None, binary="/bin/true",
                          fields=FIELDS)
    try:
        child._queue.extend([{"type": "printf", "data": "1 a 2\n"},
                             {"type": "printf", "data": "no\n"}])
        child.read(0.0)
    finally:
        child.close()
    assert delivered == [b'{"pid":1,"comm":"a","latency_ns":2}\n{"text":"no"}\n']
    assert child.stats() == ChannelStats(program="p", channel="events", received=2, lost=0,
                                         short=1, short_means=UNMATCHED_MEANS)
    assert UNMATCHED_MEANS.startswith("line(s) did not match fields:")


def manifest(tmp_path: Path, program: str, files: tuple[str, ...] = ("x.bt",)) -> Path:
    for name in files:
        (tmp_path / name).write_text("")
    path = tmp_path / "manifest.yaml"
    path.write_text("kind: ebpfprogram\nname: bt\nspec:\n  programs:\n" + program)
    return path


def test_manifest_fields_of_a_bpftrace_program(tmp_path: Path) -> None:
    path = manifest(tmp_path, "    - {name: x, path: file://./x.bt, type: bpftrace_object,\n"
                              "       fields: [pid, comm, latency_ns]}\n")
    assert parse_manifest(path).programs[0].fields == FIELDS
    plain = manifest(tmp_path, "    - {name: x, path: file://./x.bt, type: bpftrace_object}\n")
    assert parse_manifest(plain).programs[0].fields == ()


@pytest.mark.parametrize(("program", "error", "hint"), [
    ("    - {name: x, path: file://./x.bpf.c, type: ebpf_object, fields: [pid]}\n",
     ("5: 'fields' in spec.programs[0]: only a bpftrace_object's printed lines are split into "
      "fields"), "a kernel program's events take their fields from its event struct"),
    ("    - {name: x, path: file://./x.bt, type: bpftrace_object, fields: []}\n",
     "5: spec.programs[0].fields is empty",
     "name the printed words, e.g. fields: [pid, comm, latency_ns]"),
    ("    - {name: x, path: file://./x.bt, type: bpftrace_object, fields: [pid, 2x]}\n",
     "5: spec.programs[0].fields: '2x' is not a field name (letters, digits, _)",
     "use names such as pid, comm, latency_ns"),
    ("    - {name: x, path: file://./x.bt, type: bpftrace_object, fields: [pid, pid]}\n",
     "5: spec.programs[0].fields: field 'pid' is named twice",
     "give every printed word its own name"),
])
def test_manifest_fields_refused_with_the_line_and_the_fix(tmp_path: Path, program: str,
                                                          error: str, hint: str) -> None:
    path = manifest(tmp_path, program, files=("x.bt", "x.bpf.c"))
    with pytest.raises(ManifestError) as caught:
        parse_manifest(path)
    assert caught.value.message == f"{path}:{error}"
    assert caught.value.hint == hint
