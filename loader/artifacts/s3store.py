"""The artifact store in S3-compatible object storage, through boto3 (installed with the
``farm`` extra; imported only when a store URL says s3://).

Same layout and rules as LocalStore (loader/artifacts/store.py): ``PREFIX/blobs/sha256/ab/cdef…`` and
``PREFIX/refs/<name>``. Blobs and refs are written with ``If-None-Match: *``, so nothing is
ever overwritten (a 412 means someone else wrote it first). Every upload carries Content-MD5
and every download is checked against its sha256 here: the store's own checksums are not
relied on. Transient failures retry with exponential backoff, then raise StoreError.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from loader.errors import BlobCorrupt, BlobNotFound, StoreError
from loader.artifacts.store import REBUILD_HINT, check_digest, check_ref, digest_of

ATTEMPTS, FIRST_DELAY_S = 5, 0.2


_CLIENTS: dict[str, Any] = {}


def _client(endpoint: str, config: Any) -> Any:
    """One boto3 client per endpoint and process (making one costs ~10 ms; they are thread-safe)."""
    import boto3

    if endpoint not in _CLIENTS:
        _CLIENTS[endpoint] = boto3.client("s3", endpoint_url=endpoint or None, config=config)
    return _CLIENTS[endpoint]


_LEAN: dict[str, Any] = {}


def _lean(client: Any, endpoint: str) -> Any:
    """The client's LeanPuts (loader/artifacts/s3put.py), or None: small PUTs go through it."""
    from loader.artifacts.s3put import LeanPuts

    if endpoint not in _LEAN:
        _LEAN[endpoint] = LeanPuts.usable(client, endpoint)
    return _LEAN[endpoint]


