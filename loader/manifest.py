"""The manifest model: one YAML file naming a bundle's programs, properties and channels.

``parse_manifest`` walks the *composed* YAML node tree instead of ``yaml.safe_load`` so that every
error names its file and line, and duplicate keys (which PyYAML silently collapses) are caught.
A manifest is untrusted input: ``file://`` paths must stay inside the manifest's folder, also
after symlinks are resolved. The result is a tree of frozen dataclasses, checked across sections
(event routes name ``user_so`` programs and declared functions).
"""

from __future__ import annotations

import difflib
import hashlib
import os.path
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast, get_args
from urllib.parse import urlsplit

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from loader.errors import ManifestError

ProgramType = Literal["ebpf_object", "user_so", "bpftrace_object"]
ChannelType = Literal["ring_buffer", "perf_buffer"]
FunctionType = Literal["default", "init", "pre", "post"]
Scheme = Literal["file", "http", "https", "s3"]

PROGRAM_TYPES: tuple[str, ...] = get_args(ProgramType)
CHANNEL_TYPES: tuple[str, ...] = get_args(ChannelType)
FUNCTION_TYPES: tuple[str, ...] = get_args(FunctionType)
SCHEMES: tuple[str, ...] = get_args(Scheme)
MANIFEST_NAMES = ("manifest.yaml", "manifest.yml")
MAX_WORKERS = 64

# Longest first, so that "x.bpf.c" is not taken for a user-space ".c".
_SUFFIXES = (".bpf.c", ".bpf.o", ".bt", ".c", ".go", ".o", ".so")
_SOURCE_SUFFIXES = frozenset({".bpf.c", ".bt", ".c", ".go"})
_TYPE_SUFFIXES: dict[str, tuple[str, ...]] = {
    "ebpf_object": (".bpf.c", ".bpf.o", ".o"),
    "user_so": (".c", ".go", ".so"),
    "bpftrace_object": (".bt",),
}
_SUFFIX_TYPE = {suffix: kind for kind, suffixes in _TYPE_SUFFIXES.items() for suffix in suffixes}

# Names end up in artifact keys and file names: lowercase, no '/', '.', or leading '-'.
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_C_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", re.DOTALL)

_TAG = "tag:yaml.org,2002:"
_KINDS = {
    "str": "a string", "int": "a number", "float": "a number", "bool": "a boolean",
    "null": "nothing", "timestamp": "a date", "binary": "binary data",
}  # fmt: skip


@dataclass(frozen=True, kw_only=True, slots=True)
class ProgramSpec:
    """One program of the bundle: a kernel object, a user-space processor or a bpftrace file."""

    name: str
    path: str  # as written, e.g. "file://./tcp_connlat.bpf.c"
    type: ProgramType
    scheme: Scheme
    local_path: Path | None  # file:// only: the real absolute path, inside the manifest's folder
    is_source: bool  # .bpf.c .bt .c .go; False for the built .bpf.o .o .so
    line: int


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
    ``loader.storage.effective`` combines these with the global settings.
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


FieldDecoder = Literal["int", "string", "hex", "ipv4", "ipv6", "ip", "bool", "float", "be"]
FIELD_DECODERS: tuple[str, ...] = get_args(FieldDecoder)
FIELD_TYPES = ("u8", "u16", "u32", "u64", "s8", "s16", "s32", "s64", "be16", "be32", "be64",
               "bool", "char[N]", "u8[N]", "f32", "f64")  # fmt: skip
MAX_FIELD_ARRAY = 4096  # N of char[N] / u8[N]
_FIELD_TYPE_RE = re.compile(r"[us](?:8|16|32|64)|be(?:16|32|64)|f(?:32|64)|bool|(char|u8)\[(\d+)\]")
# By base type, the decoders it takes; the first is the default.
_FIELD_DECODERS: dict[str, tuple[FieldDecoder, ...]] = {
    "u": ("int", "be", "bool", "hex", "ipv4"), "s": ("int", "bool", "hex"),
    "be": ("be", "hex", "ipv4"), "bool": ("bool", "int", "hex"), "f": ("float", "hex"),
    "char": ("string", "hex"), "bytes": ("hex", "string", "ipv4", "ipv6", "ip"),
}  # fmt: skip
_DECODER_BYTES = {"ipv4": 4, "ipv6": 16, "ip": 16}


