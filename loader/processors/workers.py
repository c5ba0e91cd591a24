"""Processor workers: user_so libraries run in host processes that the loader supervises.

A ``Pool`` is one user_so program: N worker processes (loader/processors/host.py), each loading the
library once and serving every route (channel → function) of that program. The C dispatcher
frames events into one ``WorkerBuffer`` per worker; the pool writes them to the worker's pipe
without blocking, reads back one output frame per event, and keeps, per route, the counts that
must add up: every event sent is kept, dropped, an error, or lost.

When a worker dies (a segfault, abort, exit) or hangs in user code past ``hang_timeout``, the
shared progress page says how many events it finished; its output up to there is read, the event
it died on is counted lost (with its route), the events it never reached are sent again to the
restarted worker, and restarts back off from 0.1 s to 5 s. Nothing else stops: the loader and
the other pools keep running.

User code runs inside the host and can write into its output pipe itself. Every output frame is
checked (loader/libbpf/encode.py ``ResultParser``); at the first that breaks the rules the pool stops
reading that worker, kills it (SIGKILL) and counts a violation. Its records up to that frame are
delivered; the event that frame should have answered is lost; the events after it were never
validly answered, so their records are dropped unread and the events go to the restarted worker
(no duplicates), as after a crash.
"""

from __future__ import annotations

import collections
import fcntl
import json
import logging
import mmap
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from loader.errors import ProcessorError
from loader.libbpf.encode import HostArgs, ResultParser, WorkerBuffer, frames_span
from loader.processors.confine import processor_user

log = logging.getLogger("bpfdepot.processor")

# Pipe capacity asked for (F_SETPIPE_SZ), largest first: a busy loader moves frames and records
# once per round (2-10 ms, loader/pipeline.py pump), and a round at ~2M events/s of ~85-byte
# frames is ~0.3-1.7 MB; over /proc/sys/fs/pipe-max-size (1 MiB) needs CAP_SYS_RESOURCE.
PIPE_BYTES = (4 << 20, 1 << 20)
MAX_BACKLOG = 256 << 20         # bytes queued for one worker before new events count as lost
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.1, 5.0
START_TIMEOUT_S = 30.0          # a worker must finish init within this at start
_IN_HEADER = struct.Struct("<IHHQ")       # size, route, key_len, ts_ns
_PROGRESS = struct.Struct("<QIII")        # handled, in_user, ready, abi
HOST_EXIT = {3: "could not set up (see its message above)", 4: "its init function failed",
             5: "got a corrupt frame", 70: "could not drop its privileges (see its message)"}


@dataclass(slots=True)
class RouteCounts:
    """What became of the events one route sent to its processor."""

    sent: int = 0
    kept: int = 0
    dropped: int = 0
    errors: int = 0
    bad: int = 0          # kept, but the record was empty or held a newline
    lost: int = 0         # the worker died on it, its output died with it, or the backlog was full


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    channel: str
    function: str
    stream: str


def frame_routes(data: bytes) -> list[tuple[int, int, int]]:
    """(start, end, route) of each input frame in ``data``."""
    out, at = [], 0
    while at + _IN_HEADER.size <= len(data):
        size, route, key_len, _ = _IN_HEADER.unpack_from(data, at)
        end = at + _IN_HEADER.size + key_len + size
        out.append((at, end, route))
        at = end
    return out


@dataclass(slots=True)
class Worker:
    """One host process and the events on their way to it."""

    index: int
    buffer: WorkerBuffer = field(default_factory=WorkerBuffer)
    proc: subprocess.Popen | None = None
    to_fd: int = -1               # our end of its input pipe
    from_fd: int = -1             # our end of its output pipe
    err_fd: int = -1              # its stderr
    progress: mmap.mmap | None = None
    parser: ResultParser | None = None
    pending: collections.deque = field(default_factory=collections.deque)  # bytes not yet written
    pending_bytes: int = 0
    inflight: collections.deque = field(default_factory=collections.deque)  # written, not answered
    answered: int = 0             # output frames read from this incarnation
    tail: int = 0                 # bytes of a half-written frame leading pending
    restart_at: float = 0.0
    failures: int = 0             # consecutive deaths without progress
    stuck_since: float = 0.0
    last_handled: int = 0
    hang_signalled: float = 0.0
    violation: str | None = None  # why its output stopped being trusted (it was killed for it)
    err_tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=20))
    err_partial: bytes = b""

    def handled(self) -> tuple[int, int, int]:
        if self.progress is None:
            return 0, 0, 0
        handled, in_user, ready, _ = _PROGRESS.unpack_from(self.progress, 0)
        return handled, in_user, ready


