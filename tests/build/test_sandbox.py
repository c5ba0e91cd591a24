"""The canary: a secret file on the worker never reaches an error, a log or an artifact, whatever
a bundle's source tries; and the sandbox itself shows clang nothing of the host."""

from __future__ import annotations

import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from builder import compile as compile_module
from builder.compile import Target, build_program
from builder.sandbox import BWRAP, Limits, run_sandboxed
from builder.toolchain import find_toolchain
from loader.errors import BuildError
from loader.kernel.probe import KernelIdentity, file_digest
from loader.model.manifest import load_bundle
from loader.artifacts.store import LocalStore

ROOT = Path(__file__).resolve().parents[2]
BTF = Path("/sys/kernel/btf/vmlinux")
OUTSIDE = "outside its bundle and the toolchain's headers"  # a file clang read
NOT_READ = "outside its bundle: the build sees only the bundle"  # a file clang could not open

pytestmark = pytest.mark.skipif(not BWRAP.exists(), reason="bubblewrap is not installed "
                                "(apt-get install bubblewrap)")


@dataclass(frozen=True)
class Canary:
    path: Path  # the secret on the worker, outside every bundle
    near: Path  # a copy next to the bundle's folder
    secret: str  # the content: in no error, log or artifact, ever


@pytest.fixture
def canary(tmp_path: Path):
    if not BTF.exists():
        pytest.skip("this kernel exposes no BTF")
    # The content is a C identifier: a compile that read it would quote it in an error.
    secret = f"bpfdepot_secret_{secrets.token_hex(16)}"
    path = Path(f"/root/.bpfdepot-canary-{secrets.token_hex(8)}")  # its name is no secret
    try:
        path.write_text(secret + "\n")
    except OSError as err:
        pytest.skip(f"cannot write the canary {path}: {err.strerror} (run as root)")
    near = tmp_path / "canary"
    near.write_text(secret + "\n")
    try:
        yield Canary(path=path, near=near, secret=secret)
    finally:
        path.unlink()


def _build(home: Path, bundle: Path):
    manifest = load_bundle(bundle)
    target = Target(identity=KernelIdentity(release="running", arch="x86_64",
                                            btf_digest=file_digest(BTF)), btf=BTF)
    return build_program(LocalStore(home), manifest, manifest.kernel_programs[0], target,
                         find_toolchain(home / "cache"), home / "cache")


def _attack(tmp_path: Path, attack: str) -> Path:
    """tcp_connlat with ``attack`` before its first line."""
    bundle = tmp_path / "bundle"
    shutil.copytree(ROOT / "bpf" / "tcp_connlat", bundle)
    source = bundle / "tcp_connlat.bpf.c"
    source.write_text(attack + source.read_text())
    return bundle


def _assert_no_secret(canary: Canary, home: Path, err: BuildError | None) -> None:
    if err is not None:
        for text in (err.message, err.detail, err.hint, str(err)):
            assert canary.secret not in text
    for path in home.rglob("*"):  # blobs, refs, caches and any scratch left behind
        if path.is_file():
            assert canary.secret.encode() not in path.read_bytes(), path
    assert not list((home / "tmp").glob("build-*"))  # no scratch folder stays


