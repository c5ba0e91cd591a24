"""Check a bpftrace script (``type: bpftrace_object``) for each target kernel and store it.

bpftrace 0.17 cannot emit a loadable object (CATALOG §4f), so the "build" is a check, in order:

    policy    no system(), cat(), signal(), override(), no unsafe mode: the script runs as root on
              every node (comments and strings are skipped; the error names file:line)
    probes    each tracepoint it names exists in the target's BTF (``btf_trace_<event>``,
              loader/kernel/hooks.py): bpftrace itself reads tracepoint formats from the *build
              host's* tracefs, so it cannot tell
    types     ``BPFTRACE_BTF=<target btf> bpftrace --emit-elf`` type-checks every struct access
              against that kernel ("does not contain a field named …")

The artifact is the script's bytes, stored like any other: blob → meta (bpftrace version, probes,
verdict) → refs, under the same index a node looks up (loader/programs/bpftrace.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from builder.compile import Built, Target, find_built, publish
from loader.artifacts.meta import ArtifactMeta, index_ref
from loader.errors import BuildError
from loader.kernel.btf import Btf
from loader.kernel.hooks import Hook, has_hook, kernel_btf
from loader.model.manifest import Manifest, ProgramSpec
from loader.programs.bpftrace import find_bpftrace, read_script, script_digest

CHECK_TIMEOUT_S = 120  # one --emit-elf: LLVM on a large script takes seconds
FORBIDDEN = ("system", "cat", "signal", "override")  # builtins that act on the node
_CALL_RE = re.compile(r"\b(" + "|".join(FORBIDDEN) + r")\s*\(")
_UNSAFE_RE = re.compile(r"(--unsafe|\bunsafe\b)")
_TRACEPOINT_RE = re.compile(r"(?:tracepoint|t):([A-Za-z0-9_]+):([A-Za-z0-9_]+)")
_RAW_RE = re.compile(r"(?:rawtracepoint|rt):(?:[A-Za-z0-9_]+:)?([A-Za-z0-9_]+)")
_ERROR_RE = re.compile(r"^[^:\n]*:(\d+):[\d-]+: ERROR: (.*)$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Probe:
    spec: str   # as written: tracepoint:tcp:tcp_sendmsg_locked
    line: int


def blank(text: str) -> str:
    """``text`` with comments and string literals turned into spaces (newlines kept), so the
    policy and the probe list see only code, at the lines the user wrote it."""
    out, i, n = [], 0, len(text)
    while i < n:
        two = text[i:i + 2]
        if two == "//":
            end = text.find("\n", i)
            end = n if end < 0 else end
        elif two == "/*":
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
        elif text[i] == '"':
            end = i + 1
            while end < n and text[end] != '"' and text[end] != "\n":
                end += 2 if text[end] == "\\" else 1
            end = min(end + 1, n)
        else:
            out.append(text[i])
            i += 1
            continue
        out.append(re.sub(r"[^\n]", " ", text[i:end]))
        i = end
    return "".join(out)


def check_policy(text: str, path: str) -> None:
    """BuildError naming ``path``:line for a forbidden builtin or unsafe mode."""
    first = text.split("\n", 1)[0]
    if first.startswith("#!") and "unsafe" in first:
        raise BuildError(f"{path}:1: the script asks for bpftrace's unsafe mode ({first.strip()})",
                         hint="bpfdepot runs scripts in safe mode only: drop --unsafe")
    code = blank(text)
    for number, line in enumerate(code.split("\n"), 1):
        found = _CALL_RE.search(line)
        if found:
            raise BuildError(f"{path}:{number}: {found.group(1)}() is not allowed in a bpftrace "
                             "program bpfdepot runs: it acts on every node as root",
                             hint="remove the call; print what you need with printf() and act on "
                                  "it in a processor")
        if _UNSAFE_RE.search(line):
            raise BuildError(f"{path}:{number}: the script asks for bpftrace's unsafe mode",
                             hint="bpfdepot runs scripts in safe mode only: drop 'unsafe'")


def probes_of(text: str) -> list[Probe]:
    """The probes the script's blocks name (the text before each top-level ``{`` and predicate)."""
    code = blank(text)
    out: list[Probe] = []
    depth, start = 0, 0
    for i, ch in enumerate(code):
        if ch == "{":
            if depth == 0:
                header = code[start:i]
                offset = len(header) - len(header.lstrip())
                line = code.count("\n", 0, start + offset) + 1
                # probes hold no spaces; a predicate (/…/) follows after one
                specs = re.match(r"\s*([^\s,]+(?:\s*,\s*[^\s,]+)*)", header)
                for spec in (specs.group(1).split(",") if specs else ()):
                    if spec.strip() and not spec.strip().startswith("/"):
                        out.append(Probe(spec.strip(), line))
            depth += 1
        elif ch == "}":
            depth = max(0, depth - 1)
            if depth == 0:
                start = i + 1
    return out


