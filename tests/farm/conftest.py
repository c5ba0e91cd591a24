"""Farm tests: a real redis-server, a real Ceph radosgw (S3) and real `bpfdepot worker`
processes, all on 127.0.0.1 and started here (tests/services.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.services import ROOT, Service, start_redis, start_rgw, start_workers

KERNELS = ROOT.parent / "shared" / "kernels"

_missing = [t for t in ("redis-server", "radosgw", "ceph-mon", "clang", "bpftool", "bwrap")
            if not shutil.which(t)]
if _missing:
    pytest.skip(f"farm tests need {', '.join(_missing)} (scripts/test installs them)",
                allow_module_level=True)
if os.geteuid() != 0:
    pytest.skip("farm tests start Ceph and sandboxes: run them as root", allow_module_level=True)


@pytest.fixture(scope="session")
def services_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def redis_service(services_dir: Path):
    service = start_redis(services_dir / "redis")
    yield service
    service.stop()


@pytest.fixture(scope="session")
def rgw(services_dir: Path):
    service = start_rgw(services_dir / "ceph")
    saved = dict(os.environ)
    os.environ.update(service.env)  # in-process boto3 clients find credentials the usual way
    yield service
    os.environ.clear()
    os.environ.update(saved)
    service.stop()


def farm_env(redis_service: Service, rgw: Service, home: Path, prefix: str | None = None,
             **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(rgw.env)
    env.update(BPFDEPOT_BROKER=redis_service.url, BPFDEPOT_HOME=str(home),
               BPFDEPOT_STORE=f"s3://bpfdepot/{prefix or uuid.uuid4().hex[:8]}",
               BPFDEPOT_VISIBILITY_TIMEOUT="6")
    env.update(extra)
    return env


def cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "builder.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def add_kernels(env: dict[str, str]) -> list[str]:
    """The reference kernels (when ../shared is here) and this machine's; their releases."""
    releases = []
    for btf in sorted(KERNELS.glob("*.btf")) if KERNELS.is_dir() else []:
        config = btf.with_suffix(".config")
        args = ["kernels", "add", "--btf", str(btf)] + (["--config", str(config)] if config.exists() else [])
        done = cli(env, *args)
        assert done.returncode == 0, done.stderr
        releases.append(btf.name.removesuffix(".btf"))
    done = cli(env, "kernels", "register")
    assert done.returncode == 0, done.stderr
    releases.append(os.uname().release)
    return releases


@pytest.fixture(scope="session")
def farm(redis_service: Service, rgw: Service, tmp_path_factory: pytest.TempPathFactory):
    """One S3 prefix with a kernel catalog and two worker processes of concurrency 2."""
    home = tmp_path_factory.mktemp("farm-home")
    env = farm_env(redis_service, rgw, home, prefix="farm")
    _bucket(env)
    releases = add_kernels(env)
    # this machine's kernel is registered: its workers load-test artifacts for it (a node)
    workers = start_workers({**env, "BPFDEPOT_LOAD_TEST_NODE": "1"}, count=1, concurrency=2,
                            logdir=home)
    yield {"env": env, "releases": releases, "workers": workers, "home": home}
    workers.stop()


def _bucket(env: dict[str, str]) -> None:
    import boto3
    from botocore.config import Config

    s3 = boto3.client("s3", endpoint_url=env["BPFDEPOT_S3_ENDPOINT"],
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1",
                      config=Config(request_checksum_calculation="when_required"))
    try:
        s3.create_bucket(Bucket="bpfdepot")
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass


def copy_bundle(name: str, dest: Path) -> Path:
    out = dest / name
    shutil.copytree(ROOT / "bpf" / name, out)
    return out


def slow_bundle(dest: Path, statements_log2: int, tag: str) -> Path:
    """A valid program whose compile takes seconds: 2**N statements in one function."""
    bundle = dest / f"slow_{tag}"
    bundle.mkdir(parents=True)
    body = "#define E0 g = g * 3 + 1;\n" + "".join(
        f"#define E{i} E{i - 1} E{i - 1}\n" for i in range(1, statements_log2 + 1))
    (bundle / "slow.bpf.c").write_text(
        f"// SPDX-License-Identifier: GPL-2.0\n/* {tag} */\n#include \"vmlinux.h\"\n"
        "#include <bpf/bpf_helpers.h>\n" + body +
        "unsigned long g;\nSEC(\"tp/syscalls/sys_enter_getppid\")\n"
        f"int slow(void *ctx) {{ E{statements_log2} return 0; }}\n"
        "char LICENSE[] SEC(\"license\") = \"GPL\";\n")
    (bundle / "manifest.yaml").write_text(
        f"kind: ebpfprogram\nname: slow_{tag}\nspec:\n  programs:\n    - name: slow\n"
        "      path: file://./slow.bpf.c\n      type: ebpf_object\n")
    return bundle
