"""The processor ABI (user_so): its version, its symbol names, and a static check of a ``.so``.

A processor is a shared library built against ``bpfdepot_processor.h`` (rendered by the builder
from ``templates/bpfdepot_processor.h.j2``). The loader never ``dlopen``s one in its own process:
user code runs in a separate host process, which calls ``bpfdepot_abi_version()`` before
anything else. Before that host is started, ``check_processor`` reads the library's dynamic
symbol table with pyelftools: the ABI version (the constant ``bpfdepot_processor_abi`` that
``BPFDEPOT_PROCESSOR()`` puts in ``.rodata``, read without running code), the functions the
manifest names, and the arch. The same module tells which files make up a processor's source
and where its artifact is found, so a node finds what the farm built without a compiler.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from loader.errors import ProcessorError
from loader.model.manifest import Manifest, ProgramSpec, Properties
from loader.artifacts.sources import SourceFile, files_digest, source_closure

ABI_VERSION = 1
HEADER = "bpfdepot_processor.h"               # what processors #include
TEMPLATE = "bpfdepot_processor.h.j2"          # in templates/, rendered by the builder
ABI_SYMBOL = "bpfdepot_processor_abi"         # const uint32_t in .rodata: read statically
VERSION_FUNCTION = "bpfdepot_abi_version"     # uint32_t (void): the host calls it first
# The hook names when the manifest's properties.functions names none of that type.
DEFAULT_NAMES: dict[str, str] = {"init": "bpfdepot_init", "default": "process",
                                 "pre": "bpfdepot_pre", "post": "bpfdepot_post"}
RESULT_CAP_MIN = 4096  # bytes: the host's record buffer is at least this large
KEY_CAP_MIN = 256      # bytes: and its key buffer
# enum bpfdepot_rc
KEEP, DROP, ERROR = 0, 1, -1

Language = Literal["c", "go"]
LANGUAGES: dict[str, Language] = {".c": "c", ".go": "go"}

# e_machine → the arch as `uname -m` (and KernelIdentity.arch) spells it.
_MACHINES = {"EM_X86_64": "x86_64", "EM_AARCH64": "aarch64", "EM_386": "i686",
             "EM_ARM": "armv7l", "EM_S390": "s390x", "EM_RISCV": "riscv64",
             "EM_LOONGARCH": "loongarch64"}


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessorInfo:
    """What a processor library offers, as read from its dynamic symbol table."""

    path: Path
    arch: str                   # as `uname -m` spells it, e.g. x86_64
    abi: int                    # the value of bpfdepot_processor_abi
    init: str                   # the init hook's name
    process: tuple[str, ...]    # the "default" functions: one is called per event
    pre: str | None             # None: the library has no pre hook
    post: str | None
    go: bool                    # built by Go (cgo c-shared): carries a Go runtime

    @property
    def functions(self) -> dict[str, str]:
        """Function name → type, for every hook the host will call."""
        out = {self.init: "init", **{name: "default" for name in self.process}}
        if self.pre:
            out[self.pre] = "pre"
        if self.post:
            out[self.post] = "post"
        return out


def processor_functions(properties: Properties) -> dict[str, str]:
    """The manifest's properties.functions as name → type (what ``check_processor`` takes)."""
    return {f.name: f.type for f in properties.functions}


