"""The kernel catalog: features from config lines, selectors (and their error text), entries
as JSON, and the catalog kept in a LocalStore."""

from __future__ import annotations

from pathlib import Path

import pytest

from loader.kernel.catalog import (KernelEntry, Selector, SelectorError, catalog_ref, config_release,
                            features_from_config, find_release, get_kernel, list_kernels,
                            parse_selector, put_kernel, select)
from loader.errors import StoreError
from loader.kernel.probe import FEATURES, KernelIdentity
from loader.artifacts.store import LocalStore

# Every option any rule looks at, all on: each test switches one off.
FULL = {
    "BPF_SYSCALL": "y", "BPF_EVENTS": "y", "TRACEPOINTS": "y", "DEBUG_INFO_BTF": "y",
    "PERF_EVENTS": "y", "UPROBE_EVENTS": "y", "KPROBES": "y", "KPROBE_EVENTS": "y",
    "DYNAMIC_FTRACE_WITH_DIRECT_CALLS": "y", "BPF_JIT": "y", "BPF_LSM": "y",
    "LSM": '"landlock,lockdown,yama,bpf"', "NET": "y", "NET_CLS_BPF": "m", "CGROUP_BPF": "y",
}


def config(*, drop: tuple[str, ...] = (), **override: str) -> str:
    lines = ["#", "# Linux/x86 6.1.176 Kernel Configuration", "#"]
    for name, value in {**FULL, **override}.items():
        lines.append(f"# CONFIG_{name} is not set" if name in drop else f"CONFIG_{name}={value}")
    return "\n".join(lines) + "\n"


def off(features: dict[str, bool]) -> set[str]:
    return {name for name, ok in features.items() if not ok}


def test_full_config_offers_every_feature() -> None:
    features = features_from_config(config(), "x86_64")
    assert list(features) == list(FEATURES)
    assert off(features) == set()


@pytest.mark.parametrize(("dropped", "lost"), [
    ("KPROBES", {"kprobe"}),
    ("KPROBE_EVENTS", {"kprobe"}),
    ("UPROBE_EVENTS", {"uprobe"}),
    ("TRACEPOINTS", {"tracepoint"}),
    ("PERF_EVENTS", {"perf_event"}),
    ("BPF_EVENTS", {"tracepoint", "raw_tracepoint", "tp_btf", "perf_event", "uprobe", "kprobe"}),
    ("DEBUG_INFO_BTF", {"tp_btf", "fentry", "fexit", "lsm"}),
    ("DYNAMIC_FTRACE_WITH_DIRECT_CALLS", {"fentry", "fexit"}),
    ("BPF_JIT", {"fentry", "fexit", "lsm"}),
    ("BPF_LSM", {"lsm"}),
    ("NET_CLS_BPF", {"sched_cls"}),
    ("CGROUP_BPF", {"cgroup_skb"}),
    ("NET", {"socket_filter", "xdp", "sched_cls", "cgroup_skb"}),
    ("BPF_SYSCALL", set(FEATURES)),
])
def test_each_rule_needs_its_options(dropped: str, lost: set[str]) -> None:
    assert off(features_from_config(config(drop=(dropped,)), "x86_64")) == lost


def test_lsm_needs_bpf_in_the_lsm_list() -> None:
    assert off(features_from_config(config(LSM='"landlock,yama,apparmor"'), "x86_64")) == {"lsm"}
    assert off(features_from_config(config(LSM='"bpf"'), "x86_64")) == set()


def test_modules_count_and_trampoline_features_need_an_arch_with_one() -> None:
    assert features_from_config(config(NET_CLS_BPF="m"), "x86_64")["sched_cls"] is True
    assert off(features_from_config(config(), "amd64")) == set()  # Debian's name for x86_64
    assert off(features_from_config(config(), "ppc64le")) == {"fentry", "fexit", "lsm"}


def test_empty_config_offers_nothing_and_release_line_is_read() -> None:
    assert off(features_from_config("", "x86_64")) == set(FEATURES)
    assert config_release(config()) == "6.1.176"
    assert config_release("CONFIG_NET=y\n") is None


# ---------------------------------------------------------------- entries

def entry(release: str = "6.1.0-50-amd64", *, digest: str = "ab" * 32, arch: str = "x86_64",
          features: dict[str, bool] | None = None, features_from: str = "config",
          config_blob: str | None = None, source: str = "test") -> KernelEntry:
    return KernelEntry(release=release, arch=arch, btf_digest=digest, config_blob=config_blob,
                       features=features if features is not None
                       else features_from_config(config(), arch),
                       features_from=features_from, btf_on_node=True, source=source)