class S3Store:
    def __init__(self, url: str, *, endpoint: str = "", cache_dir: Path, attempts: int = ATTEMPTS) -> None:
        try:
            from botocore.config import Config
        except ImportError:
            raise StoreError("the S3 store needs boto3", hint="pip install 'bpfdepot[farm]'") from None
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise StoreError(f"store URL {url!r} names no bucket", hint="write s3://BUCKET/PREFIX")
        self.url, self.bucket, self.prefix = url, bucket, prefix.strip("/")
        self.cache_dir = cache_dir
        self.attempts = attempts
        config = Config(
            retries={"max_attempts": 1, "mode": "standard"},  # retries are ours, with backoff
            connect_timeout=5, read_timeout=30,
            # S3-compatible servers (Ceph Pacific) reject the newer flexible checksums
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"})
        self._s3 = _client(endpoint, config)
        self._lean = _lean(self._s3, endpoint)

    def __repr__(self) -> str:
        return f"S3Store({self.url})"

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _blob_key(self, digest: str) -> str:
        check_digest(digest)
        hexd = digest.removeprefix("sha256:")
        return self._key("blobs", "sha256", hexd[:2], hexd[2:])

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        """Run one S3 call, retrying transient failures with exponential backoff."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        delay = FIRST_DELAY_S
        for attempt in range(1, self.attempts + 1):
            try:
                return fn(**kwargs)
            except ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                code = exc.response.get("Error", {}).get("Code", "")
                if status in (404, 412) or code in ("NoSuchKey", "PreconditionFailed", "404"):
                    raise
                if status in (403,) or code in ("AccessDenied", "InvalidAccessKeyId",
                                                  "SignatureDoesNotMatch", "NoSuchBucket"):
                    raise StoreError(f"{self}: {what} refused: {code}",
                                     hint="check the credentials and that the bucket exists") from exc
                last: Exception = exc
            except NoCredentialsError as exc:
                raise StoreError(f"{self}: no S3 credentials for {what}",
                                 hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or an AWS "
                                      "profile) the usual boto3 way") from exc
            except BotoCoreError as exc:  # connection refused, timeouts, DNS
                last = exc
            if attempt < self.attempts:
                time.sleep(delay)
                delay *= 2
        raise StoreError(f"{self}: {what} failed after {self.attempts} attempts: {last}",
                         hint="is the object store reachable? check BPFDEPOT_S3_ENDPOINT") from last

    @staticmethod
    def _status(exc: Exception) -> int:
        return getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", 0)

    def _put_new(self, key: str, data: bytes, what: str) -> bool:
        """Create ``key``; False when it already exists (412)."""
        from botocore.exceptions import ClientError

        if self._lean is not None:
            done = self._lean.put(self.bucket, key, data, if_none_match=True)
            if done is not None:
                return done
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        try:
            self._call(what, self._s3.put_object, Bucket=self.bucket, Key=key, Body=data,
                       ContentMD5=md5, IfNoneMatch="*")
            return True
        except ClientError as exc:
            if self._status(exc) == 412:
                return False
            raise StoreError(f"{self}: {what} failed: {exc}") from exc

    def _get(self, key: str, what: str) -> bytes | None:
        from botocore.exceptions import ClientError

        def get(**kwargs: Any) -> bytes:
            # the body is read inside the retried call: a read that times out is as transient as
            # a request that does (botocore raises ReadTimeoutError from the body's read)
            return self._s3.get_object(**kwargs)["Body"].read()

        try:
            return self._call(what, get, Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if self._status(exc) == 404:
                return None
            raise StoreError(f"{self}: {what} failed: {exc}") from exc

    def put_blob(self, data: bytes, *, new: bool = False) -> str:
        """Store ``data`` under its digest. ``new``: the caller expects no such blob (a meta
        just made), so the upload is tried first and the HEAD is asked only if it is refused."""
        digest = digest_of(data)
        key = self._blob_key(digest)
        if new and self._put_new(key, data, f"upload of {digest}"):
            return digest
        etag = self._etag(key, f"check of {digest}")  # a HEAD costs less than a refused PUT
        if etag is None:
            self._put_new(key, data, f"upload of {digest}")
        elif "-" not in etag and etag != hashlib.md5(data).hexdigest():
            # A single-part object's ETag is its MD5: these bytes are damaged. The right bytes
            # may replace them (the name is their sha256), which heals the store.
            md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
            self._call(f"repair of {digest}", self._s3.put_object, Bucket=self.bucket, Key=key,
                       Body=data, ContentMD5=md5)
        return digest

    def _etag(self, key: str, what: str) -> str | None:
        """The object's ETag (unquoted), or None when there is no such object."""
        from botocore.exceptions import ClientError

        try:
            head = self._call(what, self._s3.head_object, Bucket=self.bucket, Key=key)
            return str(head.get("ETag", "")).strip('"')
        except ClientError as exc:
            if self._status(exc) == 404:
                return None
            raise StoreError(f"{self}: {what} failed: {exc}") from exc

    def has_blob(self, digest: str) -> bool:
        """True when the blob is there with the bytes its name promises (checked on a local copy,
        fetched once; a HEAD could not tell damaged bytes from good ones)."""
        try:
            self.read_blob(digest)
            return True
        except (BlobNotFound, BlobCorrupt):
            return False  # an unreachable store raises: that is no answer about the blob

    def read_blob(self, digest: str) -> bytes:
        """Blobs never change, so a local copy whose sha256 still matches is as good as S3's."""
        local = self.cache_dir / "blobs" / digest.removeprefix("sha256:")
        try:
            data = local.read_bytes()
            if digest_of(data) == digest:
                return data
        except FileNotFoundError:
            pass
        data = self._get(self._blob_key(digest), f"download of {digest}")
        if data is None:
            raise BlobNotFound(f"blob {digest} is not in {self}", hint=REBUILD_HINT)
        if digest_of(data) != digest:
            raise BlobCorrupt(f"blob {digest} in {self} is corrupt (its sha256 is {digest_of(data)}); "
                             "nothing was loaded", hint=REBUILD_HINT)
        local.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=local.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, local)
        return data

    def blob_path(self, digest: str) -> Path:
        """A verified local copy (libbpf opens files), cached by digest."""
        self.read_blob(digest)
        return self.cache_dir / "blobs" / digest.removeprefix("sha256:")

    def put_ref(self, name: str, digest: str) -> str:
        check_ref(name)
        check_digest(digest)
        if self._put_new(self._key("refs", name), digest.encode(), f"ref {name}"):
            return digest
        return self.get_ref(name) or digest

    def get_ref(self, name: str) -> str | None:
        check_ref(name)
        data = self._get(self._key("refs", name), f"ref {name}")
        if data is None:
            return None
        value = data.decode(errors="replace").strip()
        check_digest(value, where=f"ref {name} in {self}")
        return value

    def set_ref(self, name: str, digest: str) -> None:
        check_ref(name)
        check_digest(digest)
        data = digest.encode()
        key = self._key("refs", name)
        if self._lean is not None and self._lean.put(self.bucket, key, data, if_none_match=False):
            return
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        self._call(f"ref {name}", self._s3.put_object, Bucket=self.bucket,
                   Key=self._key("refs", name), Body=data, ContentMD5=md5)

    def read_refs(self, prefix: str) -> dict[str, str]:
        """Every ref under ``prefix`` with its digest, in one listing when nothing changed: a
        ref's ETag (the MD5 of its text) tells whether the digest remembered for it still holds."""
        known = self._etags()
        out, fresh = {}, False
        for name, etag in self._list(prefix):
            digest = known.get(etag)
            if digest is None:
                digest = self.get_ref(name)
                if digest is None:
                    continue
                known[hashlib.md5(digest.encode()).hexdigest()] = digest
                fresh = True
            out[name] = digest
        if fresh:
            self._save_etags(known)
        return out

    def _etags(self) -> dict[str, str]:
        try:
            return json.loads((self.cache_dir / "ref-etags.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def _save_etags(self, known: dict[str, str]) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir)
        with os.fdopen(fd, "w") as f:
            json.dump(known, f)
        os.replace(tmp, self.cache_dir / "ref-etags.json")

    def list_refs(self, prefix: str) -> list[str]:
        return [name for name, _ in self._list(prefix)]

    def _list(self, prefix: str) -> list[tuple[str, str]]:
        """(ref name, ETag without quotes) of every ref under ``prefix``."""
        check_ref(prefix.rstrip("/"))
        base = self._key("refs", prefix.rstrip("/")) + "/"
        refs_root = self._key("refs") + "/"
        names, token = [], None
        while True:
            kwargs = {"Bucket": self.bucket, "Prefix": base}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call(f"list of {prefix}", self._s3.list_objects_v2, **kwargs)
            names += [(o["Key"].removeprefix(refs_root), o.get("ETag", "").strip('"'))
                      for o in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return sorted(names)
            token = page["NextContinuationToken"]

    def ensure_bucket(self) -> None:
        """Create the bucket when it does not exist (tests and first set-up)."""
        from botocore.exceptions import ClientError

        try:
            self._s3.head_bucket(Bucket=self.bucket)
        except ClientError:
            self._call(f"creation of bucket {self.bucket}", self._s3.create_bucket, Bucket=self.bucket)
