"""``type: bpftrace_object``: a bpftrace script (.bt), checked per target kernel by the builder
(builder/bpftrace.py) and run on the node as a supervised ``bpftrace -f json`` child.

bpftrace 0.17 cannot emit an object libbpf loads (CATALOG §4f: no maps section, BTF or licence;
map fds baked into the code), so the artifact is the checked script itself plus a meta naming the
bpftrace version, the probes and the verdict for its kernel. On the node the child runs in a
process group of its own; its stdout (one JSON message a line) is drained by a thread and mapped
into the run's pipeline:

    printf            → stream "<program>.events": each printed line that is a JSON object is the
                        record; with ``fields:`` in the manifest any other line is split on
                        whitespace into those names (the last takes the rest; integers become
                        numbers); a line that fits neither becomes {"text": LINE}, nothing is
                        dropped, and the lines that missed ``fields:`` are counted in the summary
    map, hist, stats  → stream "<program>.maps": one record per map entry,
                        {"map": "@name", "key": K, "value": V} (no "key" for a map without one),
                        hist entries carry "buckets": [{"min", "max", "count"}], stats entries
                        "count", "average", "total"
    lost_events       → the lost count of channel "events" in the run's summary
    attached_probes   → the number of probes the run's "attached" line counts
    anything else     → "<program>.events" as {"type": T, "data": D}

At stop the group gets SIGINT (bpftrace then prints its maps and exits, 0.2 s measured) and
SIGKILL if it is still there after ``STOP_GRACE_S``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loader.errors import LoadError
from loader.outputs import ChannelStats
from loader.programs import ProgramKind, register

# the resolve side, re-exported: node.py, builder/ and the lock import it from here
from loader.programs.bpftrace_scripts import (  # noqa: F401
    MAX_SCRIPT_BYTES,
    CheckedScript,
    read_script,
    resolve_scripts,
    script_digest,
    stored_script,
)

register(ProgramKind(type="bpftrace_object", summary="a bpftrace script, run by bpftrace",
                     sources=(".bt",), built=()))

ATTACH_TIMEOUT_S = 60.0        # bpftrace compiles with LLVM before it attaches: seconds, not ms
STOP_GRACE_S = 1.0             # SIGINT → SIGKILL
HARMLESS = ("RLIMIT_MEMLOCK",)  # bpftrace 0.17 warns on every start on kernels ≥ 5.11 (memcg)
# "attached_probes" is printed *before* bpftrace attaches (it is the "Attaching N probes..." line);
# with this variable set, bpftrace (0.17 included: its runtime tests use it) writes the same word
# to stderr once every probe is attached, which is what the run's "attached" line must mean.
NOTIFY = "__BPFTRACE_NOTIFY_PROBES_ATTACHED"
_STATS_KEYS = {"count", "average", "total"}
_INT_RE = re.compile(r"-?[0-9]+")
UNMATCHED_MEANS = "line(s) did not match fields: (kept as {\"text\": LINE})"


def find_bpftrace() -> str:
    """The bpftrace binary on PATH, or a LoadError saying how to install it."""
    found = shutil.which("bpftrace")
    if found is None:
        raise LoadError("bpftrace is not installed on this node, and a bpftrace_object needs it",
                        hint="apt-get install -y bpftrace")
    return found


# -- JSON messages → records ---------------------------------------------------------------------

def _key(text: str) -> int | str:
    """bpftrace prints every map key as a string; an integer key (a pid) becomes a number."""
    try:
        return int(text)
    except ValueError:
        return text


def map_records(kind: str, data: dict[str, Any]) -> list[dict[str, Any]]:
    """The records of one ``map``/``hist``/``stats`` message (``data``: {"@name": entries})."""
    out: list[dict[str, Any]] = []
    for name, entries in data.items():
        if kind == "hist":
            if isinstance(entries, list):
                out.append({"map": name, "buckets": entries})
            else:
                out.extend({"map": name, "key": _key(k), "buckets": v} for k, v in entries.items())
        elif kind == "stats":
            if isinstance(entries, dict) and set(entries) == _STATS_KEYS:
                out.append({"map": name, **entries})
            else:
                out.extend({"map": name, "key": _key(k), **v} for k, v in entries.items())
        elif isinstance(entries, dict):
            out.extend({"map": name, "key": _key(k), "value": v} for k, v in entries.items())
        else:  # a map without keys: @total = count()
            out.append({"map": name, "value": entries})
    return out


def _value(word: str) -> int | str:
    """A printed word: an integer when it is one (pids, ns, counts), else the text."""
    return int(word) if _INT_RE.fullmatch(word) else word


def split_fields(line: str, fields: Sequence[str]) -> dict[str, Any] | None:
    """``line`` split on whitespace into ``fields`` (the last takes the rest of the line), or
    None when it has fewer words than there are fields."""
    words = line.split(None, len(fields) - 1)
    if len(words) < len(fields):
        return None
    return {name: _value(word.rstrip() if name == fields[-1] else word)
            for name, word in zip(fields, words)}


def printf_records(text: str, fields: Sequence[str] = ()) -> tuple[list[dict[str, Any]], int]:
    """One record per printed line: the JSON object the script printed, else the line split
    into ``fields``, else {"text": line}; and how many lines did not fit ``fields``."""
    out: list[dict[str, Any]] = []
    unmatched = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        value = None
        if line.lstrip().startswith("{"):  # only an object can be a record: no failed decode
            try:
                value = json.loads(line)
            except ValueError:
                pass
        if not isinstance(value, dict) and fields:
            value = split_fields(line, fields)
            unmatched += value is None
        out.append(value if isinstance(value, dict) else {"text": line})
    return out, unmatched


@dataclass(slots=True)
class Routed:
    """Where one message goes: event records, map records, lost events, attached probes, and
    the printed lines that did not fit ``fields:``."""

    events: list[dict[str, Any]]
    maps: list[dict[str, Any]]
    lost: int = 0
    probes: int | None = None
    unmatched: int = 0


def route(message: dict[str, Any], fields: Sequence[str] = ()) -> Routed:
    """Map one ``bpftrace -f json`` message into the pipeline's terms (``fields``: the names
    the manifest gives a printed line's words)."""
    kind, data = message.get("type"), message.get("data")
    if kind == "printf":
        events, unmatched = printf_records(str(data), fields)
        return Routed(events, [], unmatched=unmatched)
    if kind in ("map", "hist", "stats") and isinstance(data, dict):
        return Routed([], map_records(kind, data))
    if kind == "lost_events" and isinstance(data, dict):
        return Routed([], [], lost=int(data.get("events", 0)))
    if kind == "attached_probes" and isinstance(data, dict):
        return Routed([], [], probes=int(data.get("probes", 0)))
    return Routed([{"type": kind, "data": data}], [])


