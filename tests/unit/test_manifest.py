"""parse_manifest / load_bundle: the good example, and one test per error (text and line)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from loader.errors import ManifestError
from loader.outputs import output_kinds
from loader.model.manifest import (
    ChannelSpec,
    EventRoute,
    FunctionSpec,
    Manifest,
    ProgramSpec,
    Properties,
    StorageSpec,
    load_bundle,
    parse_manifest,
)

# The example of DESIGN.md, "The manifest", verbatim (line numbers matter below).
GOOD = """\
kind: ebpfprogram
name: tcp_connlat
description: TCP connect latency
version: "0.1"
author: someone
spec:
  programs:
    - name: tcp_connlat                 # kernel side
      path: file://./tcp_connlat.bpf.c  # source or prebuilt; file://, http(s)://, s3://
      type: ebpf_object                 # ebpf_object | user_so | bpftrace_object
    - name: tcp_connlat_user            # user-space processor library
      path: file://./tcp_connlat_user.c # C or Go source, or a prebuilt .so
      type: user_so
  properties:
    initfile: ./connlat.ini             # handed to the library's init function
    functions:
      - name: process                   # called per event ("default" = the processing function)
        type: default                   # also: init, pre, post
  channels:
    tcp_connlat_events:                 # a map in the kernel object (ring buffer, perf buffer, ...)
      type: ring_buffer
      events:
        - name: tcp_connlat_user        # the user_so program that consumes this channel
          hash: pid                     # key that shards events across processor workers / partitions
          target_processor: process
          storage:
            kafka: true                 # per-event override of the global storage settings
            file: true
            tsdb: true
"""

FILES = ("tcp_connlat.bpf.c", "tcp_connlat_user.c", "connlat.ini")


def bundle(folder: Path, text: str = GOOD, files: tuple[str, ...] = FILES) -> Path:
    """Write a manifest and empty stand-ins for the files it names; return the manifest's path."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in files:
        (folder / name).write_text("")
    manifest = folder / "manifest.yaml"
    manifest.write_text(text)
    return manifest


def edited(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new, 1)


def fails(manifest: Path) -> ManifestError:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(manifest)
    return caught.value


def test_design_example_parses_into_the_model(tmp_path: Path) -> None:
    manifest = bundle(tmp_path)
    root = tmp_path.resolve()
    expected = Manifest(
        kind="ebpfprogram",
        name="tcp_connlat",
        description="TCP connect latency",
        version="0.1",
        author="someone",
        programs=(
            ProgramSpec(
                name="tcp_connlat", path="file://./tcp_connlat.bpf.c", type="ebpf_object",
                scheme="file", local_path=root / "tcp_connlat.bpf.c", is_source=True, line=8,
            ),
            ProgramSpec(
                name="tcp_connlat_user", path="file://./tcp_connlat_user.c", type="user_so",
                scheme="file", local_path=root / "tcp_connlat_user.c", is_source=True, line=11,
            ),
        ),
        properties=Properties(
            initfile=root / "connlat.ini",
            functions=(FunctionSpec(name="process", type="default", line=17),),
        ),
        channels=(
            ChannelSpec(
                name="tcp_connlat_events", type="ring_buffer", event=None, line=20,
                events=(
                    EventRoute(
                        name="tcp_connlat_user", hash="pid", target_processor="process",
                        storage=StorageSpec(kafka=True, file=True, tsdb=True), line=23,
                    ),
                ),
            ),
        ),
        path=root / "manifest.yaml",
        root=root,
        raw=GOOD.encode(),
    )  # fmt: skip
    parsed = parse_manifest(manifest)
    assert parsed == expected
    assert parsed.text_digest == hashlib.sha256(GOOD.encode()).hexdigest()
    assert parsed.kernel_programs == (expected.programs[0],)
    assert parsed.program("tcp_connlat_user") is parsed.programs[1]
    assert load_bundle(tmp_path) == expected
    assert load_bundle(str(manifest)) == expected