def hook_of_probe(spec: str) -> Hook | None:
    """The tracepoint a bpftrace probe names, when the kernel's BTF can tell (no wildcards)."""
    if "*" in spec or "?" in spec:
        return None
    found = _TRACEPOINT_RE.fullmatch(spec)
    if found:
        return Hook("tracepoint", found.group(2), found.group(1))
    found = _RAW_RE.fullmatch(spec)
    return Hook("raw_tracepoint", found.group(1)) if found else None


def check_probes(probes: Sequence[Probe], btf: Btf | None, path: str, kernel: str) -> None:
    """BuildError naming the first tracepoint ``btf`` (the target's) lacks, with its line."""
    if btf is None:
        raise BuildError(f"the BTF of {kernel} cannot be read", hint="check the kernel catalog")
    for probe in probes:
        hook = hook_of_probe(probe.spec)
        if hook is not None and not has_hook(btf, hook):
            raise BuildError(f"{path}:{probe.line}: {hook} ({probe.spec}) is not in {kernel}",
                             hint="build it only for kernels that have the tracepoint, or hook "
                                  "one every target has")


_VERSIONS: dict[tuple[str, int, int, int], str] = {}


def bpftrace_version(binary: str) -> str:
    """``bpftrace --version``, asked once per process and binary (a check's key holds it, and
    a farm plans one check per kernel: bpftrace takes ~30 ms of CPU just to start). A binary
    replaced since (another inode, size or mtime) is asked again."""
    st = os.stat(binary)
    known = (binary, st.st_ino, st.st_size, st.st_mtime_ns)
    if known not in _VERSIONS:
        done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
        _VERSIONS[known] = done.stdout.strip().removeprefix("bpftrace ").strip() or "unknown"
    return _VERSIONS[known]


# Probe kinds whose arguments bpftrace does not take from kernel BTF (tracepoint args come from
# the build host's tracefs, kprobes' and uprobes' from registers); kfunc, iter and the others do.
_NO_BTF_PROBES = {"tracepoint", "t", "rawtracepoint", "rt", "kprobe", "k", "kretprobe", "kr",
                  "uprobe", "u", "uretprobe", "ur", "usdt", "U", "profile", "p", "interval", "i",
                  "software", "s", "hardware", "h", "BEGIN", "END"}
_BTF_CODE_RE = re.compile(r"\b(?:struct|union|enum|typeof|sizeof|offsetof|args)\b|->|#include")
_TYPES_PASSED: set[tuple[str, str]] = set()  # (bpftrace binary, script digest) of BTF-free scripts


def uses_btf(text: str) -> bool:
    """Whether bpftrace's type check of ``text`` can depend on the kernel's BTF: a probe kind
    that takes its arguments from BTF, or code naming types, fields or headers. (Conservative:
    a script this says no to type-checks the same against every kernel.)"""
    code = blank(text)
    kinds = {p.spec.split(":", 1)[0] for p in probes_of(text)}
    return not kinds <= _NO_BTF_PROBES or _BTF_CODE_RE.search(code) is not None


def check_types(binary: str, data: bytes, btf: Path, path: str, kernel: str) -> None:
    """``bpftrace --emit-elf`` against the target's BTF; its first error, at the user's line.
    A script whose check cannot depend on BTF (uses_btf) and passed once in this process passes
    for every kernel without running bpftrace again (~90 ms each: a build for 30 kernels)."""
    shared = (binary, hashlib.sha256(data).hexdigest())
    if shared in _TYPES_PASSED:
        return
    _check_types(binary, data, btf, path, kernel)
    if not uses_btf(data.decode(errors="replace")):
        _TYPES_PASSED.add(shared)


