"""The /api answers of API.md: query parameters checked, the rollup cache read through data.py,
and the JSON shapes the pages draw. No SQL here (data.py holds all of it).

Percentiles come from quarter-octave buckets, interpolated inside the bucket the rank falls
in (as Prometheus' histogram_quantile does), so the cache never keeps single calls.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from loader.ui import UiError
from loader.ui.data import LABELS, LEVELS, SLOT_NS, Data, Slots, q_bounds

Params = Mapping[str, list[str]]
MAX_STEPS = 60
_REL = re.compile(r"-(\d+(?:\.\d+)?)(s|m|h|d|w)")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
RANGE = ("from", "to")
METRICS = {"connect": "tcp_connlat", "rtt": "tcp_rtt", "http": "l7", "grpc": "l7", "dns": "l7",
           "mongo": "l7", "file": "filelat"}
FLAME_KINDS = {"cpu": "cpu_profile", "offcpu": "offcpu"}
DROP_BY = {"reason": "a", "protocol": "b", "port": "c", "location": "d"}


@dataclass(frozen=True, slots=True)
class Range:
    """A time range in slots of one rollup level, cut into at most MAX_STEPS steps (more only
    when ``step`` asks for them)."""

    from_ns: int
    to_ns: int
    w: Slots

    @property
    def steps(self) -> int:
        return (self.w.s1 - self.w.s0) // self.w.step + 1

    @property
    def slot_ns(self) -> int:
        return LEVELS[self.w.lv] * SLOT_NS

    def t_ns(self) -> list[int]:
        return [(self.w.s0 + i * self.w.step) * self.slot_ns for i in range(self.steps)]

    def json(self) -> dict[str, int]:
        return {"from_ns": self.from_ns, "to_ns": self.to_ns,
                "step_s": self.w.step * self.slot_ns // 10**9}


def check_params(params: Params, allowed: tuple[str, ...]) -> None:
    """400 for a parameter this endpoint does not take (with the closest one it does)."""
    for name in params:
        if name not in allowed:
            close = difflib.get_close_matches(name, allowed, n=1)
            raise UiError(400, f"unknown parameter '{name}'",
                          f"did you mean '{close[0]}'?" if close else
                          f"this endpoint takes: {', '.join(allowed) or 'no parameters'}")


def one(params: Params, name: str, default: str | None = None) -> str | None:
    values = params.get(name) or []
    if len(values) > 1:
        raise UiError(400, f"parameter '{name}' is given {len(values)} times", "give it once")
    return values[0] if values else default


def parse_time(text: str, name: str, now: float) -> int:
    """``now``, ``-15m``, ``-1h30m`` or unix seconds → ns since the epoch."""
    t = text.strip().lower()
    if t == "now":
        return int(now * 1e9)
    if t.startswith("-"):
        parts = _REL.findall(t)
        if parts and "".join(f"-{n}{u}" for n, u in parts) == t:
            return int((now - sum(float(n) * _UNIT_S[u] for n, u in parts)) * 1e9)
    else:
        try:
            value = float(t)
            if math.isfinite(value) and value >= 0:
                return int(value * 1e9)
        except ValueError:
            pass
    raise UiError(400, f"{name}={text!r} is not a time",
                  f"unix seconds (e.g. {name}={int(now)}), 'now', or relative: {name}=-15m, -2h, -1d")


def parse_range(params: Params, now: float | None = None, kept: tuple[int, int] = (0, 0)) -> Range:
    """``from``/``to``/``step`` → a Range (400 for a malformed or reversed one); ``kept``: the
    oldest 10 s slot the cache holds at levels 0 and 1 (Data.kept), so an old range is read
    from a level that still has it."""
    now = time.time() if now is None else now
    lo = parse_time(one(params, "from", "-15m"), "from", now)
    hi = parse_time(one(params, "to", "now"), "to", now)
    if lo >= hi:
        raise UiError(400, f"the range from={one(params, 'from', '-15m')} to={one(params, 'to', 'now')} "
                           "is empty or reversed", "give a 'from' earlier than 'to'")
    n0 = (hi - 1) // SLOT_NS - lo // SLOT_NS + 1   # 10 s slots in the range
    step_text = one(params, "step")
    if step_text is not None:
        if not step_text.isdigit() or int(step_text) < 10 or int(step_text) % 10:
            raise UiError(400, f"step={step_text!r} is not a step in seconds",
                          "a multiple of 10 seconds, at least 10 (e.g. step=60)")
        want = int(step_text) // 10
        if n0 // want + 1 > 10 * MAX_STEPS:
            raise UiError(400, f"step={step_text} cuts the range into over {10 * MAX_STEPS} steps",
                          "give a longer step or a shorter range")
        lv = max(i for i, f in enumerate(LEVELS) if want % f == 0)
    else:
        want = max(1, math.ceil(n0 / MAX_STEPS))
        lv = max(i for i, f in enumerate(LEVELS) if f <= want)
    while lv < len(kept) and lo // SLOT_NS < kept[lv]:
        lv += 1  # pruned at this level: the next coarser one
    factor = LEVELS[lv]
    size = SLOT_NS * factor
    return Range(lo, hi, Slots(lv, lo // size, (hi - 1) // size, max(1, math.ceil(want / factor)),
                               lo // SLOT_NS, (hi - 1) // SLOT_NS, kept))


def parse_filters(params: Params) -> dict[str, list[str]]:
    return {label: list(params[label]) for label in LABELS if params.get(label)}


def parse_choice(params: Params, name: str, choices: tuple[str, ...] | Mapping[str, Any],
                 default: str, status: int = 400) -> str:
    value = one(params, name, default)
    if value not in choices:
        close = difflib.get_close_matches(value, list(choices), n=1)
        raise UiError(status, f"{name}={value!r} is not one of {', '.join(choices)}",
                      f"did you mean {name}={close[0]}?" if close else f"use one of: {', '.join(choices)}")
    return value


def parse_int(params: Params, name: str, default: int | None, lo: int, hi: int) -> int | None:
    text = one(params, name)
    if text is None:
        return default
    if not re.fullmatch(r"\d+", text) or not lo <= int(text) <= hi:
        raise UiError(400, f"{name}={text!r} is not a whole number from {lo} to {hi}",
                      f"for example {name}={default if default is not None else lo}")
    return int(text)


def percentiles(qcounts: Mapping[int, int], ps: tuple[int, ...] = (50, 90, 99)) -> dict[str, float | None]:
    """``p50_ns``… from quarter-octave counts, interpolated inside the bucket the rank falls in."""
    total = sum(qcounts.values())
    out: dict[str, float | None] = {}
    order = sorted(qcounts.items())
    for p in ps:
        if not total:
            out[f"p{p}_ns"] = None
            continue
        rank, seen = p / 100 * total, 0
        value = None
        for q, n in order:
            if n and seen + n >= rank:
                lo, hi = q_bounds(q)
                value = lo + (hi - lo) * (rank - seen) / n
                break
            seen += n
        out[f"p{p}_ns"] = round(value if value is not None else q_bounds(order[-1][0])[1])
    return out


def empty(why: str, rng: Range | None, run: str | None = None) -> dict[str, Any]:
    """The empty-state shape: why nothing shows, and the command that makes data."""
    out: dict[str, Any] = {"empty": True, "why": why}
    if run:
        out["run"] = run
    if rng is not None:
        out["range"] = rng.json()
    return out


def nothing_in_range(data: Data, rng: Range, program: str, what: str, channels: tuple[str, ...],
                     params: Params | None = None) -> dict:
    """The empty answer for a page: the program never wrote here, wrote outside the range, or
    nothing in the range matches the label filters."""
    spans = [s for s in data.streams() if s["program"] == program and s["channel"] in channels]
    run = f"sudo bpfdepot run bpf/{program} --tsdb {data.db}"
    have = [s for s in spans if s["first_ns"] is not None]
    if not have:
        return empty(f"no {what} in {data.db}: {program} never wrote to it", rng, run)
    lo, hi = min(s["first_ns"] for s in have), max(s["last_ns"] for s in have)
    chosen = {k: v for k, v in (params or {}).items() if k in LABELS + ("pid",)}
    if chosen and lo < rng.to_ns and hi >= rng.from_ns:
        said = " and ".join(f"{k}={'|'.join(v)}" for k, v in chosen.items())
        return empty(f"no {what} with {said} between {_clock(rng.from_ns)} and {_clock(rng.to_ns)}; "
                     f"{program} wrote events then, for other labels", rng)
    return empty(f"no {what} between {_clock(rng.from_ns)} and {_clock(rng.to_ns)} (the store holds "
                 f"{program} events from {_clock(lo)} to {_clock(hi)})", rng)


def _clock(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9))


Page = Callable[[Data, Params], dict[str, Any]]


def stamp(data: Data, rng: Range, answer: dict[str, Any]) -> dict[str, Any]:
    """Every data answer carries its range and how fresh the cache is."""
    answer.setdefault("range", rng.json())
    answer["fresh_ns"] = data.watermark()[1]
    return answer


def edge_id(source: str, target: str, server: str) -> str:
    return "e:" + hashlib.sha1(f"{source}|{target}|{server}".encode()).hexdigest()[:16]
