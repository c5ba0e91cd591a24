"""Run one untrusted compile in bubblewrap, with wall-clock, CPU, memory, output and log limits.

A bundle's source is untrusted, and clang reads whatever its ``#include`` lines and inline
``.incbin`` directives name. So clang runs where nothing of the host is visible but the read-only
``/usr`` (the toolchain and the system headers) and the scratch folder, bound read-write at
``/work``: no network and fresh namespaces of every kind (``--unshare-all``), no capabilities, a
new session (no terminal to push input into), a fresh ``/tmp``, a decoy ``/etc`` holding only a
harmless passwd, group and hostname, and a clean environment. Paths on the command line are
therefore paths *inside* the sandbox: relative to ``/work``, or under ``/usr``.

The limits: RLIMIT_CPU, RLIMIT_AS and RLIMIT_FSIZE are set before bwrap is executed and are
inherited by everything it starts; the wall clock kills the whole process group (bwrap runs in
its own session; killing it ends its pid namespace, so clang dies too); stdout and stderr are
read together through a selector, each kept up to ``log_bytes`` (a compiler fed ``/dev/random``
can print without end) while the rest is read and dropped so the child never blocks on a full pipe.
"""

from __future__ import annotations

import os
import resource
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from loader.errors import BuildError

BWRAP = Path("/usr/bin/bwrap")
INSIDE = "/work"  # where the workdir appears inside the sandbox
HOSTNAME = "bpfdepot-sandbox"
# The decoy /etc: enough for tools that look their user up, and nothing of the host's.
DECOY_ETC = {
    "passwd": b"root:x:0:0:root:/work:/usr/sbin/nologin\n"
              b"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    "group": b"root:x:0:\nnogroup:x:65534:\n",
    "hostname": f"{HOSTNAME}\n".encode(),
}
TMP_BYTES = 64 << 20  # size of the sandbox's own /tmp (a tmpfs in memory)
_CHUNK = 1 << 16


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Limits for one sandboxed run: wall clock and CPU (s), address space, size of any file
    written, and how much of stdout and of stderr is kept (bytes)."""

    wall_s: float = 120
    cpu_s: int = 120
    memory_bytes: int = 4 << 30
    output_bytes: int = 256 << 20
    log_bytes: int = 1 << 20


@dataclass(frozen=True, slots=True)
class Result:
    """How the run ended; stdout and stderr are cut at ``log_bytes`` with a note saying so."""

    returncode: int
    stdout: bytes
    stderr: bytes
    timed_out: bool


# Sources that include a device, or loop in the preprocessor, never end: that is what the
# limits usually catch. Shared by every tool run in the sandbox.
LIMIT_HINT = ("a source that includes a device or loops in the preprocessor never ends; shrink what "
              "the program compiles to (large arrays, .incbin)")


def limit_breach(out: Result, limits: Limits, tool: str) -> str | None:
    """How the run went over one of its limits, as the start of a sentence, or None."""
    if out.timed_out:
        return f"{tool} took longer than {limits.wall_s:g} s (the wall-clock limit)"
    if out.returncode == 128 + signal.SIGKILL:  # bwrap reports a killed child as 128 + signal
        return f"{tool} was killed: over its limit of {limits.cpu_s} s of CPU time (or out of memory)"
    if out.returncode == 128 + signal.SIGXFSZ:
        return f"{tool} wrote a file over {limits.output_bytes:,} bytes (the file-size limit)"
    if out.returncode != 0 and b"No space left on device" in out.stderr + out.stdout:
        return (f"{tool} ran out of scratch space (the sandbox's /tmp holds "
                f"{TMP_BYTES >> 20} MiB)")
    return None


def bwrap_argv(workdir: Path, env: Mapping[str, str], data_fds: Mapping[str, int],
               ro_files: Mapping[str, Path] | None = None) -> list[str]:
    """bwrap's own options: what the sandbox sees. ``data_fds`` maps each decoy /etc file to a
    readable fd holding its content; ``ro_files`` maps paths relative to /work to host files
    shown read-only there."""
    argv = [str(BWRAP), "--unshare-all", "--hostname", HOSTNAME, "--die-with-parent",
            "--new-session", "--cap-drop", "ALL", "--ro-bind", "/usr", "/usr"]
    for link in ("bin", "lib", "lib64", "sbin"):  # Debian 12 is merged-/usr: these are links
        argv += ["--symlink", f"usr/{link}", f"/{link}"]
    argv += ["--proc", "/proc", "--dev", "/dev", "--size", str(TMP_BYTES), "--tmpfs", "/tmp",
             "--size", str(1 << 20), "--tmpfs", "/etc"]
    for name, fd in sorted(data_fds.items()):
        argv += ["--perms", "0644", "--ro-bind-data", str(fd), f"/etc/{name}"]
    argv += ["--remount-ro", "/etc", "--bind", str(workdir), INSIDE]
    for inside, host in sorted((ro_files or {}).items()):
        argv += ["--ro-bind", str(host), f"{INSIDE}/{inside}"]
    argv += ["--chdir", INSIDE, "--clearenv"]
    for key, value in {"PATH": "/usr/bin:/bin", "LC_ALL": "C", **env}.items():
        argv += ["--setenv", key, value]
    return argv


def run_sandboxed(argv: Sequence[str], *, workdir: Path, limits: Limits,
                  env: Mapping[str, str] | None = None,
                  ro_files: Mapping[str, Path] | None = None) -> Result:
    """Run ``argv`` in a sandbox that sees ``workdir`` as /work (its current folder).

    ``ro_files`` shows host files read-only at paths relative to /work (their mount points must
    exist in ``workdir``): shared inputs such as a cached vmlinux.h, which a compromised compiler
    must not be able to rewrite for the next build."""
    if not BWRAP.exists():
        raise BuildError("bubblewrap is not installed: builds of untrusted bundles need it",
                         hint="apt-get install bubblewrap")
    fds = _decoy_fds()
    try:
        cmd = [*bwrap_argv(workdir, env or {}, fds, ro_files), "--", *argv]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, pass_fds=tuple(fds.values()),
                                start_new_session=True, preexec_fn=_rlimits(limits))
    finally:
        for fd in fds.values():  # bwrap holds its own copies now
            os.close(fd)
    deadline = time.monotonic() + limits.wall_s
    with proc:
        out, err, timed_out = _collect(proc, deadline, limits.log_bytes)
        if not timed_out:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:  # closed its pipes, but still running
                timed_out = True
        if timed_out:
            kill_group(proc)
    return Result(returncode=proc.returncode, stdout=out, stderr=err, timed_out=timed_out)


def _decoy_fds() -> dict[str, int]:
    """One pipe per decoy file, already filled (each fits in the pipe buffer) and closed for
    writing, so bwrap reads it to the end without waiting."""
    fds: dict[str, int] = {}
    for name, data in DECOY_ETC.items():
        read, write = os.pipe()
        os.write(write, data)
        os.close(write)
        fds[name] = read
    return fds


def _rlimits(limits: Limits) -> Callable[[], None]:
    def apply() -> None:  # runs in the child between fork and exec; bwrap and clang inherit them
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.output_bytes, limits.output_bytes))
    return apply


class _Capped:
    """The head of a stream up to ``cap`` bytes, and a count of what was dropped."""

    def __init__(self, cap: int) -> None:
        self.cap, self.head, self.dropped = cap, bytearray(), 0

    def add(self, chunk: bytes) -> None:
        room = self.cap - len(self.head)
        self.head += chunk[:max(room, 0)]
        self.dropped += max(len(chunk) - max(room, 0), 0)

    def value(self) -> bytes:
        if not self.dropped:
            return bytes(self.head)
        return bytes(self.head) + f"\n[… {self.dropped} bytes cut]\n".encode()


def _collect(proc: subprocess.Popen, deadline: float, cap: int) -> tuple[bytes, bytes, bool]:
    """Read stdout and stderr until both close or the deadline passes (then True)."""
    streams = {proc.stdout: _Capped(cap), proc.stderr: _Capped(cap)}
    timed_out = False
    with selectors.DefaultSelector() as sel:
        for pipe in streams:
            sel.register(pipe, selectors.EVENT_READ)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for key, _ in sel.select(timeout=left):
                chunk = os.read(key.fd, _CHUNK)
                if chunk:
                    streams[key.fileobj].add(chunk)
                else:
                    sel.unregister(key.fileobj)
    return streams[proc.stdout].value(), streams[proc.stderr].value(), timed_out


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process started in its own session with its whole group (bwrap: its pid
    namespace takes clang down with it; QEMU), and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
