"""Checks made before anything touches the kernel: does an artifact fit this node (arch,
features, privileges), which feature a section needs, and is a built object usable."""

from __future__ import annotations

import pytest

import loader.session as run_mod
from btfgen import K_PTR, BtfEncoder
from loader.artifacts.meta import ArtifactMeta
from loader.kernel.btf import Btf, MapDef
from loader.decoders.btf import MARKER
from loader.kernel.elf import ObjectInfo, ProgramInfo, check_object, section_feature
from loader.errors import BuildError, KernelUnsupported, PrivilegeError
from loader.kernel.probe import Feature, KernelIdentity
from loader.session import CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN, check_fits, check_privileges

DIGEST = "sha256:" + "0123456789abcdef" * 4
NODE = KernelIdentity(release="6.1.0-50-amd64", arch="x86_64", btf_digest="ab" * 32)


def meta(*, arch: str = "x86_64", programs: tuple[tuple[str, str | None], ...] = (("handle", "tracepoint"),),
         required: tuple[str, ...] = ("ringbuf", "tracepoint")) -> ArtifactMeta:
    return ArtifactMeta(
        name="tcp_connlat", kind="bpf_object", key="k" * 64, digest=DIGEST, size=1000,
        source_digest="s" * 64, target=KernelIdentity(release="6.1.0-50-amd64", arch=arch,
                                                      btf_digest="ab" * 32),
        toolchain={"clang": "clang 14", "libbpf": "1.1"}, flags=("-g",), inputs={},
        programs=tuple({"name": n, "section": "tp/x/y", "insns": 10, "feature": f} for n, f in programs),
        maps=(), channels={}, required_features=required, license="GPL")


def features(**missing: str) -> dict[str, Feature]:
    names = ("tracepoint", "raw_tracepoint", "kprobe", "fentry", "ringbuf", "perf_event_array")
    return {n: Feature(name=n, ok=n not in missing, why=missing.get(n, "loads")) for n in names}


# ---- check_fits -------------------------------------------------------------------------


def test_fits_when_arch_and_features_match() -> None:
    check_fits(meta(), NODE, features())
    check_fits(meta(required=()), NODE, {})


def test_feature_this_node_never_probed_is_not_held_against_it() -> None:
    check_fits(meta(required=("lsm",)), NODE, features())


def test_other_arch() -> None:
    with pytest.raises(KernelUnsupported) as exc:
        check_fits(meta(arch="aarch64"), NODE, features())
    assert exc.value.message == ("artifact sha256:0123456789ab of 'tcp_connlat' is built for aarch64, "
                                 "this node is x86_64")
    assert exc.value.hint == "build it for this kernel: bpfdepot build <bundle> on a x86_64 machine"
    assert exc.value.exit_code == 4


def test_missing_program_feature_names_feature_programs_and_why() -> None:
    m = meta(programs=(("on_connect", "kprobe"), ("on_state", "tracepoint"), ("on_exit", "kprobe")),
             required=("kprobe", "tracepoint"))
    with pytest.raises(KernelUnsupported) as exc:
        check_fits(m, NODE, features(kprobe="no kprobe PMU (/sys/bus/event_source/devices/kprobe)"))
    assert exc.value.message == ("'tcp_connlat' needs kprobe (on_connect, on_exit), which "
                                 "6.1.0-50-amd64/x86_64 does not offer "
                                 "(no kprobe PMU (/sys/bus/event_source/devices/kprobe))")
    assert exc.value.hint == "use a tracepoint/uprobe/perf_event form of the program on this kernel"


def test_missing_map_feature_names_the_artifact() -> None:
    with pytest.raises(KernelUnsupported) as exc:
        check_fits(meta(), NODE, features(ringbuf="EINVAL"))
    assert exc.value.message == ("'tcp_connlat' needs ringbuf (tcp_connlat), which "
                                 "6.1.0-50-amd64/x86_64 does not offer (EINVAL)")


def test_arch_is_checked_before_features() -> None:
    with pytest.raises(KernelUnsupported, match="is built for aarch64"):
        check_fits(meta(arch="aarch64"), NODE, features(ringbuf="EINVAL"))


# ---- check_privileges (the capability mask is faked) ---------------------------------------


@pytest.mark.parametrize("caps", [1 << CAP_SYS_ADMIN, 1 << CAP_BPF | 1 << CAP_PERFMON, (1 << 41) - 1])
def test_privileges_enough(monkeypatch: pytest.MonkeyPatch, caps: int) -> None:
    monkeypatch.setattr(run_mod, "effective_caps", lambda: caps)
    check_privileges("demo")


