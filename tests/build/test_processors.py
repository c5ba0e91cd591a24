"""Build the tcp_connlat processors (C and Go) and hold them to the processor ABI.

The key test loads each built library in a throwaway host (a C harness compiled here, run as a
subprocess: user code never runs in the test's own process), feeds both the same hand-packed
events and asserts the same records, byte for byte.
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import textwrap
from pathlib import Path

import pytest

from builder.compile import Built
from builder.processors import (GO_FLAGS, abi_header, build_processor, compile_processor,
                                find_go, go_cache_seed, host_arch, plan_processor, write_abi_header)
from builder.toolchain import find_toolchain
from loader.artifacts.meta import build_ref, lookup, meta_of_ref
from loader.errors import BuildError, ProcessorError
from loader.model.manifest import Manifest, load_bundle
from loader.processors.abi import ABI_VERSION, check_processor, processor_ref
from loader.artifacts.store import LocalStore

ROOT = Path(__file__).resolve().parents[2]
CONNLAT = ROOT / "bpf" / "tcp_connlat"
HAVE_GO = shutil.which("go") is not None or any(Path("/usr/lib").glob("go-*/bin/go"))
needs_go = pytest.mark.skipif(not HAVE_GO, reason="Go is not installed (apt-get install golang-go)")
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="the harness needs gcc")
if not Path("/usr/bin/bwrap").exists():
    pytest.skip("processor builds run in bubblewrap (apt-get install bubblewrap)",
                allow_module_level=True)

MANIFEST = """\
kind: ebpfprogram
name: tcp_connlat
description: tcp_connlat with its processors in C and Go
version: "0.1"
author: tests
spec:
  programs:
    - name: tcp_connlat
      path: file://./tcp_connlat.bpf.c
      type: ebpf_object
    - name: {c_name}
      path: file://./{c_file}
      type: user_so
    - name: {go_name}
      path: file://./{go_file}
      type: user_so
  properties:
    initfile: ./connlat.ini
    functions:
      - name: {function}
        type: default
  channels:
    tcp_connlat_events:
      type: ring_buffer
