"""One function per data endpoint of API.md: ``(Data, params) → JSON-able dict``.

Each reads the rollup cache through data.py (aggregated per 10 s slot and label group), so an
answer's cost follows the number of groups and steps in its range, never the number of events.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from loader.ui import UiError
from loader.ui.data import LABELS, Data
from loader.ui.pages import (
    DROP_BY,
    FLAME_KINDS,
    METRICS,
    RANGE,
    Params,
    Range,
    check_params,
    edge_id,
    nothing_in_range,
    one,
    parse_choice,
    parse_filters,
    parse_int,
    parse_range,
    percentiles,
    stamp,
)

_FILTERED = RANGE + LABELS + ("step",)
STACK_CATALOG = ("cpu_profile", "offcpu", "wakeuptime")  # bpf/ programs with a stack_counts channel
_RUN = "sudo bpfdepot run bpf/{} --tsdb {}"


def streams(data: Data, params: Params) -> dict[str, Any]:
    check_params(params, RANGE)
    rng = parse_range(params, kept=data.kept())
    rows = data.streams()
    for row in rows:
        del row["id"]
    return stamp(data, rng, {"streams": rows, "labels": data.label_values(rng.w)})


# -- latency ------------------------------------------------------------------------------------


def latency_metrics(data: Data, params: Params) -> dict[str, Any]:
    check_params(params, _FILTERED)
    rng = parse_range(params, kept=data.kept())
    counts = data.latency_counts(rng.w, parse_filters(params))
    return stamp(data, rng, {"metrics": [
        {"metric": m, "count": counts.get(m, 0), "program": p, "run": _RUN.format(p, data.db)}
        for m, p in METRICS.items()]})


def latency(data: Data, params: Params) -> dict[str, Any]:
    check_params(params, _FILTERED + ("metric", "by", "limit"))
    if one(params, "metric") is None:
        raise UiError(400, "parameter 'metric' is missing", f"one of: {', '.join(METRICS)}")
    metric = parse_choice(params, "metric", METRICS, "", status=404)
    by = parse_choice(params, "by", LABELS + ("none",), "none")
    limit = parse_int(params, "limit", 10, 1, 1000)
    rng = parse_range(params, kept=data.kept())
    rows = data.latency(metric, rng.w, by, parse_filters(params))
    program = METRICS[metric]
    if not rows:
        channel = {"connect": "tcp_connlat_events", "rtt": "rtt_hists",
                   "file": "filelat_events"}.get(metric, "l7_events")
        return nothing_in_range(data, rng, program, f"{metric} latency", (channel,), params)
    counts: dict[str, int] = defaultdict(int)
    for _, group, _, n, _, _ in rows:
        counts[group] += n
    ranked = sorted(counts, key=lambda g: (-counts[g], g))
    # only the groups shown get their steps summed (the rest are one number in left_out)
    per_group: dict[str, dict[str, Any]] = {
        name: {"q": defaultdict(int), "steps": defaultdict(lambda: defaultdict(int)), "count": counts[name],
               "sum_ns": 0.0, "errors": 0} for name in ranked[:limit]}
    for step, group, q, n, total_ns, errors in rows:
        g = per_group.get(group)
        if g is not None:
            g["q"][q] += n
            g["steps"][step][q] += n
            g["sum_ns"] += total_ns or 0.0
            g["errors"] += errors or 0
    kept = list(per_group.items())
    rest = [(name, {"count": counts[name]}) for name in ranked[limit:]]
    octaves = sorted({q // 4 for _, g in kept for q in g["q"]})
    index = {b: i for i, b in enumerate(octaves)}
    t_ns = rng.t_ns()
    groups = []
    for name, g in kept:
        heat = [[0] * rng.steps for _ in octaves]
        series: dict[str, list] = {"t_ns": t_ns, "count": [0] * rng.steps, "p50_ns": [None] * rng.steps,
                                   "p90_ns": [None] * rng.steps, "p99_ns": [None] * rng.steps}
        for step, qs in g["steps"].items():
            if not 0 <= step < rng.steps:
                continue
            for q, n in qs.items():
                heat[index[q // 4]][step] += n
            series["count"][step] = sum(qs.values())
            for key, value in percentiles(qs).items():
                series[key][step] = value
        groups.append({"group": name, "count": g["count"], "errors": g["errors"],
                       "sum_ns": round(g["sum_ns"]), **percentiles(g["q"]),
                       "heatmap": {"t_ns": t_ns, "counts": heat}, "series": series})
    return stamp(data, rng, {
        "metric": metric, "by": by, "unit": "ns",
        "buckets": [{"b": b, "lo_ns": 2 ** b, "hi_ns": 2 ** (b + 1)} for b in octaves],
        "groups": groups,
        "left_out": {"groups": len(rest), "count": sum(g["count"] for _, g in rest)}})


# -- the service map ----------------------------------------------------------------------------


def _node(by: str, comm: str, pid: int, labels: dict[str, str]) -> tuple[str, str]:
    if by == "process":
        return f"proc:{comm}:{pid}", f"{comm} ({pid})" if pid else comm or "(unknown)"
    if by in ("unit", "pod", "namespace") and labels.get(by):
        return f"{by}:{labels[by]}", labels[by]
    return f"comm:{comm}", comm or "(unknown)"


def _graph(data: Data, params: Params, rng: Range, by: str) -> dict[str, dict[str, Any]]:
    """Edge id → edge (with its nodes and client comm), built from the cache's topology rows;
    with label filters, the edges with a process end that matches them (both ends are read, so
    a client's edge still points at the local server it talks to)."""
    rows = data.edges(rng.w, {})
    servers = {}
    for row in rows:
        if row[0] == "server":
            servers.setdefault((row[6], row[7], row[8]), []).append(row)  # laddr, lport, raddr
    used: set[int] = set()
    edges: dict[str, dict[str, Any]] = {}

    def add(src: tuple[str, str, str], dst: tuple[str, str, str], server: str, tx: int, rx: int,
            conns: int, closed: int, comm: str, pid: int, ends: list[tuple]) -> None:
        key = edge_id(src[0], dst[0], server)
        e = edges.setdefault(key, {"id": key, "source": src[0], "target": dst[0], "server": server,
                                   "bytes": 0, "bytes_tx": 0, "bytes_rx": 0, "conns": 0, "closed": 0,
                                   "_nodes": (src, dst), "_comm": comm, "_pid": pid, "_ends": []})
        e["_ends"] += ends
        e["bytes_tx"] += tx
        e["bytes_rx"] += rx
        e["bytes"] += tx + rx
        e["conns"] += conns
        e["closed"] += closed

    for d, pid, comm, unit, pod, ns, laddr, lport, raddr, rport, tx, rx, conns, closed in rows:
        if d != "client":
            continue
        labels = {"unit": unit, "pod": pod, "namespace": ns}
        src = (*_node(by, comm, pid, labels), "process")
        server = f"{raddr}:{rport}"
        local = servers.get((raddr, rport, laddr))
        ends = [(comm, unit, pod, ns)]
        if local:
            used.update(id(r) for r in local)
            s = local[0]
            dst = (*_node(by, s[2], s[1], {"unit": s[3], "pod": s[4], "namespace": s[5]}), "process")
            ends.append(tuple(s[2:6]))
        else:
            dst = (f"ext:{server}", server, "external")
        add(src, dst, server, tx, rx, conns, closed, comm, pid, ends)
    for row in rows:
        if row[0] == "server" and id(row) not in used:
            _, pid, comm, unit, pod, ns, laddr, lport, raddr, rport, tx, rx, conns, closed = row
            dst = (*_node(by, comm, pid, {"unit": unit, "pod": pod, "namespace": ns}), "process")
            add((f"ext:{raddr}", raddr, "external"), dst, f"{laddr}:{lport}", rx, tx, conns, closed, "", 0,
                [(comm, unit, pod, ns)])
    filters = parse_filters(params)
    if filters:
        want = [(LABELS.index(label), set(values)) for label, values in filters.items()]
        edges = {k: e for k, e in edges.items()
                 if any(all(end[i] in values for i, values in want) for end in e["_ends"])}
    return edges


def _rates(data: Data, rng: Range, edges: dict[str, dict[str, Any]]) -> None:
    """Retransmits, drops, connect failures and L7 calls/errors on each edge, where stored."""
    present = data.kinds_present()
    retrans = {f"{a}:{b}": n for a, b, n, _ in data.counts("retrans", rng.w, ("a", "b"))} \
        if "retrans" in present else None
    drops = {c: n for c, n, _ in data.counts("drop", rng.w, ("c",))} if "drop" in present else None
    fails = {(a, comm): n for a, comm, n, _ in data.counts("connfail", rng.w, ("a", "comm"))} \
        if "connfail" in present else None
    l7 = {(a, comm): (n, n2) for a, comm, c, n, n2 in data.counts("l7", rng.w, ("a", "comm", "c"))
          if c in ("client", "")} if "l7" in present else None
    for e in edges.values():
        server, comm = e["server"], e["_comm"]
        port = server.rpartition(":")[2]
        e["retransmits"] = retrans.get(server, 0) if retrans is not None else None
        e["drops"] = drops.get(port, 0) if drops is not None else None
        e["connect_failures"] = fails.get((server, comm), 0) if fails is not None else None
        calls, errors = l7.get((server, comm), (0, 0)) if l7 is not None else (None, None)
        e["l7_calls"], e["l7_errors"] = calls, errors
        failed = (e["connect_failures"] or 0) + (errors or 0)
        tries = e["conns"] + (calls or 0)
        e["error_rate"] = (round(failed / tries, 4) if tries else 0.0) \
            if fails is not None or l7 is not None else None
        e["retransmit_rate"] = (round(e["retransmits"] / e["conns"], 4) if e["conns"] else 0.0) \
            if retrans is not None else None


def _public(e: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in e.items() if not k.startswith("_")}


def servicemap(data: Data, params: Params) -> dict[str, Any]:
    check_params(params, _FILTERED + ("by", "limit"))
    by = parse_choice(params, "by", LABELS + ("process",), "comm")
    limit = parse_int(params, "limit", 100, 1, 1000)
    rng = parse_range(params, kept=data.kept())
    edges = _graph(data, params, rng, by)
    if not edges:
        return nothing_in_range(data, rng, "topology", "topology edges", ("topology_edges",), params)
    ranked = sorted(edges.values(), key=lambda e: (-e["bytes"], e["id"]))
    kept, rest = ranked[:limit], ranked[limit:]
    _rates(data, rng, {e["id"]: e for e in kept})
    nodes: dict[str, dict[str, Any]] = {}
    for e in kept:
        (sid, slabel, skind), (tid, tlabel, tkind) = e["_nodes"]
        for nid, label, kind, tx, rx in ((sid, slabel, skind, e["bytes_tx"], e["bytes_rx"]),
                                         (tid, tlabel, tkind, e["bytes_rx"], e["bytes_tx"])):
            n = nodes.setdefault(nid, {"id": nid, "label": label, "kind": kind, "bytes_tx": 0,
                                       "bytes_rx": 0, "conns": 0})
            n["bytes_tx"] += tx
            n["bytes_rx"] += rx
            n["conns"] += e["conns"]
    return stamp(data, rng, {"by": by, "nodes": sorted(nodes.values(), key=lambda n: n["id"]),
                             "edges": [_public(e) for e in kept],
                             "left_out": {"edges": len(rest), "bytes": sum(e["bytes"] for e in rest)}})


def servicemap_edge(data: Data, params: Params) -> dict[str, Any]:
    check_params(params, _FILTERED + ("by", "id"))
    wanted = one(params, "id")
    if not wanted:
        raise UiError(400, "parameter 'id' is missing", "give an edge id from /api/servicemap")
    by = parse_choice(params, "by", LABELS + ("process",), "comm")
    rng = parse_range(params, kept=data.kept())
    edges = _graph(data, params, rng, by)
    edge = edges.get(wanted)
    if edge is None:
        raise UiError(404, f"no edge {wanted!r} in the service map of this range",
                      "reload the service map: the range or grouping changed")
    _rates(data, rng, {wanted: edge})
    server = edge["server"]
    latency: dict[str, Any] = {}
    for name, metrics in (("connect", ("connect",)), ("rtt", ("rtt",)),
                          ("l7", ("http", "grpc", "dns", "mongo"))):
        # the edge's own calls: its client's, to its server (RTT is kept per address only)
        comm = edge["_comm"] if edge["_comm"] and name != "rtt" else None
        qs = dict(data.peer_latency(metrics, server, comm, rng.w))
        latency[name] = {"count": sum(qs.values()), **percentiles(qs)} if qs else None
    raddr, _, rport = server.rpartition(":")
    series = [{"t_ns": t, "bytes": 0, "conns": 0} for t in rng.t_ns()]
    if edge["_comm"]:
        pid = edge["_pid"] if by == "process" else None
        for step, nbytes, conns in data.edge_series(rng.w, edge["_comm"], pid, raddr,
                                                    int(rport) if rport.isdigit() else 0):
            if 0 <= step < len(series):
                series[step].update(bytes=nbytes, conns=conns)
    sids = [s["id"] for s in data.streams() if s["channel"] == "l7_events"]
    slots = data.recent_slots("l7", rng.w, server, edge["_comm"]) if edge["_comm"] else []
    records = data.l7_records(sids, slots, edge["_comm"], server)
    for r in records:
        if isinstance(r.get("latency_us"), (int, float)):
            r["latency_ns"] = round(r["latency_us"] * 1000)
        r.setdefault("error", None)
    return stamp(data, rng, {"edge": _public(edge), "latency": latency, "series": series,
                             "l7_records": records})


# -- drops --------------------------------------------------------------------------------------


def drops(data: Data, params: Params) -> dict[str, Any]:
    check_params(params, RANGE + ("by", "limit", "step"))
    by = parse_choice(params, "by", tuple(DROP_BY), "reason")
    limit = parse_int(params, "limit", 20, 1, 1000)
    rng = parse_range(params, kept=data.kept())
    col = DROP_BY[by]
    totals = data.counts("drop", rng.w, (col,))
    present = data.kinds_present()
    if not totals:
        return nothing_in_range(data, rng, "skb_drops", "packet drops", ("drops",))
    ranked = sorted(((v, n) for v, n, _ in totals), key=lambda vn: (-vn[1], vn[0]))
    kept, rest = ranked[:limit], ranked[limit:]
    values = [v for v, _ in kept] + (["other"] if rest else [])
    index = {v: i for i, v in enumerate(values)}
    counts = [[0] * rng.steps for _ in values]
    for step, v, n, _ in data.counts("drop", rng.w, (col,), steps=True):
        if 0 <= step < rng.steps:
            counts[index.get(v, len(values) - 1)][step] += n
    resets = [{"port": int(a) if a.isdigit() else a, "state": b, "count": n}
              for a, b, n, _ in data.counts("reset", rng.w, ("a", "b"))] \
        if "reset" in present else None
    retrans = [{"daddr": a, "dport": int(b) if b.isdigit() else b, "state": c, "count": n}
               for a, b, c, n, _ in data.counts("retrans", rng.w, ("a", "b", "c"))] \
        if "retrans" in present else None
    for listing in (resets, retrans):
        if listing:
            listing.sort(key=lambda r: -r["count"])
    return stamp(data, rng, {
        "by": by, "total": sum(n for _, n in ranked),
        "top": [{"value": int(v) if by == "port" and v.isdigit() else v, "count": n} for v, n in kept],
        "series": {"t_ns": rng.t_ns(), "values": values, "counts": counts},
        "resets": resets, "retransmits": retrans,
        "left_out": {"values": len(rest), "count": sum(n for _, n in rest)}})


# -- flame graphs -------------------------------------------------------------------------------


def flamegraph(data: Data, params: Params) -> dict[str, Any]:
    check_params(params, _FILTERED + ("kind", "program", "pid", "min_share"))
    rng = parse_range(params, kept=data.kept())
    stack_programs = sorted({n.partition(".")[0] for n in data.kinds_present().get("stack", [])})
    program = one(params, "program")
    if program is None:
        kind = parse_choice(params, "kind", FLAME_KINDS, "cpu", status=404)
        program = FLAME_KINDS[kind]
    else:
        kind = next((k for k, p in FLAME_KINDS.items() if p == program), program)
        if program not in stack_programs:
            run = program if program in STACK_CATALOG else "cpu_profile"
            raise UiError(404, f"no stack records of program '{program}' in {data.db}",
                          "stack programs stored: " + (", ".join(stack_programs) or "none") +
                          f"; the catalog's: {', '.join(STACK_CATALOG)} (e.g. sudo bpfdepot run "
                          f"bpf/{run} --tsdb {data.db})")
    pid = parse_int(params, "pid", None, 0, 2**32)
    share_text = one(params, "min_share", "0.0005")
    try:
        min_share = float(share_text)
        assert 0 <= min_share < 1
    except (ValueError, AssertionError):
        raise UiError(400, f"min_share={share_text!r} is not a share from 0 to 1",
                      "for example min_share=0.001 (frames under 0.1 % are merged)") from None
    rows = data.stacks(program, rng.w, parse_filters(params), pid)
    if not rows:
        return nothing_in_range(data, rng, program, f"{program} stacks", ("counts",), params)
    root: dict[str, Any] = {"name": "all", "value": 0, "children": {}}
    units = set()
    for stack, nk, value, unit in rows:
        units.add(unit)
        frames = stack.split(";")
        first_kernel = len(frames) - nk if nk and frames[-1] != "[lost stack]" else len(frames)
        root["value"] += value
        node = root
        for i, frame in enumerate(frames):
            child = node["children"].get(frame)
            if child is None:
                child = node["children"][frame] = {"name": frame, "value": 0,
                                                   "kernel": i >= first_kernel and i > 0, "children": {}}
            child["value"] += value
            node = child
    total = root["value"]
    return stamp(data, rng, {"kind": kind, "program": program,
                             "unit": units.pop() if len(units) == 1 else "samples",
                             "total": total, "stacks": len(rows),
                             "tree": _pruned(root, total * min_share)})


def _pruned(node: dict[str, Any], floor: float) -> dict[str, Any]:
    """d3-flame-graph's node: children under ``floor`` merged into one ``[other]`` child."""
    out = {k: v for k, v in node.items() if k != "children"}
    kids, other = [], 0
    for child in sorted(node["children"].values(), key=lambda c: (-c["value"], c["name"])):
        if child["value"] < floor:
            other += child["value"]
        else:
            kids.append(_pruned(child, floor))
    if other:
        kids.append({"name": "[other]", "value": other, "kernel": False, "children": []})
    out["children"] = kids
    return out
