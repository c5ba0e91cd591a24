"""The manifest model: one YAML file naming a bundle's programs, properties and channels.

``parse_manifest`` reads it with ``loader.model.yamldoc.YamlDoc``, so that every error names its file and
line and duplicate keys (which PyYAML silently collapses) are caught; a channel's declared fields
are parsed by ``loader.model.fields``.
A manifest is untrusted input: ``file://`` paths must stay inside the manifest's folder, also
after symlinks are resolved. The result is a tree of frozen dataclasses, checked across sections
(event routes name ``user_so`` programs and declared functions).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Literal, cast, get_args
from urllib.parse import urlsplit

from yaml.nodes import MappingNode, Node, ScalarNode

from loader.errors import ManifestError
from loader.model.controls import MapSize, parse_cpu, parse_forms, parse_maps
from loader.model.fields import FieldDecl, parse_fields
from loader.decoders import UnionChoice
from loader.outputs import COMMON_KEYS, output_kinds
from loader.programs import NOT_YET, program_kinds
from loader.model.yamldoc import C_IDENT_RE, TAG, YamlDoc, did_you_mean, kind_of, line_of, read_bounded

# What a channel's `decoders:` may name (enum takes the enum's name: enum:skb_drop_reason).
DECODER_KINDS = ("ip", "ipv4", "ipv6", "hex", "string", "strings", "errno", "ksym", "int", "enum")
ProgramType = str  # a registered program kind (loader/programs/): ebpf_object, user_so
FunctionType = Literal["default", "init", "pre", "post"]
Scheme = Literal["file", "http", "https", "s3"]

FUNCTION_TYPES: tuple[str, ...] = get_args(FunctionType)
SCHEMES: tuple[str, ...] = get_args(Scheme)
MANIFEST_NAMES = ("manifest.yaml", "manifest.yml")
MAX_WORKERS = 64
HEADERS = ("reference", "per-kernel", "bundle")  # `headers:` of an ebpf_object (builder/compile.py)
CONTROL_KEYS = ("forms", "maps", "cpu", "headers")  # an ebpf_object's program controls

_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", re.DOTALL)



@dataclass(frozen=True, kw_only=True, slots=True)
class ProgramSpec:
    """One program of the bundle: a kernel object, a user-space processor or a bpftrace file."""

    name: str
    path: str  # as written, e.g. "file://./tcp_connlat.bpf.c"
    type: ProgramType
    scheme: Scheme
    local_path: Path | None  # file:// only: the real absolute path, inside the manifest's folder
    is_source: bool  # .bpf.c .c .go; False for the built .bpf.o .o .so
    line: int
    # ebpf_object: how its BPF programs attach, by name (kind, options); others auto-attach
    attach: tuple[tuple[str, str, Mapping[str, Any]], ...] = ()
    autoload_off: tuple[str, ...] = ()  # BPF programs not to load at all
    # ebpf_object controls (loader/model/controls.py): alternative sets of BPF programs for one
    # hook (the first this kernel offers loads), map sizes set before load, clang -mcpu
    forms: tuple[tuple[str, ...], ...] = ()
    maps: tuple[MapSize, ...] = ()
    cpu: str | None = None
    # the vmlinux.h clang compiles against: the build's reference kernel's, for all kernels of
    # a variant (one compile, relocated per kernel); each kernel's own (a compile per kernel);
    # or the bundle's own vmlinux.h beside its sources
    headers: str = "reference"
    # bpftrace_object: names for the whitespace-separated words of a printed line that is not
    # JSON (the last takes the rest of the line; loader/programs/bpftrace.py)
    fields: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class FunctionSpec:
    """A function the user_so library exports; "default" ones process events."""

    name: str
    type: FunctionType
    line: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Properties:
    """What the user_so library is handed: its init file and the functions to call."""

    initfile: Path | None
    functions: tuple[FunctionSpec, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class StorageSpec:
    """Per-event overrides of the global sink settings; None keeps the global setting.

    ``kafka: {topic: T}`` and ``file: {name: N}`` turn the sink on with an option;
    ``loader.model.storage.effective`` combines these with the global settings.
    """

    kafka: bool | None = None
    kafka_topic: str | None = None  # a topic or template ({program}, {channel}, {stream})
    file: bool | None = None
    file_name: str | None = None  # a plain file name, in the folder of the global file sink
    tsdb: bool | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class EventRoute:
    """One consumer of a channel: a user_so program, its processor function and sinks."""

    name: str
    hash: str | None
    target_processor: str | None
    storage: StorageSpec
    line: int
    workers: int | None = None  # processes for this processor; None: 2 with hash, else 1


@dataclass(frozen=True, kw_only=True, slots=True)
class ChannelSpec:
    """A kernel map that carries events to user space, and where its events go."""

    name: str  # the map name in the kernel object
    type: str  # a registered output kind (loader/outputs/)
    event: str | None  # the event struct's name in the object's BTF
    events: tuple[EventRoute, ...]  # empty: events are decoded by default
    line: int
    fields: tuple[FieldDecl, ...] = ()  # empty: every member of the event struct, from its BTF
    decoders: tuple[tuple[str, str], ...] = ()  # (field path, decoder): ksym, errno, enum:NAME, ...
    unions: tuple[tuple[str, UnionChoice], ...] = ()  # (union path, the member chosen by what)
    options: Mapping[str, Any] = field(default_factory=dict)  # the output kind's own keys


@dataclass(frozen=True, kw_only=True, slots=True)
class Manifest:
    """A parsed, cross-checked manifest."""

    kind: Literal["ebpfprogram"]
    name: str
    description: str
    version: str
    author: str
    programs: tuple[ProgramSpec, ...]
    properties: Properties
    channels: tuple[ChannelSpec, ...]
    path: Path  # the manifest file, absolute and resolved
    root: Path  # its folder
    raw: bytes = field(repr=False)  # the file's bytes as parsed
    # spec.filter: the in-kernel process filter the bundle asks for ({"units": (...), ...});
    # checked and applied by the run (loader/monitor.py), added to the command line's
    filter: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def program(self, name: str) -> ProgramSpec:
        """The program called ``name``; a ManifestError naming the known ones if there is none."""
        for program in self.programs:
            if program.name == name:
                return program
        known = [program.name for program in self.programs]
        raise ManifestError(
            f"{self.path}: no program {name!r} (known: {', '.join(known)})",
            hint=did_you_mean(name, known, "known programs"),
        )

    @property
    def channel_decls(self) -> dict[str, tuple[str, str | None]]:
        """Channel name → (type, declared event struct): what a build checks the object against."""
        return {c.name: (c.type, c.event) for c in self.channels}

    @property
    def kernel_programs(self) -> tuple[ProgramSpec, ...]:
        """The ebpf_object programs, in manifest order."""
        return tuple(program for program in self.programs if program.type == "ebpf_object")

    @property
    def text_digest(self) -> str:
        """sha256 (hex) of the manifest file's bytes."""
        return hashlib.sha256(self.raw).hexdigest()


