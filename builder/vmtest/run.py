"""Booting the load-test VM and reading its serial console.

QEMU runs with TCG (``/dev/kvm`` on the build machines runs only PVM guests; a stock kernel
stops there with a KVM emulation failure), one CPU, 512 MiB and the serial console on stdio.
The VM's PID 1 runs ``loadtest`` (loadtest.c), which prints, per object file:

    BPFDEPOT-LOG 000.o libbpf: prog 'handle': BPF program load failed: Permission denied
    BPFDEPOT-VERDICT 000.o FAIL stage=load err=-13
    BPFDEPOT-VERDICT 001.o PASS attached=handle skipped=

between ``BPFDEPOT-BEGIN <count>`` and ``BPFDEPOT-END``, then powers off. QEMU exits 0 on
power-off and on a panic alike (``panic=-1`` reboots, ``-no-reboot`` turns that into an
exit), so the console, not the exit code, says what happened.
"""

from __future__ import annotations

import os
import re
import selectors
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from builder.sandbox import kill_group
from loader.errors import BpfDepotError

# QEMU per arch (`uname -m`): the binary and what it needs beyond the common arguments.
QEMU = {"x86_64": ("qemu-system-x86_64", "ttyS0")}
QEMU_PACKAGE = {"x86_64": "qemu-system-x86"}
CONSOLE_CAP = 8 << 20      # bytes of console kept (the head is dropped past it: a runaway VM)
CONSOLE_TAIL_LINES = 40    # lines of console a VmTestError or VmReport carries
LOG_TAIL_LINES = 20        # lines of libbpf/verifier log an ObjectVerdict carries

_LINE = re.compile(r"BPFDEPOT-(VERDICT|LOG|BEGIN|END|ERROR)(?: (.*))?$")
_VERDICT = re.compile(r"(?P<file>\S+) (?:PASS attached=(?P<attached>\S*) skipped=(?P<skipped>\S*)"
                      r"|FAIL stage=(?P<stage>open|load|attach) err=(?P<err>-?\d+)(?: (?P<msg>.*))?)$")
# libbpf's own words for an extern the kernel lacks: the most telling line of such a failure
_EXTERN = re.compile(r"extern \(\w+ ksym\) '([^']+)': not found in kernel or module BTFs"
                     r"|extern '[^']+' .*not found.*")
_PROCESSED = re.compile(r"^processed \d+ insns")
# libbpf's summaries that follow the real complaint
_GENERIC = re.compile(r"failed to load object|failed to load: -?\d+$|BPF program load failed")


class VmTestError(BpfDepotError):
    """The VM load test could not give verdicts: no image for the kernel, QEMU missing, a VM
    that died or hung before its verdicts (the console's tail is in ``detail``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectVerdict:
    """What loading one object in the VM gave."""

    name: str                    # as the caller named the object
    ok: bool
    stage: str                   # "open", "load", "attach", or "" when ok
    error: str                   # libbpf's / the verifier's words; "" when ok
    log_tail: str                # the last lines libbpf printed (verifier log included) on failure
    attached: tuple[str, ...]    # programs attached
    skipped: tuple[str, ...]     # programs loaded only: their target is outside the VM


@dataclass(frozen=True, slots=True, kw_only=True)
class VmReport:
    """One boot: the kernel, how long it took, a verdict per object, the console's tail."""

    release: str
    seconds: float
    verdicts: dict[str, ObjectVerdict]
    console_tail: str


def qemu_argv(arch: str, vmlinuz: Path, initrd: Path) -> list[str]:
    """The QEMU command line: an argv list (nothing goes through a shell)."""
    binary, console = QEMU[arch]
    return [binary, "-accel", "tcg", "-m", "512", "-smp", "1", "-nographic", "-no-reboot",
            "-serial", "mon:stdio", "-net", "none", "-kernel", str(vmlinuz), "-initrd", str(initrd),
            "-append", f"console={console} quiet panic=-1"]


def tail(text: str, lines: int) -> str:
    """The last ``lines`` lines of ``text``."""
    return "\n".join(text.splitlines()[-lines:])


