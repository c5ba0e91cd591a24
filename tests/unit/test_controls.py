"""Program controls and attach-kind options as the manifest parser reads them (error text and
line), size expressions, knob encoding, the choice of a form, ld.so.cache and /proc/PID/maps."""

from __future__ import annotations

from pathlib import Path

import pytest

from loader.attach.perf_event import parse_cpu_list
from loader.attach.uprobe import library_in_cache, library_in_maps
from loader.errors import KernelUnsupported, LoadError, ManifestError
from loader.kernel.elf import Knob, ObjectInfo, ProgramInfo, check_map_sizes
from loader.kernel.btf import MapDef
from loader.kernel.probe import Feature
from loader.model.controls import MapSize, parse_size
from loader.model.manifest import parse_manifest
from loader.session import check_attach_plan, choose_forms

HEAD = """\
kind: ebpfprogram
name: demo
spec:
  programs:
    - name: demo
      path: file://./demo.bpf.c
      type: ebpf_object
"""


def parse(tmp_path: Path, program_keys: str):
    (tmp_path / "demo.bpf.c").write_text("")
    (tmp_path / "manifest.yaml").write_text(
        HEAD + "".join(f"      {line}\n" for line in program_keys.strip("\n").splitlines()))
    return parse_manifest(tmp_path / "manifest.yaml").kernel_programs[0]


def error(tmp_path: Path, program_keys: str) -> str:
    with pytest.raises(ManifestError) as caught:
        parse(tmp_path, program_keys)
    return str(caught.value)


# --- size expressions ----------------------------------------------------------------------

@pytest.mark.parametrize("text, ncpus, value", [
    ("10240", 2, 10240), ("0x100", 2, 256), ("ncpus", 6, 6), ("ncpus * 1024", 2, 2048),
    ("2 * ncpus + 16", 4, 24), ("ncpus*ncpus", 3, 9), ("1 + 2 + 3", 1, 6)])
def test_size_expressions(text: str, ncpus: int, value: int) -> None:
    assert parse_size(text).value(ncpus) == value


@pytest.mark.parametrize("text", ["", "ncpus *", "* 2", "1 ++ 2", "ncpus - 1", "ncpus / 2",
                                  "__import__('os')", "(ncpus)", "1e3", "cpus"])
def test_size_expressions_take_numbers_ncpus_star_and_plus_only(text: str) -> None:
    assert parse_size(text) is None


# --- manifest keys --------------------------------------------------------------------------

def test_controls_parse(tmp_path: Path) -> None:
    p = parse(tmp_path, """
cpu: v3
forms: [[on_fentry, on_fexit], [on_tp]]
maps:
  counts: {max_entries: "ncpus * 1024"}
  stacks: {max_entries: 4096, value_size: 1016}
attach:
  do_sample: {perf_event: {frequency: 49, cpus: [0, 1]}}
  on_call: {uprobe: {binary: libc.so.6, function: malloc, pid: 42}}
  on_ret: {uretprobe: {binary: /usr/bin/app, offset: 0x1139}}
""")
    assert p.cpu == "v3"
    assert p.forms == (("on_fentry", "on_fexit"), ("on_tp",))
    assert [(m.map, m.max_entries.value(2), m.value_size and m.value_size.value(2), m.line)
            for m in p.maps] == [("counts", 2048, None, 11), ("stacks", 4096, 1016, 12)]
    assert p.attach == (
        ("do_sample", "perf_event", {"type": "software", "event": "cpu-clock", "freq": True,
                                     "sample": 49, "cpus": (0, 1)}),
        ("on_call", "uprobe", {"binary": "libc.so.6", "function": "malloc", "offset": 0, "pid": 42}),
        ("on_ret", "uretprobe", {"binary": "/usr/bin/app", "function": None, "offset": 0x1139,
                                 "pid": -1}))