def test_optional_parts_default_and_remote_paths_have_no_local_path(tmp_path: Path) -> None:
    text = """\
kind: ebpfprogram
name: remote-one
spec:
  programs:
    - {name: k, path: "https://artifacts.example/k.bpf.o?sig=1", type: ebpf_object}
    - {name: u, path: s3://bucket/u/u.so, type: user_so}
    - {name: c, path: file://./sub/c.bpf.c, type: ebpf_object}
  channels:
    events: {type: ring_buffer, event: event}
"""
    (tmp_path / "sub").mkdir()
    parsed = parse_manifest(bundle(tmp_path, text, files=("sub/c.bpf.c",)))
    assert (parsed.description, parsed.version, parsed.author) == ("", "", "")
    assert parsed.properties == Properties(initfile=None, functions=())
    assert [(p.scheme, p.local_path, p.is_source) for p in parsed.programs] == [
        ("https", None, False),
        ("s3", None, False),
        ("file", tmp_path.resolve() / "sub" / "c.bpf.c", True),
    ]
    assert parsed.channels == (
        ChannelSpec(name="events", type="ring_buffer", event="event", events=(), line=9),
    )


def test_a_bpftrace_object_is_a_program_of_its_own_kind(tmp_path: Path) -> None:
    """A bpftrace_object used to be parsed and then silently skipped; now it runs (and a .bt
    given another type is refused by its suffix)."""
    text = ("kind: ebpfprogram\nname: bt\nspec:\n  programs:\n"
            "    - {name: t, path: file://./t.bt, type: bpftrace_object}\n")
    program = parse_manifest(bundle(tmp_path, text, files=("t.bt",))).program("t")
    assert (program.type, program.is_source) == ("bpftrace_object", True)
    wrong = bundle(tmp_path / "wrong", text.replace("bpftrace_object", "user_so"), files=("t.bt",))
    assert "type user_so takes .c, .go or .so" in fails(wrong).message


def test_program_lookup_names_the_known_programs(tmp_path: Path) -> None:
    parsed = parse_manifest(bundle(tmp_path))
    with pytest.raises(ManifestError) as caught:
        parsed.program("tcp_conlat")
    assert caught.value.message == (
        f"{parsed.path}: no program 'tcp_conlat' (known: tcp_connlat, tcp_connlat_user)"
    )
    assert caught.value.hint == "did you mean 'tcp_connlat'?"


def test_malformed_yaml(tmp_path: Path) -> None:
    manifest = bundle(tmp_path, edited('description: TCP connect latency', 'description: [TCP'))
    err = fails(manifest)
    assert err.message == f"{manifest}:4: not valid YAML: expected ',' or ']', but got ':'"
    assert err.hint.startswith("check indentation and quoting near line 4")
    assert err.exit_code == 2


def test_tabs_get_their_own_hint(tmp_path: Path) -> None:
    manifest = bundle(tmp_path, edited("  programs:", "\tprograms:"))
    err = fails(manifest)
    assert err.message == (
        f"{manifest}:7: not valid YAML: found character '\\t' that cannot start any token"
    )
    assert err.hint.startswith("YAML does not allow tabs for indentation: use spaces near line 7")


def test_unknown_top_level_key_suggests(tmp_path: Path) -> None:
    manifest = bundle(tmp_path, edited("author: someone", "authr: someone"))
    err = fails(manifest)
    assert err.message == f"{manifest}:5: unknown key 'authr' at the top level"
    assert err.hint == "did you mean 'author'?"


def test_unknown_key_without_close_match_lists_the_allowed_keys(tmp_path: Path) -> None:
    manifest = bundle(tmp_path, edited("author: someone", "zzz: 1"))
    assert fails(manifest).hint == (
        "allowed keys here: kind, name, spec, description, version, author"
    )


def test_unknown_key_in_spec(tmp_path: Path) -> None:
    manifest = bundle(tmp_path, edited("  channels:", "  chanels:"))
    err = fails(manifest)
    assert err.message == f"{manifest}:19: unknown key 'chanels' in spec"
    assert err.hint == "did you mean 'channels'?"


def test_unknown_program_type(tmp_path: Path) -> None:
    manifest = bundle(tmp_path, edited("type: ebpf_object ", "type: ebpf_objekt "))
    err = fails(manifest)
    assert err.message == (
        f"{manifest}:10: unknown type 'ebpf_objekt' in spec.programs[0]; "
        "expected one of: bpftrace_object, ebpf_object, user_so"
    )
    assert err.hint == "did you mean 'ebpf_object'?"


