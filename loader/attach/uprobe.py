"""``uprobe`` / ``uretprobe``: a SEC("uprobe") program on a function of a binary or library.

    attach:
      on_call: {uprobe: {binary: /usr/bin/app, function: handle_request}}
      on_return: {uretprobe: {binary: libssl.so.3, function: SSL_read_ex, pid: 4242}}

``binary`` is an absolute path or a library name (no '/'): with ``pid`` the library that process
has mapped (/proc/PID/maps, through /proc/PID/root so a container's own copy is the one probed),
else the one ld.so.cache names for this arch (``ldconfig -p``). ``function`` is a symbol name
(libbpf 1.1's bpf_program__attach_uprobe_opts finds its offset) or ``offset`` a file offset;
``pid`` limits it to one process (default: every process). A program whose SEC() names its
target in full (``SEC("uprobe//bin/bash:readline")``) still auto-attaches without this.

``follow: true`` (a library name with ``function``, no ``pid``) also probes every other file of
that name any process maps, found in /proc/PID/maps at start and while the run lasts (a
private copy through LD_LIBRARY_PATH, a container's own, one dlopen()ed later): see
loader/attach/uprobe_follow.py. With ``follow`` a library that ld.so.cache does not list is
not an error, since a process may load it later: the run says so on stderr and waits for it.
"""

from __future__ import annotations

import errno
import os
import platform
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from yaml.nodes import Node, ScalarNode

from loader.attach import AttachKind, Link, register
from loader.attach.uprobe_follow import FollowLink, follow
from loader.errors import LoadError, ManifestError
from loader.libbpf.attach import attach_uprobe
from loader.libbpf.core import BpfObject
from loader.model.yamldoc import TAG, YamlDoc, kind_of

KEYS = ("binary", "function", "offset", "pid", "follow")
_SYMBOL_RE = re.compile(r"[A-Za-z_.$][A-Za-z0-9_.$@]*")
_LIBRARY_RE = re.compile(r"[A-Za-z0-9_+.-]+")
# ldconfig -p flags per machine: the cache holds every arch's libraries side by side.
_CACHE_ARCH = {"x86_64": "x86-64", "aarch64": "AArch64", "ppc64le": "64bit", "s390x": "64bit",
               "riscv64": "64bit"}


def parse(doc: YamlDoc, node: Node, at: str) -> Mapping[str, Any]:
    """``{binary, function | offset, pid}``, plus ``follow: True`` when asked."""
    fields = doc.fields(node, at, required=("binary",), optional=KEYS[1:])
    binary = doc.string(fields["binary"], "binary", at)
    if not (binary.startswith("/") or _LIBRARY_RE.fullmatch(binary)):
        raise doc.error(fields["binary"], f"binary {binary!r} in {at} is neither an absolute "
                        "path nor a library name",
                        hint="write an absolute path (/usr/bin/app) or a library name found "
                             "through ld.so.cache (libc.so.6)")
    if ("function" in fields) == ("offset" in fields):
        raise doc.error(node, f"{at} needs exactly one of function and offset",
                        hint="function: SYMBOL (its offset is looked up in the binary), or "
                             "offset: N (a file offset)")
    function, offset = None, 0
    if "function" in fields:
        function = doc.string(fields["function"], "function", at)
        if not _SYMBOL_RE.fullmatch(function):
            raise doc.error(fields["function"], f"function {function!r} in {at} is not a symbol "
                            "name", hint="the name as `nm -D BINARY` prints it, e.g. getaddrinfo")
    else:
        offset = _integer(doc, fields["offset"], "offset", at, low=0)
    pid = _integer(doc, fields["pid"], "pid", at, low=1) if "pid" in fields else -1
    follow = False
    if "follow" in fields:
        node_f = fields["follow"]
        if not (isinstance(node_f, ScalarNode) and node_f.tag == TAG + "bool"):
            shown = node_f.value if isinstance(node_f, ScalarNode) else kind_of(node_f)
            raise doc.error(node_f, f"'follow' in {at} must be true or false, got {shown}",
                            hint="follow: true probes every copy of the library processes map")
        follow = node_f.value.lower() in ("true", "yes", "on")
    if follow and (binary.startswith("/") or function is None or pid > 0):
        raise doc.error(fields["follow"], f"follow in {at} needs a library name (no '/'), a "
                        "function and no pid",
                        hint="follow: true finds other files of a library by its name and the "
                             "function by its symbol, in every process; drop pid/offset, or "
                             "drop follow")
    options = {"binary": binary, "function": function, "offset": offset, "pid": pid}
    return {**options, "follow": True} if follow else options


def _integer(doc: YamlDoc, node: Node, key: str, at: str, *, low: int) -> int:
    if isinstance(node, ScalarNode) and node.tag == TAG + "int" and int(node.value, 0) >= low:
        return int(node.value, 0)
    shown = node.value if isinstance(node, ScalarNode) else kind_of(node)
    raise doc.error(node, f"{key!r} in {at} must be an integer from {low}, got {shown}",
                    hint=f"e.g. {key}: {'0x1139' if key == 'offset' else 1234}")


