"""Least privilege for processor hosts: user libraries run as an unprivileged user with no
capabilities, in a mount view of their own.

The loader (root) decides who: ``BPFDEPOT_PROCESSOR_USER`` names the user (default
``bpfdepot-processor``, which scripts/setup creates; ``nobody`` where it does not exist; ``root``
keeps the old behaviour and is said in the run's log). The host process, still root, then:

0. enters a PID namespace of its own (``own_pid_namespace``: it forks; the library runs as PID 1
   there, seeing no other process, and its parent mirrors its end to the loader);
1. enters a mount namespace of its own (``unshare(CLONE_NEWNS)``, every mount made private),
   mounts a small tmpfs on /tmp (the library sees none of the host's /tmp, and what it writes
   there vanishes with it) and, in its own PID namespace, a /proc of that namespace;
2. copies the library and its initfile (read as root: they may be root's only) into that
   /tmp under their own names, owned by the user, so ``init`` still gets ``…/NAME.ini`` and
   messages keep the file's name;
3. drops: no supplementary groups, the user's gid and uid (real, effective, saved), which clears
   every capability, then ``PR_SET_NO_NEW_PRIVS`` (no setuid binary gives them back), and checks
   that CapEff is 0.

Its pipes and progress page were opened before and stay. A processor then cannot read a
root-only file, signal the loader (another uid) or load BPF programs. Where the platform refuses
a mount namespace (an unprivileged container), step 1-2 fall back to ``/proc/self/fd/N`` paths
of files opened before the drop; the drop itself is never skipped unless the user is root.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

from loader.errors import ProcessorError

DEFAULT_USER = "bpfdepot-processor"
FALLBACK_USER = "nobody"
TMPFS_BYTES = 64 << 20

CLONE_NEWNS = 0x00020000
MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x4000, 0x40000
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_DUMPABLE = 1, 38, 4


@dataclass(frozen=True, slots=True)
class RunAs:
    name: str
    uid: int
    gid: int


def processor_user(env: dict[str, str] | None = None) -> RunAs | None:
    """Who processor hosts run as; None for root (no drop)."""
    env = os.environ if env is None else env
    wanted = env.get("BPFDEPOT_PROCESSOR_USER", "")
    for name in ([wanted] if wanted else [DEFAULT_USER, FALLBACK_USER]):
        if name == "root":
            return None
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_uid == 0:
            return None
        return RunAs(name, entry.pw_uid, entry.pw_gid)
    raise ProcessorError(f"BPFDEPOT_PROCESSOR_USER={wanted}: no such user on this host",
                         hint=f"create it (useradd --system --no-create-home {wanted}) or "
                              "unset the variable to use bpfdepot-processor / nobody")


_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _private_tmp() -> bool:
    """A mount namespace of our own with a fresh tmpfs on /tmp; False where refused."""
    try:
        _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
        _check(_libc.mount(b"tmpfs", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV,
                           f"mode=0700,size={TMPFS_BYTES}".encode()), "mount tmpfs /tmp")
        return True
    except OSError:
        return False


def _hand_over(fd: int, name: str, run_as: RunAs, private: bool, mode: int) -> str:
    """An open file as the dropped user will reach it: a copy under its own name in the
    private /tmp, or the fd itself through /proc."""
    if not private:
        os.set_inheritable(fd, True)  # kept open: the library opens it through /proc
        return f"/proc/self/fd/{fd}"
    copy = Path("/tmp") / name
    with os.fdopen(fd, "rb") as src, open(copy, "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.chown(copy, run_as.uid, run_as.gid)
    os.chmod(copy, mode)
    return str(copy)


CLONE_NEWPID = 0x20000000
FORWARDED = (signal.SIGUSR1, signal.SIGTERM)  # what the loader may send besides SIGKILL


def own_pid_namespace() -> bool:
    """Put what follows in a PID namespace of its own, where the platform allows: after
    ``unshare(CLONE_NEWPID)`` the host forks; the child (PID 1 there, seeing no other process)
    returns True and goes on to run the library; the parent stays behind as the loader's
    child, forwards SIGUSR1/SIGTERM, and ends exactly as the child did (its exit code, or the
    same signal), so the loader's accounting of deaths is unchanged. False: not allowed here
    (the library then runs in the host's PID view). Either way ``BPFDEPOT_WORKER_PID`` tells
    the library the pid the loader knows its worker by (its own is 1 in a namespace)."""
    os.environ["BPFDEPOT_WORKER_PID"] = str(os.getpid())
    if _libc.unshare(CLONE_NEWPID) != 0:
        return False
    pid = os.fork()
    if pid == 0:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # dies with the parent
        return True
    for sig in FORWARDED:
        signal.signal(sig, lambda signum, _frame: os.kill(pid, signum))
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


def _proc_of_own() -> None:
    """In a new PID namespace and a private mount namespace: a /proc of this namespace."""
    _check(_libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV, None), "mount proc")


def confine(config: dict, run_as: RunAs, *, pid_namespace: bool = False) -> dict:
    """In the host process, before the library is loaded: the config with the paths the
    dropped user reads, once this process is that user (see the module docstring)."""
    config = dict(config)
    # opened first: they may live in the /tmp the private one is about to hide
    files = {key: os.open(config[key], os.O_RDONLY | os.O_CLOEXEC)
             for key in ("so_path", "initfile") if config.get(key)}
    private = _private_tmp()
    if private:
        os.chown("/tmp", run_as.uid, run_as.gid)
        if pid_namespace:
            _proc_of_own()
    for key, fd in files.items():
        name = "processor.so" if key == "so_path" else Path(config[key]).name
        config[key] = _hand_over(fd, name, run_as, private, 0o500 if key == "so_path" else 0o400)
    parent = os.getppid()
    os.setgroups([])
    os.setresgid(run_as.gid, run_as.gid, run_as.gid)
    os.setresuid(run_as.uid, run_as.uid, run_as.uid)
    # a change of credentials clears the parent-death signal: set it again, so the host still
    # dies with its loader (a library spinning in user code would otherwise live on alone)
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:
        raise OSError(f"the loader (pid {parent}) ended while this host dropped its privileges")
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    # a uid change makes the process non-dumpable, which hides /proc/self/fd from itself
    _check(_libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")
    status = Path("/proc/self/status").read_text()
    capeff = next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:"))
    if int(capeff, 16) != 0 or os.geteuid() == 0:
        raise OSError(f"still privileged after dropping to {run_as.name} (CapEff {capeff})")
    if not private:
        os.chdir("/")
    return config
