"""perf_buffer channels without a kernel: the manifest's `pages`, the C sample and lost callbacks
fed by hand (padding, short samples, lost counts), and the builder's `event:` anchoring."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from btfgen import BtfEncoder
from builder.compile import ANCHOR_FILE, anchor_unit, build_key, check_events
from builder.toolchain import Toolchain
from loader.decoders.btf import encoder_for, event_decoder
from loader.errors import BuildError, ManifestError
from loader.kernel.btf import Btf
from loader.kernel.elf import ObjectInfo
from loader.kernel.probe import KernelIdentity
from loader.libbpf.encode import Channel
from loader.libbpf.readers import PerfReader
from loader.model.manifest import ProgramSpec, load_bundle
from loader.outputs import output_kinds
from loader.outputs.perf_buffer import DEFAULT_PAGES

MANIFEST = """\
kind: ebpfprogram
name: execsnoop
spec:
  programs:
    - name: execsnoop
      path: file://./execsnoop.bpf.c
      type: ebpf_object
  channels:
    events:
      type: perf_buffer
{extra}"""


def manifest(tmp_path: Path, extra: str = "") -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "execsnoop.bpf.c").write_text("")
    path = tmp_path / "manifest.yaml"
    path.write_text(MANIFEST.format(extra=extra))
    return path


# ---- the manifest -------------------------------------------------------------------------


def test_perf_buffer_is_a_registered_kind_reading_perf_event_arrays() -> None:
    kind = output_kinds()["perf_buffer"]
    assert kind.map_types == ("perf_event_array",) and kind.options == ("pages", "latency")


def test_pages_default_and_explicit(tmp_path: Path) -> None:
    (default,) = load_bundle(manifest(tmp_path / "a")).channels
    assert default.type == "perf_buffer" and default.options == {}
    (chan,) = load_bundle(manifest(tmp_path / "b", "      pages: 8\n      event: event\n")).channels
    assert chan.options == {"pages": 8} and chan.event == "event"
    assert DEFAULT_PAGES == 64


@pytest.mark.parametrize(("value", "message", "hint"), [
    ("3", "11: 'pages' in spec.channels.events must be a power of two from 1 to 16384 (pages per "
          "CPU), got 3", "e.g. pages: 2"),
    ("0", "11: 'pages' in spec.channels.events must be a power of two from 1 to 16384 (pages per "
          "CPU), got 0", "e.g. pages: 64"),
    ("32768", "11: 'pages' in spec.channels.events must be a power of two from 1 to 16384 (pages "
              "per CPU), got 32768", "e.g. pages: 16384"),
    ('"64"', "11: 'pages' in spec.channels.events must be a power of two from 1 to 16384 (pages "
             "per CPU), got 64", "e.g. pages: 64"),
])
def test_bad_pages_name_the_line_and_a_fix(tmp_path: Path, value: str, message: str, hint: str) -> None:
    path = manifest(tmp_path, f"      pages: {value}\n")
    with pytest.raises(ManifestError) as caught:
        load_bundle(path)
    assert caught.value.message == f"{path}:{message}"
    assert caught.value.hint == hint


def test_a_ring_buffer_key_on_a_perf_buffer_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as caught:
        load_bundle(manifest(tmp_path, "      wakeup: 1\n"))
    assert "'wakeup'" in caught.value.message and "spec.channels.events" in caught.value.message


# ---- the C callbacks, fed by hand ----------------------------------------------------------


def _exec_btf():
    """struct event { u32 pid; char comm[8]; char args[64]; } (fixed part: 12 bytes)"""
    enc = BtfEncoder()
    u32 = enc.int_("unsigned int", 4)
    char = enc.int_("char", 1, signed=True, char=True)
    enc.struct("event", 76, [("pid", u32, 0), ("comm", enc.array(char, 8), 32),
                             ("args", enc.array(char, 64), 96)])
    btf = Btf.parse(enc.build())
    return btf, btf.by_name("event", "struct")


def _reader(**overrides: str) -> PerfReader:
    btf, ev = _exec_btf()
    dec = event_decoder(btf, ev, overrides=overrides)
    return PerfReader.detached(Channel(encoder=encoder_for(dec)))


def _records(reader: PerfReader) -> list[dict]:
    return [json.loads(line) for line in reader.channel.encoder.take().splitlines()]


def test_padding_after_the_argv_is_not_read_as_empty_arguments() -> None:
    reader = _reader(args="strings")
    head = struct.pack("<I8s", 42, b"sh")
    argv = b"/bin/echo\0a b\0\0second\0"             # an empty argument inside is kept
    reader.feed(head + argv + b"\0" * 5)             # perf ends samples on 8 bytes
    reader.feed(head + b"x" * 64)                    # a full buffer: no NUL at all
    reader.feed(head + b"only\0" + b"\0" * 59)       # the unused rest of a whole struct
    reader.feed(head)                                # no arguments at all
    got = _records(reader)
    assert [r["args"] for r in got] == [["/bin/echo", "a b", "", "second"], ["x" * 64],
                                       ["only"], []]
    assert got[0]["pid"] == 42 and got[0]["comm"] == "sh"
    assert reader.channel.events == 4 and reader.channel.short_events == 0


def test_short_samples_and_kernel_losses_are_counted_not_dropped_silently() -> None:
    reader = _reader(args="strings")
    reader.feed(struct.pack("<I", 7))                # shorter than pid + comm
    reader.feed(struct.pack("<I8s", 8, b"ok") + b"a\0")
    reader.feed_lost(5, cpu=0)
    reader.feed_lost(2, cpu=1)
    assert [r["pid"] for r in _records(reader)] == [8]
    assert reader.channel.events == 2 and reader.channel.short_events == 1
    assert reader.lost == 7


def test_a_string_field_keeps_its_trailing_bytes_without_the_strings_decoder() -> None:
    reader = _reader()
    reader.feed(struct.pack("<I8s", 1, b"c") + b"abc\0\0\0\0\0")
    assert _records(reader)[0]["args"] == "abc"


# ---- anchoring `event:` structs -------------------------------------------------------------


def test_anchor_unit_includes_the_entry_and_marks_each_named_struct() -> None:
    channels = {"events": ("perf_buffer", "event"), "other": ("ring_buffer", None),
                "a_first": ("ring_buffer", "first_event")}
    text = anchor_unit("src/execsnoop.bpf.c", channels).decode()
    lines = text.splitlines()
    assert lines[2] == '#include "src/execsnoop.bpf.c"'
    assert lines[3:] == ["struct first_event *bpfdepot_event__a_first __attribute__((used));",
                         "struct event *bpfdepot_event__events __attribute__((used));"]
    assert anchor_unit("src/execsnoop.bpf.c", dict(reversed(channels.items()))).decode() == text
    assert anchor_unit("src/x.bpf.c", {"events": ("ring_buffer", None)}) is None
    assert ANCHOR_FILE.endswith(".c") and "/" not in ANCHOR_FILE


def test_the_anchor_is_part_of_the_build_key() -> None:
    tool = Toolchain(clang=Path("/usr/bin/clang"), clang_version="clang 14",
                     bpftool=Path("/usr/sbin/bpftool"), libbpf_version="1.1")
    kernel = KernelIdentity(release="6.18.44", arch="x86_64", btf_digest="ab" * 32)
    args = dict(program=ProgramSpec(name="p", path="file://./p.bpf.c", type="ebpf_object",
                                         scheme="file", local_path=None, is_source=True, line=1),
                inputs={"src/p.bpf.c": "1" * 64}, flags=("-g",), toolchain=tool, target=kernel)
    plain = build_key(**args)
    anchored = build_key(**args, anchor=b"one")
    assert plain != anchored != build_key(**args, anchor=b"two")
    assert anchored == build_key(**args, anchor=b"one")


def _info(*structs: str) -> ObjectInfo:
    enc = BtfEncoder()
    u32 = enc.int_("unsigned int", 4)
    for name in structs:
        enc.struct(name, 4, [("pid", u32, 0)])
    return ObjectInfo(machine="EM_BPF", license="GPL", programs=(), maps=(), sections=(),
                      btf=Btf.parse(enc.build()), has_btf_ext=True)


def test_an_event_struct_the_source_does_not_define_is_a_build_error() -> None:
    check_events(_info("event"), "execsnoop", {"events": ("perf_buffer", "event"),
                                               "plain": ("ring_buffer", None)})
    with pytest.raises(BuildError) as caught:
        check_events(_info("event"), "execsnoop", {"events": ("perf_buffer", "evnt")})
    assert caught.value.message == ("channel 'events': the manifest says `event: evnt`, but the "
                                    "source of 'execsnoop' defines no struct evnt")
    assert caught.value.hint == ("define struct evnt in the program or a header it includes, or "
                                 "set `event:` to the struct the channel carries")
    assert caught.value.exit_code == 8


# ---- `latency:` (batched wakeups), on ring and perf buffers alike ---------------------------

@pytest.mark.parametrize(("value", "seconds"), [("5ms", 0.005), ("20ms", 0.02), ("0", 0.0),
                                                 ("1s", 1.0), ("500us", None), ("2s", None),
                                                 ("soon", None), ("-5ms", None)])
def test_latency_takes_0_or_1ms_to_1s(tmp_path: Path, value: str, seconds: float | None) -> None:
    from loader.errors import ManifestError

    path = manifest(tmp_path, f"      latency: {value}\n")
    if seconds is None:
        with pytest.raises(ManifestError) as caught:
            load_bundle(path)
        assert "11: 'latency' in spec.channels.events must be 0 or a duration from 1ms to 1s" \
            in caught.value.message
        assert "latency: 5ms" in caught.value.hint
    else:
        (chan,) = load_bundle(path).channels
        assert chan.options == {"latency": seconds}


def test_ring_buffers_take_latency_too(tmp_path: Path) -> None:
    kind = output_kinds()["ring_buffer"]
    assert kind.options == ("latency",)
    path = manifest(tmp_path, "      latency: 10ms\n")
    path.write_text(path.read_text().replace("type: perf_buffer", "type: ring_buffer"))
    (chan,) = load_bundle(path).channels
    assert chan.type == "ring_buffer" and chan.options == {"latency": 0.01}