"""


def bundle(folder: Path, *, function: str = "process", c_file: str = "tcp_connlat_user.c",
           go_file: str = "tcp_connlat_user.go", extra: dict[str, str] | None = None) -> Manifest:
    """A copy of bpf/tcp_connlat with a manifest naming both processors."""
    folder.mkdir(parents=True)
    for path in CONNLAT.iterdir():
        if path.is_file() and path.name != "manifest.yaml":
            shutil.copy(path, folder / path.name)
    for name, text in (extra or {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    (folder / "manifest.yaml").write_text(MANIFEST.format(
        c_name="connlat_c", c_file=c_file, go_name="connlat_go", go_file=go_file,
        function=function))
    return load_bundle(folder)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    return bundle(tmp_path_factory.mktemp("bundle") / "tcp_connlat")


def build(home: Path, manifest: Manifest, name: str) -> Built:
    return build_processor(LocalStore(home), manifest, manifest.program(name), host_arch(),
                           find_toolchain(home / "cache"), home / "cache")


@pytest.fixture(scope="module")
def c_built(home: Path, manifest: Manifest) -> Built:
    return build(home, manifest, "connlat_c")


@pytest.fixture(scope="module")
def go_built(home: Path, manifest: Manifest) -> Built:
    if not HAVE_GO:
        pytest.skip("Go is not installed (apt-get install golang-go)")
    return build(home, manifest, "connlat_go")


def stored(home: Path, built: Built, tmp: Path) -> Path:
    path = tmp / f"{built.meta.name}.so"
    path.write_bytes(LocalStore(home).read_blob(built.meta.digest))
    return path


# --- builds and the artifact contract ---------------------------------------------------------

def test_c_processor_builds_checks_and_is_stored(home: Path, manifest: Manifest, c_built: Built,
                                                 tmp_path: Path) -> None:
    meta = c_built.meta
    assert (meta.kind, meta.name, meta.target.arch) == ("user_so", "connlat_c", host_arch())
    assert meta.extra == {"abi": ABI_VERSION, "language": "c",
                          "functions": ["bpfdepot_init", "process"]}
    assert meta.programs == ({"name": "bpfdepot_init", "type": "init"},
                             {"name": "process", "type": "default"})
    assert set(meta.inputs) == {"abi/bpfdepot_processor.h", "src/tcp_connlat.h",
                                "src/tcp_connlat_user.c"}
    assert "-shared" in meta.flags and "-fPIC" in meta.flags and c_built.warnings == ""
    info = check_processor(stored(home, c_built, tmp_path), {"process": "default"})
    assert (info.abi, info.arch, info.init, info.process, info.go) == (
        ABI_VERSION, host_arch(), "bpfdepot_init", ("process",), False)
    # blob → meta → refs: found by key, by source (what a node computes) and by object digest
    store = LocalStore(home)
    assert lookup(store, build_ref(meta.key))[1] == c_built.meta_digest
    ref = processor_ref(manifest, manifest.program("connlat_c"), host_arch())
    assert lookup(store, ref)[1] == c_built.meta_digest
    assert lookup(store, meta_of_ref(meta.digest))[1] == c_built.meta_digest
    again = build(home, manifest, "connlat_c")
    assert again.cached and again.meta_digest == c_built.meta_digest


@needs_go
def test_go_processor_builds_offline_and_checks(home: Path, go_built: Built, tmp_path: Path) -> None:
    meta = go_built.meta
    assert meta.extra["language"] == "go" and meta.extra["functions"] == ["bpfdepot_init", "process"]
    assert meta.toolchain["go"].startswith("go1.") and "clang" in meta.toolchain
    assert set(GO_FLAGS) <= set(meta.flags)
    info = check_processor(stored(home, go_built, tmp_path), {"process": "default"})
    assert info.go and info.abi == ABI_VERSION and info.arch == host_arch()


def test_c_output_is_byte_identical_across_scratch_dirs(home: Path, manifest: Manifest,
                                                        tmp_path: Path) -> None:
    plan = plan_processor(manifest, manifest.program("connlat_c"), host_arch(),
                          find_toolchain(home / "cache"))
    (tmp_path / "a").mkdir()
    (tmp_path / "elsewhere" / "b").mkdir(parents=True)
    first, _ = compile_processor(plan, tmp_path / "a")
    second, _ = compile_processor(plan, tmp_path / "elsewhere" / "b")
    assert first == second
    assert str(tmp_path).encode() not in first


@needs_go
def test_go_output_is_byte_identical_across_scratch_dirs(home: Path, manifest: Manifest,
                                                         go_built: Built, tmp_path: Path) -> None:
    """-trimpath, an empty build id and the sandbox's fixed /work: Go's bytes depend on the
    inputs only, from an empty GOCACHE or the seeded one."""
    plan = plan_processor(manifest, manifest.program("connlat_go"), host_arch(),
                          find_toolchain(home / "cache"), find_go(home / "cache"))
    (tmp_path / "a").mkdir()
    (tmp_path / "elsewhere" / "b").mkdir(parents=True)
    first, _ = compile_processor(plan, tmp_path / "a")  # an empty GOCACHE
    second, _ = compile_processor(plan, tmp_path / "elsewhere" / "b",
                                  go_cache=go_cache_seed(plan, home / "cache"))
    print(f"Go c-shared output identical across scratch dirs: {first == second}")
    assert first == second
    assert LocalStore(home).read_blob(go_built.meta.digest) == first
    assert str(tmp_path).encode() not in first


# --- bad input ---------------------------------------------------------------------------------

@needs_go
def test_go_source_needing_a_download_fails_clearly(home: Path, tmp_path: Path) -> None:
    source = (CONNLAT / "tcp_connlat_user.go").read_text().replace(
        '\t"unsafe"\n', '\t"unsafe"\n\n\t"github.com/segmentio/kafka-go"\n')
    manifest = bundle(tmp_path / "b", go_file="net_user.go", extra={"net_user.go": source})
    with pytest.raises(BuildError) as err:
        build(home, manifest, "connlat_go")
    assert err.value.message == (
        "processor 'connlat_go' (file://./net_user.go) imports github.com/segmentio/kafka-go, "
        "which is not in the Go standard library and cannot be downloaded (builds are offline): "
        "vendor it")
    assert "go mod vendor" in err.value.hint


@needs_go
def test_go_vendored_package_builds_offline(home: Path, tmp_path: Path) -> None:
    """A module vendored into the bundle needs no network: -mod=vendor."""
    source = (CONNLAT / "tcp_connlat_user.go").read_text().replace(
        '\t"unsafe"\n', '\t"unsafe"\n\n\t"example.com/greet"\n').replace(
        "func main() {}", "func main() { greet.Hello() }")
    vendor = {
        "go.mod": "module example.com/connlat\n\ngo 1.19\n\nrequire example.com/greet v1.0.0\n",
        "vendor/modules.txt": "# example.com/greet v1.0.0\n## explicit\nexample.com/greet\n",
        "vendor/example.com/greet/greet.go": "package greet\n\nfunc Hello() string { return \"hi\" }\n",
    }
    manifest = bundle(tmp_path / "b", go_file="vendored.go", extra={"vendored.go": source, **vendor})
    built = build(home, manifest, "connlat_go")
    assert "-mod=vendor" in built.meta.flags
    assert "src/vendor/example.com/greet/greet.go" in built.meta.inputs


def test_c_compile_error_keeps_file_and_line(home: Path, tmp_path: Path) -> None:
    source = (CONNLAT / "tcp_connlat_user.c").read_text().replace(
        "return BPFDEPOT_KEEP;", "return BPFDEPOT_KEPT;")
    manifest = bundle(tmp_path / "b", c_file="broken.c", extra={"broken.c": source})
    with pytest.raises(BuildError) as err:
        build(home, manifest, "connlat_c")
    line = source.splitlines().index("\treturn BPFDEPOT_KEPT;") + 1
    assert f"{manifest.root}/broken.c:{line}:" in err.value.detail
    assert "BPFDEPOT_KEPT" in err.value.detail


def test_a_library_over_the_size_limit_is_not_stored(tmp_path: Path) -> None:
    """A 40 MiB initialised array compiles (under the sandbox's limits) but is not stored."""
    source = (CONNLAT / "tcp_connlat_user.c").read_text() + (
        "\n__attribute__((used)) const char bpfdepot_ballast[40 << 20] = {1};\n")
    manifest = bundle(tmp_path / "b", c_file="ballast.c", extra={"ballast.c": source})
    with pytest.raises(BuildError) as err:
        build(tmp_path / "home", manifest, "connlat_c")
    assert err.value.message.startswith(
        "the processor library built from file://./ballast.c is 41,")
    assert err.value.message.endswith("bytes, over the limit of 33,554,432 (32 MiB)")
    assert not (tmp_path / "home" / "refs").exists() and not (tmp_path / "home" / "blobs").exists()


def test_built_library_missing_a_manifest_function_fails(home: Path, tmp_path: Path) -> None:
    manifest = bundle(tmp_path / "b", function="proces")
    with pytest.raises(BuildError) as err:
        build(home, manifest, "connlat_c")
    assert err.value.message == (
        "processor 'connlat_c' (the library built from file://./tcp_connlat_user.c) does not export "
        "function 'proces' (default, named in the manifest's properties.functions)")
    assert err.value.hint.startswith("did you mean 'process'?")


def _cc(tmp: Path, name: str, source: str, *flags: str) -> Path:
    """A tiny library (or other object) compiled here, against the rendered header."""
    include = write_abi_header(tmp / "include")
    (tmp / f"{name}.c").write_text(source)
    out = tmp / f"{name}.so"
    subprocess.run(["clang", "-O2", "-Wall", "-Werror", "-I", str(include.parent), *flags,
                    str(tmp / f"{name}.c"), "-o", str(out)], check=True, capture_output=True)
    return out


MINIMAL = """\
#include "bpfdepot_processor.h"
BPFDEPOT_PROCESSOR();
int bpfdepot_init(const char *initfile) { (void)initfile; return 0; }
bpfdepot_process_fn process;
int process(const struct bpfdepot_event *ev, struct bpfdepot_result *res)
{ (void)ev; (void)res; return BPFDEPOT_KEEP; }
"""


def test_check_processor_accepts_a_minimal_processor(tmp_path: Path) -> None:
    so = _cc(tmp_path, "minimal", MINIMAL, "-shared", "-fPIC")
    info = check_processor(so, {})
    assert (info.abi, info.init, info.process, info.pre, info.post) == (
        ABI_VERSION, "bpfdepot_init", ("process",), None, None)
    assert info.functions == {"bpfdepot_init": "init", "process": "default"}


def test_library_without_abi_symbols_is_refused(tmp_path: Path) -> None:
    so = _cc(tmp_path, "plain", "int process(void *ev, void *res) { return ev == res; }\n",
             "-shared", "-fPIC")
    with pytest.raises(ProcessorError) as err:
        check_processor(so, {"process": "default"}, label="plain")
    assert err.value.message == (f"processor 'plain' ({so}) is not a bpfdepot processor: it exports "
                                 "neither bpfdepot_processor_abi nor bpfdepot_abi_version()")
    assert "BPFDEPOT_PROCESSOR();" in err.value.hint and "bpfdepot_processor.h" in err.value.hint


def test_library_with_only_the_version_function_is_refused(tmp_path: Path) -> None:
    so = _cc(tmp_path, "half", "#include <stdint.h>\nuint32_t bpfdepot_abi_version(void) "
             "{ return 1; }\n", "-shared", "-fPIC")
    with pytest.raises(ProcessorError, match=r"exports bpfdepot_abi_version but not "
                       r"bpfdepot_processor_abi: it was not built with BPFDEPOT_PROCESSOR\(\)"):
        check_processor(so, {})


def test_library_of_another_abi_version_is_refused(tmp_path: Path) -> None:
    header = abi_header(abi=ABI_VERSION + 1)
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "bpfdepot_processor.h").write_text(header)
    (tmp_path / "v2.c").write_text(MINIMAL)
    so = tmp_path / "v2.so"
    subprocess.run(["clang", "-shared", "-fPIC", "-I", str(tmp_path / "v2"), str(tmp_path / "v2.c"),
                    "-o", str(so)], check=True)
    with pytest.raises(ProcessorError) as err:
        check_processor(so, {}, label="v2")
    assert err.value.message == (f"processor 'v2' ({so}) is built for processor ABI "
                                 f"{ABI_VERSION + 1}; this bpfdepot speaks ABI {ABI_VERSION}")
    assert "rebuild it" in err.value.hint


