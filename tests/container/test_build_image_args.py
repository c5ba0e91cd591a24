"""scripts/build-image refuses what it must not pass on, before it installs or builds anything.
(These need no podman and run by default; the image itself is tests/container/test_worker_image.py.)"""

from __future__ import annotations

import resource
import subprocess
from pathlib import Path

import pytest

from tests.services import ROOT

BUILD_IMAGE = ROOT / "scripts" / "build-image"


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BUILD_IMAGE), *args], capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env}, check=False)


@pytest.mark.parametrize("tag", ["--rm", "Worker", "a b", "x:-y", "../up", "w;id"])
def test_a_tag_that_is_not_an_image_name_is_refused(tag: str) -> None:
    done = _run("--tag", tag)
    assert done.returncode == 1
    assert done.stderr.startswith(f"build-image: '{tag}' is not an image name")


def test_an_unknown_argument_prints_the_usage() -> None:
    done = _run("--push")
    assert done.returncode == 2
    assert "build-image: unknown argument '--push'" in done.stderr
    assert "scripts/build-image [--tag NAME] [--refresh-base]" in done.stderr


@pytest.mark.parametrize("name", ["BPFDEPOT_DEBIAN_MIRROR", "BPFDEPOT_DEBIAN_SECURITY"])
@pytest.mark.parametrize("url", ["ftp://deb.debian.org/debian", "--keyring=/tmp/k",
                                 "http://deb.debian.org/debian --foreign"])
def test_a_mirror_that_is_not_one_http_url_is_refused(name: str, url: str) -> None:
    done = _run(**{name: url})
    assert done.returncode == 1
    assert "BPFDEPOT_DEBIAN_MIRROR and BPFDEPOT_DEBIAN_SECURITY must be" in done.stderr


def test_run_flags_stay_within_the_hard_limits() -> None:
    """The rlimits asked of the OCI runtime are never above what this process may have."""
    if subprocess.run(["id", "-u"], capture_output=True, text=True, check=True).stdout.strip() != "0":
        pytest.skip("scripts/build-image runs as root only")
    flags = _run("--run-flags").stdout.split()
    nofile_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc_hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    nproc = min(pid_max, nproc_hard) if nproc_hard != resource.RLIM_INFINITY else pid_max
    nofile = nofile_hard if nofile_hard != resource.RLIM_INFINITY else 1048576
    assert flags == ["--runtime=runc", f"--ulimit=nofile={nofile}:{nofile}",
                     f"--ulimit=nproc={nproc}:{nproc}"]


@pytest.mark.parametrize("runtime", ["--help", "runc --root=/tmp", "/usr/bin/runc"])
def test_a_runtime_that_is_not_a_name_is_refused(runtime: str) -> None:
    done = _run(BPFDEPOT_OCI_RUNTIME=runtime)
    assert done.returncode == 1
    assert f"BPFDEPOT_OCI_RUNTIME='{runtime}' is not an OCI runtime's name" in done.stderr
