"""Settings, read from the environment once and passed in (no module reads os.environ)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    home: Path               # the local store and caches: $BPFDEPOT_HOME, default ./artifacts
    kernel_btf: Path         # the running kernel's BTF
    debug: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str], cwd: Path | None = None) -> Settings:
        base = cwd or Path.cwd()
        home = Path(env.get("BPFDEPOT_HOME") or base / "artifacts")
        return cls(
            home=(base / home).resolve() if not home.is_absolute() else home,
            kernel_btf=Path(env.get("BPFDEPOT_KERNEL_BTF", "/sys/kernel/btf/vmlinux")),
            debug=env.get("BPFDEPOT_DEBUG", "") not in ("", "0"),
        )

    @property
    def cache(self) -> Path:
        return self.home / "cache"
