"""Build user_so processors (C with clang, Go with cgo) against the rendered processor ABI header.

Like kernel objects (builder/compile.py): the key is computed before anything runs, from the
sources, the flags made here, the compilers' versions, the arch and the ABI; a key already in the
store returns its artifact at once. The compile runs in the same sandbox (bubblewrap, the scratch
folder at /work, read-only /usr, no network), so the same inputs give the same bytes. Go builds
are fully offline: GOTOOLCHAIN=local, GOPROXY=off, GOCACHE and GOPATH inside the scratch folder,
and imports are checked before go runs: the standard library, or a package vendored in the
bundle. Every library is checked with ``loader.processors.abi.check_processor`` before it is
stored: blob → meta → refs, as for kernel objects.

Processors are built for the arch of this machine only (linking needs that arch's libc).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from builder.compile import MAPPED, Built, _check_deps, _read_regular, check_size, find_built, publish
from builder.sandbox import INSIDE, LIMIT_HINT, Limits, limit_breach, run_sandboxed
from builder.toolchain import Toolchain, tool_version
from loader.artifacts.meta import SCHEMA, ArtifactMeta
from loader.errors import BuildError, ProcessorError
from loader.kernel.probe import KernelIdentity
from loader.model.manifest import Manifest, ProgramSpec
from loader.processors.abi import (ABI_SYMBOL, ABI_VERSION, DEFAULT_NAMES, HEADER, KEY_CAP_MIN,
                                  RESULT_CAP_MIN, TEMPLATE, VERSION_FUNCTION, Language,
                                  ProcessorInfo, check_processor, language_of, module_root,
                                  processor_functions, processor_index_ref,
                                  processor_source_digest, processor_sources)
from loader.artifacts.sources import SourceFile, files_digest
from loader.artifacts.store import ArtifactStore

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
# Go links a runtime into every library: more time than one clang run, same memory and output.
PROCESSOR_LIMITS = Limits(wall_s=300, cpu_s=300, memory_bytes=4 << 30, output_bytes=256 << 20,
                          log_bytes=1 << 20)
# The largest processor library stored: a C one is KBs, a Go one carries its runtime (~2-4 MiB).
MAX_LIBRARY_BYTES = 32 << 20
ABI_DIR = "abi"  # where the rendered header sits in the scratch folder (-I abi)
OUTPUT = "out.so"
C_FLAGS = ("-shared", "-fPIC", "-O2", "-g", "-Wall",
           "-Wl,-z,defs",  # an undefined symbol fails here, not when a node loads the library
           f"-ffile-prefix-map={INSIDE}={MAPPED}", "-I", ABI_DIR, "-I", "src")
GO_FLAGS = ("-buildmode=c-shared", "-trimpath", "-buildvcs=false",
            "-ldflags=-buildid=")  # no build id: the bytes depend on the inputs only
CGO_CFLAGS = f"-O2 -g -Wall -I{INSIDE}/{ABI_DIR}"


# --- the ABI header ------------------------------------------------------------------------

def render_template(name: str, variables: Mapping[str, object]) -> str:
    """Render ``templates/<name>`` with StrictUndefined: a variable not given is an error."""
    import jinja2  # ~15 ms to import: only a user_so build renders a template

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             autoescape=False)
    where = f"templates/{name}"
    try:
        return env.get_template(name).render(template=where, **variables)
    except jinja2.TemplateNotFound:
        raise BuildError(f"template {where} does not exist",
                         hint=f"reinstall bpfdepot: {TEMPLATES} should hold it") from None
    except jinja2.UndefinedError as exc:
        raise BuildError(f"template {where} uses a variable that was not given: {exc.message}",
                         hint="pass every variable the template uses (templates render with "
                              "StrictUndefined)") from None


def abi_header(abi: int = ABI_VERSION) -> str:
    """The text of bpfdepot_processor.h for ``abi``."""
    return render_template(TEMPLATE, {
        "abi": abi, "abi_symbol": ABI_SYMBOL, "version_function": VERSION_FUNCTION,
        "init_function": DEFAULT_NAMES["init"], "result_cap_min": RESULT_CAP_MIN,
        "key_cap_min": KEY_CAP_MIN})


def write_abi_header(folder: Path) -> Path:
    """Write bpfdepot_processor.h into ``folder`` (for editors and hand-built processors)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / HEADER
    path.write_text(abi_header())
    return path