def boot(argv: list[str], *, timeout_s: float, what: str) -> tuple[str, float]:
    """Run QEMU to its exit; the console text and the seconds it took.

    On timeout the whole process group is killed and VmTestError carries the console's tail."""
    start = time.monotonic()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
    except FileNotFoundError:
        raise VmTestError(f"cannot boot {what}: {argv[0]} is not installed",
                          hint="apt-get install qemu-system-x86") from None
    assert proc.stdout is not None
    out = bytearray()
    dropped = 0
    deadline = start + timeout_s
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                if not sel.select(timeout=left):
                    continue
                chunk = os.read(proc.stdout.fileno(), 1 << 16)
                if not chunk:
                    break
                out += chunk
                if len(out) > CONSOLE_CAP:
                    dropped += len(out) - CONSOLE_CAP
                    del out[:len(out) - CONSOLE_CAP]
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except (TimeoutError, subprocess.TimeoutExpired):
            kill_group(proc)
            text = out.decode("utf-8", "replace")
            raise VmTestError(f"{what} gave no verdicts within {timeout_s:g} s; the VM was killed",
                              detail=tail(text, CONSOLE_TAIL_LINES),
                              hint="a slow machine may need a longer timeout (--timeout); a VM "
                                   "that hangs at boot points at the kernel image") from None
        finally:
            proc.stdout.close()
            if proc.poll() is None:
                kill_group(proc)
    seconds = time.monotonic() - start
    text = out.decode("utf-8", "replace").replace("\r\n", "\n")
    if dropped:
        text = f"[{dropped} bytes of console output dropped]\n" + text
    return text, seconds


def _telling_line(stage: str, err: int, msg: str, log: list[str]) -> str:
    """The line that says why: libbpf's extern complaint, the verifier's last words before
    its "processed N insns" summary, libbpf's last complaint, or the stage and errno."""
    for line in reversed(log):
        if m := _EXTERN.search(line):
            return m.group(0)
    head = f"{stage} err={err}" + (f" ({msg})" if msg else "")
    for i, line in enumerate(log):
        if _PROCESSED.match(line) and i > 0 and log[i - 1].strip():
            return f"{head}: {log[i - 1].strip()}"
    for line in reversed(log):
        if line.startswith("libbpf: ") and not _GENERIC.search(line):
            return f"{head}: {line.removeprefix('libbpf: ')}"
    return head


def parse_console(text: str, files: dict[str, str], what: str) -> dict[str, ObjectVerdict]:
    """A verdict for every object in ``files`` (VM file name → caller's name).

    An object without a verdict line is a failure naming "no verdict", never a pass. A console
    with no loader output at all (a panic, a kernel that never reached PID 1) is VmTestError."""
    logs: dict[str, list[str]] = {f: [] for f in files}
    found: dict[str, ObjectVerdict] = {}
    began = ended = False
    for raw in text.splitlines():
        m = _LINE.search(raw)  # search: a kernel message may precede ours on a console line
        if m is None:
            continue
        kind, rest = m.group(1), m.group(2) or ""
        if kind == "BEGIN":
            began = True
        elif kind == "END":
            ended = True
        elif kind == "LOG":
            file, _, line = rest.partition(" ")
            if file in logs:
                logs[file].append(line)
        elif kind == "VERDICT":
            v = _VERDICT.fullmatch(rest.strip())
            if v is None or v["file"] not in files or v["file"] in found:
                continue
            name = files[v["file"]]
            if v["stage"] is None:
                found[v["file"]] = ObjectVerdict(
                    name=name, ok=True, stage="", error="", log_tail="",
                    attached=tuple(filter(None, v["attached"].split(","))),
                    skipped=tuple(filter(None, v["skipped"].split(","))))
            else:
                # libbpf quotes the object's path ('/objects/000.o'): give the caller's name
                path = re.compile(r"'[^']*/" + re.escape(v["file"]) + "'")
                log = [path.sub(lambda _, n=name: f"'{n}'", line) for line in logs[v["file"]]]
                error = _telling_line(v["stage"], int(v["err"]), (v["msg"] or "").strip(), log)
                found[v["file"]] = ObjectVerdict(
                    name=name, ok=False, stage=v["stage"], error=error,
                    log_tail="\n".join(log[-LOG_TAIL_LINES:]), attached=(), skipped=())
    if not began:
        raise VmTestError(f"{what}: the VM never ran the loader (no BPFDEPOT-BEGIN on its console)",
                          detail=tail(text, CONSOLE_TAIL_LINES),
                          hint="the console tail above says why (a panic, a kernel that cannot "
                               "unpack the initramfs); re-add the kernel from its package if "
                               "its image is damaged")
    missing = "no verdict: the loader " + ("finished without it" if ended else
                                           "died or was cut off before it (see the console tail)")
    return {files[f]: found.get(f) or ObjectVerdict(
                name=files[f], ok=False, stage="load", error=missing,
                log_tail="\n".join(logs[f][-LOG_TAIL_LINES:]) or tail(text, LOG_TAIL_LINES),
                attached=(), skipped=())
            for f in files}