def test_version_as_a_number(tmp_path: Path) -> None:
    manifest = bundle(tmp_path, edited('version: "0.1"', "version: 0.1"))
    err = fails(manifest)
    assert err.message == f"{manifest}:4: 'version' must be a string, got a number"
    assert err.hint == 'quote it: version: "0.1"'


def test_missing_spec(tmp_path: Path) -> None:
    manifest = bundle(tmp_path, GOOD[: GOOD.index("spec:")])
    err = fails(manifest)
    assert err.message == f"{manifest}:1: 'spec' is missing"


def test_missing_key_names_the_enclosing_mapping(tmp_path: Path) -> None:
    manifest = bundle(tmp_path, edited("      type: user_so\n", ""))
    assert fails(manifest).message == f"{manifest}:11: 'type' is missing in spec.programs[1]"


def test_missing_file(tmp_path: Path) -> None:
    manifest = bundle(tmp_path, files=("tcp_connlat_user.c", "connlat.ini"))
    err = fails(manifest)
    root = tmp_path.resolve()
    assert err.message == (
        f"{manifest}:9: program 'tcp_connlat': file not found: {root / 'tcp_connlat.bpf.c'}"
    )
    assert err.hint == f"check the path; relative file:// paths resolve against {root}"


def test_missing_initfile(tmp_path: Path) -> None:
    manifest = bundle(tmp_path, files=FILES[:2])
    err = fails(manifest)
    assert err.message == (
        f"{manifest}:15: initfile: file not found: {tmp_path.resolve() / 'connlat.ini'}"
    )


@pytest.mark.parametrize(
    "written", ["file://../outside.bpf.c", "file://./sub/../../outside.bpf.c", "file://{out}"]
)
def test_path_escaping_the_bundle(tmp_path: Path, written: str) -> None:
    outside = tmp_path / "outside.bpf.c"
    outside.write_text("")  # it exists: escaping must fail for that reason, not as "not found"
    written = written.format(out=outside.resolve())
    manifest = bundle(tmp_path / "b", edited("file://./tcp_connlat.bpf.c", written))
    err = fails(manifest)
    assert err.message == (
        f"{manifest}:9: program 'tcp_connlat': '{written}' points outside the manifest's folder "
        f"{(tmp_path / 'b').resolve()}"
    )


def test_symlink_escaping_the_bundle(tmp_path: Path) -> None:
    outside = tmp_path / "secret.bpf.c"
    outside.write_text("")
    manifest = bundle(tmp_path / "b", files=FILES[1:])
    (tmp_path / "b" / "tcp_connlat.bpf.c").symlink_to(outside)
    err = fails(manifest)
    assert err.message == (
        f"{manifest}:9: program 'tcp_connlat': 'file://./tcp_connlat.bpf.c' is a link to "
        f"{outside.resolve()}, outside the manifest's folder {(tmp_path / 'b').resolve()}"
    )


def test_path_without_scheme(tmp_path: Path) -> None:
    manifest = bundle(tmp_path, edited("file://./tcp_connlat.bpf.c", "./tcp_connlat.bpf.c"))
    err = fails(manifest)
    assert err.message == (
        f"{manifest}:9: program 'tcp_connlat': path './tcp_connlat.bpf.c' has no scheme"
    )
    assert err.hint == "write a URL, e.g. path: file://./tcp_connlat.bpf.c"


def test_event_route_naming_an_unknown_processor(tmp_path: Path) -> None:
    manifest = bundle(tmp_path, edited("target_processor: process", "target_processor: proces"))
    err = fails(manifest)
    assert err.message == (
        f"{manifest}:25: target_processor 'proces' in "
        "spec.channels.tcp_connlat_events.events[0] is not a function in spec.properties.functions"
    )
    assert err.hint == "did you mean 'process'?"


def test_event_route_must_name_a_user_so_program(tmp_path: Path) -> None:
    manifest = bundle(
        tmp_path, edited("- name: tcp_connlat_user        #", "- name: tcp_connlat #")
    )
    err = fails(manifest)
    assert err.message == (
        f"{manifest}:23: spec.channels.tcp_connlat_events.events[0] names program "
        "'tcp_connlat', which is of type ebpf_object; events go to a user_so program"
    )
    assert err.hint == "did you mean 'tcp_connlat_user'?"