# --- Go --------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class GoToolchain:
    go: Path       # the real binary, under GOROOT/bin
    version: str   # e.g. "go1.19.8 linux/amd64"
    goroot: Path


def find_go(cache_dir: Path | None) -> GoToolchain:
    """The newest /usr/lib/go-*, else the Go on PATH; its version is cached like clang's (in
    ``cache_dir``, when given)."""
    found = shutil.which("go")
    # the newest Debian Go first: since Go 1.21 a call into Go from a C thread keeps its runtime
    # state, and every event is such a call (flood bench: 1.19 about 0.5× of 1.23's rate)
    candidates = sorted(Path("/usr/lib").glob("go-*/bin/go"),
                        key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.parent.name)],
                        reverse=True)
    candidates += [Path(os.path.realpath(found))] if found else []
    for go in candidates:
        goroot = go.parent.parent
        if (goroot / "src" / "runtime").is_dir():
            break
    else:
        raise BuildError("Go is not installed: Go processors need it",
                         hint="apt-get install golang-go (or golang-1.23-go from bookworm-backports)")
    if not goroot.is_relative_to("/usr"):  # the sandbox shows the host's /usr and nothing else
        raise BuildError(f"Go at {goroot} is outside /usr, which is all the build sandbox shows",
                         hint="install Go from Debian: apt-get install golang-go")
    cache = cache_dir / "toolchain-go.json" if cache_dir is not None else None
    return GoToolchain(go=go, version=_go_version(go, cache), goroot=goroot)


def _go_version(go: Path, cache: Path | None) -> str:
    line = tool_version(go, cache, ("version",),
                        env={"PATH": "/usr/bin:/bin", "GOTOOLCHAIN": "local", "HOME": "/nonexistent"})
    return line.removeprefix("go version ")


_GO_TOKENS = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|`[^`]*`|\'(?:\\.|[^\'\\\n])*\'',
                        re.S)
_GO_DECL = re.compile(r"^(?:func|var|const|type)\b", re.M)
_GO_IMPORT = re.compile(r"\bimport\s*(?:\((?P<group>[^)]*)\)|(?P<one>(?:[\w.]+\s+)?(?:\"[^\"]*\"|`[^`]*`)))")
_GO_PATH = re.compile(r"\"([^\"]*)\"|`([^`]*)`")


def go_imports(source: bytes) -> list[str]:
    """The import paths of a Go file, read from its import declarations (comments skipped)."""
    text = source.decode(errors="replace")
    text = _GO_TOKENS.sub(lambda m: m[0] if m[0][0] in "\"`'" else
                          " " + "\n" * m[0].count("\n"), text)
    head = text[:m.start()] if (m := _GO_DECL.search(text)) else text
    paths: list[str] = []
    for decl in _GO_IMPORT.finditer(head):
        for match in _GO_PATH.finditer(decl["group"] if decl["group"] is not None else decl["one"]):
            paths.append(match[1] if match[1] is not None else match[2])
    return paths


def check_go_imports(files: Sequence[SourceFile], entry: SourceFile, program: ProgramSpec,
                     go: GoToolchain, module: str | None) -> None:
    """Every import is in Go's standard library or vendored in the bundle; else a BuildError
    before go runs (it could not download anything: builds are offline)."""
    names = {f.name for f in files}
    vendored = f"{module}/vendor/" if module is not None else None
    for path in go_imports(entry.data):
        if path == "C":
            continue
        first = path.split("/", 1)[0]
        if "." not in first and (go.goroot / "src" / path).is_dir():
            continue
        if vendored and any(n.startswith(f"{vendored}{path}/") for n in names):
            continue
        if "." not in first:
            raise BuildError(f"processor '{program.name}' ({program.path}) imports {path}, which is "
                             f"no package of the Go standard library ({go.version})",
                             hint="fix the import path, or vendor the package into the bundle")
        raise BuildError(f"processor '{program.name}' ({program.path}) imports {path}, which is not "
                         "in the Go standard library and cannot be downloaded (builds are offline): "
                         "vendor it",
                         hint="beside the source run `go mod init` and `go mod vendor`, so go.mod "
                              f"and vendor/{path} ship in the bundle; or use only the standard library")


