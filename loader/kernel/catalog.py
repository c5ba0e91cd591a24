"""The kernel catalog: the target kernels a farm builds for, kept in the artifact store.

One entry per kernel identity (arch + BTF digest), stored as a JSON blob and named by the
replaceable ref ``kernels/<arch>-<btf digest>``; the BTF itself is the blob
``sha256:<btf digest>`` and the kernel config, when known, another blob. Entries come from a
raw BTF file (``bpfdepot kernels add --btf``), a distribution's kernel package (``--package``)
or a node describing itself (``kernels register``). Targets are chosen with a small selector:

    all                          every kernel
    6.1.*                        a release glob (same as release=6.1.*)
    release=6.12.*,arch=x86_64   comma-separated terms, all of which must hold
    feature=kprobe               kernels known to offer a feature (names from loader.kernel.probe.FEATURES)
    digest=ecf4e4                BTF digest prefix
    flavour=cloud                Debian's flavour, from the release: -cloud-<arch>, -rt-<arch>, else generic
    version>=6.1,version<6.13    the release's leading numbers, compared in natural order (see VersionBound)

Errors (besides StoreError for a bad stored entry):

    BpfDepotError
     └── SelectorError   exit 2   a selector that does not parse or selects nothing
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import json
import operator
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from loader.errors import BpfDepotError, StoreError
from loader.kernel.probe import FEATURES, KernelIdentity
from loader.artifacts.store import ArtifactStore

FeaturesFrom = Literal["probed", "config"]

# Debian (dpkg) architecture names → what `uname -m` says on such a node.
DEBIAN_ARCH = {"amd64": "x86_64", "arm64": "aarch64", "i386": "i686", "armhf": "armv7l",
               "ppc64el": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
               "loong64": "loongarch64", "mips64el": "mips64"}

# Arches with a BPF trampoline (arch_prepare_bpf_trampoline), which fentry/fexit and lsm
# programs attach through; elsewhere the kernel answers -ENOTSUPP whatever the config says.
_TRAMPOLINE_ARCHES = frozenset(("x86_64", "aarch64", "s390x", "riscv64", "loongarch64"))

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_OPTIONAL = ("image",)  # absent in entries written before it existed
_FIELDS = ("release", "arch", "btf_digest", "config_blob", "features", "features_from",
           "btf_on_node", "source", "image")


class SelectorError(BpfDepotError):
    """A kernel selector does not parse, or selects no kernel in the catalog."""

    exit_code = 2


def uname_arch(arch: str) -> str:
    """``amd64`` → ``x86_64``: arches are kept as `uname -m` spells them."""
    return DEBIAN_ARCH.get(arch, arch)


@dataclass(frozen=True, slots=True, kw_only=True)
class KernelEntry:
    release: str                  # as `uname -r` prints it on a node of this kernel
    arch: str                     # as `uname -m` prints it
    btf_digest: str               # sha256 hex of the raw BTF, stored as blob "sha256:" + this
    config_blob: str | None       # blob digest of the kernel config, when known
    features: dict[str, bool]     # names from FEATURES; empty when nothing is known
    features_from: FeaturesFrom   # probed on a node, or derived from the config
    btf_on_node: bool             # nodes expose /sys/kernel/btf/vmlinux (false: ship a minimal BTF)
    source: str                   # where the entry came from, for people
    image: str | None = None      # blob digest of its boot image (vmlinuz), when added from its
                                  # package: the farm boots it in a VM to load-test artifacts

    def __post_init__(self) -> None:
        if not _HEX64.fullmatch(self.btf_digest):
            raise ValueError(f"btf_digest must be 64 lowercase hex, not {self.btf_digest!r}")

    @property
    def identity(self) -> KernelIdentity:
        return KernelIdentity(release=self.release, arch=self.arch, btf_digest=self.btf_digest)

    @property
    def btf_blob(self) -> str:
        return "sha256:" + self.btf_digest

    def has(self, feature: str) -> bool | None:
        """True/False when known; None when this entry knows nothing about ``feature``."""
        return self.features.get(feature)

    def __str__(self) -> str:
        return f"{self.release}/{self.arch}"

    def to_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in _FIELDS}

    def to_json(self) -> str:
        """Deterministic JSON: the same entry always gives the same bytes (and blob digest)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, *, where: str = "kernel entry") -> KernelEntry:
        try:
            raw = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise StoreError(f"{where} is not JSON: {exc}", hint="re-add the kernel") from None
        if not isinstance(raw, dict):
            raise StoreError(f"{where} is not a JSON object", hint="re-add the kernel")
        unknown = sorted(set(raw) - set(_FIELDS))
        missing = [name for name in _FIELDS if name not in raw and name not in _OPTIONAL]
        if unknown or missing:
            raise StoreError(f"{where}: unknown keys {unknown}, missing keys {missing}",
                             hint="written by another bpfdepot version? re-add the kernel")
        features = raw["features"]
        if not (isinstance(features, dict) and all(isinstance(v, bool) for v in features.values())):
            raise StoreError(f"{where}: features must map names to true/false")
        if raw["features_from"] not in ("probed", "config"):
            raise StoreError(f"{where}: features_from is {raw['features_from']!r}, "
                             "not 'probed' or 'config'")
        try:
            return cls(**raw)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"{where}: {exc}", hint="re-add the kernel") from None