def test_entry_json_round_trip_is_deterministic() -> None:
    e = entry(config_blob="sha256:" + "cd" * 32)
    assert KernelEntry.from_json(e.to_json()) == e
    assert KernelEntry.from_json(e.to_json().encode()) == e
    reordered = entry(features=dict(reversed(list(e.features.items()))), config_blob=e.config_blob)
    assert reordered.to_json() == e.to_json()
    assert e.identity == KernelIdentity(release="6.1.0-50-amd64", arch="x86_64", btf_digest="ab" * 32)
    assert e.btf_blob == "sha256:" + "ab" * 32


def test_entry_json_errors_name_the_problem() -> None:
    with pytest.raises(StoreError, match=r"unknown keys \['colour'\], missing keys \['source'\]"):
        KernelEntry.from_json(entry().to_json().replace('"source"', '"colour"'))
    with pytest.raises(StoreError, match="features_from is 'guessed'"):
        KernelEntry.from_json(entry().to_json().replace('"config"', '"guessed"'))
    with pytest.raises(StoreError, match="is not JSON"):
        KernelEntry.from_json("{")
    with pytest.raises(StoreError, match="btf_digest must be 64 lowercase hex"):
        KernelEntry.from_json(entry().to_json().replace("ab" * 32, "AB"))


# ---------------------------------------------------------------- selectors

CATALOG = [
    entry("6.12.100+deb12-amd64", digest="38" * 32),
    entry("6.1.0-50-amd64", digest="ec" * 32),
    entry("6.18.44-fc-v669", digest="30" * 32,
          features=features_from_config(config(drop=("KPROBES",)), "x86_64")),
    entry("6.1.0-50-arm64", digest="aa" * 32, arch="aarch64"),
    entry("6.9.0-nothing-known", digest="99" * 32, features={}),
]


def releases(selected: list[KernelEntry]) -> list[str]:
    return [e.release for e in selected]


def test_all_selects_everything_in_release_order() -> None:
    assert parse_selector("all") == Selector(text="all")
    assert releases(select(CATALOG, "all")) == [
        "6.1.0-50-amd64", "6.1.0-50-arm64", "6.9.0-nothing-known", "6.12.100+deb12-amd64",
        "6.18.44-fc-v669"]


def test_release_globs_bare_and_as_terms() -> None:
    assert releases(select(CATALOG, "6.1.*")) == ["6.1.0-50-amd64", "6.1.0-50-arm64"]
    assert releases(select(CATALOG, "release=6.12.100+deb12-amd64")) == ["6.12.100+deb12-amd64"]
    assert parse_selector("6.1.*") == parse_selector("release=6.1.*")


def test_terms_are_anded() -> None:
    assert releases(select(CATALOG, "6.1.*,arch=x86_64")) == ["6.1.0-50-amd64"]
    assert releases(select(CATALOG, "arch=amd64, release=6.1*")) == [
        "6.1.0-50-amd64", "6.12.100+deb12-amd64", "6.18.44-fc-v669"]
    assert releases(select(CATALOG, "feature=kprobe,arch=x86_64")) == [
        "6.1.0-50-amd64", "6.12.100+deb12-amd64"]
    assert releases(select(CATALOG, "digest=sha256:3838")) == ["6.12.100+deb12-amd64"]
    assert releases(select(CATALOG, "digest=30,all")) == ["6.18.44-fc-v669"]


def test_unknown_features_are_not_selected_by_feature() -> None:
    assert "6.9.0-nothing-known" not in releases(select(CATALOG, "feature=tracepoint"))


@pytest.mark.parametrize(("text", "message", "hint"), [
    ("relase=6.1.*", "kernel selector 'relase=6.1.*': unknown term 'relase'",
     "did you mean 'release'? terms are release, arch, feature, digest"),
    ("feature=kprobes", "kernel selector 'feature=kprobes': unknown feature 'kprobes'",
     "did you mean 'kprobe'? features are tracepoint,"),
    ("colour=red", "unknown term 'colour'", "terms are release, arch, feature, digest"),
    ("arch=", "kernel selector 'arch=': term 'arch=' has no value", "write all, a release glob"),
    ("6.1.*,,arch=x86_64", "an empty term (two commas?)", "write all"),
    ("", "empty kernel selector", "write all"),
    ("digest=xyz", "digest=xyz is not a hex prefix", "digest=ecf4e4"),
])
def test_selector_errors(text: str, message: str, hint: str) -> None:
    with pytest.raises(SelectorError) as caught:
        parse_selector(text)
    assert message in caught.value.message
    assert caught.value.hint.startswith(hint) or hint in caught.value.hint
    assert caught.value.exit_code == 2


