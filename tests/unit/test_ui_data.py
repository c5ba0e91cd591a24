"""The web view's answers over a small store written by the real TsdbSink (test_ui_fixtures):
exact edge bytes, heatmap counts, percentiles, drop reasons and flame tree values; and the
rollup cache summed in several steps giving the same numbers as one fresh summing and as a raw
count over the store."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from loader.sinks import Record
from loader.sinks.tsdb import TsdbSink
from loader.ui import UiError, views
from loader.ui.data import Data, q_bounds
from loader.ui.pages import percentiles
from tests.unit.test_ui_fixtures import Expected, fill_small


@pytest.fixture
def small(tmp_path: Path) -> tuple[Data, Expected, dict[str, list[str]]]:
    db = tmp_path / "events.sqlite"
    expected = fill_small(db)
    data = Data(db, tmp_path / "events.sqlite.ui-cache")
    assert data.refresh() == 0
    return data, expected, {"from": [str(expected.t0_s)], "to": [str(expected.t0_s + 60)]}


def test_service_map_has_the_client_server_edge_with_its_bytes(small) -> None:
    data, x, rng = small
    answer = views.servicemap(data, rng)
    edges = {(e["source"], e["target"]): e for e in answer["edges"]}
    local = edges[("comm:curl", "comm:python3")]
    assert (local["bytes_tx"], local["bytes_rx"], local["conns"], local["server"]) == \
        (x.edge_tx, x.edge_rx, 1, "127.0.0.1:8080")
    assert local["l7_calls"] == 4 and local["l7_errors"] == 1
    assert local["connect_failures"] == 0 and local["error_rate"] == round(1 / 5, 4)
    assert local["retransmits"] is None  # no tcp_retrans in the store: unknown, not zero
    external = edges[("comm:curl", "ext:10.0.0.5:443")]
    assert external["bytes"] == x.external_bytes and external["conns"] == 2
    assert len(edges) == 2  # the server edge of the loopback exchange is not a third edge
    kinds = {n["id"]: n["kind"] for n in answer["nodes"]}
    assert kinds == {"comm:curl": "process", "comm:python3": "process", "ext:10.0.0.5:443": "external"}


def test_service_map_limit_sums_the_rest(small) -> None:
    data, x, rng = small
    answer = views.servicemap(data, {**rng, "limit": ["1"]})
    assert len(answer["edges"]) == 1
    assert answer["left_out"] == {"edges": 1, "bytes": x.external_bytes}


def test_edge_detail_has_its_latency_and_l7_records(small) -> None:
    data, _, rng = small
    edge = next(e for e in views.servicemap(data, rng)["edges"] if e["target"] == "comm:python3")
    detail = views.servicemap_edge(data, {**rng, "id": [edge["id"]]})
    assert detail["latency"]["connect"]["count"] == 100
    assert detail["latency"]["l7"]["count"] == 4
    assert detail["latency"]["rtt"] is None
    assert [r["status"] for r in detail["l7_records"]] == [500, 200, 200, 200]  # newest first
    assert detail["l7_records"][0]["error"] == "HTTP 500"
    assert detail["l7_records"][0]["latency_ns"] == 50_000_000
    assert sum(s["bytes"] for s in detail["series"]) == 8000
    with pytest.raises(UiError) as err:
        views.servicemap_edge(data, {**rng, "id": ["e:0000"]})
    assert err.value.status == 404


def test_latency_heatmap_counts_and_percentiles(small) -> None:
    data, _, rng = small
    answer = views.latency(data, {**rng, "metric": ["connect"]})
    (group,) = answer["groups"]
    assert group["count"] == 100 and group["group"] == ""
    # 100 µs = 1e5 ns lies in octave 16 ([65536, 131072)), 10 ms = 1e7 ns in octave 23
    assert [b["b"] for b in answer["buckets"]] == [16, 23]
    rows = {b["b"]: sum(row) for b, row in zip(answer["buckets"], group["heatmap"]["counts"])}
    assert rows == {16: 90, 23: 10}
    # events at T0+2.0 … T0+11.9 s: slot 0 holds 80 (all 100 µs), slot 1 ten of each
    assert [c[:2] for c in group["heatmap"]["counts"]] == [[80, 10], [0, 10]]
    assert group["sum_ns"] == 90 * 100_000 + 10 * 10_000_000
    for p, want in ((50, 100_000), (90, 100_000), (99, 10_000_000)):
        assert abs(group[f"p{p}_ns"] - want) / want < 0.19, (p, group[f"p{p}_ns"])


def test_latency_grouped_by_a_label(small) -> None:
    data, _, rng = small
    answer = views.latency(data, {**rng, "metric": ["connect"], "by": ["unit"]})
    assert {g["group"]: g["count"] for g in answer["groups"]} == {"shop.service": 50, "": 50}
    only = views.latency(data, {**rng, "metric": ["connect"], "unit": ["shop.service"]})
    assert only["groups"][0]["count"] == 50
    http = views.latency(data, {**rng, "metric": ["http"]})
    assert http["groups"][0]["count"] == 4 and http["groups"][0]["errors"] == 1


def test_percentiles_interpolate_inside_the_quarter_octave() -> None:
    lo, hi = q_bounds(66)
    assert percentiles({66: 10}, (50,)) == {"p50_ns": round(lo + (hi - lo) * 0.5)}
    assert percentiles({}, (50,)) == {"p50_ns": None}
    assert percentiles({40: 1, 80: 99}, (1,))["p1_ns"] == round(q_bounds(40)[1])


def test_drops_by_reason_and_port(small) -> None:
    data, x, rng = small
    answer = views.drops(data, rng)
    assert answer["total"] == x.drops_total
    assert answer["top"] == [{"value": "SKB_DROP_REASON_NO_SOCKET", "count": x.drops_no_socket},
                             {"value": "SKB_DROP_REASON_SOCKET_RCVBUFF", "count": 2}]
    assert [sum(r) for r in answer["series"]["counts"]] == [5, 2]
    by_port = views.drops(data, {**rng, "by": ["port"]})
    assert by_port["top"] == [{"value": 9, "count": 5}, {"value": 5353, "count": 2}]
    assert views.drops(data, {**rng, "by": ["location"], "limit": ["1"]})["left_out"] == \
        {"values": 1, "count": 2}


def test_flame_tree_values_and_kernel_frames(small) -> None:
    data, x, rng = small
    answer = views.flamegraph(data, {**rng, "min_share": ["0"]})
    tree = answer["tree"]
    assert (tree["name"], tree["value"], answer["total"], answer["unit"]) == ("all", x.cpu_total, 25, "samples")
    (burn,) = tree["children"]
    (main,) = burn["children"]
    mid, syscall = main["children"]
    assert (mid["name"], mid["value"], mid["children"][0]["name"], mid["children"][0]["value"]) == \
        ("burn_mid", 20, "burn_leaf", x.burn_leaf)
    assert (syscall["name"], syscall["value"], syscall["kernel"]) == ("do_syscall_64", 5, True)
    assert not mid["kernel"] and not burn["kernel"]
    pruned = views.flamegraph(data, {**rng, "min_share": ["0.5"]})["tree"]
    assert [c["name"] for c in pruned["children"][0]["children"][0]["children"]] == ["burn_mid", "[other]"]


def test_empty_range_and_never_written_programs(small) -> None:
    data, x, _ = small
    later = {"from": [str(x.t0_s + 3600)], "to": [str(x.t0_s + 7200)]}
    answer = views.servicemap(data, later)
    assert answer["empty"] is True and "the store holds topology events from" in answer["why"]
    rtt = views.latency(data, {**later, "metric": ["rtt"]})
    assert rtt["empty"] and "tcp_rtt never wrote" in rtt["why"]
    assert rtt["run"].startswith("sudo bpfdepot run bpf/tcp_rtt --tsdb")
    with pytest.raises(UiError) as err:
        views.flamegraph(data, {**later, "program": ["nosuch"]})
    assert err.value.status == 404 and "cpu_profile" in err.value.fix


def _more(db: Path, t0_s: int) -> None:
    """A second helping: 50 connects of 1 ms, edges grown by 1000 bytes, drops +4."""
    sink = TsdbSink(db, retention_s=None, max_bytes=None)
    t = (t0_s + 30) * 10**9
    sink.write("tcp_connlat.tcp_connlat_events", [Record(key=None, value=json.dumps(
        {"comm": "curl", "daddr": "127.0.0.1", "dport": 8080, "latency_us": 1000.0,
         "ts_ns": t + i}).encode()) for i in range(50)])
    sink.write("topology.topology_edges", [Record(key=None, value=json.dumps(
        {"direction": "client", "pid": 100, "comm": "curl", "cgroup": 7, "protocol": "TCP",
         "family": "AF_INET", "laddr": "127.0.0.1", "lport": 0, "raddr": "127.0.0.1", "rport": 8080,
         "bytes_tx": 4000, "bytes_rx": 5000, "conns": 1, "closed": 1, "ts_ns": t}).encode())])
    sink.write("skb_drops.drops", [Record(key=None, value=json.dumps(
        {"reason": "SKB_DROP_REASON_NO_SOCKET", "protocol": "UDP", "ethertype": 2048, "port": 9,
         "location": "__udp4_lib_rcv+0x4a1", "count": 9, "ts_ns": t}).encode())])
    assert sink.close().failed == 0


def test_rollup_summed_in_steps_equals_a_fresh_one_and_the_raw_count(small, tmp_path: Path) -> None:
    data, x, rng = small
    _more(data.db, x.t0_s)
    assert data.refresh() == 0  # the increment only
    fresh = Data(data.db, tmp_path / "fresh.ui-cache")
    assert fresh.refresh() == 0  # everything at once
    for view, extra in ((views.servicemap, {}), (views.latency, {"metric": ["connect"]}),
                        (views.drops, {}), (views.flamegraph, {})):
        a, b = view(data, {**rng, **extra}), view(fresh, {**rng, **extra})
        a.pop("fresh_ns"), b.pop("fresh_ns")
        assert a == b, view.__name__
    answer = views.latency(data, {**rng, "metric": ["connect"]})
    raw = sqlite3.connect(data.db).execute(
        "SELECT count(*) FROM events e JOIN streams s ON s.id = e.stream_id "
        "WHERE s.name = 'tcp_connlat.tcp_connlat_events'").fetchone()[0]
    assert answer["groups"][0]["count"] == raw == 150
    edge = next(e for e in views.servicemap(data, rng)["edges"] if e["target"] == "comm:python3")
    assert edge["bytes_tx"] == 4000
    assert views.drops(data, rng)["total"] == x.drops_total + 4


def test_a_replaced_store_empties_the_cache(small, tmp_path: Path) -> None:
    data, x, rng = small
    data.close()
    data.db.unlink()
    data.db.with_name(data.db.name + "-wal").unlink(missing_ok=True)
    fill_small(data.db, x.t0_s + 600)  # another file: other inode, same ids
    again = Data(data.db, data.cache)
    assert again.refresh() == 0
    assert views.servicemap(again, rng)["empty"]  # the old store's edges are gone


def test_filters_that_match_nothing_say_so(small) -> None:
    data, _, rng = small
    answer = views.flamegraph(data, {**rng, "comm": ["nosuch"]})
    assert answer["empty"] and "with comm=nosuch" in answer["why"] and "for other labels" in answer["why"]


def test_pieces_cover_a_range_exactly_with_coarse_slots_inside() -> None:
    import random

    from loader.ui.data import LEVELS, Slots

    rnd = random.Random(16)
    for _ in range(500):
        lo = rnd.randrange(0, 5000)
        hi = lo + rnd.randrange(0, 3000)
        parts = Slots(0, lo, hi, 1, lo, hi).pieces()
        covered = [s for lv, a, b in parts for s in range(a * LEVELS[lv], (b + 1) * LEVELS[lv])]
        assert covered == list(range(lo, hi + 1)), (lo, hi, parts)
        assert len(parts) <= 5


def test_latency_limit_keeps_the_busiest_groups_and_sums_the_rest(small) -> None:
    data, _, rng = small
    answer = views.latency(data, {**rng, "metric": ["connect"], "by": ["unit"], "limit": ["1"]})
    assert [g["group"] for g in answer["groups"]] == [""]  # 50 each: ties go by name
    assert answer["groups"][0]["count"] == 50 and sum(answer["groups"][0]["series"]["count"]) == 50
    assert answer["left_out"] == {"groups": 1, "count": 50}


def test_a_label_filter_keeps_the_edges_of_matching_processes(small) -> None:
    data, x, rng = small
    answer = views.servicemap(data, {**rng, "comm": ["python3"]})  # the server's side
    assert [(e["source"], e["target"], e["bytes"]) for e in answer["edges"]] == \
        [("comm:curl", "comm:python3", x.edge_tx + x.edge_rx)]
    assert len(views.servicemap(data, {**rng, "comm": ["curl"]})["edges"]) == 2
    assert views.servicemap(data, {**rng, "comm": ["nosuch"]})["empty"]


def test_rtt_histograms_count_their_increase(tmp_path: Path) -> None:
    """tcp_rtt's cumulative log2 µs histograms: the second snapshot adds 3 samples of 2-3 µs and
    1 of 4-7 µs to the first one's 2; the heatmap has them in octaves 11 and 12 (ns)."""
    db = tmp_path / "rtt.sqlite"
    t0 = (int(time.time()) - 600) // 60 * 60
    sink = TsdbSink(db, retention_s=None, max_bytes=None)
    key = {"daddr": "127.0.0.1", "family": "AF_INET", "dport": 8080, "unit": "us"}
    for dt, counts in ((1, [0, 2, 0]), (2, [0, 5, 1])):
        buckets = [{"le": le, "count": c} for le, c in zip((1, 3, 7), counts)] + [{"le": "+Inf", "count": 0}]
        sink.write("tcp_rtt.rtt_hists", [Record(key=None, value=json.dumps(
            {**key, "buckets": buckets, "count": sum(counts), "ts_ns": (t0 + dt) * 10**9}).encode())])
    assert sink.close().failed == 0
    data = Data(db, tmp_path / "rtt.ui-cache")
    assert data.refresh() == 0
    answer = views.latency(data, {"from": [str(t0)], "to": [str(t0 + 60)], "metric": ["rtt"]})
    (group,) = answer["groups"]
    assert group["count"] == 6
    assert {b["b"]: sum(row) for b, row in zip(answer["buckets"], group["heatmap"]["counts"])} == {11: 5, 12: 1}


