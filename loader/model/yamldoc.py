"""A strict, line-numbered YAML reader shared by manifests and config files.

``YamlDoc`` walks the *composed* YAML node tree instead of ``yaml.safe_load`` so that every error
names its file and line, and duplicate keys (which PyYAML silently collapses) are caught. Errors
are raised as the doc's ``error_class`` (ManifestError unless the caller says otherwise), and
messages name the file as its ``what`` ("manifest", "config file").
"""

from __future__ import annotations

import difflib
import os
import os.path
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from loader.errors import BpfDepotError, ManifestError

TAG = "tag:yaml.org,2002:"
_KINDS = {
    "str": "a string", "int": "a number", "float": "a number", "bool": "a boolean",
    "null": "nothing", "timestamp": "a date", "binary": "binary data",
}  # fmt: skip

# Names end up in artifact keys and file names: lowercase, no '/', '.', or leading '-'.
# A manifest or config file is a page of YAML: anything larger is a mistake or an attack (a 200 MB
# comment took over a minute and 640 MB to parse).
MAX_YAML_BYTES = 1 << 20
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
C_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, kw_only=True, slots=True)
class YamlDoc:
    """The file being parsed: where errors point, what they raise, what paths resolve against."""

    display: str  # the path as the caller gave it, so messages read like a compiler's
    root: Path  # the file's real folder
    error_class: type[BpfDepotError] = ManifestError  # what every error here is raised as
    what: str = "manifest"  # how messages name the file: "the manifest is empty"

    def error(self, node: Node, message: str, hint: str = "") -> BpfDepotError:
        return self.error_class(f"{self.display}:{line_of(node)}: {message}", hint=hint)

    def label(self, key: str, at: str = "") -> str:
        """How a message names a key: "'name' in spec", "'spec'", or the whole file for ''."""
        if not key:
            return f"the {self.what}"
        return f"{key!r} in {at}" if at else repr(key)

    def compose(self, raw: bytes, *, empty_hint: str) -> Node:
        """The document's root node; malformed text is an error at its line."""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            line = raw.count(b"\n", 0, err.start) + 1
            raise self.error_class(
                f"{self.display}:{line}: not valid UTF-8 ({err.reason})",
                hint=f"save the {self.what} as UTF-8",
            ) from None
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except RecursionError:  # PyYAML composes nested collections recursively
            raise self.error_class(
                f"{self.display}: not valid YAML: nested too deeply for a {self.what}",
                hint="a manifest is a few levels deep: look for a long run of '[' or '{' "
                "or of indented '- ' items",
            ) from None
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark or err.context_mark
            line = mark.line + 1 if mark else 1
            problem = err.problem or err.context or "unreadable"
            hint = _yaml_hint(problem, line, self.what)
            if err.problem and err.context_mark and str(err.context).startswith("while"):
                hint += f" ({err.context} that starts at line {err.context_mark.line + 1})"
            raise self.error_class(
                f"{self.display}:{line}: not valid YAML: {problem}", hint=hint
            ) from None
        except yaml.reader.ReaderError as err:  # a control character
            line = text.count("\n", 0, err.position) + 1
            raise self.error_class(
                f"{self.display}:{line}: not valid YAML: control character U+{err.character:04X}",
                hint="remove the control character",
            ) from None
        except (yaml.YAMLError, ValueError, MemoryError) as err:  # every other parser failure
            raise self.error_class(
                f"{self.display}: not valid YAML: {type(err).__name__}: {err}".rstrip(": "),
                hint=f"check the {self.what} near where it stops making sense",
            ) from None
        if node is None:
            raise self.error_class(f"{self.display}:1: the {self.what} is empty", hint=empty_hint)
        return node

    def entries(self, node: Node, at: str) -> list[tuple[str, ScalarNode, Node]]:
        """(key, key node, value node) of a mapping, in order; a repeated key is an error."""
        if not isinstance(node, MappingNode):
            raise self.error(
                node, f"{self.label(at)} must be a mapping, got {kind_of(node)}",
                hint="write it as indented 'key: value' lines",
            )  # fmt: skip
        where = f" in {at}" if at else ""
        seen: dict[str, ScalarNode] = {}
        entries = []
        for key_node, value in node.value:
            if not isinstance(key_node, ScalarNode):
                raise self.error(
                    key_node, f"a key{where} is {kind_of(key_node)}", hint="keys are plain names"
                )
            key = key_node.value
            if key in seen:
                raise self.error(
                    key_node, f"duplicate key {key!r}{where} (first at line {line_of(seen[key])})",
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
                    hint=did_you_mean(key, allowed, "allowed keys here"),
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
                node, f"{self.label(key, at)} must be a list, got {kind_of(node)}",
                hint="start each item with '- ' on its own line",
            )  # fmt: skip
        return list(node.value)

    def string(self, node: Node, key: str, at: str) -> str:
        if isinstance(node, ScalarNode) and node.tag == TAG + "str":
            return str(node.value)
        if isinstance(node, ScalarNode) and node.tag == TAG + "null":
            hint = f"give {key!r} a value, or delete the line"
        elif isinstance(node, ScalarNode):
            hint = f'quote it: {key}: "{node.value}"'
        else:
            hint = f'write a single value, e.g. {key}: "..."'
        raise self.error(
            node, f"{self.label(key, at)} must be a string, got {kind_of(node)}", hint=hint
        )

    def boolean(self, node: Node, key: str, at: str) -> bool:
        if isinstance(node, ScalarNode) and node.tag == TAG + "bool":
            return bool(yaml.constructor.SafeConstructor.bool_values[node.value.lower()])
        raise self.error(
            node, f"{self.label(key, at)} must be true or false, got {kind_of(node)}",
            hint=f"write {key}: true or {key}: false, unquoted",
        )  # fmt: skip

    def choice(self, node: Node, key: str, at: str, choices: tuple[str, ...]) -> str:
        value = self.string(node, key, at)
        if value not in choices:
            raise self.error(
                node, f"unknown {key} {value!r}{f' in {at}' if at else ''}; "
                f"expected one of: {', '.join(choices)}",
                hint=did_you_mean(value, choices, "allowed"),
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
        if not C_IDENT_RE.fullmatch(value):
            raise self.error(
                node, f"{what} {value!r} is not a C identifier",
                hint="use the name exactly as declared in the source: letters, digits and '_'",
            )  # fmt: skip
        return value

    def local_file(self, node: Node, written: str, *, label: str, shown: str) -> Path:
        """The real path of a file named relative to the file's folder; it must stay inside."""
        lexical = Path(os.path.normpath(self.root / written))  # an absolute `written` replaces root
        if not lexical.is_relative_to(self.root):
            raise self.error(
                node, f"{label}: {shown!r} points outside the {self.what}'s folder {self.root}",
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
                node, f"{label}: {shown!r} is a link to {real}, outside the {self.what}'s folder "
                f"{self.root}",
                hint="copy the file into the bundle folder instead of linking to it",
            )  # fmt: skip
        if not real.is_file():
            raise self.error(node, f"{label}: {real} is not a regular file", hint="name a file")
        return real


def read_bounded(path: Path, *, what: str, error_class: type[BpfDepotError],
                 hint: str, limit: int = MAX_YAML_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes. A FIFO, a device or /dev/zero is
    refused before a byte is read (opened non-blocking, so a FIFO cannot hang us), and a file
    that grows while read is cut at ``limit`` + 1 and refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise error_class(f"{path}: cannot read the {what}: {err.strerror}", hint=hint) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise error_class(f"{path}: the {what} is not a regular file ({_file_kind(st.st_mode)})",
                          hint=f"give the path of the {what} itself")
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1) if st.st_size <= limit else b""
        if st.st_size > limit or len(data) > limit:
            size = max(st.st_size, len(data))
            raise error_class(
                f"{path}: the {what} is {size:,} bytes, over the limit of {limit:,}",
                hint=f"a {what} is a page of YAML: move data out of it", )
    return data


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a file"


def line_of(node: Node) -> int:
    """The 1-based line a node starts on."""
    return int(node.start_mark.line) + 1  # marks are 0-based


def kind_of(node: Node) -> str:
    """How a value reads to a human: 'a number', 'a list', ..."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    tag = str(node.tag)
    if tag.startswith(TAG):
        return _KINDS.get(tag.removeprefix(TAG), f"a {tag.removeprefix(TAG)} value")
    return f"a value tagged {tag}"


def did_you_mean(word: str, choices: list[str] | tuple[str, ...], known: str) -> str:
    """The closest of ``choices`` to ``word``, else all of them after ``known``."""
    close = difflib.get_close_matches(word, choices, n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    return f"{known}: {', '.join(choices)}"


def _yaml_hint(problem: str, line: int, what: str) -> str:
    if "'\\t'" in problem:
        return f"YAML does not allow tabs for indentation: use spaces near line {line}"
    if "another document" in problem:
        return f"a {what} is one YAML document: remove the '---' at line {line}"
    if "mapping values are not allowed" in problem:
        return f"check indentation near line {line}, and quote values that contain ': '"
    if "undefined alias" in problem:
        return f"define the anchor (&name) before line {line} uses it (*name)"
    return f"check indentation and quoting near line {line}"