def field_type(spelled: str) -> tuple[str, int] | None:
    """(base, size in bytes) of a declared field type: 'be32' → ('be', 4), 'u8[16]' → ('bytes', 16)."""
    match = _FIELD_TYPE_RE.fullmatch(spelled)
    if match is None:
        return None
    if match[1]:
        return ("char" if match[1] == "char" else "bytes"), int(match[2])
    if spelled == "bool":
        return "bool", 1
    base = spelled.rstrip("0123456789")
    return base, int(spelled[len(base) :]) // 8


@dataclass(frozen=True, kw_only=True, slots=True)
class FieldDecl:
    """One event field a channel declares; the object's BTF must agree with it."""

    name: str  # a member of the event struct
    type: str  # one of FIELD_TYPES with N filled in, e.g. u32, be16, char[16]
    offset: int | None  # bytes from the struct's start; exactly one of offset and order is set
    order: int | None  # index among the struct's members, padding (__*) members included
    decoder: FieldDecoder
    line: int

    @property
    def base(self) -> str:
        """u, s, be, bool, f, char or bytes."""
        return cast(tuple[str, int], field_type(self.type))[0]

    @property
    def size(self) -> int:
        """Bytes."""
        return cast(tuple[str, int], field_type(self.type))[1]

    @property
    def decoders(self) -> tuple[FieldDecoder, ...]:
        """The decoders this type takes, the default first."""
        size = self.size
        return tuple(d for d in _FIELD_DECODERS[self.base] if _DECODER_BYTES.get(d, size) == size)

    def decoder_problem(self) -> str:
        """Why ``decoder`` does not fit ``type``; empty when it does."""
        if self.decoder in self.decoders:
            return ""
        need = _DECODER_BYTES.get(self.decoder, self.size)
        if need != self.size:
            return f"decoder {self.decoder} needs a {need}-byte type, not {self.type}"
        return f"decoder {self.decoder} does not apply to {self.type}"

    def spelled(self) -> str:
        """As a manifest writes it, e.g. {name: sport, type: be16, offset: 4}."""
        kind = f'"{self.type}"' if "[" in self.type else self.type  # [ ] are YAML flow syntax
        where = f"offset: {self.offset}" if self.offset is not None else f"order: {self.order}"
        decoder = "" if self.decoder == self.decoders[0] else f", decoder: {self.decoder}"
        return f"{{name: {self.name}, type: {kind}, {where}{decoder}}}"


