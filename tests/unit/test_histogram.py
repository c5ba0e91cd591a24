"""Map snapshot and histogram channels without a kernel: bucket bounds and quantiles, map
entries (key bytes + value bytes) flattened into one record by the C encoder, the manifest's
options and their errors, and the Prometheus histogram exposition."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from btfgen import BtfEncoder

from loader.decoders.btf import encoder_for, record_decoder
from loader.errors import ManifestError
from loader.kernel.btf import Btf
from loader.libbpf.encode import NameTable
from loader.model.manifest import parse_manifest
from loader.outputs.histogram import Buckets, quantile, summarize
from loader.sinks.prometheus import Metrics, metric_name

LOG2 = Buckets(kind="log2")


def test_log2_slots_hold_what_log2l_puts_there() -> None:
    # slot 0: 0 and 1; slot i: [2^i, 2^(i+1)) so its largest integer is 2^(i+1) - 1
    assert [LOG2.lower(i) for i in range(5)] == [0, 2, 4, 8, 16]
    assert [LOG2.le(i, 27) for i in range(5)] == [1, 3, 7, 15, 31]
    assert LOG2.le(26, 27) == "+Inf"  # programs clamp into the last slot


def test_linear_slots_start_at_min_and_step() -> None:
    lin = Buckets(kind="linear", step=10, min=5)
    assert [lin.lower(i) for i in range(3)] == [5, 15, 25]
    assert [lin.le(i, 4) for i in range(4)] == [14, 24, 34, "+Inf"]


def test_record_lists_slots_through_the_last_non_empty_one() -> None:
    counts = [0, 4, 0, 6] + [0] * 23
    out = summarize(counts, LOG2)
    assert out["buckets"] == [{"le": 1, "count": 0}, {"le": 3, "count": 4},
                              {"le": 7, "count": 0}, {"le": 15, "count": 6}]
    assert out["count"] == 10
    # p50: rank 5 is the 1st of the 6 in [8, 16): 8 + 8 * 1/6
    assert out["p50"] == pytest.approx(8 + 8 / 6, abs=1e-3)
    assert out["p90"] == pytest.approx(8 + 8 * 5 / 6, abs=1e-3)
    assert out["p99"] == pytest.approx(8 + 8 * 5.9 / 6, abs=1e-3)


def test_quantiles_interpolate_inside_the_bucket_and_stop_at_the_clamped_slot() -> None:
    lin = Buckets(kind="linear", step=100)
    assert quantile([10, 10], lin, 0.25) == 50.0      # rank 5 of 10 in [0, 100)
    assert quantile([10, 10], lin, 0.75) == 100.0     # the clamped last slot: its lower bound
    assert summarize([0, 0, 0], LOG2)["p50"] is None  # nothing counted: no estimate


def _map_btf() -> tuple[Btf, int, int, int]:
    enc = BtfEncoder()
    u32 = enc.int_("unsigned int", 4)
    u64 = enc.int_("long long unsigned int", 8)
    key = enc.struct("drop_key", 8, [("reason", u32, 0), ("protocol", u32, 32)])
    value = enc.struct("drop_value", 8, [("count", u64, 0)])
    return Btf.parse(enc.build()), key, value, u32


def test_map_entry_is_one_flat_record_with_decoders_on_key_fields() -> None:
    btf, key, value, _ = _map_btf()
    reasons = NameTable(names=((3, "SKB_DROP_REASON_NO_SOCKET"),))
    dec = record_decoder(btf, (("key", key, 0), ("value", value, 8)), name="map drops",
                         overrides={"reason": "enum:skb_drop_reason"},
                         enums=lambda name: reasons if name == "skb_drop_reason" else None)
    assert dec.size == 16
    encoder = encoder_for(dec)
    encoder.encode(struct.pack("<IIQ", 3, 0x800, 5) + struct.pack("<IIQ", 7, 0x86DD, 1), 16)
    lines = encoder.take().splitlines()
    assert [json.loads(x) for x in lines] == [
        {"reason": "SKB_DROP_REASON_NO_SOCKET", "protocol": 2048, "count": 5},
        {"reason": 7, "protocol": 34525, "count": 1}]


def test_scalar_key_and_value_are_key_and_value_and_cpu_is_appended() -> None:
    btf, _, _, u32 = _map_btf()
    dec = record_decoder(btf, (("key", u32, 0), ("value", u32, 4)), name="map m",
                         extra=(("cpu", 8, 4),))
    encoder = encoder_for(dec)
    encoder.encode(struct.pack("<III", 42, 9, 1), 12)
    assert json.loads(encoder.take()) == {"key": 42, "value": 9, "cpu": 1}


def test_a_decoder_naming_no_field_of_the_map_is_refused() -> None:
    btf, key, value, _ = _map_btf()
    with pytest.raises(ManifestError) as err:
        record_decoder(btf, (("key", key, 0), ("value", value, 8)), name="map drops",
                       overrides={"reasn": "errno"}, channel="drops")
    assert "map drops has no field 'reasn'" in err.value.message
    assert "did you mean 'reason'?" in err.value.hint


MANIFEST = """\
kind: ebpfprogram
name: t
spec:
  programs:
    - {name: t, path: file://./t.bpf.c, type: ebpf_object}
  channels:
    counts:
      type: %s
%s"""


def _parse(tmp_path: Path, kind: str, options: str):
    (tmp_path / "t.bpf.c").write_text("")
    path = tmp_path / "manifest.yaml"
    path.write_text(MANIFEST % (kind, "".join(f"      {line}\n" for line in options.splitlines())))
    return parse_manifest(path)


def test_hash_map_options_parse(tmp_path: Path) -> None:
    m = _parse(tmp_path, "hash_map", "interval: 500ms\nreset: true\nper_cpu: keep\ntop: 5\n"
                                     "sort: count\nmetric: gauge")
    assert dict(m.channels[0].options) == {"interval": 0.5, "reset": True, "per_cpu": "keep",
                                           "delta": False, "top": 5, "sort": "count",
                                           "metric": "gauge"}


@pytest.mark.parametrize(("kind", "options", "said"), [
    ("hash_map", "interval: soon", "interval 'soon' in spec.channels.counts is not a duration"),
    ("hash_map", "interval: 1ms", "is not a duration of at least 10 ms"),
    ("hash_map", "reset: true\ndelta: true", "delta and reset in spec.channels.counts both ask"),
    ("hash_map", "top: 0", "top in spec.channels.counts must be a whole number of at least 1"),
    ("hash_map", "per_cpu: avg", "per_cpu"),
    ("hash_map", "buckets: log2", "buckets"),
    ("histogram", "buckets: linear", "buckets: linear in spec.channels.counts needs step: N"),
    ("histogram", "step: 5", "step in spec.channels.counts is for buckets: linear"),
    ("histogram", "buckets: exp", "buckets"),
])
def test_bad_options_name_the_channel(tmp_path: Path, kind: str, options: str, said: str) -> None:
    with pytest.raises(ManifestError) as err:
        _parse(tmp_path, kind, options)
    assert said in err.value.message


def test_map_channels_take_no_processor_for_histograms(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as err:
        _parse(tmp_path, "histogram", "events: [{name: p}]")
    assert "a histogram channel carries no events for processors" in err.value.message


def test_prometheus_histogram_is_cumulative_and_adds_for_reset_maps() -> None:
    m = Metrics()
    h = m.histogram(metric_name("bpfdepot", "runqlat_hist", "hists", "microseconds"), "h",
                    ("pid",), (1.0, 3.0, 7.0))
    h.observe({"pid": "7"}, [0, 4, 0], count=10, add=True)   # 6 more in the clamped last slot
    h.observe({"pid": "7"}, [1, 0, 0], count=1, add=True)
    text = m.render().decode()
    assert 'bpfdepot_runqlat_hist_hists_microseconds_bucket{pid="7",le="1"} 1\n' in text
    assert 'bpfdepot_runqlat_hist_hists_microseconds_bucket{pid="7",le="3"} 5\n' in text
    assert 'bpfdepot_runqlat_hist_hists_microseconds_bucket{pid="7",le="7"} 5\n' in text
    assert 'bpfdepot_runqlat_hist_hists_microseconds_bucket{pid="7",le="+Inf"} 11\n' in text
    assert 'bpfdepot_runqlat_hist_hists_microseconds_count{pid="7"} 11\n' in text
    assert "_sum" not in text  # not known: not made up
    h.observe({"pid": "7"}, [0, 0, 2], count=2, total=9, add=False)  # a cumulative map: set
    text = m.render().decode()
    assert 'bpfdepot_runqlat_hist_hists_microseconds_bucket{pid="7",le="3"} 0\n' in text
    assert 'bpfdepot_runqlat_hist_hists_microseconds_sum{pid="7"} 9\n' in text


def test_metric_names_from_field_paths() -> None:
    assert metric_name("bpfdepot", "p", "c", "inner.count") == "bpfdepot_p_c_inner_count"
    assert metric_name("bpfdepot", "p", "c", "slots[2]") == "bpfdepot_p_c_slots_2"
