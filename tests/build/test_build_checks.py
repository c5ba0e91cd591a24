"""Faults clang lets through are named at build time (exit 8), not found on the node as
"rebuild it if it is damaged": an extern nothing defines, a map left for user space to size
that the manifest does not size, an iterator channel that names no iterator. An object built
past these checks (by hand) says the same at open or load."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from builder.compile import Target, build_program
from builder.toolchain import find_toolchain
from loader.artifacts.store import LocalStore
from loader.errors import BuildError, LoadError
from loader.kernel.probe import running_kernel
from loader.model.manifest import load_bundle

ROOT = Path(__file__).resolve().parents[2]
BTF = Path("/sys/kernel/btf/vmlinux")
HEAD = '#include "vmlinux.h"\n#include <bpf/bpf_helpers.h>\n'
TAIL = '\nchar LICENSE[] SEC("license") = "GPL";\n'
TP = 'SEC("tp/syscalls/sys_enter_getppid")\n'

if not BTF.exists():
    pytest.skip("this kernel exposes no BTF", allow_module_level=True)


def _bundle(tmp_path: Path, name: str, body: str, extra: str = "", channels: str = "") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / f"{name}.bpf.c").write_text(HEAD + body + TAIL)
    (folder / "manifest.yaml").write_text(
        f"kind: ebpfprogram\nname: {name}\nspec:\n  programs:\n"
        f"    - name: {name}\n      path: file://./{name}.bpf.c\n      type: ebpf_object\n"
        + extra + channels)
    return folder


def _build(tmp_path: Path, bundle: Path):
    manifest = load_bundle(bundle)
    home = tmp_path / "home"
    return build_program(LocalStore(home), manifest, manifest.kernel_programs[0],
                         Target(identity=running_kernel(), btf=BTF),
                         find_toolchain(home / "cache"), home / "cache")


EXTERN_VAR = "extern int my_var;\n" + TP + "int prog(void *ctx) { return my_var; }\n"
EXTERN_FUNC = ("extern int my_helper(int x);\n" + TP +
               "int prog(void *ctx) { return my_helper(1); }\n")
RESOLVABLE = ("extern int LINUX_KERNEL_VERSION __kconfig;\nextern int CONFIG_HZ __kconfig __weak;\n"
              "extern const void bpf_prog_active __ksym;\n" + TP +
              'int prog(void *ctx) { bpf_printk("%d %d %p", LINUX_KERNEL_VERSION, CONFIG_HZ, '
              "&bpf_prog_active); return 0; }\n")
UNSIZED = ("struct { __uint(type, BPF_MAP_TYPE_HASH); __type(key, __u32); __type(value, __u64); }"
           ' counts SEC(".maps");\n' + TP +
           "int prog(void *ctx) { __u32 k = 0; __u64 v = 1;\n"
           "  bpf_map_update_elem(&counts, &k, &v, 0); return 0; }\n")
STACKS = ("struct { __uint(type, BPF_MAP_TYPE_STACK_TRACE); __uint(max_entries, 64);\n"
          '  __type(key, __u32); } stacks SEC(".maps");\n' + TP +
          "int prog(void *ctx) { return bpf_get_stackid(ctx, &stacks, 0); }\n")


def test_an_extern_variable_nothing_defines_is_a_build_error(tmp_path: Path) -> None:
    with pytest.raises(BuildError) as caught:
        _build(tmp_path, _bundle(tmp_path, "ext_var", EXTERN_VAR))
    err = caught.value
    assert err.exit_code == 8
    assert err.message.startswith("program 'ext_var' uses extern 'my_var', which nothing defines: "
                                  "libbpf resolves only __kconfig and __ksym externs")
    assert err.hint == ("define 'my_var' in the program, or declare it __ksym (a kernel symbol or "
                        "kfunc) or __kconfig (CONFIG_*)")
    assert not (tmp_path / "home" / "refs").exists()  # nothing published


def test_an_extern_function_is_named_too(tmp_path: Path) -> None:
    with pytest.raises(BuildError) as caught:
        _build(tmp_path, _bundle(tmp_path, "ext_func", EXTERN_FUNC))
    assert "uses extern 'my_helper', which nothing defines" in caught.value.message


def test_kconfig_and_ksym_externs_build(tmp_path: Path) -> None:
    built = _build(tmp_path, _bundle(tmp_path, "ext_ok", RESOLVABLE))
    assert built.meta.programs[0]["name"] == "prog"


def test_a_kconfig_extern_libbpf_cannot_fill_is_named(tmp_path: Path) -> None:
    body = "extern int LINUX_NO_SUCH __kconfig;\n" + TP + "int prog(void *ctx) { return LINUX_NO_SUCH; }\n"
    with pytest.raises(BuildError) as caught:
        _build(tmp_path, _bundle(tmp_path, "ext_kcfg", body))
    assert "__kconfig extern 'LINUX_NO_SUCH' is neither a CONFIG_* option" in caught.value.detail


def test_a_map_without_max_entries_needs_the_manifest_to_size_it(tmp_path: Path) -> None:
    with pytest.raises(BuildError) as caught:
        _build(tmp_path, _bundle(tmp_path, "zmap", UNSIZED))
    err = caught.value
    assert err.exit_code == 8
    assert err.message == ("map 'counts' of program 'zmap' (hash) has max_entries 0: it is sized "
                           "from user space, and the manifest does not size it")
    assert err.hint.startswith("add maps: {counts: {max_entries: N}} to program 'zmap'")
    sized = _bundle(tmp_path, "zmap_sized", UNSIZED,
                    extra="      maps:\n        counts: {max_entries: 128}\n")
    assert _build(tmp_path, sized).meta.maps[0]["name"] == "counts"


def test_a_stack_map_without_value_size_is_named(tmp_path: Path) -> None:
    with pytest.raises(BuildError) as caught:
        _build(tmp_path, _bundle(tmp_path, "zstack", STACKS))
    assert caught.value.message.startswith(
        "map 'stacks' of program 'zstack' (stack_trace) has value_size 0")
    sized = _bundle(tmp_path, "zstack_sized", STACKS,
                    extra="      maps:\n        stacks: {value_size: 1016}\n")
    _build(tmp_path, sized)


def test_an_iterator_channel_must_name_an_iterator_program(tmp_path: Path) -> None:
    body = TP + "int prog(void *ctx) { return 0; }\n"
    channels = "  channels:\n    prog: {type: iterator}\n"
    with pytest.raises(BuildError) as caught:
        _build(tmp_path, _bundle(tmp_path, "not_iter", body, channels=channels))
    assert ("channel 'prog' is of type iterator, but program 'prog' is in section "
            "'tp/syscalls/sys_enter_getppid', not an iterator") in caught.value.detail
    channels = "  channels:\n    dump: {type: iterator}\n"
    with pytest.raises(BuildError) as caught:
        _build(tmp_path, _bundle(tmp_path, "no_iter", body, channels=channels))
    assert ("channel 'dump' is of type iterator, which names an iterator program, but the object "
            "has no program 'dump' (iterator programs: none)") in caught.value.detail


def test_the_cli_exits_8_naming_the_symbol(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, "ext_cli", EXTERN_VAR)
    done = subprocess.run([sys.executable, "-m", "builder.cli", "build", str(bundle)], cwd=ROOT,
                          env=dict(os.environ, BPFDEPOT_HOME=str(tmp_path / "home")),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 8, done.stderr
    assert "uses extern 'my_var', which nothing defines" in done.stderr
    assert "Traceback" not in done.stderr


def _clang(tmp_path: Path, name: str, body: str) -> Path:
    """An object built by hand, past bpfdepot's checks (as a user's prebuilt .bpf.o may be)."""
    from builder.vmlinux import vmlinux_header
    toolchain = find_toolchain(tmp_path / "cache")
    header = vmlinux_header(BTF, running_kernel().btf_digest, toolchain.bpftool, tmp_path / "cache")
    (tmp_path / "vmlinux.h").write_bytes(header.read_bytes())
    (tmp_path / f"{name}.bpf.c").write_text(HEAD + body + TAIL)
    out = tmp_path / f"{name}.bpf.o"
    subprocess.run([str(toolchain.clang), "-O2", "-g", "-target", "bpf", "-D__TARGET_ARCH_x86",
                    "-I", str(tmp_path), "-c", str(tmp_path / f"{name}.bpf.c"), "-o", str(out)],
                   check=True, capture_output=True, timeout=120)
    return out


def test_opening_such_an_object_says_what_is_wrong_not_damaged(tmp_path: Path) -> None:
    from loader.libbpf.core import BpfObject
    with pytest.raises(LoadError) as caught:
        BpfObject(_clang(tmp_path, "ext_open", EXTERN_VAR), label="ext_open")
    err = caught.value
    assert err.message.startswith("'ext_open' uses extern 'my_var', which libbpf cannot resolve")
    assert "damaged" not in err.hint and "__ksym" in err.hint


@pytest.mark.skipif(os.geteuid() != 0, reason="loading needs root")
def test_loading_an_unsized_map_says_so(tmp_path: Path) -> None:
    from loader.libbpf.core import BpfObject
    with BpfObject(_clang(tmp_path, "zload", UNSIZED), label="zload") as obj:
        with pytest.raises(LoadError) as caught:
            obj.load()
    assert caught.value.message == ("map 'counts' of 'zload' has max_entries 0: it is meant to be "
                                    "sized from user space, and nothing sized it")
    assert caught.value.hint.startswith("add maps: {counts: {max_entries: N}}")
