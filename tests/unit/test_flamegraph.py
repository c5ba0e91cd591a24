"""Flame-graph writers (loader/flamegraph/) and ``bpfdepot flamegraph``: pure, no root."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from builder.cli import main
from loader.errors import BpfDepotError
from loader.flamegraph import (Filters, StackCollector, read_folded, stacks_from_records,
                               write_folded, write_speedscope, write_svg)
from loader.flamegraph.speedscope import SCHEMA_URL, UNITS
from loader.flamegraph.svg import MIN_PX, PAD, WIDTH, label

SVG = "{http://www.w3.org/2000/svg}"
BURN = [
    (["burn", "main", "burn_mid", "burn_leaf"], 80),
    (["burn", "main", "burn_mid"], 5),
    (["burn", "main", "burn_mid", "burn_leaf"], 10),   # merged with the first
    (["burn", "main", "setup"], 5),
]


def test_folded_merges_sorts_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "cpu.folded"
    assert write_folded(path, BURN) == 3
    assert path.read_text() == ("burn;main;burn_mid 5\nburn;main;burn_mid;burn_leaf 90\n"
                                "burn;main;setup 5\n")
    assert read_folded(path) == [(["burn", "main", "burn_mid"], 5),
                                 (["burn", "main", "burn_mid", "burn_leaf"], 90),
                                 (["burn", "main", "setup"], 5)]


def test_folded_keeps_names_whole_and_drops_empty(tmp_path: Path) -> None:
    path = tmp_path / "x.folded"
    stacks = [(["java", "Foo;bar", "a b"], 3), ([], 7), (["idle"], 0)]
    assert write_folded(path, stacks) == 1
    assert path.read_text() == "java;Foo:bar;a b 3\n"
    assert read_folded(path) == [(["java", "Foo:bar", "a b"], 3)]


def test_folded_bad_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.folded"
    path.write_text("a;b 3\na;b;c many\n")
    with pytest.raises(BpfDepotError, match=r"bad\.folded:2: 'a;b;c many' is not a folded stack line"):
        read_folded(path)


def check_speedscope(doc: dict) -> None:
    """The rules of https://www.speedscope.app/file-format-schema.json a sampled file must hold."""
    assert doc["$schema"] == SCHEMA_URL
    frames = doc["shared"]["frames"]
    assert isinstance(frames, list) and all(isinstance(f["name"], str) for f in frames)
    assert doc["profiles"] and 0 <= doc.get("activeProfileIndex", 0) < len(doc["profiles"])
    for p in doc["profiles"]:
        assert p["type"] == "sampled"
        assert isinstance(p["name"], str) and p["unit"] in UNITS
        assert len(p["samples"]) == len(p["weights"])
        assert all(isinstance(i, int) and 0 <= i < len(frames) for s in p["samples"] for i in s)
        assert all(isinstance(w, (int, float)) and w >= 0 for w in p["weights"])
        assert p["startValue"] <= p["endValue"]
        assert p["endValue"] - p["startValue"] == sum(p["weights"])


def test_speedscope_follows_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "cpu.json"
    write_speedscope(path, BURN, name="burn cpu", unit="samples")
    doc = json.loads(path.read_text())
    check_speedscope(doc)
    p = doc["profiles"][0]
    names = [f["name"] for f in doc["shared"]["frames"]]
    assert sorted(names) == ["burn", "burn_leaf", "burn_mid", "main", "setup"]  # each frame once
    stacks = {";".join(names[i] for i in s): w for s, w in zip(p["samples"], p["weights"])}
    assert stacks == {"burn;main;burn_mid": 5, "burn;main;burn_mid;burn_leaf": 90, "burn;main;setup": 5}
    assert (p["unit"], p["name"], p["startValue"], p["endValue"]) == ("none", "burn cpu", 0, 100)


def test_speedscope_units(tmp_path: Path) -> None:
    write_speedscope(tmp_path / "off.json", BURN, name="off", unit="ns")
    assert json.loads((tmp_path / "off.json").read_text())["profiles"][0]["unit"] == "nanoseconds"
    with pytest.raises(BpfDepotError, match="unit 'parsecs' is not a speedscope unit"):
        write_speedscope(tmp_path / "x.json", BURN, name="x", unit="parsecs")


def frames_of(path: Path) -> dict[str, tuple[float, float, str, str]]:
    root = ET.parse(path).getroot()
    out = {}
    for g in root.find(f"{SVG}g[@id='frames']"):
        rect, title, text = g.find(f"{SVG}rect"), g.find(f"{SVG}title"), g.find(f"{SVG}text")
        name = title.text.rsplit(" (", 1)[0]
        out[name] = (float(rect.get("x")), float(rect.get("width")), text.text or "", title.text)
    return out


