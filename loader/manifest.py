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
    """Per-event overrides of the global sink settings; None keeps the global setting."""

    kafka: bool | None = None
    file: bool | None = None
    tsdb: bool | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class EventRoute:
    """One consumer of a channel: a user_so program, its processor function and sinks."""

    name: str
    hash: str | None
    target_processor: str | None
    storage: StorageSpec
    line: int


@dataclass(frozen=True, kw_only=True, slots=True)
class ChannelSpec:
    """A kernel map that carries events to user space, and where its events go."""

    name: str  # the map name in the kernel object
    type: ChannelType
    event: str | None  # the event struct's name in the object's BTF
    events: tuple[EventRoute, ...]  # empty: events are decoded by default
    line: int


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
        fields = doc.fields(value, at, required=("type",), optional=("event", "events"))
        kind = doc.choice(fields["type"], "type", at, CHANNEL_TYPES)
        event = None
        if "event" in fields:
            event = doc.c_identifier(fields["event"], "event", at, what="event struct name")
        items = doc.sequence(fields["events"], "events", at) if "events" in fields else []
        routes = tuple(
            _parse_route(doc, item, f"{at}.events[{index}]", programs, properties)
            for index, item in enumerate(items)
        )
        channels.append(
            ChannelSpec(
                name=name, type=cast(ChannelType, kind), event=event, events=routes,
                line=_line(key_node),
            )  # fmt: skip
        )
    return tuple(channels)


def _parse_route(
    doc: _Doc, node: Node, at: str, programs: tuple[ProgramSpec, ...], properties: Properties
) -> EventRoute:
    fields = doc.fields(
        node, at, required=("name",), optional=("hash", "target_processor", "storage")
    )
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
        storage = StorageSpec(
            **{key: doc.boolean(value, key, storage_at) for key, value in sinks.items()}
        )
    return EventRoute(
        name=name,
        hash=doc.string(fields["hash"], "hash", at) if "hash" in fields else None,
        target_processor=processor,
        storage=storage,
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