# ---------------------------------------------------------------- config → features

def _parse_config(text: str) -> dict[str, str]:
    """``CONFIG_X=value`` lines; ``# CONFIG_X is not set`` and comments are simply absent."""
    values = {}
    for line in text.splitlines():
        name, eq, value = line.strip().partition("=")
        if eq and name.startswith("CONFIG_"):
            values[name.removeprefix("CONFIG_")] = value.strip().strip('"')
    return values


def features_from_config(text: str, arch: str) -> dict[str, bool]:
    """What a kernel built with this config can offer, feature by feature (all of FEATURES).

    A config says what was compiled in, not what loads: probing on a node beats it. On the
    6.18.44 machines fentry/fexit and lsm are configured (DYNAMIC_FTRACE_WITH_DIRECT_CALLS,
    BPF_LSM with "bpf" in CONFIG_LSM) yet fail to load with EPERM, and a boot-time ``lsm=``
    can drop "bpf" from CONFIG_LSM's default. So put_kernel never lets config-derived
    features replace probed ones.
    """
    cfg = _parse_config(text)

    def on(*names: str) -> bool:
        return all(cfg.get(n) in ("y", "m") for n in names)  # =m: a module, loaded on demand

    trampoline = uname_arch(arch) in _TRAMPOLINE_ARCHES and on("BPF_JIT")
    lsm_list = {name.strip() for name in cfg.get("LSM", "").split(",")}
    base = on("BPF_SYSCALL")
    events = base and on("BPF_EVENTS")  # BPF on tracepoints, kprobes, uprobes, perf events
    found = {
        "tracepoint": events and on("TRACEPOINTS"),
        "raw_tracepoint": events,
        "tp_btf": events and on("DEBUG_INFO_BTF"),
        "perf_event": events and on("PERF_EVENTS"),
        "uprobe": events and on("UPROBE_EVENTS"),
        "kprobe": events and on("KPROBES", "KPROBE_EVENTS"),
        "fentry": base and trampoline and on("DYNAMIC_FTRACE_WITH_DIRECT_CALLS", "DEBUG_INFO_BTF"),
        "lsm": base and trampoline and on("BPF_LSM", "DEBUG_INFO_BTF") and "bpf" in lsm_list,
        "socket_filter": base and on("NET"),
        "sched_cls": base and on("NET", "NET_CLS_BPF"),
        "xdp": base and on("NET"),
        "cgroup_skb": base and on("NET", "CGROUP_BPF"),
        "ringbuf": base,
        "perf_event_array": base,
    }
    found["fexit"] = found["fentry"]
    return {name: found[name] for name in FEATURES}


def config_release(text: str) -> str | None:
    """The version in a config's ``# Linux/x86 6.1.176 Kernel Configuration`` line.

    Not `uname -r` (Debian's 6.1.176 runs as 6.1.0-50-amd64), so only for people to read.
    """
    m = re.search(r"^# Linux/\S+ (\S+) Kernel Configuration$", text, re.M)
    return m.group(1) if m else None


# ---------------------------------------------------------------- the catalog in the store

def catalog_ref(arch: str, btf_digest: str) -> str:
    return f"kernels/{arch}-{btf_digest}"


def get_kernel(store: ArtifactStore, arch: str, btf_digest: str) -> KernelEntry | None:
    ref = catalog_ref(arch, btf_digest)
    digest = store.get_ref(ref)
    if digest is None:
        return None
    return KernelEntry.from_json(store.read_blob(digest), where=f"kernel entry {ref} ({digest})")


def put_kernel(store: ArtifactStore, entry: KernelEntry) -> KernelEntry:
    """Store ``entry`` under its identity, replacing an older one; returns what is stored now.

    Probed features win: a config-derived entry for a kernel a node has already registered
    keeps the probed entry (adding only a config it lacked). Store the BTF blob (and config)
    before calling this, so the entry never points at nothing.
    """
    old = get_kernel(store, entry.arch, entry.btf_digest)
    if old is not None and old.features_from == "probed" and entry.features_from == "config":
        entry = dataclasses.replace(old, config_blob=old.config_blob or entry.config_blob,
                                    image=old.image or entry.image)
    elif old is not None and entry.image is None and old.image is not None:
        entry = dataclasses.replace(entry, image=old.image)  # a probe keeps the package's image
    if entry == old:
        return old
    digest = store.put_blob(entry.to_json().encode())
    store.set_ref(catalog_ref(entry.arch, entry.btf_digest), digest)
    return entry