# --- plan, cache, build ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessorPlan:
    """Everything a processor build is decided by, computed before anything runs."""

    manifest: Manifest
    program: ProgramSpec
    arch: str
    language: Language
    files: tuple[SourceFile, ...]
    entry: str                   # the source's name in the build, src/...
    header: str                  # the rendered ABI header
    flags: tuple[str, ...]
    functions: dict[str, str]    # the manifest's, name → type
    toolchain: dict[str, str]    # compiler versions
    clang: Path
    go: GoToolchain | None
    key: str
    source_digest: str

    @property
    def inputs(self) -> dict[str, str]:
        """File name in the build → sha256, the rendered header included."""
        return {**files_digest(self.files),
                f"{ABI_DIR}/{HEADER}": hashlib.sha256(self.header.encode()).hexdigest()}


def host_arch() -> str:
    return os.uname().machine


def plan_processor(manifest: Manifest, program: ProgramSpec, arch: str, toolchain: Toolchain,
                   go: GoToolchain | None = None, cache_dir: Path | None = None) -> ProcessorPlan:
    """Decide the build (sources, flags, key) without compiling; Go imports are checked here."""
    language = language_of(program.local_path) if program.local_path else None
    if program.type != "user_so" or not program.is_source or language is None:
        raise BuildError(f"program '{program.name}' ({program.path}) is not a local .c or .go "
                         "processor source",
                         hint="only file:// .c and .go user_so sources are built; a prebuilt .so "
                              "is checked and loaded as it is")
    if arch != host_arch():
        raise BuildError(f"processor '{program.name}' cannot be built for {arch} on this "
                         f"{host_arch()} machine: processors are built natively",
                         hint=f"build it on a {arch} machine (a farm worker of that arch)")
    files = tuple(processor_sources(program.local_path, manifest.root))
    entry = next(f for f in files if f.path == program.local_path.resolve())
    functions = processor_functions(manifest.properties)
    versions = {"clang": toolchain.clang_version}
    if language == "go":
        if go is None:
            go = find_go(cache_dir)
        module = module_root(program.local_path.resolve().parent, manifest.root.resolve())
        module_name = f"src/{module.relative_to(manifest.root.resolve()).as_posix()}" if module else None
        module_name = module_name.removesuffix("/.") if module_name else None
        check_go_imports(files, entry, program, go, module_name)
        vendored = module_name is not None and any(
            f.name == f"{module_name}/vendor/modules.txt" for f in files)
        flags = (*GO_FLAGS, "-mod=vendor" if vendored else "-mod=mod", f"CGO_CFLAGS={CGO_CFLAGS}")
        versions["go"] = go.version
    else:
        go, flags = None, C_FLAGS
    header = abi_header()
    inputs = {**files_digest(files), f"{ABI_DIR}/{HEADER}": hashlib.sha256(header.encode()).hexdigest()}
    body = {"schema": SCHEMA, "kind": "user_so", "program": program.name, "language": language,
            "inputs": inputs, "flags": flags, "toolchain": versions, "arch": arch, "abi": ABI_VERSION,
            "functions": functions}
    key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    return ProcessorPlan(manifest=manifest, program=program, arch=arch, language=language,
                         files=files, entry=entry.name, header=header, flags=flags,
                         functions=functions, toolchain=versions, clang=toolchain.clang, go=go,
                         key=key, source_digest=processor_source_digest(list(files), functions))


def cached_processor(store: ArtifactStore, plan: ProcessorPlan) -> Built | None:
    return find_built(store, plan.key,
                      processor_index_ref(plan.program.name, plan.source_digest, plan.arch))


def build_processor(store: ArtifactStore, manifest: Manifest, program: ProgramSpec, arch: str,
                    toolchain: Toolchain, cache_dir: Path, *, go: GoToolchain | None = None) -> Built:
    """Build the user_so ``program`` for ``arch`` (or find it built); BuildError with the
    compiler's words, or naming what the library lacks."""
    plan = plan_processor(manifest, program, arch, toolchain, go, cache_dir)
    return cached_processor(store, plan) or execute_processor(store, plan, cache_dir)