def test_perf_event_defaults(tmp_path: Path) -> None:
    p = parse(tmp_path, "attach: {s: {perf_event: {}}}\n")
    assert p.attach[0][2] == {"type": "software", "event": "cpu-clock", "freq": True,
                              "sample": 99, "cpus": None}
    hw = parse(tmp_path, "attach: {s: {perf_event: {type: hardware, period: 100000}}}\n")
    assert hw.attach[0][2]["event"] == "cpu-cycles" and hw.attach[0][2]["freq"] is False


@pytest.mark.parametrize("keys, text", [
    ("cpu: v4", "manifest.yaml:8: unknown cpu 'v4' in spec.programs[0]; expected one of: v2, v3"),
    ("cpu: v3x", "hint: did you mean 'v3'?"),
    ("forms: [[a]]", "manifest.yaml:8: spec.programs[0].forms lists 1 form(s); forms are alternatives"),
    ("forms: [[a], []]", "manifest.yaml:8: spec.programs[0].forms[1] is empty"),
    ("forms: [[a, b], [b]]", "manifest.yaml:8: program 'b' is in spec.programs[0].forms[0] and "
                             "spec.programs[0].forms[1]"),
    ("maps: {counts: {max_entry: 10}}", "manifest.yaml:8: unknown key 'max_entry' in "
                                        "spec.programs[0].maps.counts\nhint: did you mean 'max_entries'?"),
    ("maps: {counts: {max_entries: ncpus - 1}}",
     "'max_entries' in spec.programs[0].maps.counts must be a number or an expression of numbers "
     "and ncpus with * and +, got 'ncpus - 1'"),
    ("maps: {counts: {max_entries: 0}}", "'max_entries' in spec.programs[0].maps.counts is 0, "
                                          "outside 1..4294967295"),
    ("maps: {counts: {}}", "spec.programs[0].maps.counts sets nothing"),
    ("attach: {s: {perf_event: {frequency: 99, period: 1000}}}",
     "spec.programs[0].attach.s.perf_event has both frequency and period"),
    ("attach: {s: {perf_event: {event: cpu-clk}}}",
     "unknown software event 'cpu-clk' in spec.programs[0].attach.s.perf_event\n"
     "hint: did you mean 'cpu-clock'?"),
    ("attach: {s: {perf_event: {event: instructions}}}",
     "hint: instructions is a hardware event: add type: hardware"),
    ("attach: {s: {perf_event: {cpus: some}}}", "'cpus' in spec.programs[0].attach.s.perf_event "
                                                 "must be all or a list of CPU numbers"),
    ("attach: {s: {perf_event: {cpus: [0, 0]}}}", "a CPU is listed twice"),
    ("attach: {s: {perf_event: {frequency: 0}}}", "'frequency' in spec.programs[0].attach.s."
                                                   "perf_event must be a positive integer, got 0"),
    ("attach: {s: {perf_evnt: {}}}", "unknown attach kind 'perf_evnt' for 's'\n"
                                     "hint: did you mean 'perf_event'?"),
    ("attach: {c: {uprobe: {binary: libc.so.6}}}",
     "spec.programs[0].attach.c.uprobe needs exactly one of function and offset"),
    ("attach: {c: {uprobe: {binary: ./app, function: f}}}",
     "binary './app' in spec.programs[0].attach.c.uprobe is neither an absolute path nor a "
     "library name"),
    ("attach: {c: {uprobe: {binary: libc.so.6, function: 'a b'}}}", "function 'a b' in "
     "spec.programs[0].attach.c.uprobe is not a symbol name"),
    ("attach: {c: {uprobe: {binary: libc.so.6, function: f, pid: 0}}}",
     "'pid' in spec.programs[0].attach.c.uprobe must be an integer from 1, got 0"),
    ("attach: {c: {uprobe: {binary: libc.so.6, fuction: f}}}", "hint: did you mean 'function'?"),
])
def test_control_errors(tmp_path: Path, keys: str, text: str) -> None:
    assert text in error(tmp_path, keys)


def test_controls_only_on_an_ebpf_object(tmp_path: Path) -> None:
    (tmp_path / "u.c").write_text("")
    (tmp_path / "manifest.yaml").write_text(
        "kind: ebpfprogram\nname: demo\nspec:\n  programs:\n"
        "    - {name: u, path: file://./u.c, type: user_so, cpu: v3}\n")
    with pytest.raises(ManifestError, match="manifest.yaml:5: 'cpu' in spec.programs\\[0\\]: only "
                                            "an ebpf_object has BPF programs"):
        parse_manifest(tmp_path / "manifest.yaml")