def release_order(release: str) -> tuple:
    """Natural order of kernel releases: 6.1 < 6.9 < 6.12."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", release) if p)


def _release_key(entry: KernelEntry) -> tuple:
    """Natural order, then arch and digest for a stable order."""
    return release_order(entry.release), entry.arch, entry.btf_digest


def list_kernels(store: ArtifactStore) -> list[KernelEntry]:
    entries = [KernelEntry.from_json(store.read_blob(digest), where=f"kernel entry {ref} ({digest})")
               for ref, digest in store.read_refs("kernels").items()]
    return sorted(entries, key=_release_key)


def find_release(store: ArtifactStore, release: str, arch: str) -> KernelEntry | None:
    """The entry for a node's `uname -r` and `uname -m`; a probed one first if several match."""
    arch = uname_arch(arch)
    found = [e for e in list_kernels(store) if e.release == release and e.arch == arch]
    found.sort(key=lambda e: (e.features_from != "probed", e.btf_digest))
    return found[0] if found else None


# ---------------------------------------------------------------- flavour and version terms

FLAVOURS = ("generic", "cloud", "rt")
_FLAVOUR_SUFFIX = re.compile(r"-(cloud|rt)-[a-z0-9]+$")
_LEADING_VERSION = re.compile(r"\d+(?:[.-]\d+)*")
_VERSION_TERM = re.compile(r"^version\s*(<=|>=|==|!=|<|>|=)\s*(.*)$")
_COMPARE = {"<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
            "<": operator.lt, ">": operator.gt, "=": operator.eq}
_VERSION_OPS = tuple(_COMPARE)  # the two-character ones first: they are matched in this order


def kernel_flavour(release: str) -> str:
    """Debian's flavour of a release: ``6.1.0-50-cloud-amd64`` → cloud, ``…-rt-amd64`` → rt,
    anything else (``6.1.0-50-amd64``, ``6.18.44-fc-v669``) → generic."""
    found = _FLAVOUR_SUFFIX.search(release)
    return found.group(1) if found else "generic"


def release_version(release: str) -> tuple[int, ...]:
    """The leading numbers of a release: ``6.1.0-50-cloud-amd64`` → (6, 1, 0, 50) (Debian's ABI
    number counts: -50 is newer than -47), ``6.12.100+deb12-amd64`` → (6, 12, 100)."""
    found = _LEADING_VERSION.match(release)
    return tuple(int(n) for n in re.split(r"[.-]", found.group())) if found else ()


@dataclass(frozen=True, slots=True)
class VersionBound:
    """One comparison of a release with a version, on as many numbers as the version gives:
    ``<=6.1`` holds for every 6.1.x, ``<6.13`` for 6.12.100, ``=6.12`` for every 6.12.x,
    ``>=6.1.0-50`` for Debian ABI 50 and later."""

    op: str                   # one of _VERSION_OPS; "=" and "==" are the same
    version: tuple[int, ...]

    def __str__(self) -> str:
        return self.op + ".".join(map(str, self.version))

    def holds(self, release: str) -> bool:
        have = release_version(release)
        if not have:
            return False  # a release without leading numbers is in no range
        width = len(self.version)
        return _COMPARE[self.op]((have + (0,) * width)[:width], self.version)


def parse_version_bound(text: str, *, where: str = "version range") -> VersionBound:
    """``>=6.1``, ``<6.13``, ``=6.12`` or a bare ``6.12`` (the same as ``=6.12``)."""
    term = text.strip()
    op = next((o for o in _VERSION_OPS if term.startswith(o)), "=")
    number = term.removeprefix(op).strip() if term.startswith(op) else term
    if not re.fullmatch(r"\d+(?:[.-]\d+)*", number):
        raise SelectorError(f"{where}: '{text}' is not a version bound",
                            hint="write an operator (<, <=, >, >=, =, !=) and dotted numbers, "
                                 "e.g. >=6.1,<6.13 or >=6.1.0-50")
    return VersionBound(op, tuple(int(n) for n in re.split(r"[.-]", number)))


def parse_version_range(text: str) -> tuple[VersionBound, ...]:
    """Comma-separated bounds that must all hold: ``>=6.1,<6.13``."""
    if not text.strip():
        raise SelectorError("empty version range", hint="write bounds such as >=6.1,<6.13")
    return tuple(parse_version_bound(part, where=f"version range '{text}'") for part in text.split(","))


