"""A compiled object's verdict for one target kernel: published there, or refused and why.

One compile serves every kernel of its variant (builder/compile.py). For each (object, kernel)
this decides, without loading anything (where a load test follows, it only advises: the
kernel's own verifier has the last word):

- every CO-RE relocation resolves against the kernel's BTF as libbpf would resolve it, and every
  kfunc or ksym the object needs is there (builder/relocate.py);
- every hook a program that would load attaches to exists (loader/kernel/hooks.py);
- every feature the object needs is one the kernel is not known to lack (its catalog entry);
- for kernels whose nodes have no BTF of their own, the minimal BTF those relocations use
  (``bpftool gen min_core_btf``) comes out of the same step.

A pass publishes the kernel's record — the shared object with a meta for this kernel, where
nodes and the lock find it; with a load test asked for (builder/loadtests.py) the record waits
as a *candidate* until the object was loaded on that kernel. A refusal is recorded too, naming
the field, type, kfunc, hook or feature, so ``bpfdepot lock`` and nodes can say why a kernel
has no artifact; neither half-publishes anything.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from builder.compile import (CHECK_VERSION, JUST_READ, Built, Compiled, Plan, Target, check_hooks,
                             compile_object, find_compiled)
from loader.artifacts.meta import ArtifactMeta, index_ref, meta_of_ref, read_index
from loader.artifacts.sheets import SheetView, publish_sheet, target_key
from loader.artifacts.store import ArtifactStore
from loader.errors import BlobNotFound, BuildError, KernelRefused

if TYPE_CHECKING:
    from builder.relocate import ObjectRelocations
    from loader.kernel.elf import ObjectInfo

_PARSED: dict[str, tuple[ObjectInfo, ObjectRelocations]] = {}
_PARSED_MAX = 256  # objects a worker keeps parsed: each of its tasks checks one for many kernels
_PARSING = threading.Lock()


def _parsed(store: ArtifactStore, digest: str, what: str) -> tuple[ObjectInfo, ObjectRelocations]:
    """An object's ELF and its relocations, parsed once per process: checking it for 30 kernels
    then reads and hashes it once, not 30 times. The kernels' checks run in threads that all
    start by asking for it: one parses, the others wait for its result (eight threads parsing
    the same object at once cost more than the checks themselves; parsing is Python, so two
    objects parsed at once would gain nothing either)."""
    with _PARSING:
        found = _PARSED.get(digest)
        if found is None:
            from builder.relocate import core_relocations
            from loader.kernel.elf import read_object

            data, info = JUST_READ.pop(digest, (None, None))
            if data is None:
                data = store.read_blob(digest)
                info = read_object(data, what)
            found = (info, core_relocations(data))
            if len(_PARSED) >= _PARSED_MAX:
                _PARSED.pop(next(iter(_PARSED)))
            _PARSED[digest] = found
        return found


GUARD_HINT = ("guard the access with bpf_core_field_exists()/bpf_core_type_exists() (or read a "
              "___flavour type), or leave this kernel out of the targets")


@dataclass(frozen=True, slots=True, kw_only=True)
class Checked:
    """An object that passed its checks for one kernel: the meta to publish, and notes."""

    plan: Plan
    meta: ArtifactMeta
    warnings: str
    fresh: bool = False  # its object was compiled just now (not found in the store)


def find_done(store: ArtifactStore, plan: Plan, *, sheets: SheetView | None = None) -> Built | None:
    """The kernel's record for ``plan`` (its index ref, else the verdict sheets of its sources;
    ``sheets``: those the caller listed, having found no index ref): its artifact when it comes
    from the same compile, checked as the plan asks (load-tested if it asks for a load test,
    with a minimal BTF if the kernel's nodes need one); raises KernelRefused when that compile
    was refused there; None when it must be checked."""
    started = time.perf_counter()
    try:
        found = (read_index(store, index_of(plan)) if sheets is None
                 else sheets.verdict(target_key(plan.target.identity)))
    except BlobNotFound:
        return None  # lost: checked and published again (which heals the store)
    if isinstance(found, dict):
        if found.get("object_key") == plan.object_key and found.get("check") == CHECK_VERSION \
                and (found.get("stage") == "load" or not plan.load_test):
            raise refusal_error(found)
        return None  # another compile's, or a check a load test now overrules
    if found is None:
        return None
    meta, digest = found
    if (meta.extra.get("object_key") != plan.object_key
            or meta.extra.get("check") != _checked_for(plan)
            or (plan.load_test and not meta.load_tested_on)):
        return None  # another compile, checked for other facts, or not yet load-tested
    blobs = [meta.digest] + ([meta.extra["min_btf"]] if meta.extra.get("min_btf") else [])
    if not all(store.has_blob(b) for b in blobs):
        return None
    from loader.trust.artifacts import sign_published

    sign_published(store, meta, digest)  # built before a key was set: signed now
    return Built(meta=meta, meta_digest=digest, cached=True, seconds=time.perf_counter() - started)


def index_of(plan: Plan) -> str:
    return index_ref(plan.program.name, plan.source_digest, plan.target.identity)


def _checked_for(plan: Plan) -> dict[str, object]:
    """What a kernel's check depended on besides the object: recorded in its meta."""
    return {"version": CHECK_VERSION, "min_btf": not plan.target.btf_on_node,
            "absent": sorted(plan.target.absent)}


def build_for(store: ArtifactStore, plan: Plan, cache_dir: Path, *,
              compiled: Compiled | None = None) -> Built:
    """``plan``'s record for its kernel: found, or compiled (unless given) and checked and
    published; raises BuildError (the compile) or KernelRefused (this kernel)."""
    done = find_done(store, plan)
    if done is not None:
        return done
    compiled = compiled or find_compiled(store, plan.object_key)
    if compiled is None:
        warm_checks(plan.target)
        compiled = compile_object(store, plan, cache_dir)
    checked = check_kernel(store, plan, compiled, cache_dir)
    built = publish_kernel(store, checked)
    return dataclasses.replace(built, cached=compiled.cached, seconds=compiled.seconds + built.seconds)


def warm_checks(target: Target) -> threading.Thread:
    """Start, in a daemon thread, what check_kernel will need for ``target`` — pyelftools and the
    kernel's parsed BTF, kept for the process — so a build run once from the command line does
    it while clang runs (~50 ms with a precompiled vmlinux.h) instead of after it. check_kernel
    makes the same calls and waits for the parse (builder/relocate.py)."""
    def warm() -> None:
        import elftools.elf.elffile  # noqa: F401 - pyelftools, for read_object

        import loader.kernel.elf  # noqa: F401
        from builder.relocate import kernel_types
        from loader.kernel.hooks import kernel_btf

        try:
            kernel_types(target.btf, target.identity.btf_digest)
            kernel_btf(str(target.btf))
        except Exception:  # noqa: BLE001 - check_kernel makes these calls again and raises
            pass           # what is wrong (naming the file), not a thread's traceback

    thread = threading.Thread(target=warm, name="bpfdepot-warm-checks", daemon=True)
    thread.start()
    return thread


def check_kernel(store: ArtifactStore, plan: Plan, compiled: Compiled, cache_dir: Path, *,
                 record: bool = True) -> Checked:
    """Relocations, hooks and features of ``compiled`` on ``plan.target``; raise KernelRefused
    naming each problem (recorded at the kernel's index ref, unless ``record`` is False: a
    verdict sheet records it), or return the kernel's meta to publish."""
    from builder.relocate import check_parsed, kernel_types

    target, program = plan.target, plan.program
    info, parsed = _parsed(store, compiled.meta.digest, f"{program.name} for {target.identity}")
    reasons: list[str] = []
    hints: list[str] = []
    relocations = check_parsed(parsed, kernel_types(target.btf, target.identity.btf_digest))
    reasons += relocations.reasons(str(target.identity))
    if reasons:
        hints.append(GUARD_HINT)
    try:
        hooks = check_hooks(info, program, target)
    except BuildError as exc:
        reasons.append(exc.message + ("\n" + exc.detail if exc.detail else ""))
        hints.append(exc.hint)
        hooks = None
    lacking = _lacking(info, plan)
    if lacking:
        reasons += lacking
        hints.append("add a form for kernels without it (`forms:`), or leave this kernel out")
    # what the meta records is content, so equal checks give equal metas: no timings
    relocated = {k: v for k, v in relocations.to_dict().items() if k != "seconds"}
    if reasons and not plan.load_test:
        body = refusal_body(plan, compiled, reasons, stage="check", relocations=relocated,
                            hint="; ".join(hints))
        if record:
            store_refusal(store, plan, body)
        raise refusal_error(body)
    extra: dict[str, object] = {**compiled.meta.extra, "object_key": compiled.meta.key,
                                "relocations": relocated, "check": _checked_for(plan)}
    if reasons:  # a load test on the kernel follows: its verifier has the last word
        extra["check_reasons"] = reasons
    if not target.btf_on_node:
        data = store.read_blob(compiled.meta.digest)
        extra["min_btf"] = store.put_blob(_min_core_btf(target, data, plan.toolchain.bpftool))
    if hooks:
        extra["hooks_missing"] = hooks[0]
    meta = dataclasses.replace(compiled.meta, key=plan.key, target=target.identity, extra=extra)
    notes = [compiled.warnings] if not compiled.cached else []
    if hooks:
        notes.append(hooks[1])
    return Checked(plan=plan, meta=meta, warnings="\n".join(n for n in notes if n))


def publish_kernel(store: ArtifactStore, checked: Checked,
                   load_tested_on: tuple[dict, ...] = (), *, meta_of: bool = True) -> Built:
    """Publish a checked object for its kernel: meta blob → the index ref nodes and the lock
    read (replacing a refusal or an older compile's artifact there) → meta-of (the kernels of
    one object need it once): two store writes per kernel."""
    started = time.perf_counter()
    plan = checked.plan
    meta = dataclasses.replace(checked.meta, load_tested_on=load_tested_on)
    meta_digest = store.put_blob(meta.to_json(), new=True)
    store.set_ref(index_of(plan), meta_digest)
    if meta_of:
        store.put_ref(meta_of_ref(meta.digest), meta_digest)
    from loader.trust.artifacts import sign_published

    sign_published(store, meta, meta_digest)  # with BPFDEPOT_SIGNING_KEY (loader/trust)
    return Built(meta=meta, meta_digest=meta_digest, cached=False,
                 seconds=time.perf_counter() - started, warnings=checked.warnings)


def publish_sheet_of(store: ArtifactStore, compiled: Compiled, plans: list[Plan],
                     verdicts: list[Checked | KernelRefused]) -> list[Built | KernelRefused]:
    """Publish the verdicts of one compile for many kernels (none load-tested, none with an
    index ref of its own) as one verdict sheet (loader/artifacts/sheets.py): one blob and one
    ref for them all, instead of a meta blob and an index ref per kernel. The passes come back
    as Built, their meta named by its address in the sheet."""
    started = time.perf_counter()
    sheet = publish_sheet(
        store, program=plans[0].program.name, source_digest=plans[0].source_digest,
        object_key=str(compiled.meta.extra.get("object_key", compiled.meta.key)),
        metas={target_key(v.meta.target): v.meta for v in verdicts if isinstance(v, Checked)},
        refused={target_key(p.target.identity): v.record for p, v in zip(plans, verdicts)
                 if isinstance(v, KernelRefused)})
    from loader.trust.artifacts import sign_published

    seconds = time.perf_counter() - started
    out: list[Built | KernelRefused] = []
    for verdict in verdicts:
        if isinstance(verdict, Checked):
            address = f"{sheet}#{target_key(verdict.meta.target)}"
            sign_published(store, verdict.meta, address)  # with BPFDEPOT_SIGNING_KEY (loader/trust)
            verdict = Built(meta=verdict.meta, meta_digest=address, cached=False, seconds=seconds,
                            warnings=verdict.warnings)
        out.append(verdict)
    return out


def refusal_body(plan: Plan, compiled: Compiled, reasons: list[str], *, stage: str,
                 **more: object) -> dict:
    """What a refusal of ``plan``'s kernel records: the kernel, the compile and the reasons."""
    return {"ok": False, "kernel": str(plan.target.identity), "program": plan.program.name,
            "key": plan.key, "object": compiled.meta.digest, "stage": stage,
            "check": CHECK_VERSION,
            "object_key": compiled.meta.extra.get("object_key", compiled.meta.key),
            "reference": compiled.meta.extra.get("reference", ""),
            "reasons": reasons, **more}


def record_refusal(store: ArtifactStore, plan: Plan, compiled: Compiled, reasons: list[str], *,
                   stage: str, **more: object) -> KernelRefused:
    """Store why ``plan``'s kernel is refused, at the index ref where its artifact would be (so
    the next build, the lock and nodes read it there; an artifact of an older compile of the
    same sources that passed there is kept), and return the error to raise."""
    body = refusal_body(plan, compiled, reasons, stage=stage, **more)
    store_refusal(store, plan, body)
    return refusal_error(body)


def store_refusal(store: ArtifactStore, plan: Plan, body: dict) -> None:
    """A refusal's body at ``plan``'s index ref, unless a pass is there (or in a sheet)."""
    digest = store.put_blob(json.dumps(body, sort_keys=True).encode(), new=True)
    if not isinstance(read_index(store, index_of(plan)), tuple):  # never over an older pass
        store.set_ref(index_of(plan), digest)


def refusal_error(body: dict) -> KernelRefused:
    """The error a recorded refusal raises: its first reason, the others in detail."""
    reasons = [str(r) for r in body.get("reasons", ())] or ["no reason recorded"]
    stage = "load test" if body.get("stage") == "load" else "relocation check"
    error = KernelRefused(
        f"'{body.get('program', '?')}' is refused for kernel {body.get('kernel', '?')} "
        f"({stage}): {reasons[0].splitlines()[0]}",
        detail="\n".join(reasons) if len(reasons) > 1 or "\n" in reasons[0] else "",
        hint=(str(body.get("hint") or "fix the program for this kernel or leave the kernel out "
                  "of the targets")) + "; the other kernels are published")
    error.record = body  # the job record shows its compile and reference
    return error


def _lacking(info: ObjectInfo, plan: Plan) -> list[str]:
    """The features the kernel is known to lack that a program which would load needs."""
    if not plan.target.absent:
        return []
    optional = set(plan.program.autoload_off) | {p for form in plan.program.forms for p in form}
    out = [f"kernel {plan.target.identity} lacks {p.feature} (program {p.name}, "
           f"SEC(\"{p.section}\"))" for p in info.programs
           if p.feature in plan.target.absent and p.name not in optional]
    out += [f"kernel {plan.target.identity} lacks {m.type_name} maps (map {m.name})"
            for m in info.maps if m.type_name in plan.target.absent]
    return out


def _min_core_btf(target: Target, obj: bytes, bpftool: Path) -> bytes:
    """Only the BTF types the object's CO-RE relocations use, for nodes without kernel BTF."""
    with tempfile.TemporaryDirectory(prefix="bpfdepot-min-btf-") as tmp:
        obj_path, out = Path(tmp) / "obj.bpf.o", Path(tmp) / "min.btf"
        obj_path.write_bytes(obj)
        done = subprocess.run([str(bpftool), "gen", "min_core_btf", str(target.btf), str(out),
                               str(obj_path)], capture_output=True, text=True, timeout=120)
        if done.returncode != 0 or not out.exists():
            raise BuildError(f"bpftool could not make a minimal BTF for {target.identity}",
                             detail=(done.stderr or done.stdout).strip(),
                             hint="check that the catalog's BTF for this kernel is complete")
        return out.read_bytes()
