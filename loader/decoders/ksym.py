"""Kernel addresses → "symbol+0xoffset", from /proc/kallsyms (read once per process).

Only text symbols are kept (a `location` or `call_site` is a code address); a module's symbols
carry its name, as bpftool and perf print them: ``tcp_v4_rcv`` or ``nf_hook_slow [nf_tables]``.
With kptr_restrict set, kallsyms shows zeros: then there is nothing to name with, and addresses
stay hex.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

_TEXT = frozenset("tTwW")


def parse_kallsyms(text: str) -> list[tuple[int, str]]:
    """(address, name) of each text symbol, sorted by address; empty when addresses are hidden."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3 or parts[1] not in _TEXT:
            continue
        addr = int(parts[0], 16)
        if not addr:
            continue
        name = parts[2] + (f" {parts[3]}" if len(parts) > 3 else "")
        out.append((addr, name))
    out.sort()
    return out


@cache
def kallsyms(path: str = "/proc/kallsyms") -> tuple[tuple[int, str], ...]:
    try:
        return tuple(parse_kallsyms(Path(path).read_text(errors="replace")))
    except OSError:
        return ()
