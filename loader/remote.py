"""Manifests and artifacts from ``http(s)://`` and ``s3://`` URLs: fetched with limits, cached
by content, verified before use (s3:// through boto3 with the store's endpoint and credentials).

    fetch        one URL → a file in ``<home>/cache/remote/sha256/`` named by its digest. A URL
                 may pin its content with a ``#sha256=HEX`` fragment: a pinned file already in
                 the cache is used without any network; a download whose digest differs is
                 refused and never cached. Limits: a size cap (checked against Content-Length
                 before reading and against the bytes while reading; a server whose body does
                 not match its Content-Length is refused), a timeout per read and a deadline for
                 the whole download, redirects only to http(s) and at most 3. Nothing half
                 downloaded is ever visible in the cache (a temp file renamed when complete).
    materialize  a remote manifest → a local bundle folder: the manifest, the files it names
                 with relative ``file://./NAME`` paths (programs) or ``./NAME`` (initfile),
                 the headers their ``#include "…"`` name (those the server has; at most 64
                 files), fetched relative to the manifest's URL, and its ``bpfdepot.lock`` when
                 the server has one. The folder is named by the digest of all it holds, written whole.

Everything fetched is untrusted: names must be plain relative paths inside the bundle (no
``..``, no absolute paths), and the bundle is then checked like a local one (the manifest
parser, the builder's checks, signatures where the node has a trust root).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from urllib.parse import urldefrag, urljoin, urlsplit

import yaml

from loader.errors import ArtifactNotFound, ManifestError

MAX_MANIFEST = 1 << 20       # bytes
MAX_FILE = 64 << 20          # an object, library, script or initfile
READ_TIMEOUT_S = 10.0        # per connect/read
DEADLINE_S = 60.0            # the whole download
MAX_REDIRECTS = 3
MAX_FILES = 64               # files of one remote bundle, headers included
_INCLUDE = re.compile(rb'^[ \t]*#[ \t]*include[ \t]*"([^"\n]+)"', re.M)
SCHEMES = ("http", "https")


class FetchError(ArtifactNotFound):
    """A remote file could not be had, or was not what it claimed to be."""


def is_remote(target: str) -> bool:
    return urlsplit(target).scheme in (*SCHEMES, "s3")


def split_pin(url: str) -> tuple[str, str | None]:
    """``URL#sha256=HEX`` → (URL, HEX); a URL without a pin → (URL, None)."""
    base, fragment = urldefrag(url)
    if not fragment:
        return base, None
    key, _, value = fragment.partition("=")
    if key != "sha256" or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ManifestError(f"{url}: the fragment must pin the content as #sha256=<64 hex>",
                            hint="get the digest with: sha256sum FILE")
    return base, value


