"""Program controls of an ``ebpf_object`` in the manifest: ``forms:``, ``maps:`` and ``cpu:``.

    - name: switch_count
      path: file://./switch_count.bpf.c
      type: ebpf_object
      cpu: v3                                      # clang -mcpu=v3 (allow-listed; in the build key)
      forms: [[on_switch_btf], [on_switch_raw]]    # the first form this kernel offers wins
      maps:
        counts: {max_entries: "ncpus * 1024"}      # set before load (libbpf-tools' way)
        stacks: {value_size: 1016}

Sizes are integers or expressions of integers, ``ncpus`` (the possible CPUs), ``*`` and ``+``
only, parsed here into a small tree and evaluated on the node; nothing is ever eval()'d.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from yaml.nodes import Node, ScalarNode

from loader.model.yamldoc import TAG, YamlDoc, kind_of, line_of

CPUS = ("v2", "v3")           # clang -mcpu values a manifest may pick (no free-form flags)
MAP_KEYS = ("max_entries", "value_size")
MAX_SIZE = 2**32 - 1          # both are __u32 in libbpf
_TOKEN = re.compile(r"\s*(?:(0x[0-9a-fA-F]+|\d+)|(ncpus)|([*+]))")


@dataclass(frozen=True, slots=True)
class SizeExpr:
    """A sum of products; each factor an integer or ``ncpus`` (written as -1)."""

    terms: tuple[tuple[int, ...], ...]
    text: str

    def value(self, ncpus: int) -> int:
        return sum(_product(ncpus if f == -1 else f for f in term) for term in self.terms)


def _product(factors) -> int:
    out = 1
    for f in factors:
        out *= f
    return out


def parse_size(text: str) -> SizeExpr | None:
    """``"ncpus * 1024 + 16"`` as a SizeExpr; None when it is not such an expression."""
    terms: list[tuple[int, ...]] = []
    factors: list[int] = []
    pos, want_value = 0, True
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            return None
        number, ncpus, op = match.groups()
        if want_value == (op is not None):
            return None  # two values or two operators in a row
        if number is not None or ncpus is not None:
            factors.append(-1 if ncpus else int(number, 0))
        elif op == "+":
            terms.append(tuple(factors))
            factors = []
        pos, want_value = match.end(), op is not None
    if want_value:  # empty, or ends with an operator
        return None
    terms.append(tuple(factors))
    return SizeExpr(terms=tuple(terms), text=text)


@dataclass(frozen=True, slots=True, kw_only=True)
class MapSize:
    """``maps: {<map>: {max_entries: ..., value_size: ...}}`` for one map."""

    map: str
    max_entries: SizeExpr | None = None
    value_size: SizeExpr | None = None
    line: int = 0


def parse_cpu(doc: YamlDoc, node: Node, at: str) -> str:
    return doc.choice(node, "cpu", at, CPUS)


def parse_forms(doc: YamlDoc, node: Node, at: str) -> tuple[tuple[str, ...], ...]:
    """``forms: [[a, b], [c]]``: at least two non-empty sets, no program in two of them."""
    where = f"{at}.forms"
    items = doc.sequence(node, "forms", at)
    if len(items) < 2:
        raise doc.error(node, f"{where} lists {len(items)} form(s); forms are alternatives",
                        hint="list two or more sets, e.g. forms: [[on_fentry], [on_tp]], or "
                             "drop 'forms:'")
    seen: dict[str, int] = {}
    forms = []
    for index, item in enumerate(items):
        names = doc.sequence(item, f"forms[{index}]", at)
        if not names:
            raise doc.error(item, f"{where}[{index}] is empty",
                            hint="list the BPF programs of this form, e.g. [handle_tp]")
        form = []
        for name_node in names:
            name = doc.c_identifier(name_node, f"forms[{index}]", at, what="BPF program name")
            if name in seen:
                raise doc.error(name_node, f"program {name!r} is in {where}[{seen[name]}] and "
                                f"{where}[{index}]", hint="each program belongs to one form")
            seen[name] = index
            form.append(name)
        forms.append(tuple(form))
    return tuple(forms)


def parse_maps(doc: YamlDoc, node: Node, at: str) -> tuple[MapSize, ...]:
    where = f"{at}.maps"
    out = []
    for name, key_node, value in doc.entries(node, where):
        doc.c_identifier(key_node, name, where, what="map name")
        fields = doc.fields(value, f"{where}.{name}", required=(), optional=MAP_KEYS)
        if not fields:
            raise doc.error(value, f"{where}.{name} sets nothing",
                            hint="give max_entries: N and/or value_size: N")
        sizes = {key: _size(doc, fields[key], key, f"{where}.{name}") for key in fields}
        out.append(MapSize(map=name, line=line_of(key_node), **sizes))
    return tuple(out)


def _size(doc: YamlDoc, node: Node, key: str, at: str) -> SizeExpr:
    if isinstance(node, ScalarNode) and node.tag == TAG + "int":
        expr = parse_size(node.value)
    elif isinstance(node, ScalarNode) and node.tag == TAG + "str":
        expr = parse_size(node.value)
    else:
        expr = None
    shown = node.value if isinstance(node, ScalarNode) else kind_of(node)
    if expr is None:
        raise doc.error(node, f"{key!r} in {at} must be a number or an expression of numbers "
                        f"and ncpus with * and +, got {shown!r}",
                        hint=f'e.g. {key}: 10240, or {key}: "ncpus * 1024"')
    low = expr.value(1)  # the smallest a node can make it: one CPU
    if low == 0 or expr.value(4096) > MAX_SIZE:
        raise doc.error(node, f"{key!r} in {at} is {shown}, outside 1..{MAX_SIZE}",
                        hint="a map needs at least one entry of at least one byte")
    return expr