def test_svg_one_frame_per_node_widths_proportional(tmp_path: Path) -> None:
    path = tmp_path / "cpu.svg"
    write_svg(path, BURN, title="burn <cpu>")
    root = ET.parse(path).getroot()  # well-formed XML, the title escaped
    assert root.find(f"{SVG}text[@id='title']").text == "burn <cpu>"
    frames = frames_of(path)
    # all + burn + main + burn_mid + burn_leaf + setup: one <g> with one <rect> each
    assert sorted(frames) == ["all", "burn", "burn_leaf", "burn_mid", "main", "setup"]
    assert len(root.findall(f".//{SVG}rect")) == len(frames) + 1  # + the background
    full = WIDTH - 2 * PAD
    assert frames["all"][1] == pytest.approx(full)
    assert frames["burn_leaf"][1] == pytest.approx(full * 0.90, abs=0.01)
    assert frames["burn_mid"][1] == pytest.approx(full * 0.95, abs=0.01)
    assert frames["setup"][1] == pytest.approx(full * 0.05, abs=0.01)
    assert frames["setup"][0] == pytest.approx(frames["burn_mid"][0] + frames["burn_mid"][1], abs=0.02)
    assert frames["burn_leaf"][3] == "burn_leaf (90 samples, 90.00%)"
    assert frames["burn_leaf"][2] == "burn_leaf"


def test_svg_cuts_long_names_and_skips_invisible_frames(tmp_path: Path) -> None:
    long = "a_very_long_function_name_" * 4
    stacks = [(["p", long], 1500), (["p", "tiny"], 1), (["p", "rest"], 20_000)]
    write_svg(tmp_path / "x.svg", stacks, title="t", unit="ns", kernel={"tiny"})
    frames = frames_of(tmp_path / "x.svg")
    assert "tiny" not in frames  # 0.05 px < MIN_PX; its value still counts in p
    assert frames[long][2].endswith("…") and long.startswith(frames[long][2][:-1])
    assert frames[long][3].startswith(long + " (1,500 ns")
    assert label("abcdef", 2 * 7.2 + 6) == "" and label("abcdef", 4 * 7.2 + 6.5) == "abc…"
    assert label("abc", 100) == "abc"
    assert MIN_PX > 0


def test_svg_kernel_frames_get_another_hue(tmp_path: Path) -> None:
    write_svg(tmp_path / "k.svg", [(["p", "main", "do_nanosleep"], 5)], title="t", kernel={"do_nanosleep"})
    root = ET.parse(tmp_path / "k.svg").getroot()
    fills = {g.find(f"{SVG}title").text.split(" ")[0]: g.find(f"{SVG}rect").get("fill")
             for g in root.find(f"{SVG}g[@id='frames']")}
    r, g, b = map(int, re.findall(r"\d+", fills["do_nanosleep"]))
    assert b > r  # blue
    r, g, b = map(int, re.findall(r"\d+", fills["main"]))
    assert r > b  # warm


def test_svg_empty_profile(tmp_path: Path) -> None:
    write_svg(tmp_path / "e.svg", [], title="nothing")
    assert "no samples" in (tmp_path / "e.svg").read_text()
    ET.parse(tmp_path / "e.svg")


def test_svg_size_for_10k_frames(tmp_path: Path) -> None:
    stacks = [([f"comm{i % 4}", f"f{i // 100}", f"g{i}"], 1 + i % 7) for i in range(10_000)]
    write_svg(tmp_path / "big.svg", stacks, title="big")
    size = (tmp_path / "big.svg").stat().st_size
    assert size < 4 << 20, size


RECORDS = [
    {"pid": 7, "comm": "burn", "kernel": [], "user": ["main", "burn_mid", "burn_leaf"],
     "stack": "burn;main;burn_mid;burn_leaf", "value": 40, "unit": "samples"},
    {"pid": 7, "comm": "burn", "stack": "burn;main;burn_mid;burn_leaf", "value": 50, "unit": "samples"},
    {"pid": 8, "comm": "sh", "kernel": ["do_nanosleep"], "stack": "sh;main;do_nanosleep", "value": 5,
     "unit": "samples"},
    {"pid": 8, "comm": "sh", "delta_ns": 3},  # another channel's record: not a stack
]


def test_records_filters() -> None:
    all_ = stacks_from_records(RECORDS)
    assert all_.totals == {"burn;main;burn_mid;burn_leaf": 90, "sh;main;do_nanosleep": 5}
    assert all_.kernel == {"do_nanosleep"} and all_.unit == "samples" and all_.records == 3
    assert stacks_from_records(RECORDS, Filters(pid=8)).totals == {"sh;main;do_nanosleep": 5}
    assert stacks_from_records(RECORDS, Filters(comm="burn")).records == 2
    assert stacks_from_records(RECORDS, Filters(grep=re.compile("leaf$"))).records == 2


