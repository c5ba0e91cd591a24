"""The agent's ``/metrics``: every instance's registry (``loader.node.run_metrics``) merged into
one exposition, each sample labelled ``instance="NAME"``, plus the agent's own gauges.

Each instance keeps its own registry (its families, its map channels' exports), so two
instances of one manifest never overwrite each other's series; the merge groups the samples of
a family under one HELP/TYPE, as the text format requires.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from loader.sinks.prometheus import Metrics

Registries = Callable[[], Iterable[tuple[str, Metrics]]]


def with_instance(sample: str, instance: str) -> str:
    """One sample line with ``instance="…"`` added first among its labels."""
    label = f'instance="{instance}"'  # instance names are plain words: nothing to escape
    brace, space = sample.find("{"), sample.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        inner = sample[brace + 1:]
        return f"{sample[:brace + 1]}{label}{',' if not inner.startswith('}') else ''}{inner}"
    return f"{sample[:space]}{{{label}}}{sample[space:]}"


def merge(parts: Iterable[tuple[str, bytes]]) -> bytes:
    """Exposition texts of several instances as one."""
    families: dict[str, list[str]] = {}  # name → HELP/TYPE lines then samples
    heads: dict[str, int] = {}
    for instance, text in parts:
        current = None
        for line in text.decode().splitlines():
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                current = line.split()[2]
                lines = families.setdefault(current, [])
                if line[:6] not in {x[:6] for x in lines[:heads.get(current, 0)]}:
                    lines.insert(heads.get(current, 0), line)
                    heads[current] = heads.get(current, 0) + 1
            elif line and not line.startswith("#") and current is not None:
                families[current].append(with_instance(line, instance))
    return "".join(line + "\n" for lines in families.values() for line in lines).encode()


class AgentMetrics(Metrics):
    """A Metrics whose render is the merge of the live instances' (and its own families)."""

    def __init__(self, registries: Registries) -> None:
        super().__init__()
        self._registries = registries
        self.instances = self.gauge("bpfdepot_agent_instances",
                                    "Instances the agent has, by state.", ("state",))

    def render(self) -> bytes:
        own = super().render()
        return own + merge((name, m.render()) for name, m in self._registries())