def test_connect_latency_from_the_plain_program_delta_ns(tmp_path: Path) -> None:
    """bpf/tcp_connlat without its processor records ``delta_ns``: counted as connect latency."""
    db = tmp_path / "plain.sqlite"
    t0 = (int(time.time()) - 600) // 60 * 60
    sink = TsdbSink(db, retention_s=None, max_bytes=None)
    sink.write("tcp_connlat.tcp_connlat_events", [Record(key=None, value=json.dumps(
        {"delta_ns": 250_000 * (i + 1), "pid": 9, "comm": "curl", "dport": 80, "daddr": "10.0.0.1",
         "ts_ns": (t0 + 1) * 10**9 + i}).encode()) for i in range(4)])
    assert sink.close().failed == 0
    data = Data(db, tmp_path / "plain.ui-cache")
    assert data.refresh() == 0
    (group,) = views.latency(data, {"from": [str(t0)], "to": [str(t0 + 60)], "metric": ["connect"]})["groups"]
    assert group["count"] == 4 and group["sum_ns"] == 250_000 * (1 + 2 + 3 + 4)
    assert abs(group["p50_ns"] - 500_000) / 500_000 < 0.19


def test_two_uis_on_one_cache_never_count_twice(small, tmp_path: Path) -> None:
    data, x, rng = small
    _more(data.db, x.t0_s)
    other = Data(data.db, data.cache)  # a second process's view of the same cache file
    stale = data.watermark()[0]
    assert other.refresh() == 0
    # the first one starts from the watermark it read before the other summed the rows
    store, cache = data.store(), data._cache()
    sids = dict(store.execute("SELECT id, name FROM streams").fetchall())
    data._catch_up(cache, store, sids, stale, data._top(store))
    assert views.latency(data, {**rng, "metric": ["connect"]})["groups"][0]["count"] == 150