def test_manifest_function_missing_from_library(tmp_path: Path) -> None:
    so = _cc(tmp_path, "minimal", MINIMAL, "-shared", "-fPIC")
    with pytest.raises(ProcessorError) as err:
        check_processor(so, {"proces": "default"}, label="p")
    assert err.value.message == (f"processor 'p' ({so}) does not export function 'proces' "
                                 "(default, named in the manifest's properties.functions)")
    assert err.value.hint == ("did you mean 'process'? Otherwise define it in the processor "
                              "(C: a non-static function; Go: //export proces), or fix its name "
                              "in the manifest")
    with pytest.raises(ProcessorError, match="does not export function 'on_start' \\(pre, named"):
        check_processor(so, {"on_start": "pre"})


def test_library_without_init_names_the_default(tmp_path: Path) -> None:
    source = MINIMAL.replace("int bpfdepot_init(const char *initfile) { (void)initfile; return 0; }\n", "")
    so = _cc(tmp_path, "noinit", source, "-shared", "-fPIC")
    with pytest.raises(ProcessorError, match="does not export function 'bpfdepot_init' \\(init, "
                       "the default name when properties.functions names none\\)"):
        check_processor(so, {})


def test_static_function_is_not_exported(tmp_path: Path) -> None:
    so = _cc(tmp_path, "static", MINIMAL.replace("bpfdepot_process_fn process;\nint process",
                                                 "static int process") +
             "void *keep(void) { return (void *)process; }\n", "-shared", "-fPIC")
    with pytest.raises(ProcessorError, match="does not export function 'process'"):
        check_processor(so, {})