def hook_names(functions: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    """Type → the names the host calls: the manifest's, else the defaults (pre/post optional)."""
    out: dict[str, tuple[str, ...]] = {}
    for kind, default in DEFAULT_NAMES.items():
        named = tuple(name for name, k in functions.items() if k == kind)
        out[kind] = named or (default,)
    return out


@dataclass(frozen=True, slots=True)
class _Symbol:
    kind: str   # STT_FUNC, STT_OBJECT, ...
    value: int
    size: int


def check_processor(so_path: Path, functions: Mapping[str, str], *, label: str | None = None,
                    arch: str | None = None) -> ProcessorInfo:
    """Check a processor library without running it; ProcessorError names the object and the fix.

    ``functions`` maps the manifest's function names to their types (default, init, pre, post);
    ``label`` names the program in messages; ``arch``, when given, must be the library's."""
    so_path = Path(so_path)
    what = f"processor '{label}' ({so_path})" if label else f"processor {so_path}"
    try:
        with open(so_path, "rb") as f:
            elf = ELFFile(f)
            etype, machine, little_endian = elf["e_type"], elf["e_machine"], elf.little_endian
            symbols = _dynamic_symbols(elf)
            abi_value = _read_u32(elf, symbols.get(ABI_SYMBOL))
            go = elf.get_section_by_name(".go.buildinfo") is not None or "_cgo_topofstack" in symbols
    except FileNotFoundError:
        raise ProcessorError(f"{what} does not exist",
                             hint="build it from its source (bpfdepot build <bundle>) or fix the "
                                  "path in the manifest") from None
    except (ELFError, OSError, ValueError) as exc:
        raise ProcessorError(f"{what} is not an ELF shared object: {exc}",
                             hint="point the manifest at a .so built with -shared -fPIC (C) or "
                                  "go build -buildmode=c-shared (Go), or at its .c/.go source") from None
    if etype != "ET_DYN":
        raise ProcessorError(f"{what} is an ELF file of type {etype}, not a shared object",
                             hint="link it with -shared -fPIC (C) or build it with "
                                  "go build -buildmode=c-shared (Go)")
    found_arch = _MACHINES.get(machine, str(machine).removeprefix("EM_").lower())
    if machine == "EM_PPC64" and little_endian:
        found_arch = "ppc64le"
    if arch is not None and found_arch != arch:
        raise ProcessorError(f"{what} is built for {found_arch}, this node is {arch}",
                             hint=f"build it on (or for) a {arch} machine: bpfdepot build <bundle>")
    _check_abi(what, symbols, abi_value)

    hooks = hook_names(functions)
    for kind, names in hooks.items():
        for name in names:
            if name in functions or kind in ("init", "default"):  # named, or required
                _need_function(what, symbols, name, kind, named=name in functions)
    optional = {kind: (names[0] if _is_function(symbols, names[0]) else None)
                for kind, names in hooks.items() if kind in ("pre", "post")}
    assert abi_value is not None  # _check_abi raised otherwise
    return ProcessorInfo(path=so_path, arch=found_arch, abi=abi_value,
                         init=hooks["init"][0], process=hooks["default"], pre=optional["pre"],
                         post=optional["post"], go=go)


def _check_abi(what: str, symbols: Mapping[str, _Symbol], value: int | None) -> None:
    fix = (f"include {HEADER} and put BPFDEPOT_PROCESSOR(); in one source file (Go: in the cgo "
           "preamble), then rebuild")
    have = [s for s in (ABI_SYMBOL, VERSION_FUNCTION) if s in symbols]
    if not have:
        raise ProcessorError(f"{what} is not a bpfdepot processor: it exports neither {ABI_SYMBOL} "
                             f"nor {VERSION_FUNCTION}()", hint=fix)
    if len(have) == 1:
        missing = VERSION_FUNCTION + "()" if have[0] == ABI_SYMBOL else ABI_SYMBOL
        raise ProcessorError(f"{what} exports {have[0]} but not {missing}: it was not built with "
                             f"BPFDEPOT_PROCESSOR()", hint=fix)
    if symbols[VERSION_FUNCTION].kind != "STT_FUNC":
        raise ProcessorError(f"{what}: {VERSION_FUNCTION} is not a function", hint=fix)
    if value is None:
        raise ProcessorError(f"{what}: {ABI_SYMBOL} is not a const uint32_t in the library's data",
                             hint=fix)
    if value != ABI_VERSION:
        raise ProcessorError(f"{what} is built for processor ABI {value}; this bpfdepot speaks "
                             f"ABI {ABI_VERSION}",
                             hint=f"rebuild it against this bpfdepot's {HEADER} "
                                  "(bpfdepot build <bundle>, or point the manifest at its source)")


def _is_function(symbols: Mapping[str, _Symbol], name: str) -> bool:
    return name in symbols and symbols[name].kind in ("STT_FUNC", "STT_GNU_IFUNC")


def _need_function(what: str, symbols: Mapping[str, _Symbol], name: str, kind: str,
                   named: bool) -> None:
    if _is_function(symbols, name):
        return
    where = ("named in the manifest's properties.functions" if named
             else "the default name when properties.functions names none")
    export = f"C: a non-static function; Go: //export {name}"
    if name in symbols:
        raise ProcessorError(f"{what}: '{name}' ({kind}, {where}) is exported, but not as a function",
                             hint=f"define {name} as a function ({export})")
    candidates = [s for s, sym in symbols.items() if sym.kind == "STT_FUNC"
                  and not s.startswith(("_cgo", "crosscall", "_init", "_fini"))]
    close = difflib.get_close_matches(name, candidates, n=1)
    guess = f"did you mean {close[0]!r}? Otherwise " if close else ""
    raise ProcessorError(f"{what} does not export function '{name}' ({kind}, {where})",
                         hint=f"{guess}define it in the processor ({export}), or fix its name in "
                              "the manifest")


def _dynamic_symbols(elf: ELFFile) -> dict[str, _Symbol]:
    """Defined, exported symbols of the dynamic symbol table (what dlsym can find)."""
    table = elf.get_section_by_name(".dynsym")
    out: dict[str, _Symbol] = {}
    if table is None:
        return out
    for sym in table.iter_symbols():
        entry = sym.entry
        if (not sym.name or entry["st_shndx"] == "SHN_UNDEF"
                or entry["st_info"]["bind"] not in ("STB_GLOBAL", "STB_WEAK")
                or entry["st_other"]["visibility"] not in ("STV_DEFAULT", "STV_PROTECTED")):
            continue
        out[sym.name.split("@", 1)[0]] = _Symbol(kind=entry["st_info"]["type"],
                                                 value=entry["st_value"], size=entry["st_size"])
    return out


def _read_u32(elf: ELFFile, sym: _Symbol | None) -> int | None:
    """The value of a 4-byte data symbol, from the section holding its address; None if it is
    no such thing (a function, another size, or in .bss)."""
    if sym is None or sym.kind != "STT_OBJECT" or sym.size != 4:
        return None
    for section in elf.iter_sections():
        start, size = section["sh_addr"], section["sh_size"]
        if not start or not start <= sym.value < start + size:
            continue
        if section["sh_type"] != "SHT_PROGBITS":
            return None
        data = section.data()[sym.value - start:sym.value - start + 4]
        return int.from_bytes(data, "little" if elf.little_endian else "big") if len(data) == 4 else None
    return None


# --- sources and where the artifact is found ------------------------------------------------

def language_of(path: Path) -> Language | None:
    """c or go from the source's suffix; None for anything else (a prebuilt .so)."""
    return LANGUAGES.get(Path(path).suffix)


def processor_sources(entry: Path, bundle_root: Path) -> list[SourceFile]:
    """The files a processor is built from: the source and the headers it includes with quotes
    (a Go file's cgo preamble too); for Go also its module's go.mod, go.sum and vendor/ folder."""
    root = bundle_root.resolve()
    files = {f.name: f for f in source_closure(entry, root, [])}
    if language_of(entry) == "go":
        module = module_root(entry.resolve().parent, root)
        if module is not None:
            extra = [module / "go.mod", module / "go.sum"]
            vendor = module / "vendor"
            if vendor.is_dir() and not vendor.is_symlink():
                for folder, dirs, names in os.walk(vendor):  # never follows links
                    dirs.sort()
                    extra += [Path(folder) / n for n in sorted(names)]
            for path in extra:
                if path.is_file() and not path.is_symlink():
                    name = f"src/{path.relative_to(root).as_posix()}"
                    files[name] = SourceFile(name=name, path=path, data=path.read_bytes())
    return sorted(files.values(), key=lambda f: f.name)


def module_root(folder: Path, root: Path) -> Path | None:
    """The nearest folder from ``folder`` up to the bundle root holding a go.mod."""
    while folder.is_relative_to(root):
        if (folder / "go.mod").is_file():
            return folder
        if folder == root:
            break
        folder = folder.parent
    return None


def processor_source_digest(files: list[SourceFile], functions: Mapping[str, str]) -> str:
    """sha256 over the source files, the functions the manifest names (the meta records them)
    and the ABI version: what a node looks a processor artifact up by."""
    body = {"files": files_digest(files), "functions": dict(sorted(functions.items())),
            "abi": ABI_VERSION}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def processor_index_ref(program: str, source_digest: str, arch: str) -> str:
    """Where a node finds the processor built from these sources for its arch (no kernel in it:
    a user-space library depends on the arch only)."""
    return f"index/{program}/{source_digest}/{arch}-user_so"


def processor_ref(manifest: Manifest, program: ProgramSpec, arch: str) -> str:
    """The index ref of a user_so program's source for ``arch`` (look it up with
    ``loader.artifacts.meta.lookup``): what the farm or a local build published it under."""
    if program.local_path is None or language_of(program.local_path) is None:
        raise ProcessorError(f"program '{program.name}' ({program.path}) is not a local .c or .go "
                             "source", hint="a prebuilt .so is checked with check_processor as it is")
    functions = processor_functions(manifest.properties)
    files = processor_sources(program.local_path, manifest.root)
    return processor_index_ref(program.name, processor_source_digest(files, functions), arch)