def test_duplicate_key(tmp_path: Path) -> None:
    manifest = bundle(tmp_path, edited("            file: true\n", "            kafka: false\n"))
    err = fails(manifest)
    assert err.message == (
        f"{manifest}:28: duplicate key 'kafka' in "
        "spec.channels.tcp_connlat_events.events[0].storage (first at line 27)"
    )
    assert err.hint == "keep one of them: YAML would silently use only the last"


def test_duplicate_program_name(tmp_path: Path) -> None:
    manifest = bundle(tmp_path, edited("- name: tcp_connlat_user   ", "- name: tcp_connlat   "))
    err = fails(manifest)
    assert err.message == (
        f"{manifest}:11: program name 'tcp_connlat' is used twice (first at line 8)"
    )


def test_type_suffix_mismatch(tmp_path: Path) -> None:
    manifest = bundle(tmp_path, edited("file://./tcp_connlat.bpf.c", "file://./tcp_connlat.c"))
    err = fails(manifest)
    assert err.message == (
        f"{manifest}:9: program 'tcp_connlat': type ebpf_object takes .bpf.c, .bpf.o or .o, "
        "but path 'file://./tcp_connlat.c' ends in .c (a suffix of user_so)"
    )
    assert err.hint == "set type: user_so, or point path at a .bpf.c, .bpf.o or .o file"


def test_unknown_suffix(tmp_path: Path) -> None:
    manifest = bundle(tmp_path, edited("file://./tcp_connlat_user.c", "file://./user.txt"))
    err = fails(manifest)
    assert err.message == (
        f"{manifest}:12: program 'tcp_connlat_user': cannot tell from its suffix what "
        "'file://./user.txt' is; accepted: .bt .bpf.c .c .go (sources), .bpf.o .o .so (built)"
    )
    assert err.hint == "type user_so takes .c, .go or .so"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("kind: ebpfprogram", "kind: ebpfprog",
         "1: kind 'ebpfprog' is not supported; expected 'ebpfprogram'"),
        ("name: tcp_connlat\n", "name: TCP connlat\n",
         "2: manifest name 'TCP connlat' is not valid: use up to 64 lowercase letters, digits, "
         "'_' and '-', starting with a letter or digit"),
        ("    tcp_connlat_events:", "    tcp-connlat-events:",
         "20: channel name 'tcp-connlat-events' is not a C identifier"),
        ("      type: ring_buffer", "      type: ringbuf",
         "21: unknown type 'ringbuf' in spec.channels.tcp_connlat_events; "
         f"expected one of: {', '.join(output_kinds())}"),  # every registered kind
        ("            tsdb: true", "            tsdb: \"yes\"",
         "29: 'tsdb' in spec.channels.tcp_connlat_events.events[0].storage "
         "must be true or false, got a string"),
        ("        type: default ", "        type: init ",
         "25: target_processor 'process' in spec.channels.tcp_connlat_events.events[0] "
         "is the init function"),
        ("      type: user_so", "      type: user_so\n  properties: {}",
         "15: duplicate key 'properties' in spec (first at line 14)"),
    ],
)  # fmt: skip
def test_other_errors(tmp_path: Path, old: str, new: str, message: str) -> None:
    manifest = bundle(tmp_path, edited(old, new))
    assert fails(manifest).message == f"{manifest}:{message}"


def test_empty_program_list(tmp_path: Path) -> None:
    manifest = bundle(tmp_path, "kind: ebpfprogram\nname: x\nspec:\n  programs: []\n")
    assert fails(manifest).message == f"{manifest}:4: 'programs' in spec is empty"


def test_not_a_mapping(tmp_path: Path) -> None:
    manifest = bundle(tmp_path, "- kind: ebpfprogram\n")
    err = fails(manifest)
    assert err.message == f"{manifest}:1: the manifest must be a mapping, got a list"


def test_empty_manifest(tmp_path: Path) -> None:
    manifest = bundle(tmp_path, "# nothing yet\n")
    assert fails(manifest).message == f"{manifest}:1: the manifest is empty"


