"""``perf_event``: a SEC("perf_event") program sampling on every CPU (or some of them).

    attach:
      do_sample: {perf_event: {frequency: 99}}                       # software cpu-clock
      do_sample: {perf_event: {type: hardware, event: instructions, period: 1000000, cpus: [0]}}

libbpf cannot auto-attach these: each CPU needs its own perf_event_open(2) fd, and the program
is attached to each with bpf_program__attach_perf_event (as libbpf-tools' profile does). The
link owns the fd: libbpf's perf link closes it when destroyed. A CPU that refuses (offline, no
such hardware event) is an error naming the CPU and errno, and what was attached is undone.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from yaml.nodes import Node, ScalarNode, SequenceNode

from loader.attach import AttachKind, Link, register
from loader.errors import LoadError
from loader.libbpf.attach import attach_perf_event, perf_event_open
from loader.libbpf.core import BpfObject
from loader.model.yamldoc import TAG, YamlDoc, did_you_mean, kind_of

PERF_TYPE_HARDWARE, PERF_TYPE_SOFTWARE = 0, 1
# include/uapi/linux/perf_event.h: perf_sw_ids and perf_hw_id, by perf(1)'s names.
EVENTS: dict[str, dict[str, int]] = {
    "software": {"cpu-clock": 0, "task-clock": 1, "page-faults": 2, "context-switches": 3,
                 "cpu-migrations": 4, "minor-faults": 5, "major-faults": 6,
                 "alignment-faults": 7, "emulation-faults": 8},
    "hardware": {"cpu-cycles": 0, "instructions": 1, "cache-references": 2, "cache-misses": 3,
                 "branch-instructions": 4, "branch-misses": 5, "bus-cycles": 6,
                 "stalled-cycles-frontend": 7, "stalled-cycles-backend": 8, "ref-cpu-cycles": 9},
}
DEFAULT_FREQUENCY = 99  # Hz: off the 100 Hz timer tick, so samples do not beat with it
ONLINE = Path("/sys/devices/system/cpu/online")
KEYS = ("type", "event", "frequency", "period", "cpus")


def parse(doc: YamlDoc, node: Node, at: str) -> Mapping[str, Any]:
    """``{type, event, frequency | period, cpus}``; every key optional."""
    fields = doc.fields(node, at, required=(), optional=KEYS)
    kind = doc.choice(fields["type"], "type", at, tuple(EVENTS)) if "type" in fields else "software"
    event = "cpu-clock" if kind == "software" else "cpu-cycles"
    if "event" in fields:
        event = doc.string(fields["event"], "event", at)
        if event not in EVENTS[kind]:
            other = next(k for k in EVENTS if k != kind)
            hint = (f"{event} is a {other} event: add type: {other}" if event in EVENTS[other]
                    else did_you_mean(event, tuple(EVENTS[kind]), f"{kind} events"))
            raise doc.error(fields["event"], f"unknown {kind} event {event!r} in {at}", hint=hint)
    if "frequency" in fields and "period" in fields:
        raise doc.error(fields["period"], f"{at} has both frequency and period",
                        hint="keep one: frequency: HZ samples per second, period: N events apart")
    freq, sample = True, DEFAULT_FREQUENCY
    if "frequency" in fields:
        sample = _positive(doc, fields["frequency"], "frequency", at)
    elif "period" in fields:
        freq, sample = False, _positive(doc, fields["period"], "period", at)
    cpus: tuple[int, ...] | None = None  # None: every online CPU, read at attach
    if "cpus" in fields:
        value = fields["cpus"]
        if isinstance(value, ScalarNode) and value.tag == TAG + "str" and value.value == "all":
            cpus = None
        elif isinstance(value, SequenceNode) and value.value:
            cpus = tuple(_cpu(doc, item, at) for item in value.value)
            if len(set(cpus)) != len(cpus):
                raise doc.error(value, f"a CPU is listed twice in {at}.cpus",
                                hint="list each CPU once")
        else:
            raise doc.error(value, f"'cpus' in {at} must be all or a list of CPU numbers, got "
                            f"{kind_of(value)}", hint="e.g. cpus: all, or cpus: [0, 1]")
    return {"type": kind, "event": event, "freq": freq, "sample": sample, "cpus": cpus}


def _positive(doc: YamlDoc, node: Node, key: str, at: str) -> int:
    if isinstance(node, ScalarNode) and node.tag == TAG + "int" and int(node.value, 0) > 0:
        return int(node.value, 0)
    shown = node.value if isinstance(node, ScalarNode) else kind_of(node)
    raise doc.error(node, f"{key!r} in {at} must be a positive integer, got {shown}",
                    hint=f"e.g. {key}: {DEFAULT_FREQUENCY if key == 'frequency' else 1000000}")


def _cpu(doc: YamlDoc, node: Node, at: str) -> int:
    if isinstance(node, ScalarNode) and node.tag == TAG + "int" and int(node.value, 0) >= 0:
        return int(node.value, 0)
    raise doc.error(node, f"a CPU in {at}.cpus must be a number from 0, got "
                    f"{node.value if isinstance(node, ScalarNode) else kind_of(node)}",
                    hint="e.g. cpus: [0, 1]; `cat /sys/devices/system/cpu/online` lists them")


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """The kernel's CPU list format ("0-3,5,7-8") as numbers."""
    out: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        out.extend(range(int(first), int(last or first) + 1))
    return tuple(out)


def online_cpus() -> tuple[int, ...]:
    return parse_cpu_list(ONLINE.read_text())


def attach(obj: BpfObject, program: str, options: Mapping[str, Any]) -> list[Link]:
    """Open one perf event per CPU and attach ``program`` to each; all or nothing."""
    kind, event = options["type"], options["event"]
    cpus = options["cpus"] if options["cpus"] is not None else online_cpus()
    links: list[Link] = []
    try:
        for cpu in cpus:
            fd = perf_event_open(PERF_TYPE_SOFTWARE if kind == "software" else PERF_TYPE_HARDWARE,
                                 EVENTS[kind][event], options["sample"], freq=options["freq"],
                                 cpu=cpu)
            if fd < 0:
                raise LoadError(
                    f"cannot sample program '{program}' of '{obj.label}' on CPU {cpu}: "
                    f"perf_event_open({kind} {event}) failed: {errno.errorcode.get(-fd, -fd)} "
                    f"({os.strerror(-fd)})", hint=_hint(-fd, kind, cpu))
            links.append(attach_perf_event(obj, program, fd))
    except BaseException:
        while links:
            links.pop().destroy()
        raise
    return links


def _hint(code: int, kind: str, cpu: int) -> str:
    if code in (errno.ENODEV, errno.ENXIO) or cpu not in online_cpus():
        return (f"CPU {cpu} is offline or does not exist (online: {ONLINE.read_text().strip()}); "
                "list online CPUs in cpus:, or leave cpus out for all of them")
    if code == errno.ENOENT and kind == "hardware":
        return "this machine has no such hardware counter (virtual machines often have none): "\
               "use type: software, event: cpu-clock"
    if code in (errno.EACCES, errno.EPERM):
        return "needs root or CAP_PERFMON; check /proc/sys/kernel/perf_event_paranoid"
    if code == errno.EINVAL:
        return "the frequency may be over kernel.perf_event_max_sample_rate: lower it"
    return "see perf_event_open(2) for this error"


register(AttachKind(key="perf_event", summary="sample on every CPU with a perf event",
                    sections=("perf_event",), parse=parse, attach=attach))
