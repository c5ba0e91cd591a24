"""Labels in each sink's own form: the tsdb query by label name, Prometheus series labelled by
their key's cgroup id (bounded), filter label ids named (FilterStamper, FilterNames, run_stamp)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from loader.errors import BpfDepotError
from loader.labels import LabelResolver, LabelSettings
from loader.labels.run import FilterNames, RunLabels, run_stamp
from loader.labels.stamp import FilterStamper, Stamper
from loader.monitor import Target
from loader.sinks import Record
from loader.sinks.prometheus import Metrics
from loader.sinks.prometheus_labels import OVER_LIMIT, SeriesLabels
from loader.sinks.tsdb import TsdbSink, query

TREE = Path(__file__).parent / "labels_tree"
UNIT = {"unit": "shop-api.service", "slice": "system.slice"}
POD = {"namespace": "shop", "pod": "cart-7c9f8-x2x4q", "container": "cart"}


# -- tsdb: labels query like fields ---------------------------------------------------------

def rec(i: int, labels: dict | None) -> Record:
    fields = {"pid": 100 + i % 3, "ret": i, "comm": "cat"}
    if labels is not None:
        fields["labels"] = labels
    return Record(key=None, value=json.dumps(fields).encode())


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "events.sqlite"
    s = TsdbSink(path, retention_s=None, max_bytes=None)
    s.write("opensnoop.opensnoop_events",
            [rec(i, UNIT) for i in range(5)] + [rec(i, POD) for i in range(7)] + [rec(9, None)])
    assert s.close().delivered == 13
    return path


def ask(path: Path, **kw: object):
    kw.setdefault("since_s", None)
    kw.setdefault("where", [])
    kw.setdefault("group_by", None)
    kw.setdefault("limit", 100)
    return query(path, "opensnoop", **kw)


def test_group_by_a_label_by_its_name(store: Path) -> None:
    r = ask(store, group_by="unit")
    assert r.columns == ("unit", "count")
    assert r.rows == ({"unit": None, "count": 8}, {"unit": "shop-api.service", "count": 5})
    assert ask(store, group_by="labels.pod").rows == (
        {"labels.pod": "cart-7c9f8-x2x4q", "count": 7}, {"labels.pod": None, "count": 6})


def test_where_and_stat_on_labels(store: Path) -> None:
    r = ask(store, where=[("namespace", "shop")], group_by="container", stat="ret")
    assert [(row["container"], row["count"], row["min"], row["max"]) for row in r.rows] == [
        ("cart", 7, 0, 6)]
    assert len(ask(store, where=[("unit", "shop-api.service"), ("pid", "100")]).rows) == 2


def test_a_record_field_wins_over_a_label_and_unknown_names_list_the_labels(store: Path) -> None:
    assert ask(store, group_by="comm").rows == ({"comm": "cat", "count": 13},)
    with pytest.raises(BpfDepotError) as err:
        ask(store, group_by="pdo")
    assert "labels seen: container, namespace, pod, slice, unit" in err.value.message
    assert err.value.hint == "did you mean 'pod'?"


# -- Prometheus: series keyed by a cgroup id gain its labels ----------------------------------

def lookup_table(table: dict[int, dict[str, str]]):
    return lambda cg: table.get(cg, {})


def test_series_keyed_by_cgroup_get_labels_others_do_not() -> None:
    m = Metrics(series_labels=SeriesLabels(lookup_table({11: UNIT, 22: POD})))
    c = m.counter("bpfdepot_pagefault_fault_counts_user_faults_total", "faults",
                  ("cgroup", "pid", "comm"))
    c.labels(cgroup="11", pid="5", comm="a").set(3)
    c.labels(cgroup="22", pid="6", comm="b").set(4)
    c.labels(cgroup="33", pid="7", comm="c").set(1)   # a cgroup without labels
    plain = m.gauge("bpfdepot_x", "no cgroup key", ("pid",))
    plain.labels(pid="5").set(1)
    h = m.histogram("bpfdepot_runqlat_hist_cgroup_hists", "h", ("cgroup",), (1.0, 2.0))
    h.observe({"cgroup": "22"}, [1, 2], count=3, add=False)
    text = m.render().decode()
    name = "bpfdepot_pagefault_fault_counts_user_faults_total"
    assert f'{name}{{cgroup="11",pid="5",comm="a",unit="shop-api.service"}} 3\n' in text
    assert (f'{name}{{cgroup="22",pid="6",comm="b",namespace="shop",pod="cart-7c9f8-x2x4q",'
            f'container="cart"}} 4\n') in text
    assert f'{name}{{cgroup="33",pid="7",comm="c"}} 1\n' in text
    assert 'bpfdepot_x{pid="5"} 1\n' in text
    assert ('bpfdepot_runqlat_hist_cgroup_hists_bucket{cgroup="22",namespace="shop",'
            'pod="cart-7c9f8-x2x4q",container="cart",le="1"} 1\n') in text
    assert f'{OVER_LIMIT}{{metric="{name}"}} 0\n' in text


def test_labelled_series_are_bounded_and_the_rest_counted() -> None:
    series = SeriesLabels(lookup_table({i: {"unit": f"u{i}.service"} for i in range(1, 10)}),
                          max_series=3)
    m = Metrics(series_labels=series)
    c = m.counter("bpfdepot_p_c_n_total", "n", ("cgroup",))
    for cg in range(1, 6):
        c.labels(cgroup=str(cg)).set(cg)
    text = m.render().decode()
    assert 'bpfdepot_p_c_n_total{cgroup="3",unit="u3.service"} 3\n' in text
    assert 'bpfdepot_p_c_n_total{cgroup="4"} 4\n' in text  # past the bound: key labels only
    assert f'{OVER_LIMIT}{{metric="bpfdepot_p_c_n_total"}} 2\n' in text
    assert series.over == {"bpfdepot_p_c_n_total": 2}


def test_without_labels_nothing_changes() -> None:
    m = Metrics()
    m.counter("bpfdepot_p_c_n_total", "n", ("cgroup",)).labels(cgroup="1").set(2)
    assert m.render().decode().endswith('bpfdepot_p_c_n_total{cgroup="1"} 2\n')


# -- filter label ids named --------------------------------------------------------------------

class FakeMonitor:
    """Monitor's public surface FilterNames reads: ``labels``, ``root`` and ``cgroup_ids``
    (none here: FilterNames then finds units and cgroups by name)."""

    def __init__(self, root: Path, labels: dict[Target, int]) -> None:
        self.root, self.labels = root, labels

    def cgroup_ids(self, label: int) -> tuple[int, ...]:
        return ()


def test_filter_stamper_names_label_ids() -> None:
    names = {1: "unit:shop-api.service", 2: "pid:77"}.get
    s = FilterStamper(names)
    batch = (b'{"pid":5,"label":1}\n{"pid":6,"label":0}\n{"pid":7,"label":2}\n'
             b'{"pid":8,"label":3}\n{"pid":9}\n')
    out = [json.loads(x) for x in s.stamp(batch).splitlines()]
    assert [r.get("filter") for r in out] == ["unit:shop-api.service", None, "pid:77", None, None]
    assert s.named == 2
    assert s.stamp(b'{"pid":1}\n') == b'{"pid":1}\n'


def test_filter_names_and_paths(tmp_path: Path) -> None:
    cg = tmp_path / "cg"
    (cg / "system.slice/shop-api.service/worker").mkdir(parents=True)
    (cg / "mine/a").mkdir(parents=True)
    monitor = FakeMonitor(cg, {Target("unit", "shop-api.service"): 1,
                               Target("cgroup", "mine/a"): 2, Target("pid", "77"): 3})
    names = FilterNames(monitor)
    assert [names.name(i) for i in (1, 2, 3, 4)] == [
        "unit:shop-api.service", "cgroup:mine/a", "pid:77", None]
    assert names.cgroup_path(1, cg) == "/system.slice/shop-api.service"
    assert names.cgroup_path(2, cg) == "/mine/a"
    assert names.cgroup_path(3, cg) is None
    monitor.labels[Target("unit", "late.service")] = 4  # added by a filter file later
    assert names.name(4) == "unit:late.service"


def test_run_stamp_labels_a_record_by_its_filter_target(tmp_path: Path) -> None:
    shutil.copytree(TREE, tmp_path / "root")
    cg = tmp_path / "cg"
    (cg / "system.slice/shop-api.service/worker").mkdir(parents=True)
    labels = RunLabels.__new__(RunLabels)  # no watcher thread: the stamper alone
    labels.resolver = LabelResolver(LabelSettings(root=tmp_path / "root", cgroup2=cg,
                                                  proc=tmp_path / "proc"))
    labels.stamper = Stamper(labels.resolver)
    monitor = FakeMonitor(cg, {Target("unit", "shop-api.service"): 1})
    stamp = run_stamp(labels, monitor)
    out = json.loads(stamp(b'{"pid":999999,"label":1}\n'))
    assert out == {"pid": 999999, "label": 1, "filter": "unit:shop-api.service", "labels": UNIT}
    assert run_stamp(None, None) is None
    only_filter = run_stamp(None, monitor)
    assert json.loads(only_filter(b'{"label":1}')) == {"label": 1, "filter": "unit:shop-api.service"}
    assert os.path.isdir(cg)


def test_run_summary_tells_series_over_the_bound(tmp_path: Path) -> None:
    from types import SimpleNamespace

    labels = RunLabels.__new__(RunLabels)
    labels.resolver = LabelResolver(LabelSettings(root=tmp_path, cgroup2=tmp_path))
    labels.stamper = Stamper(labels.resolver)
    labels.watcher = SimpleNamespace(degraded="")
    labels.series = None
    assert labels.summary() == "labels: 0 record(s) labelled, 0 without a cgroup, unit or pod"
    m = Metrics(series_labels=labels.series_labels())
    labels.series.max_series = 2
    c = m.counter("bpfdepot_p_c_n_total", "n", ("cgroup",))
    for cg in range(5):
        c.labels(cgroup=str(cg)).set(1)
    assert labels.summary().endswith(
        "; 3 Prometheus series without unit/pod labels (more than 2 in one metric: "
        "bpfdepot_series_labels_over_limit)")


def test_filter_paths_from_the_monitors_cgroup_ids(tmp_path: Path) -> None:
    """A monitor that says which cgroup ids a label stands for (containers and pods too) is
    asked first; its ids become paths through the label index."""
    monitor = FakeMonitor(tmp_path, {Target("pod", "shop/cart"): 1})
    monitor.cgroup_ids = {1: (4242,)}.get
    names = FilterNames(monitor)
    assert names.name(1) == "pod:shop/cart"
    assert names.cgroup_path(1, tmp_path, {4242: "/kubepods.slice/pod-x.slice"}.get) == \
        "/kubepods.slice/pod-x.slice"
    assert FilterNames(monitor).cgroup_path(1, tmp_path, {}.get) is None  # id not indexed