FILTER_KEYS = ("units", "cgroups", "pids", "containers", "pods")


def _parse_filter(doc: YamlDoc, node: Node) -> dict[str, tuple[str, ...]]:
    """``spec.filter: {units: [...], cgroups: [...], pids: [...], containers: [...], pods:
    [...]}`` as text; the run checks the values (a unit's name, a cgroup2 directory, a pid, a
    container id, a namespace/name) where it fills the filter."""
    fields = doc.fields(node, "spec.filter", required=(), optional=FILTER_KEYS)
    out = {}
    for key in FILTER_KEYS:
        if key not in fields:
            continue
        items = doc.sequence(fields[key], key, "spec.filter")
        if key == "pids":
            for item in items:
                if not (isinstance(item, ScalarNode) and item.tag == TAG + "int"):
                    raise doc.error(item, f"spec.filter.pids holds process ids, got {kind_of(item)}",
                                    hint="pids: [4242]")
            out[key] = tuple(str(item.value) for item in items)
        else:
            out[key] = tuple(doc.string(item, key, "spec.filter") for item in items)
    return out


def load_bundle(path: str | Path) -> Manifest:
    """Parse the manifest of a bundle folder (manifest.yaml or manifest.yml), or a manifest file."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in MANIFEST_NAMES if (path / name).is_file()]
        if len(found) > 1:
            raise ManifestError(
                f"{path}: both {' and '.join(MANIFEST_NAMES)} exist", hint="keep only one of them"
            )
        if not found:
            raise ManifestError(
                f"{path}: no manifest in this folder (looked for {', '.join(MANIFEST_NAMES)})",
                hint="give the bundle folder that holds manifest.yaml, or the manifest file itself",
            )
        return parse_manifest(found[0])
    if path.name.endswith((".tar.gz", ".tgz")):
        raise ManifestError(
            f"{path}: a packed bundle", hint=f"unpack it first: tar -xzf {path} -C <folder>"
        )
    if not path.exists():
        raise ManifestError(
            f"{path}: no such bundle folder or manifest file",
            hint=f"give a folder holding {' or '.join(MANIFEST_NAMES)}, or a manifest file",
        )
    return parse_manifest(path)


def parse_manifest(path: Path) -> Manifest:
    """Read and check one manifest file; every error names the file and line."""
    raw = read_bounded(path, what="manifest", error_class=ManifestError,
                       hint="give the path of a readable manifest.yaml")
    real = path.resolve()
    doc = YamlDoc(display=str(path), root=real.parent)
    node = doc.compose(
        raw, empty_hint="start with: kind: ebpfprogram, name: ..., spec: {programs: [...]}"
    )
    top = doc.fields(
        node, "",
        required=("kind", "name", "spec"), optional=("description", "version", "author"),
    )  # fmt: skip
    kind = doc.string(top["kind"], "kind", "")
    if kind != "ebpfprogram":
        raise doc.error(
            top["kind"], f"kind {kind!r} is not supported; expected 'ebpfprogram'",
            hint="write: kind: ebpfprogram",
        )  # fmt: skip
    name = doc.name(top["name"], "name", "", what="manifest name")
    strings = {
        key: doc.string(top[key], key, "") if key in top else ""
        for key in ("description", "version", "author")
    }
    spec = doc.fields(
        top["spec"], "spec", required=("programs",),
        optional=("properties", "channels", "filter", "events"),
    )
    programs = _parse_programs(doc, spec["programs"])
    properties = (
        _parse_properties(doc, spec["properties"])
        if "properties" in spec
        else Properties(initfile=None, functions=())
    )
    channels = (
        _parse_channels(doc, spec["channels"], programs, properties) if "channels" in spec else ()
    )
    if "events" in spec:
        channels = _flat_events(doc, spec["events"], channels, programs, properties)
    return Manifest(
        kind="ebpfprogram",
        name=name,
        description=strings["description"],
        version=strings["version"],
        author=strings["author"],
        programs=programs,
        properties=properties,
        channels=channels,
        path=real,
        root=real.parent,
        raw=raw,
        filter=_parse_filter(doc, spec["filter"]) if "filter" in spec else {},
    )


def _parse_programs(doc: YamlDoc, node: Node) -> tuple[ProgramSpec, ...]:
    items = doc.sequence(node, "programs", "spec")
    if not items:
        raise doc.error(
            node, "'programs' in spec is empty",
            hint="list at least one program, e.g. "
            "- {name: x, path: file://./x.bpf.c, type: ebpf_object}",
        )  # fmt: skip
    programs: dict[str, ProgramSpec] = {}
    for index, item in enumerate(items):
        program = _parse_program(doc, item, f"spec.programs[{index}]")
        if program.name in programs:
            raise doc.error(
                item, f"program name {program.name!r} is used twice "
                f"(first at line {programs[program.name].line})",
                hint="give every program its own name",
            )  # fmt: skip
        programs[program.name] = program
    return tuple(programs.values())


def _parse_program(doc: YamlDoc, node: Node, at: str) -> ProgramSpec:
    fields = doc.fields(node, at, required=("name", "path", "type"),
                        optional=("attach", "fields", *CONTROL_KEYS))
    name = doc.name(fields["name"], "name", at, what="program name")
    written = doc.string(fields["type"], "type", at)
    kinds = program_kinds()
    if written in NOT_YET:
        raise doc.error(fields["type"], f"type {written} of program {name!r}: {NOT_YET[written]}",
                        hint=f"remove the program, or use one of: {', '.join(kinds)}")
    kind = doc.choice(fields["type"], "type", at, tuple(kinds))
    attach, autoload_off = (), ()
    if "attach" in fields:
        if kind != "ebpf_object":
            raise doc.error(fields["attach"], f"'attach' in {at}: only an ebpf_object has BPF "
                            "programs to attach", hint="move it to the kernel program")
        attach, autoload_off = _parse_attach(doc, fields["attach"], f"{at}.attach")
    for key in CONTROL_KEYS:
        if key in fields and kind != "ebpf_object":
            raise doc.error(fields[key], f"'{key}' in {at}: only an ebpf_object has BPF programs "
                            "and maps to control", hint="move it to the kernel program")
    printed = _parse_printf_fields(doc, fields["fields"], f"{at}.fields", kind) \
        if "fields" in fields else ()
    forms = parse_forms(doc, fields["forms"], at) if "forms" in fields else ()
    maps = parse_maps(doc, fields["maps"], at) if "maps" in fields else ()
    cpu = parse_cpu(doc, fields["cpu"], at) if "cpu" in fields else None
    headers = doc.choice(fields["headers"], "headers", at, HEADERS) if "headers" in fields \
        else "reference"
    path_node = fields["path"]
    path = doc.string(path_node, "path", at)
    label = f"program {name!r}"

    match = _SCHEME_RE.fullmatch(path)
    if match is None:
        raise doc.error(
            path_node, f"{label}: path {path!r} has no scheme",
            hint=f"write a URL, e.g. path: file://./{path.removeprefix('./') or name}",
        )  # fmt: skip
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme not in SCHEMES:
        raise doc.error(
            path_node, f"{label}: unsupported scheme '{scheme}://' in path {path!r}",
            hint="use one of: " + ", ".join(f"{s}://" for s in SCHEMES),
        )  # fmt: skip
    if scheme != "file":
        url = urlsplit(path)
        if not url.netloc or url.path in ("", "/"):
            raise doc.error(
                path_node, f"{label}: path {path!r} names no "
                + ("bucket and key" if scheme == "s3" else "host and file"),
                hint=f"write it like {scheme}://"
                + ("bucket/key/" if scheme == "s3" else "host/path/") + f"{name}.bpf.o",
            )  # fmt: skip
        rest = url.path

    suffix_type = {suffix: k.type for k in kinds.values() for suffix in k.suffixes}
    # longest first, so that "x.bpf.c" is not taken for a user-space ".c"
    suffix = next((s for s in sorted(suffix_type, key=len, reverse=True) if rest.endswith(s)), None)
    accepted = kinds[kind].suffixes
    if suffix is None:
        raise doc.error(
            path_node, f"{label}: cannot tell from its suffix what {path!r} is; accepted: "
            f"{' '.join(s for k in kinds.values() for s in k.sources)} (sources), "
            f"{' '.join(s for k in kinds.values() for s in k.built)} (built)",
            hint=f"type {kind} takes {_or(accepted)}",
        )  # fmt: skip
    if suffix not in accepted:
        raise doc.error(
            path_node, f"{label}: type {kind} takes {_or(accepted)}, but path {path!r} "
            f"ends in {suffix} (a suffix of {suffix_type[suffix]})",
            hint=f"set type: {suffix_type[suffix]}, or point path at a {_or(accepted)} file",
        )  # fmt: skip

    local = doc.local_file(path_node, rest, label=label, shown=path) if scheme == "file" else None
    return ProgramSpec(
        name=name,
        path=path,
        type=kind,
        scheme=cast(Scheme, scheme),
        local_path=local,
        is_source=suffix in kinds[kind].sources,
        line=line_of(node),
        attach=attach,
        autoload_off=autoload_off,
        forms=forms,
        maps=maps,
        cpu=cpu, headers=headers,
        fields=printed,
    )


def _parse_printf_fields(doc: YamlDoc, node: Node, at: str, kind: str) -> tuple[str, ...]:
    """``fields: [pid, comm, rest]`` of a bpftrace_object: distinct C identifiers."""
    if kind != "bpftrace_object":
        raise doc.error(node, f"'fields' in {at.rsplit('.', 1)[0]}: only a bpftrace_object's "
                        "printed lines are split into fields",
                        hint="a kernel program's events take their fields from its event struct")
    items = doc.sequence(node, "fields", at.rsplit(".", 1)[0])
    if not items:
        raise doc.error(node, f"{at} is empty", hint="name the printed words, e.g. "
                        "fields: [pid, comm, latency_ns]")
    names: list[str] = []
    for item in items:
        name = doc.string(item, "fields", at)
        if not C_IDENT_RE.fullmatch(name):
            raise doc.error(item, f"{at}: {name!r} is not a field name (letters, digits, _)",
                            hint="use names such as pid, comm, latency_ns")
        if name in names:
            raise doc.error(item, f"{at}: field {name!r} is named twice",
                            hint="give every printed word its own name")
        names.append(name)
    return tuple(names)


def _parse_attach(doc: YamlDoc, node: Node, at: str
                  ) -> tuple[tuple[tuple[str, str, Mapping[str, Any]], ...], tuple[str, ...]]:
    """``attach: {<BPF program>: {<kind>: {options}} | {autoload: false}}``."""
    from loader.attach import attach_kinds  # the kinds register themselves on import

    kinds = attach_kinds()
    allowed = ("autoload", *kinds)
    attach, off = [], []
    for program, key_node, value in doc.entries(node, at):
        doc.c_identifier(key_node, program, at, what="BPF program name")
        entries = doc.entries(value, f"{at}.{program}")
        if len(entries) != 1:
            raise doc.error(value, f"{at}.{program} takes one of: {', '.join(allowed)}",
                            hint=f"e.g. {program}: {{perf_event: {{frequency: 99}}}}")
        kind, kind_node, options = entries[0]
        where = f"{at}.{program}.{kind}"
        if kind == "autoload":
            if doc.boolean(options, "autoload", f"{at}.{program}"):
                raise doc.error(options, f"{where}: true is what happens anyway",
                                hint="write autoload: false to keep the program out, or drop it")
            off.append(program)
            continue
        if kind not in kinds:
            raise doc.error(kind_node, f"unknown attach kind {kind!r} for {program!r}",
                            hint=did_you_mean(kind, allowed, "attach kinds"))
        attach.append((program, kind, kinds[kind].parse(doc, options, where)))
    return tuple(attach), tuple(off)


def _empty(node: Node) -> bool:
    """A key written with no value (``initfile:``), or as ``""`` or ``null``."""
    return isinstance(node, ScalarNode) and (node.tag.endswith(":null") or node.value == "")


def _parse_properties(doc: YamlDoc, node: Node) -> Properties:
    at = "spec.properties"
    fields = doc.fields(node, at, required=(), optional=("initfile", "functions"))
    initfile = None
    if "initfile" in fields and not _empty(fields["initfile"]):  # `initfile:` left empty: none
        value = doc.string(fields["initfile"], "initfile", at)
        if "://" in value:
            raise doc.error(
                fields["initfile"], f"initfile {value!r} is a URL, not a local path",
                hint="give a path relative to the manifest's folder, e.g. initfile: ./connlat.ini",
            )  # fmt: skip
        initfile = doc.local_file(fields["initfile"], value, label="initfile", shown=value)

    functions: dict[str, FunctionSpec] = {}
    hooks: dict[str, FunctionSpec] = {}  # init / pre / post: at most one each
    items = doc.sequence(fields["functions"], "functions", at) if "functions" in fields else []
    for index, item in enumerate(items):
        item_at = f"{at}.functions[{index}]"
        entry = doc.fields(item, item_at, required=("name",), optional=("type",))
        name = doc.c_identifier(entry["name"], "name", item_at, what="function name")
        kind = "default"
        if "type" in entry:
            kind = doc.choice(entry["type"], "type", item_at, FUNCTION_TYPES)
        function = FunctionSpec(name=name, type=cast(FunctionType, kind), line=line_of(item))
        if name in functions:
            raise doc.error(
                item, f"function {name!r} is listed twice (first at line {functions[name].line})",
                hint="list each function once",
            )  # fmt: skip
        if kind != "default" and kind in hooks:
            raise doc.error(
                item, f"two {kind} functions: {hooks[kind].name!r} "
                f"(line {hooks[kind].line}) and {name!r}",
                hint=f"a library has at most one {kind} function; make the other type: default",
            )  # fmt: skip
        functions[name] = function
        hooks.setdefault(kind, function)
    return Properties(initfile=initfile, functions=tuple(functions.values()))


def _flat_events(doc: YamlDoc, node: Node, channels: tuple[ChannelSpec, ...],
                 programs: tuple[ProgramSpec, ...], properties: Properties
                 ) -> tuple[ChannelSpec, ...]:
    """``spec.events:`` as the talk's manifests write it, beside ``channels:`` instead of under
    one: it belongs to the one channel that carries events. With none or several, or when that
    channel has its own ``events:``, where it goes is the writer's to say."""
    carrying = [c for c in channels if output_kinds()[c.type].events]
    if len(carrying) != 1 or carrying[0].events:
        names = ", ".join(c.name for c in carrying) or "none"
        why = ("its channel has its own events: too" if len(carrying) == 1 else
               f"this manifest has {len(carrying)} channels that carry events ({names})")
        raise doc.error(node, f"'events' in spec must belong to one channel, and {why}",
                        hint="move it under the channel it routes: spec.channels.<name>.events")
    target = carrying[0]
    items = doc.sequence(node, "events", "spec")
    routes = tuple(_parse_route(doc, item, f"spec.events[{index}]", programs, properties)
                   for index, item in enumerate(items))
    return tuple(replace(c, events=routes) if c is target else c for c in channels)