def test_executable_and_object_are_not_shared_objects(tmp_path: Path) -> None:
    obj = _cc(tmp_path, "object", MINIMAL, "-c", "-fPIC")
    with pytest.raises(ProcessorError, match="is an ELF file of type ET_REL, not a shared object"):
        check_processor(obj, {})
    exe = _cc(tmp_path, "exe", MINIMAL + "int main(void) { return 0; }\n", "-no-pie")
    with pytest.raises(ProcessorError, match="ET_EXEC, not a shared object"):
        check_processor(exe, {})


def test_another_arch_is_refused(tmp_path: Path) -> None:
    so = _cc(tmp_path, "minimal", MINIMAL, "-shared", "-fPIC")
    other = "aarch64" if host_arch() != "aarch64" else "x86_64"
    with pytest.raises(ProcessorError, match=f"is built for {host_arch()}, this node is {other}"):
        check_processor(so, {}, arch=other)


def test_rendered_header_compiles_strictly(tmp_path: Path) -> None:
    """The rendered header compiles as strict C11 with every warning an error, and the hooks'
    types match the documented prototypes (pre and post included)."""
    source = MINIMAL + textwrap.dedent("""\
        bpfdepot_pre_fn bpfdepot_pre;
        int bpfdepot_pre(const struct bpfdepot_event *ev) { return ev->size ? BPFDEPOT_KEEP : BPFDEPOT_DROP; }
        bpfdepot_post_fn bpfdepot_post;
        int bpfdepot_post(const struct bpfdepot_event *ev, const struct bpfdepot_result *res, int rc)
        { (void)ev; return res->len ? rc : BPFDEPOT_ERROR; }
        """)
    so = _cc(tmp_path, "hooks", source, "-shared", "-fPIC", "-std=c11", "-Wextra", "-pedantic")
    info = check_processor(so, {})
    assert (info.pre, info.post) == ("bpfdepot_pre", "bpfdepot_post")