@dataclass(frozen=True, kw_only=True, slots=True)
class ChannelSpec:
    """A kernel map that carries events to user space, and where its events go."""

    name: str  # the map name in the kernel object
    type: ChannelType
    event: str | None  # the event struct's name in the object's BTF
    events: tuple[EventRoute, ...]  # empty: events are decoded by default
    line: int
    fields: tuple[FieldDecl, ...] = ()  # empty: every member of the event struct, from its BTF


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

    def program(self, name: str) -> ProgramSpec:
        """The program called ``name``; a ManifestError naming the known ones if there is none."""
        for program in self.programs:
            if program.name == name:
                return program
        known = [program.name for program in self.programs]
        raise ManifestError(
            f"{self.path}: no program {name!r} (known: {', '.join(known)})",
            hint=_did_you_mean(name, known, "known programs"),
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
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ManifestError(
            f"{path}: cannot read the manifest: {err.strerror}",
            hint="give the path of a readable manifest.yaml",
        ) from None
    real = path.resolve()
    doc = _Doc(display=str(path), root=real.parent)
    top = doc.fields(
        doc.compose(raw), "",
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
        top["spec"], "spec", required=("programs",), optional=("properties", "channels")
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
    )


def _parse_programs(doc: _Doc, node: Node) -> tuple[ProgramSpec, ...]:
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


def _parse_program(doc: _Doc, node: Node, at: str) -> ProgramSpec:
    fields = doc.fields(node, at, required=("name", "path", "type"))
    name = doc.name(fields["name"], "name", at, what="program name")
    kind = cast(ProgramType, doc.choice(fields["type"], "type", at, PROGRAM_TYPES))
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

    suffix = next((s for s in _SUFFIXES if rest.endswith(s)), None)
    accepted = _TYPE_SUFFIXES[kind]
    if suffix is None:
        raise doc.error(
            path_node, f"{label}: cannot tell from its suffix what {path!r} is; accepted: "
            ".bpf.c .bt .c .go (sources), .bpf.o .o .so (built)",
            hint=f"type {kind} takes {_or(accepted)}",
        )  # fmt: skip
    if suffix not in accepted:
        raise doc.error(
            path_node, f"{label}: type {kind} takes {_or(accepted)}, but path {path!r} "
            f"ends in {suffix} (a suffix of {_SUFFIX_TYPE[suffix]})",
            hint=f"set type: {_SUFFIX_TYPE[suffix]}, or point path at a {_or(accepted)} file",
        )  # fmt: skip

    local = doc.local_file(path_node, rest, label=label, shown=path) if scheme == "file" else None
    return ProgramSpec(
        name=name,
        path=path,
        type=kind,
        scheme=cast(Scheme, scheme),
        local_path=local,
        is_source=suffix in _SOURCE_SUFFIXES,
        line=_line(node),
    )


def _parse_properties(doc: _Doc, node: Node) -> Properties:
    at = "spec.properties"
    fields = doc.fields(node, at, required=(), optional=("initfile", "functions"))
    initfile = None
    if "initfile" in fields:
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
        function = FunctionSpec(name=name, type=cast(FunctionType, kind), line=_line(item))
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


def _parse_channels(
    doc: _Doc, node: Node, programs: tuple[ProgramSpec, ...], properties: Properties
) -> tuple[ChannelSpec, ...]:
    channels = []
    for name, key_node, value in doc.entries(node, "spec.channels"):
        if not _C_IDENT_RE.fullmatch(name):
            raise doc.error(
                key_node, f"channel name {name!r} is not a C identifier",
                hint="use the map's name as declared in the kernel source, e.g. "
                + (re.sub(r"\W", "_", name).lstrip("0123456789") or "events"),
            )  # fmt: skip
        at = f"spec.channels.{name}"
        fields = doc.fields(
            value, at, required=("type",), optional=("event", "events", "fields")
        )
        kind = doc.choice(fields["type"], "type", at, CHANNEL_TYPES)
        event = None
        if "event" in fields:
            event = doc.c_identifier(fields["event"], "event", at, what="event struct name")
        items = doc.sequence(fields["events"], "events", at) if "events" in fields else []
        routes = tuple(
            _parse_route(doc, item, f"{at}.events[{index}]", programs, properties)
            for index, item in enumerate(items)
        )
        declared = _parse_fields(doc, fields["fields"], at) if "fields" in fields else ()
        channels.append(
            ChannelSpec(
                name=name, type=cast(ChannelType, kind), event=event, events=routes,
                line=_line(key_node), fields=declared,
            )  # fmt: skip
        )
    return tuple(channels)


def _parse_fields(doc: _Doc, node: Node, at: str) -> tuple[FieldDecl, ...]:
    items = doc.sequence(node, "fields", at)
    if not items:
        raise doc.error(
            node, f"'fields' in {at} is empty",
            hint="list the event's fields, e.g. - {name: pid, type: u32, offset: 0}, "
            "or drop 'fields:' to decode every member",
        )  # fmt: skip
    declared: dict[str, FieldDecl] = {}
    for index, item in enumerate(items):
        decl = _parse_field(doc, item, f"{at}.fields[{index}]")
        if decl.name in declared:
            raise doc.error(
                item, f"field {decl.name!r} is declared twice in {at} "
                f"(first at line {declared[decl.name].line})",
                hint="declare each member once",
            )  # fmt: skip
        declared[decl.name] = decl
    return tuple(declared.values())


def _parse_field(doc: _Doc, node: Node, at: str) -> FieldDecl:
    entry = doc.fields(
        node, at, required=("name", "type"), optional=("offset", "order", "decoder")
    )
    name = doc.c_identifier(entry["name"], "name", at, what="field name")
    spelled = doc.string(entry["type"], "type", at)
    found = field_type(spelled)
    if found is None:
        raise doc.error(
            entry["type"], f"unknown type {spelled!r} for field {name!r} in {at}; "
            f"expected one of: {' '.join(FIELD_TYPES)}",
            hint=_did_you_mean(re.sub(r"\[\d+\]$", "[N]", spelled), FIELD_TYPES, "types"),
        )  # fmt: skip
    if not 1 <= found[1] <= MAX_FIELD_ARRAY:
        raise doc.error(
            entry["type"], f"type {spelled!r} of field {name!r} in {at}: "
            f"N must be 1..{MAX_FIELD_ARRAY}",
            hint="give the array's length as the struct declares it",
        )  # fmt: skip
    place = [key for key in ("offset", "order") if key in entry]
    if not place:
        raise doc.error(
            node, f"field {name!r} in {at} needs 'offset' (bytes) or 'order' (member index)",
            hint="add e.g. offset: 0",
        )  # fmt: skip
    if len(place) == 2:
        raise doc.error(
            entry["order"], f"field {name!r} in {at} has both 'offset' and 'order'",
            hint="keep one: offset (bytes from the struct's start) or order (member index)",
        )  # fmt: skip
    value = _whole(doc, entry[place[0]], place[0], at)
    decoder = _FIELD_DECODERS[found[0]][0]
    if "decoder" in entry:
        decoder = doc.choice(entry["decoder"], "decoder", at, FIELD_DECODERS)
    decl = FieldDecl(
        name=name, type=spelled, decoder=cast(FieldDecoder, decoder), line=_line(node),
        offset=value if place[0] == "offset" else None,
        order=value if place[0] == "order" else None,
    )  # fmt: skip
    if problem := decl.decoder_problem():
        raise doc.error(
            entry["decoder"], f"field {name!r} in {at}: {problem}",
            hint=f"{spelled} takes: {', '.join(decl.decoders)}",
        )  # fmt: skip
    return decl


def _whole(doc: _Doc, node: Node, key: str, at: str) -> int:
    """A YAML integer of 0 or more."""
    is_int = isinstance(node, ScalarNode) and node.tag == _TAG + "int"
    value = int(yaml.constructor.SafeConstructor().construct_yaml_int(node)) if is_int else -1
    if value >= 0:
        return value
    raise doc.error(
        node, f"{_label(key, at)} must be a whole number, 0 or more, "
        f"got {node.value if is_int else _kind(node)}",
        hint=f"e.g. {key}: 8, unquoted",
    )  # fmt: skip


def _parse_route(
    doc: _Doc, node: Node, at: str, programs: tuple[ProgramSpec, ...], properties: Properties
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
            _did_you_mean(name, consumers, "user_so programs")
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
                hint=_did_you_mean(processor, list(functions), "declared functions")
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
            is_bool = isinstance(value, ScalarNode) and value.tag == _TAG + "bool"
            if key != "tsdb" and not is_bool and not isinstance(value, MappingNode):
                raise doc.error(
                    value, f"{_label(key, storage_at)} must be true, false or a mapping, "
                    f"got {_kind(value)}",
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
        if not (isinstance(node_w, ScalarNode) and node_w.tag == _TAG + "int"
                and 1 <= int(node_w.value) <= MAX_WORKERS):
            raise doc.error(
                node_w, f"workers in {at} must be a number from 1 to {MAX_WORKERS}, got "
                f"{node_w.value if isinstance(node_w, ScalarNode) else _kind(node_w)}",
                hint="processes running the processor; with hash, each key stays on one",
            )  # fmt: skip
        workers = int(node_w.value)
    return EventRoute(
        name=name,
        hash=doc.string(fields["hash"], "hash", at) if "hash" in fields else None,
        target_processor=processor,
        storage=storage,
        workers=workers,
        line=_line(node),
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class _Doc:
    """The manifest being parsed: where errors point, and what relative paths resolve against."""

    display: str  # the path as the caller gave it, so messages read like a compiler's
    root: Path  # the manifest's real folder

    def error(self, node: Node, message: str, hint: str = "") -> ManifestError:
        return ManifestError(f"{self.display}:{_line(node)}: {message}", hint=hint)

    def compose(self, raw: bytes) -> Node:
        """The document's root node; malformed text is an error at its line."""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            line = raw.count(b"\n", 0, err.start) + 1
            raise ManifestError(
                f"{self.display}:{line}: not valid UTF-8 ({err.reason})",
                hint="save the manifest as UTF-8",
            ) from None
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark or err.context_mark
            line = mark.line + 1 if mark else 1
            problem = err.problem or err.context or "unreadable"
            hint = _yaml_hint(problem, line)
            if err.problem and err.context_mark and str(err.context).startswith("while"):
                hint += f" ({err.context} that starts at line {err.context_mark.line + 1})"
            raise ManifestError(
                f"{self.display}:{line}: not valid YAML: {problem}", hint=hint
            ) from None
        except yaml.reader.ReaderError as err:  # a control character
            line = text.count("\n", 0, err.position) + 1
            raise ManifestError(
                f"{self.display}:{line}: not valid YAML: control character U+{err.character:04X}",
                hint="remove the control character",
            ) from None
        if node is None:
            raise ManifestError(
                f"{self.display}:1: the manifest is empty",
                hint="start with: kind: ebpfprogram, name: ..., spec: {programs: [...]}",
            )
        return node

    def entries(self, node: Node, at: str) -> list[tuple[str, ScalarNode, Node]]:
        """(key, key node, value node) of a mapping, in order; a repeated key is an error."""
        if not isinstance(node, MappingNode):
            raise self.error(
                node, f"{_label(at)} must be a mapping, got {_kind(node)}",
                hint="write it as indented 'key: value' lines",
            )  # fmt: skip
        where = f" in {at}" if at else ""
        seen: dict[str, ScalarNode] = {}
        entries = []
        for key_node, value in node.value:
            if not isinstance(key_node, ScalarNode):
                raise self.error(
                    key_node, f"a key{where} is {_kind(key_node)}", hint="keys are plain names"
                )
            key = key_node.value
            if key in seen:
                raise self.error(
                    key_node, f"duplicate key {key!r}{where} (first at line {_line(seen[key])})",
                    hint="keep one of them: YAML would silently use only the last",
                )  # fmt: skip
            seen[key] = key_node
            entries.append((key, key_node, value))
        return entries

    def fields(
        self, node: Node, at: str, *, required: tuple[str, ...], optional: tuple[str, ...] = ()
    ) -> dict[str, Node]:
        """The values of a mapping with a fixed set of keys; unknown or missing keys are errors."""
        allowed = required + optional
        where = f" in {at}" if at else ""
        found: dict[str, Node] = {}
        for key, key_node, value in self.entries(node, at):
            if key not in allowed:
                raise self.error(
                    key_node, f"unknown key {key!r}{where or ' at the top level'}",
                    hint=_did_you_mean(key, allowed, "allowed keys here"),
                )  # fmt: skip
            found[key] = value
        for key in required:
            if key not in found:
                raise self.error(
                    node, f"{key!r} is missing{where}",
                    hint=f"add '{key}:' {where.strip() or 'at the top level'}",
                )  # fmt: skip
        return found

    def sequence(self, node: Node, key: str, at: str) -> list[Node]:
        if not isinstance(node, SequenceNode):
            raise self.error(
                node, f"{_label(key, at)} must be a list, got {_kind(node)}",
                hint="start each item with '- ' on its own line",
            )  # fmt: skip
        return list(node.value)

    def string(self, node: Node, key: str, at: str) -> str:
        if isinstance(node, ScalarNode) and node.tag == _TAG + "str":
            return str(node.value)
        if isinstance(node, ScalarNode) and node.tag == _TAG + "null":
            hint = f"give {key!r} a value, or delete the line"
        elif isinstance(node, ScalarNode):
            hint = f'quote it: {key}: "{node.value}"'
        else:
            hint = f'write a single value, e.g. {key}: "..."'
        raise self.error(node, f"{_label(key, at)} must be a string, got {_kind(node)}", hint=hint)

    def boolean(self, node: Node, key: str, at: str) -> bool:
        if isinstance(node, ScalarNode) and node.tag == _TAG + "bool":
            return bool(yaml.constructor.SafeConstructor.bool_values[node.value.lower()])
        raise self.error(
            node, f"{_label(key, at)} must be true or false, got {_kind(node)}",
            hint=f"write {key}: true or {key}: false, unquoted",
        )  # fmt: skip

    def choice(self, node: Node, key: str, at: str, choices: tuple[str, ...]) -> str:
        value = self.string(node, key, at)
        if value not in choices:
            raise self.error(
                node, f"unknown {key} {value!r}{f' in {at}' if at else ''}; "
                f"expected one of: {', '.join(choices)}",
                hint=_did_you_mean(value, choices, "allowed"),
            )  # fmt: skip
        return value

    def name(self, node: Node, key: str, at: str, *, what: str) -> str:
        """A bundle or program name: it becomes part of artifact keys and file names."""
        value = self.string(node, key, at)
        if not _NAME_RE.fullmatch(value):
            fixed = re.sub(r"[^a-z0-9_-]+", "_", value.lower()).strip("_-")[:64] or "my_program"
            raise self.error(
                node, f"{what} {value!r} is not valid: use up to 64 lowercase letters, "
                "digits, '_' and '-', starting with a letter or digit",
                hint=f"e.g. {key}: {fixed}",
            )  # fmt: skip
        return value

    def c_identifier(self, node: Node, key: str, at: str, *, what: str) -> str:
        value = self.string(node, key, at)
        if not _C_IDENT_RE.fullmatch(value):
            raise self.error(
                node, f"{what} {value!r} is not a C identifier",
                hint="use the name exactly as declared in the source: letters, digits and '_'",
            )  # fmt: skip
        return value

    def local_file(self, node: Node, written: str, *, label: str, shown: str) -> Path:
        """The real path of a file named relative to the manifest's folder; it must stay inside."""
        lexical = Path(os.path.normpath(self.root / written))  # an absolute `written` replaces root
        if not lexical.is_relative_to(self.root):
            raise self.error(
                node, f"{label}: {shown!r} points outside the manifest's folder {self.root}",
                hint="keep the bundle's files inside its folder and name them like file://./name",
            )  # fmt: skip
        if not lexical.exists():
            raise self.error(
                node, f"{label}: file not found: {lexical}",
                hint=f"check the path; relative {'file:// ' if label != 'initfile' else ''}"
                f"paths resolve against {self.root}",
            )  # fmt: skip
        real = lexical.resolve()
        if not real.is_relative_to(self.root):
            raise self.error(
                node, f"{label}: {shown!r} is a link to {real}, outside the manifest's folder "
                f"{self.root}",
                hint="copy the file into the bundle folder instead of linking to it",
            )  # fmt: skip
        if not real.is_file():
            raise self.error(node, f"{label}: {real} is not a regular file", hint="name a file")
        return real


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1  # marks are 0-based


def _kind(node: Node) -> str:
    """How a value reads to a human: 'a number', 'a list', ..."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    tag = str(node.tag)
    if tag.startswith(_TAG):
        return _KINDS.get(tag.removeprefix(_TAG), f"a {tag.removeprefix(_TAG)} value")
    return f"a value tagged {tag}"


def _label(key: str, at: str = "") -> str:
    if not key:
        return "the manifest"
    return f"{key!r} in {at}" if at else repr(key)


def _or(suffixes: tuple[str, ...]) -> str:
    return suffixes[0] if len(suffixes) == 1 else f"{', '.join(suffixes[:-1])} or {suffixes[-1]}"


def _did_you_mean(word: str, choices: list[str] | tuple[str, ...], known: str) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    return f"{known}: {', '.join(choices)}"


def _yaml_hint(problem: str, line: int) -> str:
    if "'\\t'" in problem:
        return f"YAML does not allow tabs for indentation: use spaces near line {line}"
    if "another document" in problem:
        return f"a manifest is one YAML document: remove the '---' at line {line}"
    if "mapping values are not allowed" in problem:
        return f"check indentation near line {line}, and quote values that contain ': '"
    if "undefined alias" in problem:
        return f"define the anchor (&name) before line {line} uses it (*name)"
    return f"check indentation and quoting near line {line}"
