"""The relocation check on real objects and real kernel BTF: small libbpf-style programs under
tests/build/relocate/ compiled once against the 6.18 header, checked against the three reference
kernels, and compared with libbpf itself (its CO-RE log in ``bpftool gen min_core_btf``, and a
real load on this machine's kernel)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from builder.relocate import (
    Problem,
    check_relocations,
    core_relocations,
    kernel_types,
    resolve_relocations,
)
from builder.vmlinux import vmlinux_header
from loader.kernel.probe import file_digest

ROOT = Path(__file__).resolve().parents[2]
KERNELS = ROOT.parent / "shared" / "kernels"
SOURCES = Path(__file__).resolve().parent / "relocate"
K61, K612, K618 = "6.1.0-50-amd64", "6.12.100+deb12-amd64", "6.18.44-fc-v669"
ALL = (K61, K612, K618)
OBJECTS = ("basic", "newfield", "guarded", "kfunc", "enums", "flavour")

if not all((KERNELS / f"{k}.btf").exists() for k in ALL):
    pytest.skip(f"the reference kernels are not at {KERNELS} (a checkout without ../shared)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Each test program compiled once, against the newest reference kernel's vmlinux.h."""
    tmp = tmp_path_factory.mktemp("relocate")
    btf = KERNELS / f"{K618}.btf"
    header = vmlinux_header(btf, file_digest(btf).replace(":", "-"),
                            Path(shutil.which("bpftool")), tmp / "cache")
    include = tmp / "include"
    include.mkdir()
    (include / "vmlinux.h").symlink_to(header)
    out = {}
    for name in OBJECTS:
        obj = tmp / f"{name}.o"
        subprocess.run(["clang", "-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_x86",
                        "-I", str(include), "-c", str(SOURCES / f"{name}.bpf.c"), "-o", str(obj)],
                       check=True, capture_output=True)
        out[name] = obj.read_bytes()
    return out


def kernel(release: str):
    return kernel_types(KERNELS / f"{release}.btf")


def test_reading_state_and_pid_passes_on_every_kernel(objects: dict[str, bytes]) -> None:
    for release in ALL:
        verdict = check_relocations(objects["basic"], kernel(release))
        assert (verdict.ok, verdict.checked, verdict.problems) == (True, 2, ()), release


def test_a_field_only_618_has_is_refused_on_older_kernels_with_the_field_named(
        objects: dict[str, bytes]) -> None:
    verdict = check_relocations(objects["newfield"], kernel(K618))
    assert (verdict.ok, verdict.checked, verdict.problems) == (True, 2, ())
    for release in (K61, K612):
        verdict = check_relocations(objects["newfield"], kernel(release))
        assert not verdict.ok
        assert verdict.problems == (Problem(
            program="read_throttled", insn=13, kind="field_byte_offset",
            spec="struct task_struct.throttled", guarded=False,
            why="struct task_struct has no field 'throttled'"),)
        assert verdict.reasons(release) == [
            (f"kernel {release}: struct task_struct has no field 'throttled' (program "
             "read_throttled, insn 13, field_byte_offset of struct task_struct.throttled)")]
        assert verdict.to_dict()["problems"][0]["spec"] == "struct task_struct.throttled"


def test_the_same_read_behind_field_exists_passes_everywhere(objects: dict[str, bytes]) -> None:
    assert check_relocations(objects["guarded"], kernel(K618)).problems == ()
    for release in (K61, K612):
        verdict = check_relocations(objects["guarded"], kernel(release))
        assert verdict.ok and verdict.reasons(release) == []
        assert [(p.program, p.kind, p.spec, p.guarded) for p in verdict.problems] == [
            ("read_throttled_if_there", "field_byte_offset", "struct task_struct.throttled",
             True)]


def test_a_64_kfunc_passes_on_612_and_618_and_is_refused_on_61(objects: dict[str, bytes]) -> None:
    for release in (K612, K618):
        verdict = check_relocations(objects["kfunc"], kernel(release))
        assert (verdict.ok, verdict.checked, verdict.problems) == (True, 3, ())
    verdict = check_relocations(objects["kfunc"], kernel(K61))
    assert not verdict.ok
    assert verdict.reasons(K61) == [
        f"kernel {K61}: kfunc not in this kernel's BTF (kfunc {name})"
        for name in ("bpf_iter_num_new", "bpf_iter_num_next", "bpf_iter_num_destroy")]


