"""Kernel frames: /proc/kallsyms (parsed once by ``loader.decoders.ksym``), bisected.

A frame prints as ``tcp_v4_rcv+0x1a``, or with its module as kallsyms names it,
``nf_hook_slow [nf_tables]+0x8``. Only an address below every symbol (or a user-space address
handed in by mistake) is ``[unknown]``; with ``kptr_restrict`` hiding addresses there are no
symbols at all and every frame is ``[unknown]``.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from loader.decoders.ksym import kallsyms

UNKNOWN = "[unknown]"
# Kernel addresses on x86_64 start at the top half; anything below is not a kernel frame.
_KERNEL_MIN = 0xFFFF_8000_0000_0000


class KernelSymbols:
    """Sorted kallsyms text symbols and a memo of frames already named."""

    def __init__(self, path: str = "/proc/kallsyms") -> None:
        syms = kallsyms(path)
        self._addrs = [a for a, _n in syms]
        self._names = [n for _a, n in syms]
        self._memo: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self._addrs)

    def name(self, addr: int) -> str:
        """``symbol+0xoffset`` for one address."""
        found = self._memo.get(addr)
        if found is not None:
            return found
        i = bisect_right(self._addrs, addr) - 1
        if i < 0 or addr < _KERNEL_MIN:
            found = UNKNOWN
        else:
            found = f"{self._names[i]}+0x{addr - self._addrs[i]:x}"
        if len(self._memo) < 1 << 20:  # bounded: a long run sees a bounded set of call sites
            self._memo[addr] = found
        return found

    def names(self, addrs: Sequence[int]) -> list[str]:
        return [self.name(a) for a in addrs]