@pytest.mark.parametrize("caps", [0, 1 << CAP_BPF, 1 << CAP_PERFMON, 1 << 12 | 1 << 24])
def test_privileges_missing(monkeypatch: pytest.MonkeyPatch, caps: int) -> None:
    monkeypatch.setattr(run_mod, "effective_caps", lambda: caps)
    with pytest.raises(PrivilegeError) as exc:
        check_privileges("demo")
    assert exc.value.message == "loading 'demo' needs root, or CAP_BPF and CAP_PERFMON"
    assert exc.value.hint == ("run it with sudo, or grant the capabilities: "
                              "setcap cap_bpf,cap_perfmon+ep on the interpreter")
    assert exc.value.exit_code == 6


# ---- section_feature ------------------------------------------------------------------------


@pytest.mark.parametrize("section,expected", [
    ("tp/sched/sched_switch", (True, "tracepoint")),
    ("tp", (True, "tracepoint")),
    ("tracepoint/syscalls/sys_enter_openat", (True, "tracepoint")),
    ("raw_tp/sched_switch", (True, "raw_tracepoint")),
    ("raw_tracepoint/sched_switch", (True, "raw_tracepoint")),
    ("raw_tp.w/sched_switch", (True, "raw_tracepoint")),
    ("tp_btf/sched_switch", (True, "tp_btf")),
    ("kprobe/tcp_v4_connect", (True, "kprobe")),
    ("kretprobe/tcp_v4_connect", (True, "kprobe")),
    ("kprobe.multi/tcp_*", (True, "kprobe")),
    ("ksyscall/openat", (True, "kprobe")),
    ("uprobe", (True, "uprobe")),
    ("uprobe//bin/bash:readline", (True, "uprobe")),
    ("uretprobe//bin/bash:readline", (True, "uprobe")),
    ("usdt/libc.so.6:libc:setjmp", (True, "uprobe")),
    ("fentry/do_nanosleep", (True, "fentry")),
    ("fexit/do_nanosleep", (True, "fexit")),
    ("lsm/file_open", (True, "lsm")),
    ("perf_event", (True, "perf_event")),
    ("socket", (True, "socket_filter")),
    ("xdp", (True, "xdp")),
    ("tc", (True, "sched_cls")),
    ("classifier", (True, "sched_cls")),
    ("cgroup_skb/ingress", (True, "cgroup_skb")),
    ("cgroup/connect4", (True, None)),  # libbpf knows it; `bpfdepot kernel` does not probe it
    ("sk_reuseport", (True, None)),
    ("my_handler", (False, None)),
    ("tracepoints/x", (False, None)),
    ("", (False, None)),
])
def test_section_feature(section: str, expected: tuple[bool, str | None]) -> None:
    assert section_feature(section) == expected


@pytest.mark.parametrize("section", ["tcp_connect", "xdp_stats", "socket1", "perf_event_sample"])
def test_section_feature_exact_libbpf_names_are_not_prefixes(section: str) -> None:
    # libbpf fails these at open ("missing BPF prog type"); check_object should say so first
    assert section_feature(section) == (False, None)


# ---- check_object on hand-made ObjectInfo --------------------------------------------------

RINGBUF = MapDef(name="events", map_type=27, type_name="ringbuf", max_entries=4096)
LOST = MapDef(name="events_lost", map_type=6, type_name="percpu_array", max_entries=1,
              key_size=4, value_size=8)
HANDLE = ProgramInfo(name="handle", section="tp/sock/inet_sock_set_state", insns=42, feature="tracepoint")


def event_btf(channel: str = "events") -> Btf:
    enc = BtfEncoder()
    u32 = enc.int_("unsigned int", 4)
    ev = enc.struct("ev", 8, [("pid", u32, 0), ("tid", u32, 32)])
    enc.var(MARKER + channel, enc.ref(K_PTR, ev))
    return Btf.parse(enc.build())


def info(**change: object) -> ObjectInfo:
    fields: dict[str, object] = dict(
        machine="EM_BPF", license="GPL", programs=(HANDLE,), maps=(RINGBUF, LOST),
        sections=("", ".text", "tp/sock/inet_sock_set_state", ".maps", "license", ".BTF", ".BTF.ext"),
        btf=event_btf(), has_btf_ext=True)
    fields.update(change)
    return ObjectInfo(**fields)  # type: ignore[arg-type]