def _lines(records: Iterable[dict[str, Any]]) -> tuple[bytes, int]:
    encoded = [json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records]
    return b"".join(encoded), len(encoded)


# -- the child -----------------------------------------------------------------------------------

Deliver = Callable[[bytes, int], None]


class BpftraceChild:
    """One ``bpftrace -B none -f json SCRIPT`` child and its output (a Reader of the run, whose
    stats are channel "events"; ``maps_view`` reports channel "maps")."""

    def __init__(self, program: str, script: Path, events: Deliver, maps: Deliver,
                 log: Callable[[str], None], binary: str | None = None,
                 fields: Sequence[str] = ()) -> None:
        self.program = program
        self.script = script
        self.fields = tuple(fields)
        self.unmatched = 0  # printed lines that did not fit ``fields`` (kept as {"text": …})
        self._events, self._maps, self._log = events, maps, log
        self._binary = binary or find_bpftrace()
        self._queue: deque[dict[str, Any]] = deque()
        self._attached = threading.Event()   # stderr: every probe attached
        self._counted = threading.Event()    # stdout: attached_probes (how many)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stderr_tail: deque[str] = deque(maxlen=20)
        self._threads: list[threading.Thread] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.probes = 0
        self.received = self.lost = self.map_records = 0
        self._stopping = False

    def launch(self, timeout: float = ATTACH_TIMEOUT_S) -> None:
        """Start the child and wait for its ``attached_probes`` message; a LoadError with
        bpftrace's own words when it exits first (nothing is left running then)."""
        # the script is a file argument, never shell text; own session: one killpg stops it all
        self.proc = subprocess.Popen([self._binary, "-B", "none", "-f", "json", str(self.script)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True,
                                     env={**os.environ, NOTIFY: "1"})
        for target in (self._drain_stdout, self._drain_stderr):
            thread = threading.Thread(target=target, daemon=True, name=f"bpftrace-{self.program}")
            thread.start()
            self._threads.append(thread)
        deadline = time.monotonic() + timeout
        while not (self._attached.wait(0.01) and self._counted.is_set()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                why = (f"exited with status {self.proc.returncode}" if self.proc.poll() is not None
                       else f"did not attach in {timeout:.0f} s")
                self.close()
                raise LoadError(f"bpftrace program '{self.program}' ({self.script}) {why}",
                                detail="\n".join(self._stderr_tail),
                                hint="run it by hand to see more: bpftrace " + str(self.script))

    def _drain_stdout(self) -> None:
        # a parent that stops reading stalls bpftrace (CATALOG §4f): this thread always reads
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            if not raw.strip():
                continue  # bpftrace prints blank lines before its exit-time map dump
            try:
                message = json.loads(raw)
            except ValueError:
                message = {"type": "text", "data": raw.decode(errors="replace").rstrip("\n")}
            if message.get("type") == "attached_probes":
                self.probes = int(message.get("data", {}).get("probes", 0))
                self._counted.set()
                continue
            self._queue.append(message)
            self._wake()
        if not self._stopping and self._attached.is_set():
            self._log(f"bpfdepot: {self.program} (bpftrace) ended before the run did: its "
                      "probes are gone (its last words are above)")

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass  # the pipe is full of wake-ups already, or closed at the end of the run

    def _drain_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            if line == NOTIFY:
                self._attached.set()
                continue
            if not line or any(h in line for h in HARMLESS):
                continue
            self._stderr_tail.append(line)
            self._log(f"bpfdepot: {self.program} (bpftrace): {line}")

    # -- Reader --------------------------------------------------------------------------

    def start(self) -> None:
        """Nothing: the child runs from ``launch``."""

    def fds(self) -> Sequence[int]:
        return [self._wake_r] if self._wake_r >= 0 else []

    def due(self) -> float | None:
        return None

    def read(self, now: float) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        self._move()

    def _move(self) -> None:
        events: list[dict[str, Any]] = []
        maps: list[dict[str, Any]] = []
        while self._queue:
            routed = route(self._queue.popleft(), self.fields)
            events.extend(routed.events)
            maps.extend(routed.maps)
            self.lost += routed.lost
            self.unmatched += routed.unmatched
        if events:
            self.received += len(events)
            self._events(*_lines(events))
        if maps:
            self.map_records += len(maps)
            self._maps(*_lines(maps))

    def final(self) -> None:
        """Stop the child (SIGINT: it prints its maps; SIGKILL after STOP_GRACE_S) and move
        everything it printed."""
        self._stop()
        for thread in self._threads:
            thread.join(timeout=STOP_GRACE_S)
        self._move()

    def _stop(self) -> None:
        self._stopping = True
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            # what it had not printed yet (its maps' dump at exit) is gone: say so
            self._log(f"bpfdepot: {self.program} (bpftrace) did not exit within "
                      f"{STOP_GRACE_S:.0f} s of SIGINT and was killed: the maps it prints at "
                      "exit are missing from this run")
        except ProcessLookupError:
            proc.wait()

    def stats(self) -> ChannelStats:
        return ChannelStats(program=self.program, channel="events", received=self.received,
                            lost=self.lost, short=self.unmatched, short_means=UNMATCHED_MEANS)

    def close(self) -> None:
        self._stopping = True
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def maps_view(self) -> MapsView:
        return MapsView(self)


class MapsView:
    """Channel "maps" of a bpftrace child in the run's summary (the child moves its records)."""

    def __init__(self, child: BpftraceChild) -> None:
        self.child = child

    def start(self) -> None: ...
    def fds(self) -> Sequence[int]: return []
    def due(self) -> float | None: return None
    def read(self, now: float) -> None: ...
    def final(self) -> None: ...
    def close(self) -> None: ...

    def stats(self) -> ChannelStats:
        return ChannelStats(program=self.child.program, channel="maps",
                            received=self.child.map_records, short_means="")


def start_children(scripts: Sequence[CheckedScript], records: Callable[[str, str], Deliver],
                   log: Callable[[str], None]) -> list[BpftraceChild]:
    """Launch one child per script, each attached before the next starts; on a failure the ones
    started are stopped before the error goes up."""
    children: list[BpftraceChild] = []
    try:
        for script in scripts:
            child = BpftraceChild(script.name, script.path, records(script.name, "events"),
                                  records(script.name, "maps"), log, fields=script.fields)
            child.launch()
            children.append(child)
    except BaseException:
        for child in children:
            child.close()
        raise
    return children