def _parse_channels(
    doc: YamlDoc, node: Node, programs: tuple[ProgramSpec, ...], properties: Properties
) -> tuple[ChannelSpec, ...]:
    channels = []
    for name, key_node, value in doc.entries(node, "spec.channels"):
        if not C_IDENT_RE.fullmatch(name):
            raise doc.error(
                key_node, f"channel name {name!r} is not a C identifier",
                hint="use the map's name as declared in the kernel source, e.g. "
                + (re.sub(r"\W", "_", name).lstrip("0123456789") or "events"),
            )  # fmt: skip
        at = f"spec.channels.{name}"
        kinds = output_kinds()
        written = dict((k, v) for k, _, v in doc.entries(value, at))
        if "type" not in written:
            raise doc.error(value, f"'type' is missing in {at}",
                            hint=f"add 'type:', one of: {', '.join(kinds)}")
        kind = doc.choice(written["type"], "type", at, tuple(kinds))
        output = kinds[kind]
        fields = doc.fields(value, at, required=("type",), optional=COMMON_KEYS[1:] + output.options)
        if "events" in fields and not output.events:
            raise doc.error(fields["events"], f"a {kind} channel carries no events for processors",
                            hint="drop 'events:'; its records go to the sinks")
        options = output.parse(doc, {k: fields[k] for k in output.options if k in fields}, at)
        event = None
        if "event" in fields:
            event = doc.c_identifier(fields["event"], "event", at, what="event struct name")
        items = doc.sequence(fields["events"], "events", at) if "events" in fields else []
        routes = tuple(
            _parse_route(doc, item, f"{at}.events[{index}]", programs, properties)
            for index, item in enumerate(items)
        )
        declared = parse_fields(doc, fields["fields"], at) if "fields" in fields else ()
        decoders = _parse_decoders(doc, fields["decoders"], at) if "decoders" in fields else ()
        unions = _parse_unions(doc, fields["unions"], at) if "unions" in fields else ()
        channels.append(
            ChannelSpec(
                name=name, type=kind, event=event, events=routes,
                line=line_of(key_node), fields=declared, decoders=decoders, unions=unions,
                options=options,
            )  # fmt: skip
        )
    return tuple(channels)