# (attack, how the build ends: the message, or None when it builds without the secret).
# The home folder is tmp_path/home, so the host's scratch is tmp_path/home/tmp/build-*/ and
# the source is in its src/: "../../../../canary" from there is the copy next to the bundle.
ATTACKS = {
    "absolute": ('#include "{path}"\n', "program 'tcp_connlat' includes {path}, " + NOT_READ),
    "dotdot": ('#include "../canary"\n', "program 'tcp_connlat' includes {near}, " + NOT_READ),
    "dotdot-from-scratch": ('#include "../../../../canary"\n', "program 'tcp_connlat' includes "),
    "digraph": ('%:include "{path}"\n', "program 'tcp_connlat' includes {path}, " + NOT_READ),
    "continuation": ('#inc\\\nlude "{path}"\n', "program 'tcp_connlat' includes {path}, " + NOT_READ),
    "incbin": ('asm(".pushsection .rodata.stolen,\\"a\\"\\n.incbin \\"{path}\\"\\n.popsection");\n',
               "program 'tcp_connlat' includes {path}, " + NOT_READ),
    "has_include": ('#if __has_include("{path}") || __has_include("../canary")\n'
                    '#error the canary is visible\n#endif\n', None),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_canary_never_leaks(tmp_path: Path, canary: Canary, name: str) -> None:
    attack, expected = ATTACKS[name]
    bundle = _attack(tmp_path, attack.format(path=canary.path))
    home = tmp_path / "home"
    try:
        built, err = _build(home, bundle), None
    except BuildError as caught:
        built, err = None, caught
    _assert_no_secret(canary, home, err)  # first: whatever happened, nothing leaked
    if expected is None:
        assert err is None and not built.cached  # built, and the canary was not there to see
    else:
        assert err is not None, f"built {built.meta.digest}"
        assert err.message.startswith(expected.format(path=canary.path, near=canary.near))
        assert err.hint == "include only files inside the bundle or from bpf/include"


def test_devices_time_out_and_the_next_build_works(tmp_path: Path, canary: Canary,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compile_module, "BUILD_LIMITS", Limits(wall_s=3))
    home = tmp_path / "home"
    # clang 14 trusts st_size, so /dev/random reads as an empty header (no endless read); the
    # dependency check refuses it.
    with pytest.raises(BuildError) as caught:
        _build(home, _attack(tmp_path / "random", "#include </dev/random>\n"))
    assert caught.value.message == f"program 'tcp_connlat' reads /dev/random, {OUTSIDE}"
    # A read that never ends: clang's own stdout pipe, which nobody writes to.
    started = time.monotonic()
    with pytest.raises(BuildError) as caught:
        _build(home, _attack(tmp_path / "stdout", '#include "/dev/stdout"\n'))
    assert caught.value.message == ("clang took longer than 3 s (the wall-clock limit) on "
                                    "'tcp_connlat' for running/x86_64")
    assert time.monotonic() - started < 10
    _assert_no_secret(canary, home, caught.value)
    built = _build(home, ROOT / "bpf" / "tcp_connlat")  # right after: nothing is stuck
    assert not built.cached and built.seconds < 3


def test_a_preprocessor_bomb_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not BTF.exists():
        pytest.skip("this kernel exposes no BTF")
    monkeypatch.setattr(compile_module, "BUILD_LIMITS", Limits(wall_s=2))
    bomb = "#define A0 1+\n" + "".join(f"#define A{i} A{i - 1} A{i - 1}\n" for i in range(1, 40))
    with pytest.raises(BuildError) as caught:
        _build(tmp_path / "home", _attack(tmp_path, bomb + "#if A39 1\n#endif\n"))
    assert caught.value.message.startswith("clang took longer than 2 s (the wall-clock limit)")


# -- the sandbox itself -------------------------------------------------------------------------

def test_the_sandbox_shows_nothing_of_the_host(tmp_path: Path, canary: Canary) -> None:
    (tmp_path / "in.txt").write_text("mine\n")
    script = (f"cat {canary.path} ../canary; ls -A / /etc /tmp; cat /etc/hostname in.txt; env; "
              "echo made > out.txt; cat /proc/net/dev | tail -n +3 | cut -d: -f1; "
              "touch /usr/x /etc/x 2>&1 | sed 's/.*: //'")
    out = run_sandboxed(["/bin/sh", "-c", script], workdir=tmp_path, limits=Limits())
    assert canary.secret.encode() not in out.stdout + out.stderr
    text = out.stdout.decode()
    assert text == ("/:\nbin\ndev\netc\nlib\nlib64\nproc\nsbin\ntmp\nusr\nwork\n\n"
                    "/etc:\ngroup\nhostname\npasswd\n\n/tmp:\n"
                    "bpfdepot-sandbox\nmine\n"
                    "PATH=/usr/bin:/bin\nLC_ALL=C\nPWD=/work\n"
                    "    lo\n"  # a network namespace of its own: loopback only (and down)
                    "Read-only file system\nRead-only file system\n")
    assert f"cat: {canary.path}: No such file or directory" in out.stderr.decode()
    assert (tmp_path / "out.txt").read_text() == "made\n"  # the workdir is /work, writable


def test_limits(tmp_path: Path) -> None:
    started = time.monotonic()
    out = run_sandboxed(["/bin/sh", "-c", "sleep 60 & cat /dev/zero"], workdir=tmp_path,
                        limits=Limits(wall_s=1, log_bytes=1000))
    assert out.timed_out and time.monotonic() - started < 5
    assert out.stdout.startswith(bytes(1000)) and out.stdout.endswith(b" bytes cut]\n")
    assert len(out.stdout) < 1100
    out = run_sandboxed(["/bin/sh", "-c", "head -c 5000 /dev/zero > big"], workdir=tmp_path,
                        limits=Limits(output_bytes=4096))
    assert (tmp_path / "big").stat().st_size == 4096 and out.returncode != 0
    out = run_sandboxed(["/bin/sh", "-c", "while :; do :; done"], workdir=tmp_path,
                        limits=Limits(cpu_s=1, wall_s=20))
    assert not out.timed_out and out.returncode == 128 + 9  # bwrap: killed by SIGKILL