# --- the same records from C and Go -----------------------------------------------------------

HARNESS = r"""
/* A throwaway processor host: dlopen LIB, check the ABI, init, then one process() per frame
 * read from stdin (u32 size, u32 cap, size bytes), printing rc, key and record per line. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "bpfdepot_processor.h"

int main(int argc, char **argv)
{
	static unsigned char buf[1 + 65536];
	static char out[65536], key[BPFDEPOT_KEY_CAP_MIN];
	uint32_t frame[2];

	if (argc != 4)
		return 2;
	void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
	if (!lib) {
		fprintf(stderr, "dlopen: %s\n", dlerror());
		return 2;
	}
	uint32_t (*version)(void) = (uint32_t (*)(void))dlsym(lib, "bpfdepot_abi_version");
	bpfdepot_init_fn *init = (bpfdepot_init_fn *)dlsym(lib, "bpfdepot_init");
	bpfdepot_process_fn *process = (bpfdepot_process_fn *)dlsym(lib, argv[3]);
	if (!version || !init || !process)
		return 2;
	printf("abi %u\n", version());
	if (version() != BPFDEPOT_PROCESSOR_ABI)
		return 0;
	printf("init %d\n", init(strcmp(argv[2], "-") ? argv[2] : NULL));
	fflush(stdout);
	while (fread(frame, 4, 2, stdin) == 2) {
		/* at buf + 1: a processor must not assume the event is aligned */
		if (frame[0] > sizeof(buf) - 1 || fread(buf + 1, 1, frame[0], stdin) != frame[0])
			return 3;
		struct bpfdepot_event ev = {.data = buf + 1, .channel = "tcp_connlat_events",
					    .ts_ns = 1, .size = frame[0], .cpu = BPFDEPOT_CPU_UNKNOWN};
		struct bpfdepot_result res = {.data = out, .key = key, .cap = frame[1],
					      .key_cap = sizeof(key)};
		int rc = process(&ev, &res);
		printf("%d\t%.*s\t%.*s\n", rc, (int)res.key_len, key, (int)res.len, out);
	}
	return 0;
}
"""


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("the harness needs gcc")
    folder = tmp_path_factory.mktemp("harness")
    write_abi_header(folder)
    (folder / "harness.c").write_text(HARNESS)
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-I", str(folder), str(folder / "harness.c"),
                    "-o", str(folder / "harness"), "-ldl"], check=True)
    return folder / "harness"