_FIELD_PATH_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\])*")


def _parse_decoders(doc: YamlDoc, node: Node, at: str) -> tuple[tuple[str, str], ...]:
    """``decoders: {field: decoder}``: how a field of the event (or map key/value) reads."""
    where = f"{at}.decoders"
    out = []
    for path, key_node, value in doc.entries(node, where):
        if not _FIELD_PATH_RE.fullmatch(path):
            raise doc.error(key_node, f"{path!r} in {where} is not a field path",
                            hint="name a member as C does: reason, inner.addr, counts[2]")
        spec = doc.string(value, path, where)
        kind, _, arg = spec.partition(":")
        if kind not in DECODER_KINDS or (kind == "enum") != bool(arg):
            raise doc.error(value, f"unknown decoder {spec!r} for {path!r} in {where}",
                            hint=did_you_mean(kind, DECODER_KINDS, "decoders") +
                            " (enum takes the enum's name: enum:skb_drop_reason)")
        out.append((path, spec))
    return tuple(out)


def _parse_unions(doc: YamlDoc, node: Node, at: str) -> tuple[tuple[str, UnionChoice], ...]:
    """``unions: {field: {by: member, cases: {value: member}}}``."""
    where = f"{at}.unions"
    out = []
    for path, key_node, value in doc.entries(node, where):
        if not _FIELD_PATH_RE.fullmatch(path):
            raise doc.error(key_node, f"{path!r} in {where} is not a field path",
                            hint="name the union member as C does, e.g. u or args.data")
        spec = doc.fields(value, f"{where}.{path}", required=("by", "cases"))
        by = doc.c_identifier(spec["by"], "by", f"{where}.{path}", what="discriminator")
        cases = []
        for case, _, member in doc.entries(spec["cases"], f"{where}.{path}.cases"):
            number: int | str = int(case, 0) if re.fullmatch(r"-?(0x[0-9a-fA-F]+|\d+)", case) else case
            cases.append((number, doc.c_identifier(member, str(case), f"{where}.{path}.cases",
                                                   what="union member")))
        out.append((path, UnionChoice(by=by, cases=tuple(cases))))
    return tuple(out)


