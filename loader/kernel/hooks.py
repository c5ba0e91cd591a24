"""Which tracepoints a kernel has, read from its BTF, for the programs that hook them.

A tracepoint comes and goes with kernel versions (``sock:sock_send_length`` is in 6.12 and 6.18,
not in 6.1), and a program hooking one that is missing builds fine and only fails when a node
attaches it. Every tracepoint, raw or not, leaves a ``btf_trace_<event>`` typedef in the kernel's
BTF, so the build can name the hook for each target kernel, and `forms:` can pick per node the
first set of programs whose hooks exist.

Syscall tracepoints (``syscalls:sys_enter_*``) are the exception: they are made at boot from
the syscall table (CONFIG_FTRACE_SYSCALLS) and leave nothing in BTF, so they are never called
missing here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from dataclasses import dataclass
from pathlib import Path

from loader.kernel.btf import Btf

_TRACEPOINT = ("tracepoint/", "tp/")
_BY_EVENT = (("tp_btf/", "tp_btf"), ("raw_tracepoint.w/", "raw_tracepoint"),
             ("raw_tp.w/", "raw_tracepoint"), ("raw_tracepoint/", "raw_tracepoint"),
             ("raw_tp/", "raw_tracepoint"))


@dataclass(frozen=True, slots=True)
class Hook:
    """A tracepoint a program section hooks: ``tp/sock/sock_send_length`` → sock:sock_send_length."""

    kind: str           # "tracepoint", "raw_tracepoint" or "tp_btf"
    event: str          # sock_send_length
    system: str = ""    # sock (only plain tracepoints name it)

    def __str__(self) -> str:
        if self.kind == "tracepoint":
            return f"tracepoint {self.system}:{self.event}"
        return f"{self.kind} {self.event}"

    @property
    def in_btf(self) -> bool:
        """Whether a kernel's BTF tells if it has this hook (syscall tracepoints leave no trace)."""
        return self.system != "syscalls"


def hook_of(section: str) -> Hook | None:
    """The tracepoint a program's ELF section names, or None for other program types."""
    for prefix in _TRACEPOINT:
        if section.startswith(prefix):
            system, _, event = section[len(prefix):].partition("/")
            return Hook("tracepoint", event, system) if system and event else None
    for prefix, kind in _BY_EVENT:
        if section.startswith(prefix) and section[len(prefix):]:
            return Hook(kind, section[len(prefix):])
    return None


def has_hook(btf: Btf, hook: Hook, has_typedef: Callable[[str], bool] | None = None) -> bool:
    """Whether the kernel has the tracepoint: its ``btf_trace_<event>`` typedef is in BTF
    (asked through ``has_typedef`` when the caller keeps a faster index of that BTF)."""
    if not hook.in_btf:
        return True
    name = f"btf_trace_{hook.event}"
    return has_typedef(name) if has_typedef else btf.by_name(name, "typedef") is not None


def missing_hooks(programs: Iterable[tuple[str, str]], btf: Btf | None,
                  has_typedef: Callable[[str], bool] | None = None) -> dict[str, Hook]:
    """Of (program name, section) pairs, the programs whose tracepoint ``btf`` lacks; nothing
    when there is no BTF to ask (a node without /sys/kernel/btf/vmlinux: libbpf will say)."""
    if btf is None:
        return {}
    out = {}
    for name, section in programs:
        hook = hook_of(section)
        if hook is not None and not has_hook(btf, hook, has_typedef):
            out[name] = hook
    return out


@cache
def kernel_btf(path: str) -> Btf | None:
    """A kernel's BTF (the node's /sys/kernel/btf/vmlinux or a build target's file), parsed once
    per process; None when the file cannot be read."""
    try:
        return Btf.parse(Path(path).read_bytes())
    except OSError:
        return None


def lacking_forms(forms: Sequence[Sequence[str]], missing: Mapping[str, Hook]) -> list[str]:
    """For each form, what it lacks ("" when all its hooks exist): the reasons a form is passed
    over, in the words the build and the node print."""
    return [", ".join(f"{p}: {missing[p]}" for p in form if p in missing) for form in forms]