def execute_processor(store: ArtifactStore, plan: ProcessorPlan, cache_dir: Path) -> Built:
    """Compile, check, and publish: library blob → meta blob → refs (no ref points at nothing)."""
    started = time.perf_counter()
    scratch_root = cache_dir.parent / "tmp"
    scratch_root.mkdir(parents=True, exist_ok=True)
    seed = go_cache_seed(plan, cache_dir) if plan.language == "go" else None
    scratch = Path(tempfile.mkdtemp(prefix="processor-", dir=scratch_root))
    try:
        data, warnings = compile_processor(plan, scratch, go_cache=seed)
        check_size(data, MAX_LIBRARY_BYTES, f"the processor library built from {plan.program.path}",
                   hint="shrink large static arrays, or read big tables from the initfile at init")
        info = _check(plan, scratch / OUTPUT)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    program = plan.program
    digest = store.put_blob(data)
    hooks = tuple({"name": name, "type": kind} for name, kind in info.functions.items())
    meta = ArtifactMeta(
        name=program.name, kind="user_so", key=plan.key, digest=digest, size=len(data),
        source_digest=plan.source_digest,
        target=KernelIdentity(release="any", arch=plan.arch, btf_digest=""),
        toolchain=plan.toolchain, flags=plan.flags, inputs=plan.inputs, programs=hooks, maps=(),
        channels={}, required_features=(), license="",
        extra={"abi": ABI_VERSION, "language": plan.language,
               "functions": [h["name"] for h in hooks]})
    meta_digest = publish(store, meta, processor_index_ref(program.name, plan.source_digest, plan.arch))
    return Built(meta=meta, meta_digest=meta_digest, cached=False,
                 seconds=time.perf_counter() - started, warnings=warnings)


def _check(plan: ProcessorPlan, path: Path) -> ProcessorInfo:
    try:
        return check_processor(path, plan.functions, label=plan.program.name, arch=plan.arch)
    except ProcessorError as exc:  # a build that yields an unusable library is a build failure
        raise BuildError(exc.message.replace(str(path), f"the library built from {plan.program.path}"),
                         hint=exc.hint) from None


def compile_processor(plan: ProcessorPlan, scratch: Path,
                      go_cache: Path | None = None) -> tuple[bytes, str]:
    """Compile in the sandbox with ``scratch`` as /work; the library's bytes and the warnings.
    ``go_cache`` is copied in as the build's GOCACHE. The library is left at scratch/out.so."""
    for f in plan.files:
        dest = scratch / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(f.data)
    (scratch / ABI_DIR).mkdir(exist_ok=True)
    (scratch / ABI_DIR / HEADER).write_text(plan.header)
    if plan.language == "c":
        cmd = [str(plan.clang), *plan.flags, "-MD", "-MF", "deps.d", plan.entry, "-o", OUTPUT]
        env: dict[str, str] = {}
        tool = "clang"
    else:
        assert plan.go is not None
        if go_cache is not None:  # a copy: the build may write to it, the seed stays as it is
            shutil.copytree(go_cache, scratch / ".go" / "cache", copy_function=shutil.copy)
        for folder in ("home", "cache", "path", "tmp"):
            (scratch / ".go" / folder).mkdir(parents=True, exist_ok=True)
        entry_dir, entry_name = plan.entry.rsplit("/", 1)
        go_flags = [f for f in plan.flags if not f.startswith("CGO_CFLAGS=")]
        # env -C: go looks for go.mod from its current folder, so it runs in the source's
        cmd = ["/usr/bin/env", "-C", entry_dir, str(plan.go.go), "build", *go_flags,
               "-o", f"{INSIDE}/{OUTPUT}", entry_name]
        env = {"HOME": f"{INSIDE}/.go/home", "GOCACHE": f"{INSIDE}/.go/cache",
               "GOPATH": f"{INSIDE}/.go/path", "GOMODCACHE": f"{INSIDE}/.go/path/pkg/mod",
               "GOTMPDIR": f"{INSIDE}/.go/tmp", "GOENV": "off", "GOWORK": "off", "GOFLAGS": "",
               "GOTOOLCHAIN": "local", "GOPROXY": "off", "GOSUMDB": "off", "CGO_ENABLED": "1",
               "CC": str(plan.clang), "CGO_CFLAGS": CGO_CFLAGS}
        tool = "go build"
    out = run_sandboxed(cmd, workdir=scratch, limits=PROCESSOR_LIMITS, env=env)
    name, limits = plan.program.name, PROCESSOR_LIMITS
    breach = limit_breach(out, limits, tool)
    if breach:
        raise BuildError(f"{breach} on processor '{name}'", hint=LIMIT_HINT)
    raw = (out.stderr + out.stdout).decode(errors="replace")
    text = _user_paths(raw, scratch, plan)
    if out.returncode != 0:
        missing = _GO_DOWNLOAD.search(raw) if plan.language == "go" else None
        if missing:  # the import check missed it (e.g. a vendored module without modules.txt)
            raise BuildError(f"processor '{name}' ({plan.program.path}) imports {missing['pkg']}, "
                             "which is not in the Go standard library and cannot be downloaded "
                             "(builds are offline): vendor it", detail=text.strip(),
                             hint="beside the source run `go mod init` and `go mod vendor`, so "
                                  "go.mod and vendor/ ship in the bundle")
        raise BuildError(f"{tool} failed on processor '{name}' ({plan.program.path})",
                         detail=text.strip(), hint="fix the error at the file:line above and build again")
    if plan.language == "c":
        _check_deps(scratch, plan.program)
    return _read_regular(scratch / OUTPUT), text.strip()


