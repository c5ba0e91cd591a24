"""Manifests and artifacts from s3:// on a real Ceph radosgw: the talk's manifest and its files
uploaded to a bucket run from their s3:// URL; a pinned library with other bytes is refused."""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.farm.conftest import _bucket, cli, farm_env
from tests.kernel.conftest import Running
from tests.kernel.test_remote import CONNLAT, _talk
from tests.kernel.test_tcp_connlat_sinks import _check, _connect, _mine

FILES = ("tcp_connlat.bpf.c", "tcp_connlat.h", "tcp_connlat_user.c", "connlat.ini")


def _upload(env: dict[str, str], prefix: str, files: dict[str, bytes]) -> None:
    import boto3
    from botocore.config import Config

    s3 = boto3.client("s3", endpoint_url=env["BPFDEPOT_S3_ENDPOINT"],
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1",
                      config=Config(request_checksum_calculation="when_required"))
    for name, data in files.items():
        s3.put_object(Bucket="bpfdepot", Key=f"{prefix}/{name}", Body=data)


def test_the_talks_manifest_runs_from_s3(redis_service, rgw, tmp_path: Path) -> None:
    env = farm_env(redis_service, rgw, tmp_path / "home")
    env.pop("BPFDEPOT_STORE")  # the artifacts stay in the local store; only the bundle is in S3
    _bucket(env)
    prefix = f"bundles/{uuid.uuid4().hex[:8]}"
    files = {name: (CONNLAT / name).read_bytes() for name in FILES}
    files["manifest.yaml"] = _talk("file://./tcp_connlat_user.c").encode()
    _upload(env, prefix, files)
    url = f"s3://bpfdepot/{prefix}/manifest.yaml"
    run = Running(tmp_path / "home", url, tmp_path / "out.jsonl", env=env)
    assert f"{url}: fetched into" in run.stderr
    ports = _connect(2)
    done = run.stop()
    assert done.rc == 0, done.stderr
    _check(_mine(done.events), ports)

    missing = cli(env, "run", f"s3://bpfdepot/{prefix}/nothing.yaml", "--duration", "1")
    assert missing.returncode == 3 and "cannot fetch" in missing.stderr, missing.stderr
    pinned = _talk(f"s3://bpfdepot/{prefix}/tcp_connlat_user.c.so#sha256={'2' * 64}")
    _upload(env, prefix, {"pinned.yaml": pinned.encode(), "tcp_connlat_user.c.so": b"\x7fELF"})
    refused = cli(env, "run", f"s3://bpfdepot/{prefix}/pinned.yaml", "--duration", "1")
    assert refused.returncode == 3, refused.stderr
    assert "is not the pinned 2222222222222222" in refused.stderr
    assert "attached" not in refused.stderr
