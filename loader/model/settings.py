"""Settings, read from the environment once and passed in (no module reads os.environ)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# A build whose worker died (kill -9, a lost node) is delivered again this long after it was
# taken. Short is safe for long builds: a redelivery of a build that is still running finds its
# key's Redis lock (kept alive by a heartbeat) held and waits for the result.
VISIBILITY_TIMEOUT_S = 30


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    home: Path               # the local store and caches: $BPFDEPOT_HOME, default ./artifacts
    kernel_btf: Path         # the running kernel's BTF
    debug: bool = False
    store: str = ""          # $BPFDEPOT_STORE: "" (the local store in home), a folder, or s3://BUCKET/PREFIX
    s3_endpoint: str = ""    # $BPFDEPOT_S3_ENDPOINT, for any S3-compatible server
    broker: str = "redis://127.0.0.1:6379/0"  # $BPFDEPOT_BROKER
    visibility_timeout: int = VISIBILITY_TIMEOUT_S  # s; $BPFDEPOT_VISIBILITY_TIMEOUT

    @classmethod
    def from_env(cls, env: Mapping[str, str], cwd: Path | None = None) -> Settings:
        base = cwd or Path.cwd()
        home = Path(env.get("BPFDEPOT_HOME") or base / "artifacts")
        return cls(
            home=(base / home).resolve() if not home.is_absolute() else home,
            kernel_btf=Path(env.get("BPFDEPOT_KERNEL_BTF", "/sys/kernel/btf/vmlinux")),
            debug=env.get("BPFDEPOT_DEBUG", "") not in ("", "0"),
            store=env.get("BPFDEPOT_STORE", ""),
            s3_endpoint=env.get("BPFDEPOT_S3_ENDPOINT", ""),
            broker=env.get("BPFDEPOT_BROKER") or "redis://127.0.0.1:6379/0",
            visibility_timeout=int(env.get("BPFDEPOT_VISIBILITY_TIMEOUT") or VISIBILITY_TIMEOUT_S),
        )

    @property
    def cache(self) -> Path:
        return self.home / "cache"