def test_edge_latency_is_its_own_clients(small) -> None:
    """Another client's connects to the same server are not the curl → python3 edge's."""
    data, x, rng = small
    sink = TsdbSink(data.db, retention_s=None, max_bytes=None)
    sink.write("tcp_connlat.tcp_connlat_events", [Record(key=None, value=json.dumps(
        {"comm": "wget", "daddr": "127.0.0.1", "dport": 8080, "latency_us": 5.0,
         "ts_ns": (x.t0_s + 5) * 10**9}).encode())])
    assert sink.close().failed == 0
    assert data.refresh() == 0
    edge = next(e for e in views.servicemap(data, rng)["edges"] if e["target"] == "comm:python3")
    detail = views.servicemap_edge(data, {**rng, "id": [edge["id"]]})
    assert detail["latency"]["connect"]["count"] == 100  # curl's 100, not wget's one


def test_records_the_pages_cannot_use_are_counted(small) -> None:
    data, x, _ = small
    sink = TsdbSink(data.db, retention_s=None, max_bytes=None)
    sink.write("tcp_connlat.tcp_connlat_events", [Record(key=None, value=json.dumps(
        {"comm": "curl", "dport": 80, "ts_ns": (x.t0_s + 9) * 10**9 + i}).encode()) for i in range(3)])
    sink.write("cpu_profile.counts", [Record(key=None, value=b'{"comm":"burn","value":1}')])
    assert sink.close().failed == 0
    assert data.skipped() == {}
    assert data.refresh() == 0
    assert data.skipped() == {"cpu_profile.counts": 1, "tcp_connlat.tcp_connlat_events": 3}