def test_enum_values_and_type_relocations(objects: dict[str, bytes]) -> None:
    for release in (K612, K618):
        verdict = check_relocations(objects["enums"], kernel(release))
        assert (verdict.ok, verdict.checked, verdict.problems) == (True, 7, ())
    verdict = check_relocations(objects["enums"], kernel(K61))
    arena = "enum bpf_map_type::BPF_MAP_TYPE_ARENA"
    size = ("no type named 'struct bpf_iter_num' (type_size resolves to 0; libbpf loads it "
            "unchanged)")
    assert [(p.program, p.kind, p.spec, p.guarded, p.why) for p in verdict.problems] == [
        ("new_enum", "enumval_value", arena, False,
         "enum bpf_map_type has no value 'BPF_MAP_TYPE_ARENA'"),
        ("new_type_size", "type_size", "struct bpf_iter_num", False, size),
        ("checked_new", "enumval_value", arena, True,
         "enum bpf_map_type has no value 'BPF_MAP_TYPE_ARENA'"),
        ("checked_new", "type_size", "struct bpf_iter_num", True, size)]
    values = {(r.program, r.kind): o.value
              for r, o in resolve_relocations(objects["enums"], kernel(K618))}
    # BPF_MAP_TYPE_RINGBUF = 27 and ARENA = 33 in include/uapi/linux/bpf.h; the iterator is
    # struct bpf_iter_num { __u64 __opaque[1]; }
    assert (values[("old_enum", 11)], values[("new_enum", 11)],
            values[("new_type_size", 9)]) == (27, 33, 8)


def test_flavoured_types_match_their_essential_name(objects: dict[str, bytes]) -> None:
    for release in ALL:
        verdict = check_relocations(objects["flavour"], kernel(release))
        assert [(p.program, p.spec, p.guarded) for p in verdict.problems] == [
            ("state_either_way", "struct task_struct___o.state", True),
            ("old_state_only", "struct task_struct___o.state", False)], release
        assert verdict.reasons(release) == [
            (f"kernel {release}: struct task_struct has no field 'state' (program "
             "old_state_only, insn 52, field_byte_offset of struct task_struct___o.state)")]
        pid = {r.program: o for r, o in resolve_relocations(objects["flavour"], kernel(release))}
        assert pid["flavoured_pid"].why is None


def test_an_object_without_btf_passes_with_nothing_checked(tmp_path: Path) -> None:
    """Built without -g: no .BTF.ext, so no CO-RE relocations for libbpf or for the check."""
    obj = tmp_path / "plain.o"
    (tmp_path / "plain.c").write_text('int x; __attribute__((section("tp/a/b"), used)) '
                                      'int f(void *ctx) { x = 1; return 0; }\n'
                                      'char LICENSE[] __attribute__((section("license"), used)) '
                                      '= "GPL";\n')
    subprocess.run(["clang", "-O2", "-target", "bpf", "-c", str(tmp_path / "plain.c"), "-o",
                    str(obj)], check=True, capture_output=True)
    verdict = check_relocations(obj.read_bytes(), kernel(K61))
    assert (verdict.ok, verdict.checked, verdict.problems) == (True, 0, ())