class _Redirects(urllib.request.HTTPRedirectHandler):
    max_redirections = MAX_REDIRECTS

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urlsplit(newurl).scheme not in SCHEMES:
            raise FetchError(f"{req.full_url} redirects to {newurl}, which is not http(s)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_Redirects)


def cache_dir(home: Path) -> Path:
    return home / "cache" / "remote" / "sha256"


def fetch(url: str, home: Path, *, limit: int = MAX_FILE, timeout: float = READ_TIMEOUT_S,
          deadline_s: float = DEADLINE_S) -> Path:
    """The file at ``url`` (``#sha256=`` pins it), from the cache or downloaded into it."""
    base, pin = split_pin(url)
    if urlsplit(base).scheme not in (*SCHEMES, "s3"):
        raise ManifestError(f"{url}: only http://, https:// and s3:// URLs are fetched")
    folder = cache_dir(home)
    if pin is not None and (folder / pin).is_file():
        return folder / pin  # pinned and here: no network at all
    folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as out:
            response = _open(base, timeout)
            with response:
                declared = response.headers.get("Content-Length")
                if declared is not None and (not declared.isdigit() or int(declared) > limit):
                    raise FetchError(f"{base}: the server says {declared} bytes, over the "
                                     f"{limit}-byte limit for this file")
                got = 0
                while True:
                    if time.monotonic() - started > deadline_s:
                        raise FetchError(f"{base}: the download took longer than {deadline_s:.0f} s",
                                         hint="the server is too slow; try again or mirror it")
                    try:
                        chunk = response.read(65536)
                    except http.client.IncompleteRead as exc:
                        raise FetchError(f"{base}: the server said {declared} bytes and closed "
                                         f"after {got + len(exc.partial)}",
                                         hint="a broken or lying server: nothing was used") from None
                    except TimeoutError:
                        raise FetchError(f"{base}: nothing arrived for {timeout:.0f} s",
                                         hint="the server is too slow; try again or mirror it") from None
                    if not chunk:
                        break
                    got += len(chunk)
                    if got > limit:
                        raise FetchError(f"{base}: more than {limit} bytes (the limit for this "
                                         "file)" + (f"; the server had said {declared}"
                                                    if declared else ""))
                    digest.update(chunk)
                    out.write(chunk)
                if declared is not None and got != int(declared):
                    raise FetchError(f"{base}: the server said {declared} bytes and sent {got}",
                                     hint="a broken or lying server: nothing was used")
        hexdigest = digest.hexdigest()
        if pin is not None and hexdigest != pin:
            raise FetchError(f"{base}: sha256 {hexdigest[:16]}… is not the pinned "
                             f"{pin[:16]}…", hint="the file on the server changed: pin the new "
                                                  "digest only if you trust the change")
        final = folder / hexdigest
        os.replace(tmp, final)
        tmp = ""
        return final
    finally:
        if tmp:
            os.unlink(tmp)


class _S3Body:
    """An S3 object's body with the headers and read() of an HTTP response."""

    def __init__(self, got: dict) -> None:
        self.headers = {"Content-Length": str(got["ContentLength"])}
        self._body = got["Body"]

    def read(self, n: int) -> bytes:
        try:
            return self._body.read(n)
        except Exception as exc:  # botocore's ReadTimeoutError and friends
            if "timeout" in type(exc).__name__.lower():
                raise TimeoutError from None
            raise

    def __enter__(self) -> _S3Body:
        return self

    def __exit__(self, *exc: object) -> None:
        self._body.close()


def _open(base: str, timeout: float):
    """The response for ``base``: urllib for http(s), boto3 (the store's endpoint and
    credentials: BPFDEPOT_S3_ENDPOINT, AWS_*) for s3://BUCKET/KEY."""
    if base.startswith("s3://"):
        bucket, _, key = base.removeprefix("s3://").partition("/")
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise FetchError(f"{base}: s3:// paths need boto3",
                             hint="pip install 'bpfdepot[farm]'") from None
        client = boto3.client("s3", endpoint_url=os.environ.get("BPFDEPOT_S3_ENDPOINT") or None,
                              config=Config(connect_timeout=timeout, read_timeout=timeout,
                                            retries={"max_attempts": 2},
                                            s3={"addressing_style": "path"},
                                            request_checksum_calculation="when_required",
                                            response_checksum_validation="when_required"))
        try:
            return _S3Body(client.get_object(Bucket=bucket, Key=key))
        except Exception as exc:  # botocore's ClientError, EndpointConnectionError, NoCredentials
            raise FetchError(f"{base}: cannot fetch ({exc})",
                             hint="check the bucket and key, BPFDEPOT_S3_ENDPOINT and the AWS_* "
                                  "credentials") from None
    try:
        return _OPENER.open(urllib.request.Request(base, headers={"User-Agent": "bpfdepot"}),
                            timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise FetchError(f"{base}: the server answered {exc.code} {exc.reason}",
                         hint="check the URL, or that the file is published") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FetchError(f"{base}: cannot fetch ({reason})",
                         hint="check the host and port, and that it serves http(s)") from None


def _join(base: str, rel: str) -> str:
    """``rel`` next to ``base`` (urljoin knows no s3://)."""
    if base.startswith("s3://"):
        return base.rsplit("/", 1)[0] + "/" + rel
    return urljoin(base, rel)


def _relative(name: str, where: str) -> str:
    """A bundle file named in a remote manifest: a plain relative path, or ManifestError."""
    rest = name.removeprefix("file://")
    pure = PurePosixPath(rest)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts or rest.startswith("~"):
        raise ManifestError(f"{where}: {name!r} is not a path inside the bundle",
                            hint="a remote manifest names its files relative to itself "
                                 "(file://./NAME) or by their own http(s) URL")
    return str(pure)


def materialize(url: str, home: Path) -> Path:
    """A remote manifest as a local bundle folder (see the module docstring)."""
    manifest_file = fetch(url, home, limit=MAX_MANIFEST)
    raw = manifest_file.read_bytes()
    base, _ = split_pin(url)
    try:
        doc = yaml.safe_load(raw)
    except yaml.YAMLError:
        doc = None  # the parser below says where it is wrong
    wanted: dict[str, str] = {}  # relative name → URL
    spec = doc.get("spec") if isinstance(doc, dict) else None
    for program in (spec or {}).get("programs") or [] if isinstance(spec, dict) else []:
        path = program.get("path") if isinstance(program, dict) else None
        if isinstance(path, str) and path.startswith("file://"):
            rel = _relative(path, base)
            wanted[rel] = _join(base, rel)
    props = (spec or {}).get("properties") if isinstance(spec, dict) else None
    initfile = props.get("initfile") if isinstance(props, dict) else None
    if isinstance(initfile, str) and initfile and "://" not in initfile:
        rel = _relative(initfile, base)
        wanted[rel] = _join(base, rel)
    bundles = _mkdir(home / "cache" / "remote" / "bundles")
    staging = Path(tempfile.mkdtemp(dir=bundles, prefix=".part-"))
    try:
        (staging / "manifest.yaml").write_bytes(raw)
        queue, seen = list(wanted.items()), set(wanted)
        while queue:
            rel, file_url = queue.pop(0)
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copyfile(fetch(file_url, home), target)
            except FetchError:
                if rel in wanted:
                    raise
                continue  # an include the server does not have: bpfdepot.h, a system header
            for inc in _includes(target) if target.suffix in (".c", ".h", ".go") else ():
                name = str(PurePosixPath(rel).parent / inc)
                name = _relative(name, f"{base}: {rel}") if ".." not in PurePosixPath(inc).parts \
                    else None
                if name and name not in seen and len(seen) < MAX_FILES:
                    seen.add(name)
                    queue.append((name, _join(base, name)))
        try:
            shutil.copyfile(fetch(_join(base, "bpfdepot.lock"), home, limit=MAX_MANIFEST),
                            staging / "bpfdepot.lock")
        except FetchError:
            pass  # a bundle without a lock
        # named by everything in it: a changed header makes another folder, the same bundle
        # fetched again finds its folder
        whole = hashlib.sha256()
        for path in sorted(p for p in staging.rglob("*") if p.is_file()):
            whole.update(str(path.relative_to(staging)).encode() + b"\0")
            whole.update(hashlib.sha256(path.read_bytes()).digest())
        folder = bundles / whole.hexdigest()
        if folder.is_dir():
            shutil.rmtree(staging)
            return folder
        try:
            os.replace(staging, folder)
        except OSError:
            if not folder.is_dir():
                raise
            shutil.rmtree(staging)  # another load made the same folder meanwhile
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _includes(path: Path) -> list[str]:
    """The ``#include "NAME"`` of a fetched source, as the build follows them."""
    return [m.decode(errors="replace") for m in _INCLUDE.findall(path.read_bytes())]


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