def library_in_cache(name: str, ldconfig_output: str, machine: str | None = None) -> str | None:
    """The path ld.so.cache gives ``name`` for this machine's arch (``ldconfig -p`` lines)."""
    arch = _CACHE_ARCH.get(machine or platform.machine(), "")
    fallback = None
    for line in ldconfig_output.splitlines():
        match = re.match(r"\s+(\S+) \(([^)]*)\) => (\S+)", line)
        if not match or match[1] != name:
            continue
        if arch and arch in match[2].split(","):
            return match[3]
        fallback = fallback or (match[3] if not arch else None)
    return fallback


def library_in_maps(name: str, maps_text: str) -> str | None:
    """The path of the file named ``name`` (or ``name``.*) that a process has mapped."""
    for line in maps_text.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].startswith("/"):
            base = parts[5].rsplit("/", 1)[-1]
            if base == name or base.startswith(name + "."):
                return parts[5]
    return None


def resolve_binary(binary: str, pid: int, *, missing_ok: bool = False) -> str | None:
    """The file to probe; LoadError naming the binary when there is none (None instead for a
    library ld.so.cache lacks when ``missing_ok``)."""
    if binary.startswith("/"):
        if not Path(binary).is_file():
            raise LoadError(f"uprobe binary {binary} does not exist",
                            hint="give the absolute path of an executable or library on this node")
        return binary
    if pid > 0:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError as exc:
            raise LoadError(f"cannot read the libraries of pid {pid} for uprobe binary {binary}: "
                            f"{exc.strerror}", hint="is the process running?") from None
        found = library_in_maps(binary, maps)
        if found is None:
            raise LoadError(f"pid {pid} has no library {binary} mapped",
                            hint=f"`grep {binary} /proc/{pid}/maps` shows what it has loaded")
        root = f"/proc/{pid}/root"  # the process's own file, also inside a container
        return root + found if os.path.isdir(root) else found
    done = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/sbin:/sbin:/usr/bin:/bin", "LC_ALL": "C"})
    found = library_in_cache(binary, done.stdout)
    if found is None and not missing_ok:
        raise LoadError(f"uprobe binary {binary} is not in ld.so.cache",
                        hint="give its absolute path, or the library's exact file name as "
                             "`ldconfig -p` lists it (e.g. libc.so.6)")
    return found


def _attach(obj: BpfObject, program: str, options: Mapping[str, Any], retprobe: bool) -> list[Link]:
    kind = "uretprobe" if retprobe else "uprobe"
    section = next((p.section for p in obj.programs() if p.name == program), "")
    other = "uprobe" if retprobe else "uretprobe"
    if section.split("/", 1)[0].removesuffix(".s") == other:
        raise ManifestError(f"program '{program}' of '{obj.label}' is SEC(\"{section}\") but the "
                            f"manifest attaches it as {kind}",
                            hint=f"write {other}: {{...}} for it in attach:")
    if options.get("follow"):
        return [_follow(obj, program, options, retprobe)]
    binary = resolve_binary(options["binary"], options["pid"])
    return [_attach_one(obj, program, options, retprobe, binary)]


def _follow(obj: BpfObject, program: str, options: Mapping[str, Any], retprobe: bool) -> FollowLink:
    """The ld.so.cache file (when listed) now, then every other file of the name, as found."""
    name = options["binary"]
    binary = resolve_binary(name, -1, missing_ok=True)
    first = None
    if binary is not None:
        st = os.stat(binary)
        first = ((st.st_dev, st.st_ino), _attach_one(obj, program, options, retprobe, binary))
    else:
        print(f"bpfdepot: {obj.label}:{program}: {name} is not in ld.so.cache; "
              "following the processes that map it", file=sys.stderr, flush=True)
    kind = "uretprobe" if retprobe else "uprobe"
    return follow(name, f"{kind} {obj.label}:{program}",
                  lambda path: _attach_one(obj, program, options, retprobe, path), first)


def _attach_one(obj: BpfObject, program: str, options: Mapping[str, Any], retprobe: bool,
                binary: str) -> Link:
    kind = "uretprobe" if retprobe else "uprobe"
    function = options["function"]
    link, code, log = attach_uprobe(obj, program, pid=options["pid"], binary=binary,
                                    function=function, offset=options["offset"],
                                    retprobe=retprobe)
    if link is not None:
        return link
    where = f"function {function}" if function else f"offset {options['offset']:#x}"
    if code == errno.ENOENT and function:
        raise LoadError(f"cannot attach {kind} '{program}' of '{obj.label}': function {function} "
                        f"is not in {binary}", detail=log,
                        hint=f"`nm -D {binary}` (or `nm`) lists its symbols; check the spelling")
    raise LoadError(f"cannot attach {kind} '{program}' of '{obj.label}' to {where} of {binary}: "
                    f"{os.strerror(code) if code else 'unknown error'}", detail=log,
                    hint="is the program a SEC(\"uprobe\") program, and the offset inside a "
                         "function?")


def attach_entry(obj: BpfObject, program: str, options: Mapping[str, Any]) -> list[Link]:
    return _attach(obj, program, options, retprobe=False)


def attach_return(obj: BpfObject, program: str, options: Mapping[str, Any]) -> list[Link]:
    return _attach(obj, program, options, retprobe=True)


register(AttachKind(key="uprobe", summary="a function of a binary or library, at entry",
                    sections=("uprobe", "uprobe.s"), parse=parse, attach=attach_entry))
register(AttachKind(key="uretprobe", summary="a function of a binary or library, at return",
                    sections=("uretprobe", "uretprobe.s"), parse=parse, attach=attach_return))
