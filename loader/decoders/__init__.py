"""Decoders: how raw field values become readable ones, from this node's own sources.

    names.py    integer → name tables: enum names from BTF (the node's, since enum values
                differ between kernels), errno names
    ksym.py     kernel addresses → symbol+offset from /proc/kallsyms

Default decoding (loader/decoders/btf.py) turns these into tables of the C encoder (OP_NAME, OP_KSYM).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class UnionChoice:
    """A union member picked per event by a sibling field (a channel's ``unions:``)."""

    by: str                                   # the discriminator: a member of the same struct
    cases: tuple[tuple[int | str, str], ...]  # (value, or a name of the discriminator's enum; member)