def test_a_damaged_object_is_refused_naming_it(objects: dict[str, bytes]) -> None:
    from loader.errors import BuildError

    data = objects["flavour"][: len(objects["flavour"]) // 2]
    with pytest.raises(BuildError) as caught:
        check_relocations(data, kernel(K61))
    assert caught.value.message.startswith("object sha256:")
    assert "is not a valid BPF object" in caught.value.message
    assert caught.value.hint == "rebuild it with clang -g -O2 -target bpf"


# libbpf's debug lines for one relocation and its first matching candidate, e.g.
#   prog 'tp/x': relo #1: matching candidate #0 <byte_off> [192] struct task_struct.pid (0:83 @ offset 2416)
_MATCH = re.compile(r"prog '([^']+)': relo #(\d+): matching candidate #\d+ <\w+> \[(\d+)\] "
                    r"(.*?)(?: \([\d:]+ @ offset (\d+)(?:\.(\d+))?\)| = (-?\d+))?$")
_NONE = re.compile(r"prog '([^']+)': relo #(\d+): no matching targets found$")


def libbpf_resolutions(obj: Path, btf: Path, out: Path) -> dict[tuple[str, int], tuple]:
    """(section, relo #) → (kernel type id, bit offset or enum value or None), or (0, None)
    when no candidate matched — from libbpf's own CO-RE log while bpftool makes a min BTF."""
    run = subprocess.run(["bpftool", "-d", "gen", "min_core_btf", str(btf), str(out), str(obj)],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    found: dict[tuple[str, int], tuple] = {}
    for line in run.stderr.splitlines():
        line = line.removeprefix("libbpf: ")
        if m := _MATCH.match(line):
            key = (m.group(1), int(m.group(2)))
            if key in found:
                continue  # the first candidate; ambiguity would have failed bpftool
            if m.group(5) is not None:
                found[key] = (int(m.group(3)), int(m.group(5)) * 8 + int(m.group(6) or 0))
            else:
                found[key] = (int(m.group(3)), None if m.group(7) is None else int(m.group(7)))
        elif m := _NONE.match(line):
            found[(m.group(1), int(m.group(2)))] = (0, None)
    return found


@pytest.mark.parametrize("release", ALL)
def test_every_resolution_agrees_with_libbpfs_own_log(objects: dict[str, bytes], release: str,
                                                      tmp_path: Path) -> None:
    """The same kernel type matched, at the same bit offset or with the same enum value, for
    every relocation of every test object; and no match exactly where libbpf finds none."""
    compared, unmatched = 0, 0
    for name, data in objects.items():
        obj = tmp_path / f"{name}.o"
        obj.write_bytes(data)
        theirs = libbpf_resolutions(obj, btf := KERNELS / f"{release}.btf",
                                    tmp_path / f"{name}.min.btf")
        counters: dict[str, int] = {}
        for r, outcome in resolve_relocations(data, kernel_types(btf)):
            n = counters[r.section] = counters.get(r.section, -1) + 1
            target, detail = theirs[(r.section, n)]
            assert outcome.target_id == target, (name, r, outcome)
            if r.kind < 6 and target:  # field kinds: the bit offset libbpf computed
                assert outcome.bit_offset == detail, (name, r, outcome)
            if r.kind == 11 and target:  # enumval_value
                assert outcome.value == detail, (name, r, outcome)
            compared += 1
            unmatched += not target
    assert compared == 19
    assert unmatched == {K61: 11, K612: 5, K618: 2}[release]


RUNNING = Path("/sys/kernel/btf/vmlinux")


@pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")
@pytest.mark.skipif(not RUNNING.exists(), reason="this machine's kernel exposes no BTF")
def test_libbpf_loads_exactly_the_programs_the_check_passes(objects: dict[str, bytes],
                                                            tmp_path: Path) -> None:
    """Each program loaded alone by libbpf on this machine (a 6.18 kernel, checked against its
    own /sys/kernel/btf/vmlinux): it loads iff the check finds no unguarded problem in it (libbpf poisons unresolved instructions; the verifier refuses
    them where they are reachable and drops them where they are not)."""
    from loader.errors import LoadError
    from loader.libbpf.core import BpfObject

    verdicts, refused = {}, []
    for name, data in objects.items():
        path = tmp_path / f"{name}.o"
        path.write_bytes(data)
        verdict = check_relocations(data, kernel_types(RUNNING))
        programs = {r.program for r in core_relocations(data).relocations} | {
            p.name for p in BpfObject(path, label=name).programs()}
        for program in sorted(programs):
            bad = [p for p in verdict.problems
                   if not p.guarded and p.program in (program, "")]
            obj = BpfObject(path, label=name)
            try:
                for other in obj.programs():
                    obj.set_autoload(other.name, other.name == program)
                try:
                    obj.load()
                    loaded = True
                except LoadError as exc:
                    loaded = False
                    # libbpf explains its poisoned call (helper #195896080, 0xbad2310)
                    assert "failed to resolve CO-RE relocation <byte_off>" in exc.detail, \
                        exc.detail
            finally:
                obj.close()
            verdicts[(name, program)] = loaded
            assert loaded == (not bad), (name, program, bad)
            if not loaded:
                refused.append((name, program))
    assert len(verdicts) == 11
    assert ("flavour", "old_state_only") in refused and ("basic", "handle_exec") not in refused
    if kernel_types(RUNNING).btf.by_name("bpf_iter_num_new", "func") and check_relocations(
            objects["newfield"], kernel_types(RUNNING)).ok:  # a 6.18 kernel like the reference
        assert refused == [("flavour", "old_state_only")]


def _catalog_cases() -> list[tuple[Path, str]]:
    from tests.build.test_build import catalog_bundles
    return [(bundle, release) for bundle in catalog_bundles() for release in ALL]


@pytest.fixture(scope="module")
def catalog_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("catalog")


@pytest.mark.parametrize("bundle,release", _catalog_cases(),
                         ids=lambda x: x.name if isinstance(x, Path) else x)
def test_every_catalog_program_passes_on_the_kernel_it_was_built_for(
        catalog_home: Path, bundle: Path, release: str) -> None:
    from loader.artifacts.store import LocalStore
    from loader.model.manifest import load_bundle
    from tests.build.test_build import _build

    programs = [p for p in load_bundle(bundle).kernel_programs if p.is_source]
    if not programs:
        pytest.skip(f"{bundle.name} has no C program to build (a bpftrace bundle)")
    for program in programs:
        built = _build(catalog_home, bundle, KERNELS / f"{release}.btf", program.name)
        data = LocalStore(catalog_home).read_blob(built.meta.digest)
        verdict = check_relocations(data, kernel(release))
        assert verdict.ok and verdict.reasons(release) == [], (program.name, verdict.problems)
        assert verdict.checked == len(core_relocations(data).relocations) + len(
            core_relocations(data).externs)


@pytest.mark.parametrize("release", ALL)
def test_look_ups_by_name_agree_with_a_full_index_of_every_name(release: str) -> None:
    """KernelTypes finds types by searching the string section for the names asked (no index
    of every name is built): for every name a kernel has, its candidates, first FUNC and VAR
    and typedefs are those a full index of all ~130k types gives, flavoured names included."""
    import random

    from builder import corerelo as cr
    from builder.relocate import KernelTypes
    from loader.kernel.btf import Btf

    btf = Btf.parse((KERNELS / f"{release}.btf").read_bytes())
    by_essential: dict[str, list[int]] = {}
    first: dict[tuple[str, str], int] = {}
    for tid in range(1, len(btf)):
        t = btf.type(tid)
        if not t.name:
            continue
        first.setdefault((t.name, t.kind), tid)
        if t.kind not in ("func", "var", "datasec", "decl_tag"):
            by_essential.setdefault(cr.essential_name(t.name), []).append(tid)
    kt = KernelTypes(btf, "sha256:test")
    names = sorted({name for name, _ in first})
    asked = random.Random(7).sample(names, 3000) + [n for n in names if "___" in n]
    asked += ["task_struct", "sock", "btf_trace_sched_switch", "no_such_type_anywhere"]
    for name in asked:
        essential = cr.essential_name(name)
        for kind in ("struct", "union", "enum", "typedef", "int", "func_proto"):
            expected = [tid for tid in by_essential.get(essential, ())
                        if cr.kinds_compat(btf.type(tid).kind, kind)]
            assert kt.candidates(name, kind) == expected, (name, kind)
        for kind in ("func", "var", "typedef"):
            assert kt.first(name, kind) == first.get((name, kind)), (name, kind)
    assert kt.has_typedef("btf_trace_sched_switch") and not kt.has_typedef("task_struct")
    assert kt.has_typedef("btf_trace_sock_send_length") == (release != K61)