def v6(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, text)


def v4(text: str) -> bytes:
    return socket.inet_aton(text) + bytes(12)


def event(*, delta_ns: int = 251323, pid: int = 7795, family: int = 2, sport: int = 44124,
          dport: int = 8000, comm: bytes = b"curl", saddr: bytes = v4("127.0.0.1"),
          daddr: bytes = v4("10.1.2.3")) -> bytes:
    """struct connlat_event (tcp_connlat.h), little-endian as on the hosts here."""
    return struct.pack("<QIHHH6s16s16s16s", delta_ns, pid, family, sport, dport, bytes(6), comm,
                       saddr, daddr)


def frames(items: list[tuple[bytes, int]]) -> bytes:
    return b"".join(struct.pack("<II", len(data), cap) + data for data, cap in items)


CAP = 4096
# (event, result cap, the expected line: rc, key, record)
CASES: list[tuple[bytes, int, str]] = [
    (event(), CAP, '0\t7795\t{"pid":7795,"comm":"curl","saddr":"127.0.0.1","daddr":"10.1.2.3",'
     '"sport":44124,"dport":8000,"latency_us":251.323,"label":"prod"}'),
    (event(family=10, saddr=v6("::1"), daddr=v6("2001:db8::8:800:200c:417a"), comm=b"wget",
           delta_ns=1_000_000, pid=1, sport=1, dport=443), CAP,
     '0\t1\t{"pid":1,"comm":"wget","saddr":"::1","daddr":"2001:db8::8:800:200c:417a","sport":1,'
     '"dport":443,"latency_us":1000.000,"label":"prod"}'),
    # embedded IPv4 (mapped and compatible), equal zero runs (the first wins), a lone zero group
    (event(family=10, saddr=v6("::ffff:192.0.2.1"), daddr=v6("::1.2.3.4"), delta_ns=999), CAP,
     '0\t7795\t{"pid":7795,"comm":"curl","saddr":"::ffff:192.0.2.1","daddr":"::1.2.3.4",'
     '"sport":44124,"dport":8000,"latency_us":0.999,"label":"prod"}'),
    (event(family=10, saddr=v6("1:0:0:2:3:0:0:4"), daddr=v6("2001:db8:0:1:1:1:1:1")), CAP,
     '0\t7795\t{"pid":7795,"comm":"curl","saddr":"1::2:3:0:0:4","daddr":"2001:db8:0:1:1:1:1:1",'
     '"sport":44124,"dport":8000,"latency_us":251.323,"label":"prod"}'),
    (event(family=10, saddr=v6("::"), daddr=v6("fe80::")), CAP,
     '0\t7795\t{"pid":7795,"comm":"curl","saddr":"::","daddr":"fe80::",'
     '"sport":44124,"dport":8000,"latency_us":251.323,"label":"prod"}'),
    # a comm needing escapes, and one of 16 bytes without a NUL; the largest numbers
    (event(comm=b'a"b\\c\x01\xff\x7f'), CAP,
     '0\t7795\t{"pid":7795,"comm":"a\\"b\\\\c\\u0001\\u00ff\\u007f","saddr":"127.0.0.1",'
     '"daddr":"10.1.2.3","sport":44124,"dport":8000,"latency_us":251.323,"label":"prod"}'),
    (event(comm=b"abcdefghijklmnop", pid=2**32 - 1, delta_ns=2**64 - 1, sport=65535, dport=0), CAP,
     '0\t4294967295\t{"pid":4294967295,"comm":"abcdefghijklmnop","saddr":"127.0.0.1",'
     '"daddr":"10.1.2.3","sport":65535,"dport":0,"latency_us":18446744073709551.615,'
     '"label":"prod"}'),
    (event(delta_ns=0), CAP, "1\t\t"),               # dropped: no latency measured
    (event()[:71], CAP, "-1\t\t"),                   # shorter than struct connlat_event
    (event(), 40, "-1\t\t"),                         # a record larger than the buffer: an error
    (event() + b"\x00" * 8, CAP,                     # a longer event: its known prefix counts
     '0\t7795\t{"pid":7795,"comm":"curl","saddr":"127.0.0.1","daddr":"10.1.2.3",'
     '"sport":44124,"dport":8000,"latency_us":251.323,"label":"prod"}'),
]


