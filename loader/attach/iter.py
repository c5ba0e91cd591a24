"""``iter``: attach an iterator program (``SEC("iter/tcp")``, ``SEC("iter/task")``, ...).

    attach:
      dump_tcp: {iter: {}}                 # what libbpf's auto-attach does too
      dump_task: {iter: {pid: 1234}}       # iter/task*: one process (or tid: one thread; 6.1+)
      dump_elems: {iter: {map: counts}}    # iter/bpf_map_elem, iter/bpf_sk_storage_map: a map

An iterator link runs nothing by itself: each read of a fresh iterator fd made from it walks the
kernel's objects and calls the program for each. A ``type: iterator`` channel named after the
program does that reading (loader/outputs/iterator.py), whether the program was attached here or
by libbpf's auto-attach (a program not named in ``attach:``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from yaml.nodes import Node, ScalarNode

from loader.attach import AttachKind, register
from loader.libbpf.attach import attach_iter
from loader.libbpf.core import BpfObject, LibbpfLink
from loader.model.yamldoc import TAG, YamlDoc, kind_of

KEYS = ("map", "pid", "tid")


def parse(doc: YamlDoc, node: Node, at: str) -> Mapping[str, Any]:
    if isinstance(node, ScalarNode) and node.tag == TAG + "null":
        return {}
    fields = doc.fields(node, at, required=(), optional=KEYS)
    if len(fields) > 1:
        raise doc.error(node, f"{at} takes one of {', '.join(KEYS)}, not {' and '.join(fields)}",
                        hint="map: for map iterators; pid: or tid: for task iterators")
    out: dict[str, Any] = {}
    if "map" in fields:
        out["map"] = doc.c_identifier(fields["map"], "map", at, what="map name")
    for key in ("pid", "tid"):
        if key in fields:
            value = fields[key]
            if not (isinstance(value, ScalarNode) and value.tag == TAG + "int"
                    and int(value.value, 0) > 0):
                raise doc.error(value, f"{key} in {at} must be a positive number, got "
                                f"{value.value if isinstance(value, ScalarNode) else kind_of(value)}",
                                hint=f"the {'process' if key == 'pid' else 'thread'} id to walk")
            out[key] = int(value.value, 0)
    return out


def attach(obj: BpfObject, program: str, options: Mapping[str, Any]) -> list[LibbpfLink]:
    map_fd = obj.map_fd(options["map"]) if "map" in options else 0
    return [attach_iter(obj, program, map_fd=map_fd, tid=options.get("tid", 0),
                        pid=options.get("pid", 0))]


register(AttachKind(key="iter", summary="an iterator, read by a `type: iterator` channel",
                    sections=("iter/", "iter.s/"), parse=parse, attach=attach))
