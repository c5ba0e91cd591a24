"""stack_counts with a struct value (count, bytes, a time sum → age_ms), top: N with the rest
summed into "[other]", reset: false, and the checks of value:/age: against the map's BTF."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from btfgen import BtfEncoder

from loader.errors import ManifestError
from loader.kernel.btf import Btf, MapDef
from loader.outputs.stack_counts import DEFAULTS, StackFolder, value_layout
from tests.unit.test_stack_counts import STACKS, FakeSymbols, _parse

NOW_MS = 50_000


def folder(**kw: object) -> StackFolder:
    return StackFolder(FakeSymbols(), STACKS.get, "bytes", clock=lambda: NOW_MS, **kw)


def leak_folder(**kw: object) -> StackFolder:
    return folder(weight="bytes", age="ts_ms_sum", members=("count", "bytes", "ts_ms_sum"), **kw)


def records(lines: list[bytes]) -> list[dict]:
    return [json.loads(line) for line in lines]


def key(pid: int, uid: int, comm: str = "leak") -> dict:
    return {"pid": pid, "user_stack_id": uid, "comm": comm}


def test_struct_members_become_fields_the_weight_is_the_value_and_the_sum_an_age() -> None:
    f = leak_folder()
    # 100 blocks allocated at 40,000 ms on average: 10 s old at 50,000 ms
    lines, ids = f.records_of([(key(7, 2), {"count": 100, "bytes": 102_400,
                                            "ts_ms_sum": 100 * 40_000})])
    assert records(lines) == [{"pid": 7, "comm": "leak", "kernel": [],
                               "user": ["burn_leaf", "burn_mid", "main"],
                               "stack": "leak;main;burn_mid;burn_leaf",
                               "count": 100, "bytes": 102_400, "age_ms": 10_000,
                               "value": 102_400, "unit": "bytes"}]
    assert ids == {2}


def test_struct_values_merge_member_by_member_and_all_zero_ones_are_left_out() -> None:
    f = leak_folder()
    lines, _ = f.records_of([
        (key(7, 2), {"count": 1, "bytes": 10, "ts_ms_sum": 49_000}),
        (key(7, 3), {"count": 3, "bytes": 30, "ts_ms_sum": 3 * 45_000}),   # same names as 2
        (key(8, 2), {"count": 0, "bytes": 0, "ts_ms_sum": 0}),             # all freed
    ])
    [r] = records(lines)
    # the age of the merged record is the mean over its 4 blocks: (49,000 + 135,000) / 4
    assert (r["pid"], r["count"], r["bytes"], r["age_ms"]) == (7, 4, 40, NOW_MS - 46_000)


def test_a_struct_without_age_keeps_every_member() -> None:
    f = folder(weight="bytes", members=("count", "bytes"))
    [r] = records(f.records_of([(key(7, 2), {"count": 2, "bytes": 64})])[0])
    assert (r["count"], r["bytes"], r["value"]) == (2, 64, 64) and "age_ms" not in r


def test_top_keeps_the_heaviest_largest_first_and_sums_the_rest() -> None:
    f = leak_folder(top=2)
    lines, ids = f.records_of([
        (key(1, 2, "a"), {"count": 1, "bytes": 100, "ts_ms_sum": 40_000}),
        (key(2, 2, "b"), {"count": 2, "bytes": 900, "ts_ms_sum": 2 * 40_000}),
        (key(3, 2, "c"), {"count": 3, "bytes": 50, "ts_ms_sum": 3 * 30_000}),
        (key(4, 2, "d"), {"count": 4, "bytes": 500, "ts_ms_sum": 4 * 20_000}),
    ])
    got = records(lines)
    assert [r.get("comm") for r in got] == ["b", "d", None]
    assert got[2] == {"stack": "[other]", "kernel": [], "user": [], "left_out": 2,
                      "count": 4, "bytes": 150, "age_ms": NOW_MS - (40_000 + 90_000) // 4,
                      "value": 150, "unit": "bytes"}
    assert f.left_out == 2 and f.records == 3
    assert ids == {2}


def test_top_on_plain_counts_and_no_other_when_nothing_is_left_out() -> None:
    f = StackFolder(FakeSymbols(), STACKS.get, "samples", top=1)
    got = records(f.records_of([(key(1, 2, "a"), 5), (key(2, 2, "b"), 7)])[0])
    assert [(r.get("comm"), r["value"]) for r in got] == [("b", 7), (None, 5)]
    assert got[1]["left_out"] == 1 and got[1]["stack"] == "[other]"
    f = StackFolder(FakeSymbols(), STACKS.get, "samples", top=5)
    got = records(f.records_of([(key(1, 2, "a"), 5), (key(2, 2, "b"), 7)])[0])
    assert [r["comm"] for r in got] == ["b", "a"]      # largest first, and no "[other]"


def test_new_options_parse_and_are_absent_unless_written(tmp_path: Path) -> None:
    m = _parse(tmp_path, "reset: false\nvalue: bytes\nage: ts_ms_sum\ntop: 20\nunit: bytes")
    assert dict(m.channels[0].options) == {
        "interval": 5.0, "unit": "bytes", "stacks": None, "peek": 0.25, "reset": False,
        "value": "bytes", "age": "ts_ms_sum", "top": 20}


@pytest.mark.parametrize(("options", "said"), [
    ("top: 0", "top in spec.channels.counts must be a whole number of at least 1"),
    ("value: 2bytes", "value member '2bytes' is not a C identifier"),
    ("reset: sometimes", "reset"),
])
def test_bad_new_options_are_refused(tmp_path: Path, options: str, said: str) -> None:
    with pytest.raises(ManifestError) as err:
        _parse(tmp_path, options)
    assert said in err.value.message


# -- value_layout: the options against the map's BTF -------------------------------------------

def ctx_for(members: list[str], *, key_members: tuple[str, ...] = ("pid", "user_stack_id")):
    enc = BtfEncoder()
    u64, s32 = enc.int_("unsigned long long", 8), enc.int_("int", 4, signed=True)
    k = enc.struct("k", 4 * len(key_members), [(n, s32, 32 * i) for i, n in enumerate(key_members)])
    v = enc.struct("v", 8 * len(members), [(n, u64, 64 * i) for i, n in enumerate(members)])
    btf = Btf.parse(enc.build())
    mdef = MapDef(name="outstanding", map_type=1, type_name="hash", key_type_id=k,
                  value_type_id=v, key_size=8, value_size=8 * len(members))
    ctx = SimpleNamespace(name="outstanding", program="memleak", info=SimpleNamespace(btf=btf))
    return ctx, mdef


def opts(**kw: object) -> dict:
    return {**DEFAULTS, **kw}


def test_layout_of_a_struct_value_and_of_one_member() -> None:
    ctx, mdef = ctx_for(["count", "bytes", "ts_ms_sum"])
    layout = value_layout(ctx, mdef, opts(value="bytes", age="ts_ms_sum"))
    assert [(n, s.offset, s.size) for n, s in layout] == [
        ("count", 0, 8), ("bytes", 8, 8), ("ts_ms_sum", 16, 8)]
    ctx, mdef = ctx_for(["samples"])
    assert value_layout(ctx, mdef, opts()) is None          # one integer: the old plain value


@pytest.mark.parametrize(("members", "options", "said"), [
    (["count", "bytes"], {}, ("the map's value is a struct of 2 integers and the channel does "
                              "not say which one weighs")),
    (["count", "bytes"], {"value": "kb"}, "value: kb is not a member of the map's value"),
    (["count", "bytes"], {"value": "bytes", "age": "ts"}, "age: ts is not a member"),
    (["bytes", "ts"], {"value": "bytes", "age": "ts"}, "age: ts needs a count member beside it"),
    (["count", "stack"], {"value": "count"}, ("value member 'stack' has the name of a key "
                                              "field or of a record field")),
    (["count", "pid"], {"value": "count"}, "value member 'pid' has the name of a key field"),
])
def test_layout_mistakes_are_named(members: list[str], options: dict, said: str) -> None:
    ctx, mdef = ctx_for(members)
    with pytest.raises(ManifestError) as err:
        value_layout(ctx, mdef, opts(**options))
    assert "channel 'outstanding' of 'memleak'" in err.value.message
    assert said in err.value.message