def _check_types(binary: str, data: bytes, btf: Path, path: str, kernel: str) -> None:
    with tempfile.TemporaryDirectory(prefix="bpftrace-check-") as scratch:
        script = Path(scratch) / "script.bt"
        script.write_bytes(data)
        try:  # argv only, never a shell: the script is a file
            done = subprocess.run([binary, "--emit-elf", str(Path(scratch) / "out.o"), str(script)],
                                  capture_output=True, text=True, timeout=CHECK_TIMEOUT_S,
                                  cwd=scratch, env={"BPFTRACE_BTF": str(btf),
                                                    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        except subprocess.TimeoutExpired as exc:
            raise BuildError(f"{path}: bpftrace took more than {CHECK_TIMEOUT_S} s to check it "
                             f"for {kernel}", hint="simplify the script") from exc
    if "only supports running as the root user" in done.stderr:
        raise BuildError(f"{path}: checking a bpftrace script needs root (bpftrace 0.17 refuses "
                         "to start otherwise, even for --emit-elf)",
                         hint="run the build as root, or on a farm worker that runs as root")
    errors = _ERROR_RE.findall(done.stderr)
    if errors or done.returncode != 0:
        line, what = errors[0] if errors else ("?", done.stderr.strip().splitlines()[-1:] or "")
        field = re.search(r"does not contain a field named '([^']+)'", str(what))
        raise BuildError(f"{path}:{line}: {what} in {kernel}"
                         + (f" (field '{field.group(1)}')" if field else ""),
                         detail=done.stderr.replace(str(script), path).strip(),
                         hint="read the field only on kernels that have it (a program per kernel "
                              "family), or use one every target has")


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckPlan:
    """One script for one target: what its check is stored under (key and index)."""

    program: ProgramSpec
    target: Target
    binary: str
    data: bytes
    version: str   # bpftrace's: the key changes when bpftrace does
    source: str    # script_digest(data)
    key: str
    index: str


def plan_check(program: ProgramSpec, target: Target, binary: str | None = None) -> CheckPlan:
    """The key of checking ``program`` for ``target``: the script, bpftrace's version, the
    target's BTF and arch (the farm takes a lock on it, as on a compile's key)."""
    binary = binary or find_bpftrace()
    data = read_script(program)
    version = bpftrace_version(binary)
    source = script_digest(data)
    body = {"kind": "bpftrace_object", "program": program.name, "script": source,
            "bpftrace": version, "btf": target.identity.btf_digest, "arch": target.identity.arch}
    key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    return CheckPlan(program=program, target=target, binary=binary, data=data, version=version,
                     source=source, key=key, index=index_ref(program.name, source, target.identity))


def cached_check(store, plan: CheckPlan) -> Built | None:
    """The stored check of ``plan``, or None."""
    return find_built(store, plan.key, plan.index)


def execute_check(store, plan: CheckPlan) -> Built:
    """Check the script (policy, probes, types) and store it with its meta; BuildError naming
    the file:line and the kernel when one refuses it."""
    started = time.perf_counter()
    program, target, data = plan.program, plan.target, plan.data
    path = str(program.local_path)
    text = data.decode(errors="replace")
    check_policy(text, path)
    probes = probes_of(text)
    kernel = str(target.identity)
    check_probes(probes, kernel_btf(str(target.btf)), path, kernel)
    check_types(plan.binary, data, target.btf, path, kernel)
    digest = store.put_blob(data)
    meta = ArtifactMeta(
        name=program.name, kind="bpftrace_object", key=plan.key, digest=digest, size=len(data),
        source_digest=plan.source, target=target.identity, toolchain={"bpftrace": plan.version},
        flags=(), inputs={program.local_path.name: hashlib.sha256(data).hexdigest()},
        programs=tuple({"name": p.spec, "line": p.line} for p in probes), maps=(), channels={},
        required_features=(), license="",
        extra={"verdict": "ok", "checks": ["policy", "probes", "types"]})
    meta_digest = publish(store, meta, plan.index)
    return Built(meta=meta, meta_digest=meta_digest, cached=False,
                 seconds=time.perf_counter() - started)


def check_script(store, manifest: Manifest, program: ProgramSpec, target: Target,
                 binary: str | None = None) -> Built:
    """Check ``program`` for ``target`` (or find it checked) and store it; BuildError naming the
    file:line and the kernel when the policy, a probe or a field refuses it."""
    plan = plan_check(program, target, binary)
    return cached_check(store, plan) or execute_check(store, plan)


def check_for_targets(store, manifest: Manifest, program: ProgramSpec,
                      targets: Sequence[Target]) -> tuple[list[Built], list[BuildError]]:
    """Every target checked: the builds stored, and the refusals (one per refused kernel)."""
    check_policy(read_script(program).decode(errors="replace"), str(program.local_path))  # once
    built, refused = [], []
    for target in targets:
        try:
            built.append(check_script(store, manifest, program, target))
        except BuildError as exc:
            refused.append(exc)
    return built, refused