def run_host(harness: Path, so: Path, initfile: str, stdin: bytes = b"",
             function: str = "process") -> subprocess.CompletedProcess:
    return subprocess.run([str(harness), str(so), initfile, function], input=stdin,
                          capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def libraries(home: Path, c_built: Built, go_built: Built,
              tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("libs")
    return {"c": stored(home, c_built, folder), "go": stored(home, go_built, folder)}


@needs_go
@needs_gcc
def test_c_and_go_processors_give_the_same_records(harness: Path, libraries: dict[str, Path],
                                                   manifest: Manifest) -> None:
    stdin = frames([(data, cap) for data, cap, _ in CASES])
    expected = ["abi 1", "init 0", *(line for _, _, line in CASES)]
    outputs = {}
    for language, so in libraries.items():
        done = run_host(harness, so, str(manifest.properties.initfile), stdin)
        assert done.returncode == 0, done.stderr.decode()
        outputs[language] = done.stdout.decode().splitlines()
    assert outputs["c"] == expected
    assert outputs["go"] == outputs["c"]


@needs_go
@needs_gcc
@pytest.mark.parametrize("initfile, label, rc", [
    (None, "", 0),
    ("label = staging  \n# a comment\n\nlabel=eu \"west\"\\1\n", 'eu \\"west\\"\\\\1', 0),
    ("label=prod\nregion=eu\n", None, -1),
    ("no equals sign\n", None, -1),
    ("label=" + "x" * 64 + "\n", None, -1),
    ("missing", None, -1),
])
def test_c_and_go_processors_read_the_initfile_alike(harness: Path, libraries: dict[str, Path],
                                                     tmp_path: Path, initfile: str | None,
                                                     label: str | None, rc: int) -> None:
    path = "-" if initfile is None else str(tmp_path / "connlat.ini")
    if initfile not in (None, "missing"):
        (tmp_path / "connlat.ini").write_text(initfile)
    outputs = {}
    for language, so in libraries.items():
        done = run_host(harness, so, path, frames([(event(), CAP)]) if rc == 0 else b"")
        assert done.returncode == 0, done.stderr.decode()
        outputs[language] = done.stdout.decode().splitlines()
        if rc:  # the processor says why, on its stderr
            assert done.stderr.decode().startswith("tcp_connlat_user: "), (language, done.stderr)
    assert outputs["c"][1] == f"init {rc}"
    if rc == 0:
        assert outputs["c"][2].endswith(f'"label":"{label}"}}')
    assert outputs["go"] == outputs["c"]
