"""Stack frames → names: kernel frames from /proc/kallsyms, user frames from ELF symbols.

    sym = Symbolizer(cache_dir=home / "symbols")
    sym.seen(pid)                       # at sample time, while the process lives
    sym.kernel([0xffffffff81a2b3c4])    # ["tcp_v4_rcv+0x1a"]
    sym.user(pid, [0x55d0c0de1139])     # ["burn_leaf"]

User frames: address → the mapping of the pid's snapshot (``maps.py``) → file offset → ELF
virtual address (the PT_LOAD segment holding that offset) → the function symbol of
``.symtab``, else ``.dynsym`` (``elf.py``). Naming: a function of the main executable is bare
(``burn_leaf``), one of any other file carries the file's name (``libc.so.6:malloc``); with no
symbol there, the file and the ELF address, as ``nm``/``addr2line -e FILE`` take it
(``burn+0x1139``, ``libfoo.so+0x1234``); JIT code named by ``/tmp/perf-PID.map`` by that name;
``[vdso]``, ``[heap]+0x…``, ``[stack]+0x…``, ``[anon]+0x…`` (offset into the mapping) for the
rest; ``[unknown]`` only for an address outside every mapping. A frame never prints as a bare
hex number.

Symbol tables are cached by ELF build-id in memory (a second process of the same binary costs
nothing) and, with ``cache_dir``, on disk (a second run reads one small file). Callers holding
return addresses (every frame but the innermost) may pass ``addr - 1`` so a call that ends a
function is named after the caller, as perf does; the symbolizer names exactly what it is given.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from loader.symbols.demangle import demangle
from loader.symbols.elf import ElfSymbols, read_build_id
from loader.symbols.kernel import UNKNOWN, KernelSymbols
from loader.symbols.maps import (Mapping, ProcessMaps, live_path, read_perf_map, snapshot_live,
                                 snapshot_text)

__all__ = ["Symbolizer", "UNKNOWN"]

_MEMO_MAX = 1 << 18  # resolved frames kept per pid; stacks repeat a bounded set of addresses


class Symbolizer:
    """Names kernel and user stack frames; see the module docstring for the frame formats."""

    def __init__(self, *, kallsyms: str = "/proc/kallsyms", cache_dir: Path | None = None,
                 perf_map_dir: Path = Path("/tmp")) -> None:
        self._kallsyms = kallsyms
        self._kernel: KernelSymbols | None = None  # parsed on the first kernel frame
        self.cache_dir = cache_dir
        self._perf_map_dir = perf_map_dir
        self._procs: dict[int, ProcessMaps] = {}
        self._by_build_id: dict[str, ElfSymbols] = {}
        self._by_file: dict[tuple[int, int, int, int], ElfSymbols] = {}  # files with no build-id
        self._build_ids: dict[tuple[int, int, int, int], str | None] = {}

    # -- kernel -------------------------------------------------------------------------------

    def kernel(self, addrs: Sequence[int]) -> list[str]:
        """``symbol+0xoff`` (``symbol [module]+0xoff``) per address; ``[unknown]`` if none."""
        return self.warm().names(addrs)

    def warm(self) -> KernelSymbols:
        """Parse /proc/kallsyms now (a run does it before it attaches, not at its first read:
        ~100k symbols cost a few hundred ms of CPU that would otherwise land in the profile)."""
        if self._kernel is None:
            self._kernel = KernelSymbols(self._kallsyms)
        return self._kernel

    # -- processes ----------------------------------------------------------------------------

    def seen(self, pid: int) -> None:
        """Snapshot ``/proc/PID/maps`` and the build-ids of its files now; a no-op when known.

        Call it at sample time: a process that exits afterwards still has its frames named.
        Call ``forget(pid)`` first when the pid exec'd or was reused.
        """
        if pid in self._procs:
            return
        snap = snapshot_live(pid, self._build_ids)
        if snap is not None:
            self._adopt(snap)

    def load_maps(self, pid: int, maps_text: str, *, exe: str | None = None) -> None:
        """Use a maps text instead of /proc (replays, tests); ``exe`` defaults to the lowest
        file mapping. Build-ids are read from the files it names."""
        snap = snapshot_text(pid, maps_text, exe=exe)
        for m in snap.mappings:
            if m.is_file:
                m.build_id = read_build_id(m.path)
        self._adopt(snap)

    def forget(self, pid: int) -> None:
        """Drop the snapshot of ``pid`` (it exited); symbol tables stay cached by build-id."""
        self._procs.pop(pid, None)

    def known(self, pid: int) -> bool:
        return pid in self._procs

    def _adopt(self, snap: ProcessMaps) -> None:
        read_perf_map(snap, self._perf_map_dir / f"perf-{snap.pid}.map")
        alive = os.path.exists(f"/proc/{snap.pid}/maps")
        for m in snap.mappings:
            # A deleted file can be read only while the process holds it: load it now.
            if m.deleted and m.is_file and "x" in m.perms and alive:
                self._symbols(snap.pid, m, alive=True)
        self._procs[snap.pid] = snap

    # -- user frames --------------------------------------------------------------------------

    def user(self, pid: int, addrs: Sequence[int]) -> list[str]:
        """One name per address of ``pid``'s user stack (formats in the module docstring)."""
        snap = self._procs.get(pid)
        if snap is None:
            self.seen(pid)
            snap = self._procs.get(pid)
            if snap is None:
                return [UNKNOWN] * len(addrs)
        memo = snap.memo
        out = []
        reread = False
        for addr in addrs:
            name = memo.get(addr)
            if name is None:
                name = self._resolve(snap, addr)
                if name is None and not reread:
                    # A miss while the process lives: it may have mapped more since the
                    # snapshot (dlopen, a JIT). Re-read once per call.
                    reread = True
                    snap = self._refresh(snap)
                    memo = snap.memo
                    name = self._resolve(snap, addr)
                if name is None:
                    name = UNKNOWN
                elif len(memo) < _MEMO_MAX:
                    memo[addr] = name
            out.append(name)
        return out

    def _refresh(self, snap: ProcessMaps) -> ProcessMaps:
        fresh = snapshot_live(snap.pid, self._build_ids)
        if fresh is None:  # gone: keep the snapshot taken while it lived
            read_perf_map(snap, self._perf_map_dir / f"perf-{snap.pid}.map")
            snap.perf_starts = [s for s, _e, _n in snap.perf_map]
            return snap
        # Keep tables already loaded for mappings that did not change.
        old = {(m.start, m.end, m.offset, m.path): m for m in snap.mappings}
        for m in fresh.mappings:
            prev = old.get((m.start, m.end, m.offset, m.path))
            if prev is not None and prev.build_id == m.build_id:
                m.symbols = prev.symbols
        self._adopt(fresh)
        return fresh

    def _resolve(self, snap: ProcessMaps, addr: int) -> str | None:
        m = snap.find(addr)
        if m is None or not m.is_file:
            jit = snap.jit_name(addr)
            if jit is not None:
                return jit
            if m is None:
                return None
            if m.path in ("[vdso]", "[vsyscall]", "[vvar]"):
                return m.path
            return f"{m.label}+0x{addr - m.start:x}"
        file_offset = addr - m.start + m.offset
        syms = self._symbols(snap.pid, m)
        vaddr = syms.vaddr(file_offset)
        if vaddr is None:  # no PT_LOAD holds it (not ELF, or a file changed under us)
            return f"{m.label}+0x{file_offset:x}"
        func = syms.lookup(vaddr)
        if func is None:
            return f"{m.label}+0x{vaddr:x}"
        func = demangle(func)
        return func if m.path == snap.exe else f"{m.label}:{func}"

    def _symbols(self, pid: int, m: Mapping, *, alive: bool | None = None) -> ElfSymbols:
        """The symbol table of a mapping's file: memory cache, disk cache, then the file."""
        if m.symbols is not None:
            return m.symbols
        bid = m.build_id
        if bid:
            found = self._by_build_id.get(bid)
            if found is None and self.cache_dir is not None:
                found = ElfSymbols.from_cache(self.cache_dir, bid)
                if found is not None:
                    self._by_build_id[bid] = found
            if found is not None:
                m.symbols = found
                return found
        if alive is None:
            alive = os.path.exists(live_path(pid, m))
        syms = self._load_file(live_path(pid, m) if alive else m.path, bid)
        m.symbols = syms
        return syms

    def _load_file(self, path: str, bid: str | None) -> ElfSymbols:
        if bid:
            # The file at the mapped path may have been replaced since the snapshot: then its
            # symbols would name the wrong code. A different build-id → no table (file+0x…).
            if read_build_id(path) != bid:
                return ElfSymbols(build_id=bid, loads=[])
            syms = ElfSymbols.load(path, bid)
            self._by_build_id[bid] = syms
            if self.cache_dir is not None and syms.loads:
                try:
                    syms.save(self.cache_dir)
                except OSError:
                    pass  # the disk cache is an optimisation; a read-only dir costs only time
            return syms
        try:
            st = os.stat(path)
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            return ElfSymbols(build_id=None, loads=[])
        syms = self._by_file.get(key)
        if syms is None:
            syms = self._by_file[key] = ElfSymbols.load(path)
        return syms
