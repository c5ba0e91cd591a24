"""The project's errors: one root, one subclass per outcome, each with its own exit code.

    BpfDepotError                 exit 1   anything else that went wrong
     ├── ManifestError            exit 2   the manifest or bundle is malformed
     ├── ArtifactNotFound         exit 3   nothing built for this kernel / digest
     ├── KernelUnsupported        exit 4   arch, feature or attach point missing here
     ├── LoadError                exit 5   libbpf open/load/attach, verifier rejection
     │    └── PrivilegeError      exit 6   not root / no CAP_BPF
     ├── ProcessorError           exit 7   a user processor failed
     ├── BuildError               exit 8   clang or validation of its output failed
     ├── StoreError               exit 9   the artifact store failed or holds bad data
     │    ├── BlobNotFound        exit 9   a blob a ref or lock names is not in the store
     │    └── BlobCorrupt         exit 9   a blob's bytes no longer match its sha256
     └── TrustError               exit 10  a signature, trust root or signed statement fails

Every error carries ``message`` (what, naming the object) and ``hint`` (the fix); the CLI
prints both and exits with ``exit_code``.
"""

from __future__ import annotations


class BpfDepotError(Exception):
    """Root of every error bpfdepot raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str = "", detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.detail = detail  # compiler output or verifier log tail, printed verbatim

    def __str__(self) -> str:
        parts = [self.message]
        if self.detail:
            parts.append(self.detail.rstrip())
        if self.hint:
            parts.append(f"hint: {self.hint}")
        return "\n".join(parts)


class ManifestError(BpfDepotError):
    exit_code = 2


class ArtifactNotFound(BpfDepotError):
    exit_code = 3


class KernelUnsupported(BpfDepotError):
    exit_code = 4


class LoadError(BpfDepotError):
    exit_code = 5


class PrivilegeError(LoadError):
    exit_code = 6


class ProcessorError(BpfDepotError):
    exit_code = 7


class BuildError(BpfDepotError):
    exit_code = 8


class KernelRefused(BuildError):
    """A built object cannot run on one target kernel: a CO-RE relocation, hook or feature it
    lacks, or its verifier's refusal at a load test (builder/verdicts.py). Other kernels of the
    same build may pass; ``bpfdepot lock`` pins only those."""


class StoreError(BpfDepotError):
    exit_code = 9


class BlobNotFound(StoreError):
    """A named blob is absent (as opposed to present and damaged)."""


class BlobCorrupt(StoreError):
    """A blob's bytes no longer match its name (a rebuild writes them again)."""


class TrustError(BpfDepotError):
    """A signature, trust root or signed statement does not hold (loader/trust)."""

    exit_code = 10
