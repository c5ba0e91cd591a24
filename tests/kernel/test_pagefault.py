"""pagefault in the running kernel: pages this test writes fault once each, exact fields back."""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
from pathlib import Path

from tests.kernel.conftest import Running, prog_names

PAGE = mmap.PAGESIZE
NPAGES = 64
X86_PF_WRITE, X86_PF_USER = 2, 4


def _anon(npages: int) -> tuple[mmap.mmap, int]:
    """A private anonymous mapping, no huge pages (one fault per small page); (map, base)."""
    m = mmap.mmap(-1, npages * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                  prot=mmap.PROT_READ | mmap.PROT_WRITE)
    m.madvise(mmap.MADV_NOHUGEPAGE)
    view = ctypes.c_char.from_buffer(m)  # only to learn the address; touches nothing
    base = ctypes.addressof(view)
    del view  # release the export, or m.close() fails
    return m, base


def _pages_in(events: list[dict], base: int, npages: int) -> list[dict]:
    return [e for e in events if base <= e["address"] < base + npages * PAGE]


def test_written_pages_fault_once_each(home: Path, tmp_path: Path) -> None:
    touched, base = _anon(NPAGES)
    untouched, quiet_base = _anon(NPAGES)
    try:
        run = Running(home, "bpf/pagefault", tmp_path / "events.jsonl")
        for i in range(NPAGES):
            touched[i * PAGE] = 0x5a  # one user-mode write per page
        done = run.stop()
    finally:
        touched.close()
        untouched.close()

    assert done.rc == 0, done.stderr
    mine = [e for e in done.events if e["pid"] == os.getpid()]
    hits = _pages_in(mine, base, NPAGES)
    assert {e["address"] & ~(PAGE - 1) for e in hits} == {base + i * PAGE for i in range(NPAGES)}
    tid = threading.get_native_id()
    comm = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
    for e in hits:
        assert e["error_code"] & X86_PF_WRITE and e["error_code"] & X86_PF_USER, e
        assert (e["tid"], e["comm"]) == (tid, comm)
        assert e["ip"] != 0
        assert set(e) == {"address", "ip", "error_code", "pid", "tid", "comm"}

    # Negative: mapped but never touched, so never faulted.
    assert not _pages_in(mine, quiet_base, NPAGES)

    summary = next(line for line in done.stderr.splitlines() if "pagefault/pagefault_events" in line)
    received, lost = (int(x) for x in summary.split()[1:3])
    assert received == len(done.events) and lost == 0
    assert "pagefault" not in prog_names()
