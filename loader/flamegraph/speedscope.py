"""speedscope JSON (https://www.speedscope.app/file-format-schema.json): one "sampled" profile
whose frames are shared by index. Open the file at speedscope.app or in the offline viewer
(npm ``speedscope``); nothing is fetched to write it."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from loader.errors import BpfDepotError
from loader.flamegraph.folded import Stack, merge

SCHEMA_URL = "https://www.speedscope.app/file-format-schema.json"
# the units the schema's ValueUnit allows
UNITS = ("none", "nanoseconds", "microseconds", "milliseconds", "seconds", "bytes")
# what stack records and the command line call them → the schema's name
UNIT_ALIASES = {"samples": "none", "count": "none", "": "none", "ns": "nanoseconds",
                "us": "microseconds", "ms": "milliseconds", "s": "seconds", "b": "bytes"}


def speedscope_unit(unit: str) -> str:
    """The schema's unit for ``unit`` (``samples`` → ``none``, ``ns`` → ``nanoseconds``)."""
    name = UNIT_ALIASES.get(unit.lower(), unit.lower())
    if name not in UNITS:
        raise BpfDepotError(f"unit {unit!r} is not a speedscope unit",
                            hint=f"use one of: {', '.join(UNITS)} (or samples, ns, us, ms, s)")
    return name


def speedscope_document(stacks: Iterable[Stack], *, name: str, unit: str = "none") -> dict:
    """The speedscope file as a dict: each distinct stack is one sample (frame indexes root
    first) whose weight is its value, so the file stays small however many samples were taken."""
    schema_unit = speedscope_unit(unit)
    index: dict[str, int] = {}
    frames: list[dict[str, str]] = []
    samples: list[list[int]] = []
    weights: list[int] = []
    for stack, value in merge(stacks):
        sample = []
        for frame in stack:
            at = index.get(frame)
            if at is None:
                at = index[frame] = len(frames)
                frames.append({"name": frame})
            sample.append(at)
        samples.append(sample)
        weights.append(value)
    return {
        "$schema": SCHEMA_URL,
        "exporter": "bpfdepot",
        "name": name,
        "activeProfileIndex": 0,
        "shared": {"frames": frames},
        "profiles": [{"type": "sampled", "name": name, "unit": schema_unit, "startValue": 0,
                      "endValue": sum(weights), "samples": samples, "weights": weights}],
    }


def write_speedscope(path: Path, stacks: Iterable[Stack], *, name: str, unit: str = "none") -> None:
    """Write ``stacks`` as a speedscope "sampled" profile named ``name``; ``unit`` is one of
    the schema's units (none, nanoseconds, bytes, …) or samples / ns / us / ms / s."""
    doc = speedscope_document(stacks, name=name, unit=unit)
    Path(path).write_text(json.dumps(doc, separators=(",", ":")), encoding="utf-8")