RING = {"events": ("ring_buffer", None)}


def test_good_object_has_no_problems() -> None:
    assert check_object(info(), "demo", RING) == []
    assert check_object(info(), "demo", {}) == []
    assert check_object(info(btf=event_btf("other")), "demo", {"events": ("ring_buffer", "ev")}) == []


def test_missing_license() -> None:
    for license_ in (None, ""):
        assert check_object(info(license=license_), "demo", RING) == [
            'no license section: add char LICENSE[] SEC("license") = "GPL";']


def test_no_btf() -> None:
    # without BTF the channel's event cannot be checked, and is not (no second complaint)
    assert check_object(info(btf=None, has_btf_ext=False), "demo", RING) == [
        "no .BTF section: compile with -g",
        "no .BTF.ext section (CO-RE relocations and line info): compile with -g",
    ]


def test_wrong_machine_and_no_programs() -> None:
    assert check_object(info(machine="EM_X86_64", programs=()), "demo", {}) == [
        "machine is EM_X86_64, not EM_BPF",
        'no programs: put each in SEC("tp/...") or another libbpf section',
    ]


def test_unknown_section() -> None:
    odd = ProgramInfo(name="handler", section="my_handler", insns=3, feature=None)
    assert check_object(info(programs=(HANDLE, odd)), "demo", RING) == [
        "program 'handler' is in section 'my_handler', which libbpf does not know "
        "(e.g. tp/CATEGORY/NAME, raw_tp/NAME, uprobe/...)"]


def test_channel_missing() -> None:
    assert check_object(info(), "demo", {"evts": ("ring_buffer", None)}) == [
        "channel 'evts' is not a map in the object (maps: events, events_lost)"]
    assert check_object(info(maps=()), "demo", RING) == [
        "channel 'events' is not a map in the object (maps: none)"]


def test_channel_of_the_wrong_map_type() -> None:
    assert check_object(info(), "demo", {"events": ("perf_buffer", None)}) == [
        "channel 'events' is a ringbuf map, but the manifest says perf_buffer (a perf_event_array map)"]
    hashmap = MapDef(name="events", map_type=1, type_name="hash", max_entries=16, key_size=4, value_size=8)
    assert check_object(info(maps=(hashmap,)), "demo", RING) == [
        "channel 'events' is a hash map, but the manifest says ring_buffer (a ringbuf map)"]
    perf = MapDef(name="events", map_type=4, type_name="perf_event_array", key_size=4, value_size=4)
    assert check_object(info(maps=(perf,)), "demo", {"events": ("perf_buffer", None)}) == []


def test_channel_whose_event_struct_cannot_be_found() -> None:
    assert check_object(info(btf=event_btf("other")), "demo", RING) == [
        "channel 'events': the object does not say which struct it carries (declare it with "
        "BPFDEPOT_CHANNEL(events, struct your_event, SIZE) from bpfdepot.h, or set "
        "`event: your_event` on the channel in the manifest)"]
    assert check_object(info(), "demo", {"events": ("ring_buffer", "nope")}) == [
        "channel 'events': no struct 'nope' in the object's BTF (fix `event:` in the manifest, "
        "or use the event struct in the program)"]


def test_every_problem_is_listed_in_order() -> None:
    odd = ProgramInfo(name="handler", section="my_handler", insns=3, feature=None)
    problems = check_object(info(license=None, btf=None, programs=(odd,), maps=()), "demo", RING)
    assert [p.split(" ")[:2] for p in problems] == [
        ["no", "license"], ["no", ".BTF"], ["program", "'handler'"], ["channel", "'events'"]]


def test_required_features_and_decoder_without_btf() -> None:
    kp = ProgramInfo(name="kp", section="kprobe/x", insns=1, feature="kprobe")
    none = ProgramInfo(name="cg", section="cgroup/connect4", insns=1, feature=None)
    assert info(programs=(HANDLE, kp, none)).required_features == ("kprobe", "ringbuf", "tracepoint")
    assert info(programs=(), maps=(LOST,)).required_features == ()
    with pytest.raises(BuildError) as exc:
        info(btf=None).decoder("events")
    assert exc.value.message == "channel 'events': the object has no BTF to decode events with"
    assert exc.value.hint == "compile with -g"
    assert info().decoder("events").struct == "ev"