# --- knobs ------------------------------------------------------------------------------------

def test_string_knob_is_nul_padded_and_bounded() -> None:
    k = Knob(name="targ_comm", offset=0, size=16, signed=False, kind="string", elem=1)
    assert k.encode("bash", "prog") == b"bash" + b"\0" * 12
    assert k.encode("x" * 15, "prog") == b"x" * 15 + b"\0"
    with pytest.raises(LoadError, match=r"'x{16}' is 16 bytes: knob 'targ_comm' of 'prog' is "
                                        r"char\[16\], which holds at most 15 bytes and a NUL"):
        k.encode("x" * 16, "prog")


def test_array_knob_takes_comma_separated_integers() -> None:
    k = Knob(name="targ_pids", offset=0, size=32, signed=False, kind="array", elem=4)
    assert k.encode("1,2,0x10", "p") == (b"\1\0\0\0\2\0\0\0\x10\0\0\0" + b"\0" * 20)
    assert k.encode(7, "p") == b"\7\0\0\0" + b"\0" * 28
    with pytest.raises(LoadError, match="knob 'targ_pids' of 'p' holds 8 values, 9 given"):
        k.encode("1,2,3,4,5,6,7,8,9", "p")
    with pytest.raises(LoadError, match=r"knob 'targ_pids' of 'p' takes integers \(N,N,...\), "
                                        r"not '1,x'"):
        k.encode("1,x", "p")
    with pytest.raises(LoadError, match=r"-1 does not fit knob 'targ_pids' of 'p' \(unsigned, 4 bytes\)"):
        k.encode("-1", "p")


def test_integer_knob_from_text_or_int() -> None:
    k = Knob(name="targ_tgid", offset=0, size=4, signed=True)
    assert k.encode("-2", "p") == (-2).to_bytes(4, "little", signed=True)
    assert k.encode(5, "p") == b"\5\0\0\0"
    with pytest.raises(LoadError, match="knob 'targ_tgid' of 'p' takes an integer, not 'bash'"):
        k.encode("bash", "p")


# --- plan-time checks -----------------------------------------------------------------------

def _info(programs=(), maps=()) -> ObjectInfo:
    return ObjectInfo(machine="EM_BPF", license="GPL", programs=tuple(programs), maps=tuple(maps),
                      sections=(), btf=None, has_btf_ext=True)


def test_perf_event_and_bare_uprobe_programs_need_an_attach_entry() -> None:
    info = _info([ProgramInfo(name="do_sample", section="perf_event", insns=2, feature="perf_event"),
                  ProgramInfo(name="on_call", section="uprobe", insns=2, feature="uprobe"),
                  ProgramInfo(name="on_x", section="uprobe//bin/x:f", insns=2, feature="uprobe")])
    with pytest.raises(ManifestError) as caught:
        check_attach_plan("prof", info, {}, off=())
    assert caught.value.message == ("program 'do_sample' of 'prof' is SEC(\"perf_event\"): say how "
                                    "to sample it in the manifest: attach: {do_sample: "
                                    "{perf_event: {frequency: 99}}}")
    with pytest.raises(ManifestError, match="program 'on_call' of 'prof' is SEC\\(\"uprobe\"\\): "
                                            "name its binary and function in the manifest"):
        check_attach_plan("prof", info, {"do_sample": None}, off=())
    check_attach_plan("prof", info, {"do_sample": None}, off=("on_call",))  # full SEC auto-attaches