# Compiled once per toolchain into a trusted GOCACHE that every Go build starts from (a copy),
# so a build compiles its own code and not the runtime and cgo again (about 11 s → 2 s here).
_SEED_SOURCE = b"""package main

// #include <stdint.h>
import "C"

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"
)

var _ = []any{bufio.NewReader, bytes.NewBuffer, binary.LittleEndian, json.Marshal, errors.New,
	fmt.Sprint, math.Abs, os.Open, strconv.Itoa, strings.Cut, time.Now, unsafe.Pointer(nil)}
var mu sync.Mutex

//export bpfdepot_seed
func bpfdepot_seed() C.uint32_t { return 0 }

func main() {}
"""


def go_cache_seed(plan: ProcessorPlan, cache_dir: Path) -> Path | None:
    """A GOCACHE holding the standard library and runtime built with this plan's toolchain and
    flags, made once by compiling our own program (never a bundle's) in the sandbox; None when
    that fails (the build then starts from an empty cache)."""
    assert plan.go is not None
    # -mod decides where modules come from; the seed has none, and -mod=vendor needs a go.mod
    flags = tuple("-mod=mod" if f.startswith("-mod=") else f for f in plan.flags)
    body = {"toolchain": plan.toolchain, "flags": flags, "source": _SEED_SOURCE.decode()}
    name = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:24]
    seed = cache_dir / "go-cache" / name
    if seed.is_dir():
        return seed
    scratch_root = cache_dir.parent / "tmp"
    scratch_root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="go-seed-", dir=scratch_root))
    try:
        (scratch / "src").mkdir()
        (scratch / "src" / "seed.go").write_bytes(_SEED_SOURCE)
        seed_plan = replace(plan, files=(SourceFile(name="src/seed.go", path=Path("seed.go"),
                                                    data=_SEED_SOURCE),),
                            entry="src/seed.go", functions={}, flags=flags)
        try:
            compile_processor(seed_plan, scratch)
        except BuildError:
            return None
        seed.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(scratch / ".go" / "cache", seed)  # atomic; another worker may have won
        except OSError:
            pass
        return seed if seed.is_dir() else None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


_GO_DOWNLOAD = re.compile(r"(?:cannot find module providing package|no required module provides "
                          r"package|module lookup disabled by GOPROXY=off[^\n]*?package|missing "
                          r"go\.sum entry for module providing package) (?P<pkg>[^\s:;]+)")


def _user_paths(text: str, scratch: Path, plan: ProcessorPlan) -> str:
    """Name files as the user knows them, so the compiler's file:line points at their file."""
    root = plan.manifest.root
    entry_dir = plan.entry.rsplit("/", 1)[0].removeprefix("src").lstrip("/")
    here = f"{root / entry_dir}/" if entry_dir else f"{root}/"
    text = text.replace(f"{scratch}/", "")
    text = re.sub(rf"(?<![\w/.-]){re.escape(INSIDE)}/", "", text)
    text = re.sub(rf"(?<![\w/.-]){re.escape(MAPPED)}/", "", text)
    text = re.sub(r"(?<![\w/.-])src/", f"{root}/", text)
    return re.sub(r"(?m)(^|\s)\./(?=[\w.-]+:\d+)", lambda m: m[1] + here, text)  # go's ./x.go:3