# ---------------------------------------------------------------- selectors

_TERMS = ("release", "arch", "feature", "digest", "flavour", "version")
_SYNTAX = ("all, a release glob such as 6.1.*, or terms release=GLOB,arch=NAME,feature=NAME,"
           "digest=PREFIX,flavour=cloud|rt|generic,version>=6.1")


@dataclass(frozen=True, slots=True, kw_only=True)
class Selector:
    """Terms that must all hold; no terms selects every kernel."""

    text: str = field(compare=False)  # as written, for messages; equal terms are equal selectors
    terms: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        return self.text

    def matches(self, entry: KernelEntry) -> bool:
        for key, value in self.terms:
            match key:
                case "release":
                    ok = fnmatch.fnmatchcase(entry.release, value)
                case "arch":
                    ok = fnmatch.fnmatchcase(entry.arch, value)
                case "feature":
                    ok = entry.has(value) is True  # unknown is not "has it"
                case "digest":
                    ok = entry.btf_digest.startswith(value)
                case "flavour":
                    ok = kernel_flavour(entry.release) == value
                case "version":
                    ok = parse_version_bound(value).holds(entry.release)
                case _:  # pragma: no cover - parse_selector admits only _TERMS
                    raise AssertionError(key)
            if not ok:
                return False
        return True


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"did you mean '{close[0]}'? " if close else ""


def parse_selector(text: str) -> Selector:
    text = text.strip()
    if not text:
        raise SelectorError("empty kernel selector", hint=f"write {_SYNTAX}")
    terms: list[tuple[str, str]] = []
    for raw in text.split(","):
        term = raw.strip()
        if term == "all":
            continue
        if (version := _VERSION_TERM.match(term)) is not None:
            bound = parse_version_bound(version.group(1) + version.group(2),
                                        where=f"kernel selector '{text}'")
            terms.append(("version", str(bound)))
            continue
        key, eq, value = term.partition("=")
        key, value = key.strip(), value.strip()
        if not eq:
            key, value = "release", term
        if not value:
            what = f"term '{term}' has no value" if term else "an empty term (two commas?)"
            raise SelectorError(f"kernel selector '{text}': {what}", hint=f"write {_SYNTAX}")
        if key not in _TERMS:
            raise SelectorError(f"kernel selector '{text}': unknown term '{key}'",
                                hint=f"{_suggest(key, _TERMS)}terms are {', '.join(_TERMS)}")
        if key == "feature" and value not in FEATURES:
            raise SelectorError(f"kernel selector '{text}': unknown feature '{value}'",
                                hint=f"{_suggest(value, FEATURES)}features are {', '.join(FEATURES)}")
        if key == "flavour" and value not in FLAVOURS:
            raise SelectorError(f"kernel selector '{text}': unknown flavour '{value}'",
                                hint=f"{_suggest(value, FLAVOURS)}flavours are {', '.join(FLAVOURS)}")
        if key == "arch":
            value = uname_arch(value)
        if key == "digest":
            value = value.lower().removeprefix("sha256:")
            if not re.fullmatch(r"[0-9a-f]{1,64}", value):
                raise SelectorError(f"kernel selector '{text}': digest={value} is not a hex prefix",
                                    hint="give the first hex digits of the BTF digest, e.g. digest=ecf4e4")
        terms.append((key, value))
    return Selector(text=text, terms=tuple(terms))


def select(store_or_entries: ArtifactStore | Sequence[KernelEntry],
           selector: Selector | str) -> list[KernelEntry]:
    """The catalog entries the selector matches, in release order; nothing matched is an error."""
    if isinstance(selector, str):
        selector = parse_selector(selector)
    if isinstance(store_or_entries, (list, tuple)):
        entries = sorted(store_or_entries, key=_release_key)
        where = "the given kernels"
    else:
        entries = list_kernels(store_or_entries)
        where = f"the kernel catalog ({store_or_entries!r})"
    if not entries:
        raise SelectorError(f"no kernel matches '{selector}': {where} is empty",
                            hint="add one: bpfdepot kernels add --btf FILE --config FILE, "
                                 "bpfdepot kernels add --package linux-image-….deb, or "
                                 "bpfdepot kernels register on a node")
    chosen = [e for e in entries if selector.matches(e)]
    if not chosen:
        known = ", ".join(str(e) for e in entries)
        raise SelectorError(f"no kernel in {where} matches '{selector}' (known: {known})",
                            hint="bpfdepot kernels list shows each kernel's release, arch, "
                                 "features and digest")
    return chosen
