"""Signed artifacts on a node with an offline trust root, in the running kernel. Each test has
its own home (a trust root there would bind every other test) and runs `bpfdepot run` under
`unshare -n`: no network at all, so nothing can be fetched. The subject is a plain libbpf
program (tests/kernel/bundles/agent_calls)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.kernel.conftest import ROOT, cli_env, prog_names

CALLS = ROOT / "tests" / "kernel" / "bundles" / "agent_calls"

if not shutil.which("unshare"):
    pytest.skip("unshare (util-linux) is needed to run without network", allow_module_level=True)


class Node:
    """A home with keys, a trust root and the bundle built and signed by the artifacts key."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.home = tmp, tmp / "home"
        self.bundle = tmp / "bundle"
        shutil.copytree(CALLS, self.bundle)
        for name in ("root", "root2", "art", "lock", "evil"):
            self.ok("keys", "generate", str(self.key(name)))
        self.ok("keys", "root-init", "-o", str(tmp / "v1.json"), "--root", str(self.key("root")),
                "--artifacts", str(self.key("art")), "--locks", str(self.key("lock")))
        self.ok("keys", "trust", str(tmp / "v1.json"))
        built = self.ok("build", str(self.bundle), env={"BPFDEPOT_SIGNING_KEY": str(self.key("art"))})
        self.meta = built.split()[-1]

    def key(self, name: str) -> Path:
        return self.tmp / f"{name}.pem"

    def cli(self, *args: str, env: dict[str, str] | None = None,
            offline: bool = False) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "builder.cli", *args]
        return subprocess.run((["unshare", "-n"] if offline else []) + cmd, cwd=ROOT,
                              env=cli_env(self.home, **(env or {})), capture_output=True,
                              text=True, timeout=120)

    def ok(self, *args: str, env: dict[str, str] | None = None) -> str:
        out = self.cli(*args, env=env)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def run(self, *extra: str) -> subprocess.CompletedProcess[str]:
        """A short run of the bundle, offline, never compiling."""
        return self.cli("run", str(self.bundle), "--duration", "0.3", "--no-build",
                        "--set", f"target_tgid={os.getpid()}", *extra, offline=True)


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)


def _refused(out: subprocess.CompletedProcess[str], *words: str) -> None:
    assert out.returncode == 10, out.stderr
    for word in words:
        assert word in out.stderr, out.stderr
    assert "attached" not in out.stderr and "agent_calls" not in prog_names()


def test_a_signed_artifact_loads_offline_and_a_wrong_key_is_refused(node: Node) -> None:
    out = node.run()
    assert out.returncode == 0 and "attached" in out.stderr, out.stderr
    assert "signature good" in node.ok("verify", node.meta)
    signed = node.ok("sign", node.meta, "--key", str(node.key("evil")))  # a stranger's key
    evil = signed.split("signed by ")[1][:16]
    out = node.run()
    _refused(out, "program 'agent_calls': 0 valid artifacts signature(s), 1 needed",
             f"key {evil} is not one of the trust root's artifacts keys")
    out = node.run("--allow-unsigned")
    assert out.returncode == 0, out.stderr
    assert "--allow-unsigned: loading program 'agent_calls' without a valid signature" in out.stderr


def test_a_flipped_byte_is_refused(node: Node) -> None:
    blobs = sorted((node.home / "blobs" / "sha256").rglob("*"), key=lambda p: p.stat().st_size)
    envelope = next(p for p in blobs if p.is_file() and p.read_bytes().startswith(b'{"payload'))
    data = json.loads(envelope.read_text())
    sig = bytearray(data["signatures"][0]["sig"].encode())
    sig[5] = ord("A") if sig[5] != ord("A") else ord("B")
    data["signatures"][0]["sig"] = sig.decode()
    os.chmod(envelope, 0o644)
    envelope.write_text(json.dumps(data))  # the store now holds other bytes under its name
    out = node.run()
    assert out.returncode in (9, 10), out.stderr  # the store's digest check, or the signature
    assert "attached" not in out.stderr and "agent_calls" not in prog_names()


def test_an_expired_root_is_refused(node: Node) -> None:
    from loader.trust.keys import PrivateKey
    from loader.trust.root import make_root

    keys = {n: PrivateKey.load(node.key(n)) for n in ("root", "art", "lock")}
    old = make_root(version=1, expires=datetime.now(timezone.utc) - timedelta(seconds=5),
                    role_keys={"root": [keys["root"].public], "artifacts": [keys["art"].public],
                               "locks": [keys["lock"].public]}, signers=[keys["root"]])
    (node.home / "trust" / "root.json").write_text(json.dumps(old))
    _refused(node.run(), "trust root version 1 expired at", "(field 'expires')")


def test_rotation_follows_the_chain_only(node: Node) -> None:
    from loader.trust.keys import PrivateKey
    from loader.trust.root import make_root

    node.ok("keys", "root-rotate", "-o", str(node.tmp / "v2.json"), "--previous",
            str(node.tmp / "v1.json"), "--sign-with", str(node.key("root")),
            "--root", str(node.key("root2")), "--artifacts", str(node.key("art")),
            "--locks", str(node.key("lock")))
    keys = {n: PrivateKey.load(node.key(n)) for n in ("root2", "art", "lock")}
    alone = make_root(version=2, expires=datetime.now(timezone.utc) + timedelta(days=1),
                      role_keys={"root": [keys["root2"].public], "artifacts": [keys["art"].public],
                                 "locks": [keys["lock"].public]}, signers=[keys["root2"]])
    (node.tmp / "v2-alone.json").write_text(json.dumps(alone))
    out = node.cli("keys", "update", str(node.tmp / "v2-alone.json"), offline=True)
    assert out.returncode == 10 and "root (previous version) signature" in out.stderr, out.stderr
    assert "version 2" in node.ok("keys", "update", str(node.tmp / "v2.json"))
    assert "version 2" in node.ok("keys", "show")
    assert node.run().returncode == 0


def test_a_lock_must_be_signed_and_never_older(node: Node) -> None:
    node.ok("kernels", "register")
    node.ok("lock", str(node.bundle), "--kernels", "all")
    _refused(node.run("--locked"), "bpfdepot.lock is not signed")
    lock_key = {"BPFDEPOT_LOCK_KEY": str(node.key("lock"))}
    assert "version 3" in node.ok("sign", "--lock", str(node.bundle), "--version", "3", env=lock_key)
    out = node.run("--locked")
    assert out.returncode == 0 and "bpfdepot.lock: signed, version 3" in out.stderr, out.stderr
    node.ok("sign", "--lock", str(node.bundle), "--version", "2", env=lock_key)
    _refused(node.run("--locked"), "is version 2, older than version 3", "a rollback")
    node.ok("sign", "--lock", str(node.bundle), "--key", str(node.key("art")))  # wrong role
    _refused(node.run("--locked"), "is not one of the trust root's locks keys")


def test_an_unsigned_build_is_refused(node: Node) -> None:
    source = node.bundle / "agent_calls.bpf.c"
    source.write_text(source.read_text() + "/* built again, without the signing key */\n")
    node.ok("build", str(node.bundle))  # no BPFDEPOT_SIGNING_KEY
    _refused(node.run(), "program 'agent_calls'", "has no signature in the store")
