"""Business labels on Prometheus series (``bpfdepot run --labels --metrics``).

The run exports series from maps (loader/outputs/hash_map.py, histogram.py): one series per map
key, labelled by the key's fields. When a key holds a cgroup id, the series also gets the unit
or pod that cgroup belongs to, looked up when the series is rendered. Used by
loader/sinks/prometheus.py (its families call ``admit`` when a series is made and
``with_series_labels`` when it is rendered).
"""

from __future__ import annotations

from collections.abc import Callable


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


CGROUP_LABELS = ("cgroup", "cgroup_id")   # key labels that hold a cgroup2 id (the catalog's names)
SERIES_LABELS = ("unit", "namespace", "pod", "container")  # the bounded set added to a series
MAX_LABELLED_SERIES = 1000                # per family; later series keep only their key labels
OVER_LIMIT = "bpfdepot_series_labels_over_limit"


class SeriesLabels:
    """Adds :data:`SERIES_LABELS` to every series of a family whose label names include a
    cgroup id (:data:`CGROUP_LABELS`): the run exports from maps, so a series stands for a map
    key, and the key's cgroup id is what names its unit or pod. The values are looked up when
    rendered (a pod whose files appear late gains its names at the next scrape) and are a
    function of the cgroup id: they add no series. At most ``max_series`` series of one family
    get them; the rest keep their key labels only and are counted, per metric, in
    ``bpfdepot_series_labels_over_limit`` (so a huge map cannot make a huge label index)."""

    def __init__(self, lookup: Callable[[int], dict[str, str]], *,
                 names: tuple[str, ...] = SERIES_LABELS,
                 max_series: int = MAX_LABELLED_SERIES) -> None:
        self.lookup, self.names, self.max_series = lookup, names, max_series
        self.over: dict[str, int] = {}      # metric → series past the bound
        self.labelled: dict[str, int] = {}  # metric → series given the labels

    def plan(self, metric: str, labelnames: tuple[str, ...]) -> tuple[int, tuple[str, ...]] | None:
        """(index of the cgroup label, the names to add) for a family, or None."""
        at = next((i for i, n in enumerate(labelnames) if n in CGROUP_LABELS), None)
        extra = tuple(n for n in self.names if n not in labelnames)
        if at is None or not extra:
            return None
        self.over.setdefault(metric, 0)
        self.labelled.setdefault(metric, 0)
        return at, extra

    def admit(self, metric: str) -> bool:
        """Whether a new series of ``metric`` gets the labels (called once per series)."""
        if self.labelled[metric] < self.max_series:
            self.labelled[metric] += 1
            return True
        self.over[metric] += 1
        return False

    def values(self, cgroup: str, names: tuple[str, ...]) -> tuple[str, ...]:
        try:
            found = self.lookup(int(cgroup)) if cgroup.isdigit() and int(cgroup) else {}
        except Exception:  # noqa: BLE001 - a lookup failing leaves the series unlabelled
            found = {}
        return tuple(found.get(n, "") for n in names)

    def _render(self, out: list[str]) -> None:
        out.append(f"# HELP {OVER_LIMIT} Series of a metric rendered without unit/pod labels "
                   f"because it has more than {self.max_series} labelled series.\n"
                   f"# TYPE {OVER_LIMIT} gauge\n")
        for metric, n in self.over.items():
            out.append(f'{OVER_LIMIT}{{metric="{metric}"}} {n}\n')


def with_series_labels(pairs: list[str], key: tuple[str, ...], plan, series: SeriesLabels | None,
                        admitted: set[tuple[str, ...]]) -> list[str]:
    """``pairs`` plus the business labels of the series ``key`` (non-empty ones only)."""
    if plan is None or key not in admitted:
        return pairs
    at, names = plan
    return pairs + [f'{n}="{_escape(v)}"'
                    for n, v in zip(names, series.values(key[at], names)) if v]