def test_load_bundle_on_a_folder_without_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as caught:
        load_bundle(tmp_path)
    assert caught.value.message == (
        f"{tmp_path}: no manifest in this folder (looked for manifest.yaml, manifest.yml)"
    )


def test_load_bundle_finds_manifest_yml(tmp_path: Path) -> None:
    bundle(tmp_path).rename(tmp_path / "manifest.yml")
    assert load_bundle(tmp_path).path == tmp_path.resolve() / "manifest.yml"


def test_load_bundle_on_a_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as caught:
        load_bundle(tmp_path / "nope")
    assert caught.value.message == f"{tmp_path / 'nope'}: no such bundle folder or manifest file"


@pytest.mark.parametrize("key, value", [("cflags", "[-fplugin=/tmp/evil.so]"), ("flags", "['-I/']"),
                                        ("env", "{CC: /tmp/evil}"), ("args", "['@/etc/passwd']")])
def test_a_manifest_cannot_carry_compiler_flags(tmp_path: Path, key: str, value: str) -> None:
    """Flags are made by the builder; any key that could carry them is unknown, hence refused."""
    (tmp_path / "x.bpf.c").write_text("")
    (tmp_path / "manifest.yaml").write_text(
        "kind: ebpfprogram\nname: x\nspec:\n  programs:\n    - name: x\n"
        f"      path: file://./x.bpf.c\n      type: ebpf_object\n      {key}: {value}\n")
    with pytest.raises(ManifestError) as caught:
        load_bundle(tmp_path)
    assert caught.value.message.endswith(f"manifest.yaml:8: unknown key '{key}' in spec.programs[0]")


def test_a_manifest_nested_600_deep_is_a_manifest_error(tmp_path: Path) -> None:
    """PyYAML composes recursively: a 2 KB manifest used to end in a RecursionError traceback."""
    path = tmp_path / "manifest.yaml"
    path.write_text("kind: ebpfprogram\nname: x\nspec:\n  programs: " + "[" * 600 + "]" * 600 + "\n")
    with pytest.raises(ManifestError) as caught:
        load_bundle(tmp_path)
    assert caught.value.message == f"{path}: not valid YAML: nested too deeply for a manifest"
    assert caught.value.exit_code == 2


def test_a_manifest_over_one_mib_is_refused_before_parsing(tmp_path: Path) -> None:
    path = bundle(tmp_path)
    with path.open("a") as f:
        f.write("# " + "x" * (1 << 20) + "\n")
    size = path.stat().st_size
    with pytest.raises(ManifestError) as caught:
        load_bundle(path)
    assert caught.value.message == f"{path}: the manifest is {size:,} bytes, over the limit of 1,048,576"


@pytest.mark.parametrize("special, kind", [("/dev/zero", "a device"), ("fifo", "a FIFO")])
def test_a_manifest_that_is_not_a_regular_file_is_refused(tmp_path: Path, special: str, kind: str) -> None:
    """/dev/zero used to end in MemoryError and a FIFO to hang: both are refused unread."""
    path = Path(special)
    if special == "fifo":
        path = tmp_path / "manifest.yaml"
        os.mkfifo(path)  # no writer: a blocking open would hang here
    with pytest.raises(ManifestError) as caught:
        load_bundle(path)
    assert caught.value.message == f"{path}: the manifest is not a regular file ({kind})"


def test_spec_filter_is_kept_as_text_for_the_run_to_check(tmp_path: Path) -> None:
    (tmp_path / "p.bpf.c").write_text("")
    path = tmp_path / "manifest.yaml"
    path.write_text("kind: ebpfprogram\nname: f\nspec:\n  filter:\n    units: [shop-api.service]\n"
                    "    pids: [4242]\n  programs:\n    - name: p\n      path: file://./p.bpf.c\n"
                    "      type: ebpf_object\n")
    assert load_bundle(path).filter == {"units": ("shop-api.service",), "pids": ("4242",)}
    path.write_text(path.read_text().replace("pids: [4242]", "pids: [me]"))
    with pytest.raises(ManifestError, match=r"manifest.yaml:6: spec.filter.pids holds process ids"):
        load_bundle(path)
    path.write_text(path.read_text().replace("pids: [me]", "pod: [x]"))
    with pytest.raises(ManifestError, match="unknown key 'pod' in spec.filter"):
        load_bundle(path)
