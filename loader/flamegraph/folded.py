"""Folded stacks, the input format of flamegraph.pl: one ``frame;frame;frame VALUE`` line per
distinct stack, frames root first. ``merge`` is the one place stacks are summed, so the folded,
speedscope and SVG outputs of one profile always agree."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from loader.errors import BpfDepotError

Stack = tuple[list[str], int]  # frames root first (e.g. ["burn", "main", "burn_mid"]), value


def merge(stacks: Iterable[Stack]) -> list[Stack]:
    """Equal stacks summed, sorted by their frames (so output is byte-for-byte reproducible);
    stacks with no frames or a value of 0 or less carry nothing to draw and are left out."""
    totals: dict[tuple[str, ...], int] = {}
    for frames, value in stacks:
        if not frames or value <= 0:
            continue
        key = tuple(frames)
        totals[key] = totals.get(key, 0) + int(value)
    return [(list(key), totals[key]) for key in sorted(totals)]


def fold(frames: list[str]) -> str:
    """One stack as folded text. A ';' or a line break inside a frame name would split it, so
    those are replaced (a C++ name may hold neither; a JIT's perf map name might)."""
    return ";".join(f.replace(";", ":").replace("\n", " ").replace("\r", " ") or "[unknown]"
                    for f in frames)


def write_folded(path: Path, stacks: Iterable[Stack]) -> int:
    """Write ``stacks`` merged and sorted as ``a;b;c 42`` lines; return the number of lines."""
    merged = merge(stacks)
    text = "".join(f"{fold(frames)} {value}\n" for frames, value in merged)
    Path(path).write_text(text, encoding="utf-8")
    return len(merged)


def parse_folded(text: str, source: str = "<folded>") -> list[Stack]:
    """Folded lines back into stacks (as written, not merged). A line that does not end in a
    count is an error naming the line: a silently skipped line would change the picture."""
    out: list[Stack] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        head, _, count = line.rpartition(" ")
        try:
            value = int(count)
        except ValueError:
            try:  # flamegraph.pl accepts fractional counts; we keep whole units
                value = round(float(count))
            except ValueError:
                value = -1
        if not head or value < 0:
            raise BpfDepotError(f"{source}:{number}: {line[:80]!r} is not a folded stack line",
                                hint="each line is 'frame;frame;frame COUNT', frames root first "
                                     "(what bpfdepot flamegraph --format folded writes)")
        out.append((head.split(";"), value))
    return out


def read_folded(path: Path) -> list[Stack]:
    """The stacks of a folded file, in file order."""
    return parse_folded(Path(path).read_text(encoding="utf-8", errors="replace"), str(path))
