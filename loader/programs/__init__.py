"""Program kinds: what a manifest's ``programs:`` entry may be. One module per kind, registered
under its ``type:``; adding a kind is adding a module (and teaching the builder and the node
to build and run it). A type of the talk's manifest format that no module registers yet is
refused at manifest time (exit 2) with the reason, never parsed and ignored.

    ebpf_object.py   a kernel object: .bpf.c source (built per kernel) or a built .bpf.o / .o
    user_so.py       a user-space processor library: .c or .go source, or a built .so
    bpftrace.py      a bpftrace script (.bt), checked per kernel and run by bpftrace on the node
"""

from __future__ import annotations

from dataclasses import dataclass

from loader.registry import Registry

# Types of the talk's manifest format without a module yet, and why.
NOT_YET: dict[str, str] = {}


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgramKind:
    type: str
    summary: str
    sources: tuple[str, ...]    # path suffixes that are sources (built by bpfdepot)
    built: tuple[str, ...]      # path suffixes of built files (loaded as they are)

    @property
    def suffixes(self) -> tuple[str, ...]:
        return self.sources + self.built


_KINDS: Registry[ProgramKind] = Registry(__name__, lambda kind: kind.type, "program kind")
register = _KINDS.register


def program_kinds() -> dict[str, ProgramKind]:
    """Every kind, by manifest type (each module of this package registers its own)."""
    return _KINDS.all()