def test_pruned_fine_slots_keep_the_totals_and_old_series_read_coarser(small, monkeypatch) -> None:
    """With 10 s slots kept for 20 s and 1 min slots for 10 min before the newest event (T0 +
    90 s), the small store's first minute loses its 10 s slots: totals over it stay exact (read
    from its 1 min slot) and a series over its first 20 s comes in 1 min steps."""
    import loader.ui.data as data_module

    data, x, rng = small
    before = {v.__name__: v(data, {**rng, **extra}) for v, extra in (
        (views.servicemap, {}), (views.drops, {}), (views.flamegraph, {}))}
    monkeypatch.setattr(data_module, "KEEP_S", (20, 600))
    data._pruned_at = -data_module.PRUNE_EVERY_S
    _more(data.db, x.t0_s)  # something to sum, so the refresh prunes after it …
    sink = TsdbSink(data.db, retention_s=None, max_bytes=None)  # … and a newest event at T0 + 90 s
    sink.write("filelat.filelat_events", [Record(key=None, value=json.dumps(
        {"comm": "dd", "latency_us": 10.0, "ts_ns": (x.t0_s + 90) * 10**9}).encode())])
    assert sink.close().failed == 0
    assert data.refresh() == 0
    k0, _ = data.kept()
    assert k0 > x.t0_s // 10  # the minute's first 10 s slots are gone …
    (n0,) = data._cache().execute("SELECT count(*) FROM lat WHERE lv = 0 AND slot < ?", (k0,)).fetchone()
    assert n0 == 0
    after = views.servicemap(data, rng)
    assert [e["bytes"] for e in after["edges"]] == [8000 + 1000, 1000]  # … the bytes are all there
    assert views.drops(data, rng)["total"] == before["drops"]["total"] + 4
    assert views.flamegraph(data, rng)["total"] == before["flamegraph"]["total"]
    old = views.latency(data, {"from": [str(x.t0_s)], "to": [str(x.t0_s + 20)], "metric": ["connect"]})
    assert old["range"]["step_s"] == 60 and old["groups"][0]["count"] == 150


def test_pieces_after_pruning_read_only_kept_slots_and_cover_the_range() -> None:
    import random

    from loader.ui.data import LEVELS, Slots

    rnd = random.Random(61)
    for _ in range(500):
        k1 = rnd.randrange(0, 50) * 60
        k0 = k1 + rnd.randrange(0, 100) * 6
        lo = rnd.randrange(0, 6000)
        hi = lo + rnd.randrange(0, 3000)
        parts = Slots(0, lo, hi, 1, lo, hi, (k0, k1)).pieces()
        covered = [s for lv, a, b in parts for s in range(a * LEVELS[lv], (b + 1) * LEVELS[lv])]
        assert covered == list(range(covered[0], covered[-1] + 1)), parts  # contiguous, no overlap
        assert covered[0] <= lo and covered[-1] >= hi
        assert covered[0] > lo - 60 and covered[-1] < hi + 60  # widened by less than a 10 min slot
        assert all(a >= k0 for lv, a, _ in parts if lv == 0), (k0, k1, lo, hi, parts)
        assert all(a * LEVELS[1] >= k1 for lv, a, _ in parts if lv == 1), (k0, k1, lo, hi, parts)