def test_selecting_nothing_lists_the_known_kernels() -> None:
    with pytest.raises(SelectorError) as caught:
        select(CATALOG, "release=5.*")
    assert caught.value.message == (
        "no kernel in the given kernels matches 'release=5.*' (known: 6.1.0-50-amd64/x86_64, "
        "6.1.0-50-arm64/aarch64, 6.9.0-nothing-known/x86_64, 6.12.100+deb12-amd64/x86_64, "
        "6.18.44-fc-v669/x86_64)")
    with pytest.raises(SelectorError, match="is empty") as caught:
        select([], "all")
    assert "bpfdepot kernels add" in caught.value.hint


# ---------------------------------------------------------------- the catalog in a store

@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def test_put_list_get_find(store: LocalStore) -> None:
    assert list_kernels(store) == []
    for e in CATALOG:
        assert put_kernel(store, e) == e
    assert releases(list_kernels(store)) == releases(select(CATALOG, "all"))
    assert store.list_refs("kernels")[0] == catalog_ref("aarch64", "aa" * 32) == "kernels/aarch64-" + "aa" * 32
    assert get_kernel(store, "x86_64", "ec" * 32) == CATALOG[1]
    assert get_kernel(store, "x86_64", "ff" * 32) is None
    assert find_release(store, "6.1.0-50-amd64", "x86_64") == CATALOG[1]
    assert find_release(store, "6.1.0-50-arm64", "arm64") == CATALOG[3]
    assert find_release(store, "6.1.0-50-amd64", "aarch64") is None
    assert releases(select(store, "feature=kprobe")) == ["6.1.0-50-amd64", "6.1.0-50-arm64",
                                                         "6.12.100+deb12-amd64"]
    with pytest.raises(SelectorError, match=r"no kernel in the kernel catalog \(LocalStore"):
        select(store, "arch=s390x")


def test_empty_store_selects_nothing_with_a_hint(store: LocalStore) -> None:
    with pytest.raises(SelectorError, match="is empty") as caught:
        select(store, "all")
    assert "kernels register" in caught.value.hint


def test_a_newer_entry_replaces_the_older(store: LocalStore) -> None:
    put_kernel(store, entry(source="first"))
    newer = entry(source="second", features={**entry().features, "kprobe": False})
    assert put_kernel(store, newer) == newer
    assert list_kernels(store) == [newer]
    assert put_kernel(store, newer) == newer  # the same again: nothing changes


def test_probed_features_replace_config_ones_but_not_the_reverse(store: LocalStore) -> None:
    from_config = entry(config_blob="sha256:" + "cd" * 32)
    probed = entry(features={**from_config.features, "fentry": False, "lsm": False},
                   features_from="probed", source="registered by node n1")
    put_kernel(store, from_config)
    assert put_kernel(store, probed) == probed
    assert get_kernel(store, "x86_64", "ab" * 32) == probed
    kept = put_kernel(store, from_config)  # a config later: the probe stays, the config is added
    assert kept.features == probed.features and kept.features_from == "probed"
    assert kept.source == "registered by node n1"
    assert kept.config_blob == from_config.config_blob
    assert list_kernels(store) == [kept]


def test_a_corrupt_entry_is_a_store_error(store: LocalStore) -> None:
    store.set_ref(catalog_ref("x86_64", "ab" * 32), store.put_blob(b"not json"))
    with pytest.raises(StoreError, match="kernel entry kernels/x86_64-abab.* is not JSON"):
        list_kernels(store)


def test_a_meta_serialises_as_asdict_did_and_reads_back() -> None:
    """ArtifactMeta.to_json builds its dict shallowly (it is on the farm's per-kernel path); the
    bytes, and so every stored meta's digest, stay those of dataclasses.asdict."""
    import dataclasses
    import json

    from loader.artifacts.meta import ArtifactMeta
    from loader.kernel.probe import KernelIdentity

    meta = ArtifactMeta(
        name="p", kind="bpf_object", key="k" * 64, digest="sha256:" + "d" * 64, size=9,
        source_digest="s" * 64, target=KernelIdentity(release="6.1.0-50-amd64", arch="x86_64",
                                                      btf_digest="sha256:" + "b" * 64),
        toolchain={"clang": "14", "libbpf": "1.1.2"}, flags=("-g", "-O2"), inputs={"src/p.c": "x"},
        programs=({"name": "p", "section": "tp/a/b"},), maps=({"name": "m", "type": "ringbuf"},),
        channels={"events": {"type": "ring_buffer", "layout": [{"name": "pid", "offset": 0}]}},
        required_features=("ringbuf",), license="GPL", extra={"check": {"absent": ["kprobe"]}},
        load_tested_on=({"kernel": "6.1.0-50-amd64", "how": "vm"},))
    old = (json.dumps(dataclasses.asdict(meta), indent=1, sort_keys=True) + "\n").encode()
    assert meta.to_json() == old
    assert ArtifactMeta.from_json(meta.to_json(), "test") == meta