def _parse_route(
    doc: YamlDoc, node: Node, at: str, programs: tuple[ProgramSpec, ...], properties: Properties
) -> EventRoute:
    fields = doc.fields(
        node, at, required=("name",),
        optional=("hash", "target_processor", "storage", "workers"),
    )  # fmt: skip
    name = doc.string(fields["name"], "name", at)
    by_name = {program.name: program for program in programs}
    consumers = [program.name for program in programs if program.type == "user_so"]
    if name not in consumers:
        if name in by_name:
            message = (
                f"{at} names program {name!r}, which is of type {by_name[name].type}; "
                "events go to a user_so program"
            )
        else:
            message = f"{at} names {name!r}, which is no user_so program in spec.programs"
        hint = (
            did_you_mean(name, consumers, "user_so programs")
            if consumers
            else "add a program with type: user_so, or drop 'events' to decode events by default"
        )
        raise doc.error(fields["name"], message, hint=hint)

    processor = None
    if "target_processor" in fields:
        processor_node = fields["target_processor"]
        processor = doc.string(processor_node, "target_processor", at)
        functions = {function.name: function for function in properties.functions}
        if processor not in functions:
            raise doc.error(
                processor_node,
                f"target_processor {processor!r} in {at} "
                "is not a function in spec.properties.functions",
                hint=did_you_mean(processor, list(functions), "declared functions")
                if functions
                else f"declare it: functions: [{{name: {processor}, type: default}}] "
                "in spec.properties",
            )  # fmt: skip
        if functions[processor].type != "default":
            raise doc.error(
                processor_node,
                f"target_processor {processor!r} in {at} "
                f"is the {functions[processor].type} function",
                hint="name a function of type default: it is the one called per event",
            )  # fmt: skip

    storage = StorageSpec()
    if "storage" in fields:
        storage_at = f"{at}.storage"
        sinks = doc.fields(
            fields["storage"], storage_at, required=(), optional=("kafka", "file", "tsdb")
        )
        on: dict[str, bool | None] = {"kafka": None, "file": None, "tsdb": None}
        named: dict[str, str | None] = {"kafka": None, "file": None}
        for key, value in sinks.items():
            option = "topic" if key == "kafka" else "name"
            is_bool = isinstance(value, ScalarNode) and value.tag == TAG + "bool"
            if key != "tsdb" and not is_bool and not isinstance(value, MappingNode):
                raise doc.error(
                    value, f"{doc.label(key, storage_at)} must be true, false or a mapping, "
                    f"got {kind_of(value)}",
                    hint=f"write {key}: true, {key}: false or {key}: {{{option}: ...}}",
                )  # fmt: skip
            if key == "tsdb" or is_bool:
                on[key] = doc.boolean(value, key, storage_at)
                continue
            # A manifest is untrusted: it names a topic, or a plain file name that is written in
            # the global file sink's folder, never a path of its own choosing.
            option_at = f"{storage_at}.{key}"
            option_node = doc.fields(value, option_at, required=(option,))[option]
            text = doc.string(option_node, option, option_at)
            if key == "kafka" and not re.fullmatch(r"[A-Za-z0-9._{}-]{1,249}", text):
                raise doc.error(
                    option_node, f"Kafka topic {text!r} in {option_at} is not a valid topic name",
                    hint="use letters, digits, '.', '_', '-' and the fields {program}, {channel} "
                    "and {stream}, e.g. topic: bpfdepot.{program}.connect",
                )  # fmt: skip
            if key == "file" and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,254}", text):
                plain = re.sub(r"[^A-Za-z0-9._-]+", "_", text.rsplit("/", 1)[-1]).lstrip("._-")
                raise doc.error(
                    option_node, f"file name {text!r} in {option_at} is not a plain file name: "
                    "per-event files are written in the folder of the global file sink, so no "
                    "'/' and no leading '.'",
                    hint=f"e.g. name: {plain or 'events.jsonl'}; the folder is set by "
                    "storage.file.path in the config file or by BPFDEPOT_FILE",
                )  # fmt: skip
            on[key], named[key] = True, text
        storage = StorageSpec(
            kafka=on["kafka"], kafka_topic=named["kafka"], file=on["file"],
            file_name=named["file"], tsdb=on["tsdb"],
        )  # fmt: skip
    workers = None
    if "workers" in fields:
        node_w = fields["workers"]
        if not (isinstance(node_w, ScalarNode) and node_w.tag == TAG + "int"
                and 1 <= int(node_w.value) <= MAX_WORKERS):
            raise doc.error(
                node_w, f"workers in {at} must be a number from 1 to {MAX_WORKERS}, got "
                f"{node_w.value if isinstance(node_w, ScalarNode) else kind_of(node_w)}",
                hint="processes running the processor; with hash, each key stays on one",
            )  # fmt: skip
        workers = int(node_w.value)
    return EventRoute(
        name=name,
        hash=doc.string(fields["hash"], "hash", at) if "hash" in fields else None,
        target_processor=processor,
        storage=storage,
        workers=workers,
        line=line_of(node),
    )


def _or(suffixes: tuple[str, ...]) -> str:
    return suffixes[0] if len(suffixes) == 1 else f"{', '.join(suffixes[:-1])} or {suffixes[-1]}"
