"""Small S3 PUTs without botocore's request machinery: signed here (AWS Signature Version 4)
and sent through urllib3, which botocore itself sends with.

A farm task publishes each kernel's verdict with two small PUTs (a meta blob and its index
ref), and botocore spends ~1.4 ms of Python on each, building the request through its event
hooks, retry context and invocation ids; signing and sending the same PUT here takes ~0.5 ms.
Only the plain case is taken: a PUT of bytes to an explicit endpoint, with static or
refreshable credentials the boto3 client already resolved, no proxy in the environment, and
for https the CA bundle boto3 would use (``AWS_CA_BUNDLE``, else the system's). Whatever else happens — a status other than 200 or 412, a connection
error, credentials that cannot be read — ``put`` returns None and the caller makes the same
call through boto3, whose retries and error messages then apply unchanged.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import os
import threading
from typing import Any
from urllib.parse import quote, urlsplit

_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")


class LeanPuts:
    """PUTs for one boto3 S3 client (path-style addressing, as the store configures it)."""

    def __init__(self, client: Any, endpoint: str) -> None:
        import urllib3

        parts = urlsplit(endpoint)
        self._client = client
        self._base = f"{parts.scheme}://{parts.netloc}"
        self._host = parts.netloc
        self._region = client.meta.region_name or "us-east-1"
        tls = {"ca_certs": os.environ["AWS_CA_BUNDLE"]} if os.environ.get("AWS_CA_BUNDLE") else {}
        self._pool = urllib3.PoolManager(maxsize=16, retries=False,
                                         timeout=urllib3.Timeout(connect=5, read=30), **tls)
        self._keys: dict[tuple[str, str], bytes] = {}  # (secret, date) → signing key
        self._lock = threading.Lock()

    @classmethod
    def usable(cls, client: Any, endpoint: str) -> LeanPuts | None:
        """A LeanPuts for ``client``, or None when the plain case does not hold."""
        if (not endpoint or urlsplit(endpoint).scheme not in ("http", "https")
                or any(os.environ.get(v) for v in _PROXY_VARS)
                or os.environ.get("BPFDEPOT_S3_LEAN", "1") == "0"):
            return None
        try:
            return cls(client, endpoint)
        except Exception:  # noqa: BLE001 - no urllib3 or an odd client: boto3 does it all
            return None

    def put(self, bucket: str, key: str, body: bytes, *, if_none_match: bool) -> bool | None:
        """True: stored; False: it exists (412, with ``if_none_match``); None: not done here."""
        try:
            creds = self._client._request_signer._credentials.get_frozen_credentials()
            headers = self._signed(bucket, key, body, creds, if_none_match)
            reply = self._pool.request("PUT", f"{self._base}/{quote(bucket)}/{quote(key, safe='/~')}",
                                       body=body, headers=headers, preload_content=True)
        except Exception:  # noqa: BLE001 - boto3 makes the call again and reports it its way
            return None
        if reply.status == 200:
            return True
        if reply.status == 412 and if_none_match:
            return False
        return None

    def _signed(self, bucket: str, key: str, body: bytes, creds: Any,
                if_none_match: bool) -> dict[str, str]:
        now = datetime.datetime.now(datetime.UTC)
        stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        payload = hashlib.sha256(body).hexdigest()
        headers = {"host": self._host, "x-amz-content-sha256": payload, "x-amz-date": stamp,
                   "content-md5": base64.b64encode(hashlib.md5(body).digest()).decode(),
                   "content-length": str(len(body))}
        if if_none_match:
            headers["if-none-match"] = "*"
        if creds.token:
            headers["x-amz-security-token"] = creds.token
        names = sorted(headers)
        canonical = "\n".join([
            "PUT", f"/{quote(bucket, safe='~')}/{quote(key, safe='/~')}", "",
            *(f"{n}:{headers[n].strip()}" for n in names), "", ";".join(names), payload])
        scope = f"{day}/{self._region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        signature = hmac.new(self._signing_key(creds.secret_key, day), to_sign.encode(),
                             hashlib.sha256).hexdigest()
        headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
                                    f"SignedHeaders={';'.join(names)}, Signature={signature}")
        return headers  # "host" given: urllib3 sends it as signed, not its own

    def _signing_key(self, secret: str, day: str) -> bytes:
        with self._lock:
            found = self._keys.get((secret, day))
            if found is None:
                key = f"AWS4{secret}".encode()
                for part in (day, self._region, "s3", "aws4_request"):
                    key = hmac.new(key, part.encode(), hashlib.sha256).digest()
                self._keys.clear()  # a new day or new credentials: the old key is done with
                found = self._keys[(secret, day)] = key
            return found