def test_an_unsized_map_names_the_map_and_the_key() -> None:
    info = _info(maps=[MapDef(name="counts", map_type=1, type_name="hash", max_entries=0,
                              key_size=4, value_size=8),
                       MapDef(name="stacks", map_type=7, type_name="stack_trace",
                              max_entries=1024, key_size=4, value_size=0),
                       MapDef(name="events", map_type=4, type_name="perf_event_array")])
    with pytest.raises(ManifestError) as caught:
        check_map_sizes("prof", info, ())
    assert caught.value.message == ("map 'counts' of 'prof' (hash) is declared with max_entries 0: "
                                    "it is sized from user space, and the manifest does not size it")
    assert caught.value.hint == ('add to the program in manifest.yaml: maps: {counts: '
                                 '{max_entries: "ncpus * 1024"}}')
    counts = MapSize(map="counts", max_entries=parse_size("ncpus"))
    with pytest.raises(ManifestError, match="map 'stacks' of 'prof' \\(stack_trace\\) is declared "
                                            "with value_size 0"):
        check_map_sizes("prof", info, (counts,))
    check_map_sizes("prof", info, (counts, MapSize(map="stacks", value_size=parse_size("1016"))))
    with pytest.raises(ManifestError, match="line 9: maps: names 'count', which is not a map of "
                                            "'prof'.*"):
        check_map_sizes("prof", info, (MapSize(map="count", max_entries=parse_size("1"), line=9),))


def test_the_first_form_this_kernel_offers_wins() -> None:
    features = {"fentry": Feature(name="fentry", ok=False, why="EPERM"),
                "tp_btf": Feature(name="tp_btf", ok=True, why="loads"),
                "raw_tracepoint": Feature(name="raw_tracepoint", ok=True, why="loads")}
    progs = {"on_fentry": "fentry", "on_btf": "tp_btf", "on_raw": "raw_tracepoint"}
    assert choose_forms([["on_fentry"], ["on_btf"], ["on_raw"]], progs, features, "x") == \
        (1, ("on_fentry", "on_raw"))
    assert choose_forms([["on_btf"], ["on_raw"]], progs, features, "x") == (0, ("on_raw",))
    with pytest.raises(KernelUnsupported, match=r"no form of 'x' fits this kernel: form 1 "
                                                r"\(on_fentry\) needs fentry \(EPERM\)"):
        choose_forms([["on_fentry"], ["on_fentry2"]], {**progs, "on_fentry2": "fentry"},
                     features, "x")
    with pytest.raises(ManifestError, match="forms of 'x' name program 'on_btff'.*"):
        choose_forms([["on_btff"], ["on_raw"]], progs, features, "x")


# --- where binaries and CPUs are found --------------------------------------------------------

LDCONFIG = """\
1234 libs found in cache `/etc/ld.so.cache'
	libc.so.6 (libc6) => /lib/i386-linux-gnu/libc.so.6
	libc.so.6 (libc6,x86-64) => /lib/x86_64-linux-gnu/libc.so.6
	libssl.so.3 (libc6,x86-64) => /lib/x86_64-linux-gnu/libssl.so.3
"""


def test_library_names_resolve_through_ld_so_cache_for_this_arch() -> None:
    assert library_in_cache("libc.so.6", LDCONFIG, "x86_64") == "/lib/x86_64-linux-gnu/libc.so.6"
    assert library_in_cache("libssl.so.3", LDCONFIG, "x86_64") == "/lib/x86_64-linux-gnu/libssl.so.3"
    assert library_in_cache("libssl.so", LDCONFIG, "x86_64") is None


def test_library_names_resolve_through_proc_pid_maps() -> None:
    maps = ("7f00-7f10 r--p 00000000 fe:01 123 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
            "7f20-7f30 r-xp 00000000 fe:01 456 /opt/app/lib/libssl.so.3.0.2\n"
            "7ffd-7ffe rw-p 00000000 00:00 0 [stack]\n")
    assert library_in_maps("libc.so.6", maps) == "/usr/lib/x86_64-linux-gnu/libc.so.6"
    assert library_in_maps("libssl.so.3", maps) == "/opt/app/lib/libssl.so.3.0.2"
    assert library_in_maps("libz.so.1", maps) is None


def test_cpu_lists() -> None:
    assert parse_cpu_list("0-3,5,7-8\n") == (0, 1, 2, 3, 5, 7, 8)
    assert parse_cpu_list("0") == (0,)