class Pool:
    """The workers of one user_so program."""

    def __init__(self, *, name: str, so_path: str, initfile: str | None, init: str,
                 pre: str | None, post: str | None, abi: int, workers: int,
                 hang_timeout: float, keys: bool,
                 deliver: Callable[[Route, bytes, bytes | None, int], None]) -> None:
        self.name, self.so_path, self.initfile = name, so_path, initfile
        self.init, self.pre, self.post, self.abi = init, pre, post, abi
        self.hang_timeout = hang_timeout
        self.keys = keys
        self.deliver = deliver
        self.routes: list[Route] = []
        self.counts: list[RouteCounts] = []
        self.workers = [Worker(index=i) for i in range(workers)]
        self.restarts = 0
        self.violations = 0       # workers killed for writing a corrupt result frame
        self.closing = False
        # who the library runs as (loader/processors/confine.py); None: root, as asked
        self.run_as = processor_user()

    def add_route(self, route: Route) -> int:
        self.routes.append(route)
        self.counts.append(RouteCounts())
        return len(self.routes) - 1

    @property
    def buffers(self) -> list[WorkerBuffer]:
        return [w.buffer for w in self.workers]

    # -- processes ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start every worker and wait until each has run init; a failure is a ProcessorError."""
        for w in self.workers:
            self._spawn(w)
        deadline = time.monotonic() + START_TIMEOUT_S
        for w in self.workers:
            while True:
                _, _, ready = w.handled()
                if ready:
                    break
                code = w.proc.poll()
                if code is not None or time.monotonic() > deadline:
                    self.read_stderr(w, final=code is not None)
                    why = (HOST_EXIT.get(code, _death(code)) if code is not None
                           else f"did not finish init within {START_TIMEOUT_S:.0f} s")
                    tail = "\n".join(w.err_tail)
                    self.stop(kill=True)
                    raise ProcessorError(
                        f"processor '{self.name}' ({self.so_path}) {why}",
                        detail=tail, hint=_start_hint(code, self.initfile))
                self.read_stderr(w)
                time.sleep(0.005)

    def _spawn(self, w: Worker) -> None:
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        shm = os.memfd_create(f"bpfdepot-{self.name}-{w.index}", os.MFD_CLOEXEC)
        os.ftruncate(shm, mmap.PAGESIZE)
        for fd in (in_w, out_r):
            for size in PIPE_BYTES:
                try:
                    fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
                    break
                except OSError:
                    pass  # over this user's limits: the next size, else the default (slower)
        args = HostArgs(label=f"{self.name}[{w.index}]", so_path=self.so_path,
                        initfile=self.initfile, init=self.init, pre=self.pre, post=self.post,
                        routes=tuple((r.channel, r.function) for r in self.routes), abi=self.abi,
                        in_fd=in_r, out_fd=out_w, shm_fd=shm)
        config = _asdict(args)
        if self.run_as is not None:
            config["run_as"] = asdict(self.run_as)
        w.proc = subprocess.Popen(
            [sys.executable, "-m", "loader.processors.host", json.dumps(config)],
            stdin=subprocess.DEVNULL, stdout=err_w, stderr=err_w, pass_fds=(in_r, out_w, shm),
            start_new_session=True, cwd="/", env=_host_env())
        for fd in (in_r, out_w, err_w):
            os.close(fd)
        w.progress = mmap.mmap(shm, mmap.PAGESIZE)
        os.close(shm)
        for fd in (in_w, out_r, err_r):
            os.set_blocking(fd, False)
        w.to_fd, w.from_fd, w.err_fd = in_w, out_r, err_r
        w.parser = ResultParser(len(self.routes), keys=self.keys)
        w.answered = 0
        w.last_handled, w.stuck_since, w.hang_signalled = 0, 0.0, 0.0
        w.violation = None
        # what was sent to the last incarnation and never answered goes first (see _died)
        w.inflight.clear()

    # -- moving events ------------------------------------------------------------------------

    def take_dispatched(self) -> None:
        """Queue what the C dispatcher framed for each worker since the last call."""
        for w in self.workers:
            data, events = w.buffer.take()
            if not events:
                continue
            if w.pending_bytes + len(data) > MAX_BACKLOG:
                self._lose(data, f"worker {w.index} is {w.pending_bytes >> 20} MiB behind")
                continue
            w.pending.append((data, events))
            w.pending_bytes += len(data)

    def _lose(self, data: bytes, why: str) -> None:
        frames = frame_routes(data)
        for _, _, route in frames:
            self.counts[route].lost += 1
        log.warning("processor '%s': %d event(s) lost: %s", self.name, len(frames), why)

    def write_ready(self, w: Worker) -> None:
        """Write queued frames to ``w`` until its pipe is full.

        A write may stop inside a frame: that frame counts as sent (it is in ``inflight``) and
        its remaining ``w.tail`` bytes lead ``pending``, written before anything else."""
        while w.to_fd >= 0 and w.pending:
            data, events = w.pending[0]
            try:
                n = os.write(w.to_fd, data)
            except (BlockingIOError, BrokenPipeError):
                return  # full, or it died: the exit is handled where its output ends
            if w.tail:  # finishing a frame already counted
                done, w.tail = min(n, w.tail), w.tail - min(n, w.tail)
                data, n = data[done:], n - done
                if not data:
                    w.pending.popleft()
                    w.pending_bytes -= done
                    continue
                w.pending[0] = (data, events)
                w.pending_bytes -= done
                if not n:
                    continue
            if n == len(data):
                w.pending.popleft()
                w.pending_bytes -= n
                w.inflight.append((data, events))
                continue
            whole, frames = frames_span(data, n)
            if whole < n:  # a frame went out in part: count it sent, finish it next
                end, _ = frames_span(data[whole:], len(data) - whole, 1)
                w.inflight.append((data[:whole + end], frames + 1))
                w.tail = whole + end - n
                w.pending[0] = (data[n:], events - frames - 1)
            else:
                w.inflight.append((data[:whole], frames))
                w.pending[0] = (data[whole:], events - frames)
            w.pending_bytes -= n
            return

    def read_ready(self, w: Worker) -> bool:
        """Read and deliver ``w``'s records; False when its output ended (it exited, or it
        wrote a corrupt frame and was killed for it)."""
        while True:
            try:
                n = w.parser.read_from(w.from_fd)
            except BlockingIOError:
                break
            if not n:
                self._deliver(w)
                return False
            if w.parser.violation is not None:
                # nothing after the bad frame is trusted: no more reading, no grace period
                w.violation = w.parser.violation
                self.violations += 1
                _signal(w.proc, signal.SIGKILL)
                self._deliver(w)
                return False
        self._deliver(w)
        return True

    def _deliver(self, w: Worker) -> None:
        parser = w.parser
        answered = parser.frames
        new = answered - w.answered
        if not new:
            return
        w.answered = answered
        w.failures = 0
        while new and w.inflight:  # forget what was answered: it will never be resent
            data, events = w.inflight[0]
            if events <= new:
                w.inflight.popleft()
                new -= events
            else:
                cut, _ = frames_span(data, len(data), new)
                w.inflight[0] = (data[cut:], events - new)
                new = 0
        for index, route in enumerate(self.routes):
            lines, keys, count = parser.take_records(index)
            if count:
                self.deliver(route, lines, keys if self.keys else None, count)

    def counts_of(self, index: int) -> RouteCounts:
        """The route's counts with the outcomes the workers reported folded in."""
        c = self.counts[index]
        kept = dropped = errors = bad = 0
        for w in self.workers:
            if w.parser is not None:
                k, d, e, b = w.parser.counts(index)
                kept, dropped, errors, bad = kept + k, dropped + d, errors + e, bad + b
        return RouteCounts(sent=c.sent, kept=c.kept + kept, dropped=c.dropped + dropped,
                           errors=c.errors + errors, bad=c.bad + bad, lost=c.lost)

    def read_stderr(self, w: Worker, final: bool = False) -> None:
        if w.err_fd < 0:
            return
        while True:
            try:
                chunk = os.read(w.err_fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            w.err_partial += chunk
        *lines, w.err_partial = w.err_partial.split(b"\n")
        if final and w.err_partial:
            lines, w.err_partial = [*lines, w.err_partial], b""
        for line in lines:
            text = line.decode(errors="replace")
            w.err_tail.append(text)
            print(f"[{self.name}/{w.index}] {text}", file=sys.stderr, flush=True)

    # -- supervision --------------------------------------------------------------------------

    def watch(self, now: float) -> None:
        """Signal workers stuck in user code; restart the dead ones whose backoff is over."""
        for w in self.workers:
            if w.proc is None:
                if not self.closing and now >= w.restart_at:
                    self.restart(w)
                continue
            handled, in_user, _ = w.handled()
            if not in_user or handled != w.last_handled:
                w.last_handled, w.stuck_since = handled, now
                continue
            if not w.stuck_since:
                w.stuck_since = now
            if not w.hang_signalled and now - w.stuck_since > self.hang_timeout:
                w.hang_signalled = now
                _signal(w.proc, signal.SIGUSR1)  # hands over its records, then dies
            elif w.hang_signalled and now - w.hang_signalled > 1.0:
                _signal(w.proc, signal.SIGKILL)

    def reap(self, w: Worker) -> None:
        """``w``'s output ended: account for what it had, report, schedule a restart."""
        if w.violation is not None:
            w.proc.wait()  # it was killed: once it is gone its stderr is complete
        self.read_stderr(w, final=True)
        code = w.proc.wait()
        handled, in_user, _ = w.handled()
        hung = bool(w.hang_signalled)
        # frames of this incarnation not answered, in order: the first (handled - answered)
        # were done but their records died with it; then the one it was running, if any
        unanswered = []
        for data, events in w.inflight:
            unanswered.extend(data[s:e] for s, e, _ in frame_routes(data))
        unanswered_bytes = b"".join(unanswered)
        frames = frame_routes(unanswered_bytes)
        if w.violation is not None:
            # the corrupt frame stood where the first unanswered event's answer was due: that
            # event is lost; the progress page is the worker's to scribble on, so it is ignored
            done_lost, culprit = 0, 1 if frames else 0
        else:
            done_lost = max(0, handled - w.answered)
            culprit = 1 if (hung or code < 0 or in_user) and len(frames) > done_lost else 0
        lost = frames[:done_lost + culprit]
        for _, _, route in lost:
            self.counts[route].lost += 1
        resend = unanswered_bytes[lost[-1][1]:] if lost else unanswered_bytes
        if w.tail:  # the rest of a half-written frame: that frame is whole in `resend`
            data, events = w.pending[0]
            w.pending[0] = (data[w.tail:], events)
            w.pending_bytes -= w.tail
            w.tail = 0
            if not w.pending[0][0]:
                w.pending.popleft()
        if resend:
            w.pending.appendleft((resend, len(frames) - len(lost)))
            w.pending_bytes += len(resend)
        if w.violation is not None:
            what = f"wrote a corrupt result frame ({w.violation})"
        elif hung:
            what = f"hung in user code for more than {self.hang_timeout:g} s"
        else:
            what = _death(code)
        if culprit:
            route = self.routes[frames[done_lost][2]]
            what += f" on an event of channel '{route.channel}' ({route.function})"
        self._close_fds(w)
        if self.closing and code == 0:
            return
        if self.closing and not w.pending:
            print(f"bpfdepot: processor '{self.name}' worker {w.index} {what}; {len(lost)} "
                  "event(s) lost while stopping", file=sys.stderr, flush=True)
            return
        w.failures += 1
        delay = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** (w.failures - 1))
        w.restart_at = time.monotonic() + delay
        print(f"bpfdepot: processor '{self.name}' worker {w.index} {what}; {len(lost)} event(s) "
              f"lost, {len(frames) - len(lost)} resent; restarting in {delay:.1f} s",
              file=sys.stderr, flush=True)

    def restart(self, w: Worker) -> None:
        self.restarts += 1
        self._spawn(w)

    def _close_fds(self, w: Worker) -> None:
        for name in ("to_fd", "from_fd", "err_fd"):
            fd = getattr(w, name)
            if fd >= 0:
                os.close(fd)
                setattr(w, name, -1)
        if w.progress is not None:
            w.progress.close()
            w.progress = None
        if w.parser is not None:  # keep its counts: fold them into the pool's
            for index in range(len(self.routes)):
                k, d, e, b = w.parser.counts(index)
                c = self.counts[index]
                c.kept, c.dropped, c.errors, c.bad = c.kept + k, c.dropped + d, c.errors + e, c.bad + b
            w.parser.close()
            w.parser = None
        w.proc = None
        w.inflight.clear()
        w.answered = 0

    def stop(self, *, kill: bool = False) -> None:
        """Kill every worker now (start failed or the loader is exiting abnormally)."""
        self.closing = True
        for w in self.workers:
            if w.proc is not None:
                if kill:
                    _signal(w.proc, signal.SIGKILL)
                    w.proc.wait()
                self._close_fds(w)


def _host_env() -> dict[str, str]:
    """The loader's environment, with this package importable from a plain checkout too."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the checkout: loader/processors/ → ..
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass


def _death(code: int | None) -> str:
    if code is None:
        return "is running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"crashed ({name})"
    return f"exited with code {code}"


def _start_hint(code: int | None, initfile: str | None) -> str:
    if code == 4:
        return (f"check the initfile {initfile} and what the processor printed above"
                if initfile else "the processor printed why above")
    if code == 3:
        return "rebuild the processor against this bpfdepot's header (bpfdepot build BUNDLE)"
    return "run the processor's init by hand, or look at what it printed above"


def _asdict(args: HostArgs) -> dict:
    return {name: getattr(args, name) for name in HostArgs.__slots__}