def test_collector_keeps_only_stack_streams() -> None:
    c = StackCollector()
    lines = "".join(json.dumps(r) + "\n" for r in RECORDS[:3]).encode()
    c.tap("cpu_profile.stacks", lines, 3)
    c.tap("tcp_connlat.events", b'{"pid":1,"delta_ns":5}\n', 1)
    c.tap("tcp_connlat.events", b'{"stack":"x","value":1}\n', 1)  # judged by its first record
    c.tap("cpu_profile.stacks", b'{"stack":"burn;main","value":1,"unit":"samples"}\nnot json\n', 2)
    streams = c.stack_streams()
    assert list(streams) == ["cpu_profile.stacks"]
    assert streams["cpu_profile.stacks"].totals["burn;main"] == 1
    assert c.bad == 1


def test_command_from_jsonl_and_folded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "events.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    assert main(["flamegraph", str(src), "-o", str(tmp_path / "o.folded"), "--pid", "7"]) == 0
    assert (tmp_path / "o.folded").read_text() == "burn;main;burn_mid;burn_leaf 90\n"
    assert "90 samples in 1 stack(s) from 2 record(s)" in capsys.readouterr().out
    assert main(["flamegraph", str(tmp_path / "o.folded"), "-o", str(tmp_path / "o.json")]) == 0
    check_speedscope(json.loads((tmp_path / "o.json").read_text()))
    assert main(["flamegraph", str(src), "-o", str(tmp_path / "o.svg"), "--title", "T",
                 "--grep", "nanosleep"]) == 0
    assert sorted(frames_of(tmp_path / "o.svg")) == ["all", "do_nanosleep", "main", "sh"]


def test_command_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folded = tmp_path / "a.folded"
    folded.write_text("a;b 1\n")
    assert main(["flamegraph", str(folded), "-o", str(tmp_path / "o.svg"), "--pid", "3"]) == 1
    assert "holds folded stacks, which carry no pid" in capsys.readouterr().err
    assert main(["flamegraph", str(tmp_path / "none.folded"), "-o", str(tmp_path / "o.svg")]) == 1
    assert "none.folded does not exist" in capsys.readouterr().err
    assert main(["flamegraph", str(folded), "-o", str(tmp_path / "o.svg"), "--grep", "("]) == 1
    assert "--grep '(' is not a regular expression" in capsys.readouterr().err
    other = tmp_path / "events.jsonl"
    other.write_text('{"pid": 1, "delta_ns": 2}\n')
    assert main(["flamegraph", str(other), "-o", str(tmp_path / "o.svg")]) == 1
    assert "none is a stack record" in capsys.readouterr().err


def test_command_from_the_tsdb(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from loader.sinks import Record
    from loader.sinks.tsdb import TsdbSink

    db = tmp_path / "events.sqlite"
    sink = TsdbSink(db, retention_s=None, max_bytes=None)
    sink.write("cpu_profile.counts", [Record(None, json.dumps(r).encode()) for r in RECORDS[:3]])
    sink.write("offcpu.offcpu", [Record(None, b'{"pid":7,"comm":"burn","stack":"burn;main",'
                                              b'"value":500,"unit":"ns"}')])
    sink.close()
    out = tmp_path / "o.folded"
    assert main(["flamegraph", "cpu_profile", "--db", str(db), "--since", "1h", "--comm", "burn",
                 "-o", str(out)]) == 0
    assert out.read_text() == "burn;main;burn_mid;burn_leaf 90\n"
    assert main(["flamegraph", "offcpu", "--db", str(db), "-o", str(tmp_path / "off.json")]) == 0
    assert json.loads((tmp_path / "off.json").read_text())["profiles"][0]["unit"] == "nanoseconds"
    capsys.readouterr()
    # two channels in two units do not add up in one picture
    sink = TsdbSink(db, retention_s=None, max_bytes=None)
    sink.write("cpu_profile.offcpu", [Record(None, b'{"stack":"a;b","value":5,"unit":"ns"}')])
    sink.close()
    assert main(["flamegraph", "cpu_profile", "--db", str(db), "-o", str(out)]) == 1
    assert "counted in several units (ns, samples)" in capsys.readouterr().err


def test_pipeline_taps_see_every_batch_before_the_sinks() -> None:
    from loader.pipeline import Outlets

    seen = []

    class Sink:
        name = "mem"

        def __init__(self) -> None:
            self.lines = b""

        def write_lines(self, stream: str, lines: bytes, count: int) -> None:
            seen.append(("sink", stream))
            self.lines += lines

        def stats(self):
            from loader.sinks import SinkStats
            return SinkStats()

    outlets = Outlets()
    collector = StackCollector()
    outlets.taps.append(collector.tap)
    outlets.taps.append(lambda stream, lines, count: seen.append(("tap", stream)))
    outlets.add("cpu_profile.counts", [Sink()], "cpu_profile", "counts")
    line = json.dumps(RECORDS[0]).encode() + b"\n"
    outlets.deliver("cpu_profile.counts", line, None, 1)
    assert seen == [("tap", "cpu_profile.counts"), ("sink", "cpu_profile.counts")]
    assert collector.stack_streams()["cpu_profile.counts"].totals == {"burn;main;burn_mid;burn_leaf": 40}
