// Page 2: the service map — topology edges as a graph (node: a process, unit or pod; edge width
// by bytes, colour by error / retransmit rate), a table of the same edges with exact counts,
// and an edge's detail (latency, traffic per step, L7 records) when one is clicked. The chosen
// edge is kept in the URL (`edge=ID`).
import { getJSON } from "../api.js";
import { chart, dispose, disposeAll, span } from "../charts.js";
import { common, remember, update } from "../state.js";
import {
  bytes, clock, count, duration, emptyMessage, errorMessage, escapeHtml, h, percent, rangeLine,
  size, show, waiting,
} from "../view.js";

const BY = ["comm", "process", "unit", "pod", "namespace"];
// Which program fills which edge column when it is null (not stored for this range).
const SOURCES = [["retransmits", "tcp_retrans"], ["drops", "skb_drops"],
  ["connect_failures", "tcp_connlat"], ["l7_calls", "l7"]];

/** Green (0) to red (>= 10 %) for an edge's worst rate; grey when no program measured it. */
function edgeColour(edge) {
  const rates = [edge.error_rate, edge.retransmit_rate].filter((r) => r !== null && r !== undefined);
  if (!rates.length) return "#8a94a6";
  const worst = Math.min(1, Math.max(...rates) / 0.1);
  const hue = 120 * (1 - worst);
  return `hsl(${hue}, 70%, 40%)`;
}

/** The edges between one pair of nodes drawn as one line (a busy server has one edge per
 * client port or address): bytes and connections summed, the worst rate kept, and the id of
 * the biggest edge for a click. */
function pairs(edges) {
  const byPair = new Map();
  for (const e of edges) {
    const key = `${e.source}\u0000${e.target}`;
    const pair = byPair.get(key) || { source: e.source, target: e.target, bytes: 0, conns: 0, edges: 0,
      error_rate: null, retransmit_rate: null, id: e.id, top: -1 };
    pair.bytes += e.bytes; pair.conns += e.conns; pair.edges += 1;
    for (const rate of ["error_rate", "retransmit_rate"]) {
      if (e[rate] !== null && e[rate] !== undefined) pair[rate] = Math.max(pair[rate] ?? 0, e[rate]);
    }
    if (e.bytes > pair.top) { pair.top = e.bytes; pair.id = e.id; }
    byPair.set(key, pair);
  }
  return [...byPair.values()];
}

function graphOption(answer) {
  const lines = pairs(answer.edges);
  const maxBytes = Math.max(1, ...lines.map((e) => e.bytes));
  const nodeBytes = (n) => (n.bytes_tx || 0) + (n.bytes_rx || 0);
  const maxNode = Math.max(1, ...answer.nodes.map(nodeBytes));
  return {
    tooltip: {
      formatter: (p) => p.dataType === "edge"
        ? `${escapeHtml(shortId(p.data.source))} → ${escapeHtml(shortId(p.data.target))}<br>${bytes(p.data.raw.bytes)}, ` +
          `${count(p.data.raw.conns)} conns` + (p.data.raw.edges > 1 ? ` (${p.data.raw.edges} edges)` : "")
        : `${escapeHtml(p.data.name)}<br>sent ${size(p.data.raw.bytes_tx || 0)}, received ${size(p.data.raw.bytes_rx || 0)}`,
    },
    series: [{
      type: "graph", layout: "force", roam: true, draggable: true, zoom: 1.4,
      // laid out while shown (it settles within a second): computing the whole layout first
      // held a 100-edge map back by ~0.5 s (bench/bench_ui_pages.py)
      force: { repulsion: 900, edgeLength: [160, 320], gravity: 0.05, layoutAnimation: true },
      autoCurveness: true,
      edgeSymbol: ["none", "arrow"], edgeSymbolSize: 10,
      label: { show: true, position: "right", fontSize: 13 },
      edgeLabel: { show: true, fontSize: 12, formatter: (p) => p.data.label_text },
      emphasis: { focus: "adjacency" },
      data: answer.nodes.map((n) => ({
        id: n.id, name: n.label || "(none)", raw: n,
        symbolSize: 14 + 30 * Math.sqrt(nodeBytes(n) / maxNode),
        itemStyle: { color: n.kind === "external" ? "#b0b7c3" : n.kind === "listener" ? "#5b8def" : "#2f6fdb" },
      })),
      links: lines.map((e) => ({
        source: e.source, target: e.target, raw: e, id: e.id,
        label_text: `${size(e.bytes)} · ${count(e.conns)} conn${e.conns === 1 ? "" : "s"}`,
        lineStyle: { width: 1.5 + 6 * Math.sqrt(e.bytes / maxBytes), color: edgeColour(e), opacity: 0.9 },
      })),
    }],
  };
}

/** "comm:curl" -> "curl", "ext:10.0.0.5:443" -> "10.0.0.5:443" (a node id without its kind). */
function shortId(id) {
  return id.replace(/^[a-z]+:/, "");
}

function nodeName(answer, id) {
  const node = answer.nodes.find((n) => n.id === id);
  return node ? node.label || "(none)" : shortId(id);
}

function edgeTable(answer, pick) {
  return h("table", { class: "edges" },
    h("thead", {}, h("tr", {}, ["client", "server", "address", "bytes", "sent", "received", "conns",
      "error rate", "retransmit rate", "drops", "L7 calls"].map((c, i) => h("th", { class: i > 2 ? "n" : null }, c)))),
    h("tbody", {}, answer.edges.map((e) => h("tr", {
      "data-edge": e.id, class: "clickable", tabindex: 0, title: "show this edge's latency and L7 calls",
      onclick: () => pick(e.id), onkeydown: (ev) => { if (ev.key === "Enter") pick(e.id); },
    },
    h("td", {}, nodeName(answer, e.source)), h("td", {}, nodeName(answer, e.target)),
    h("td", {}, e.server || ""), h("td", { class: "n", "data-bytes": e.bytes }, bytes(e.bytes)),
    h("td", { class: "n" }, count(e.bytes_tx)), h("td", { class: "n" }, count(e.bytes_rx)),
    h("td", { class: "n" }, count(e.conns)), h("td", { class: "n" }, percent(e.error_rate)),
    h("td", { class: "n" }, percent(e.retransmit_rate)), h("td", { class: "n" }, count(e.drops)),
    h("td", { class: "n" }, count(e.l7_calls))))));
}

function latencyLine(name, stat, program) {
  if (!stat) return h("li", { class: "muted" }, `${name}: no data (run `, h("code", {}, `sudo bpfdepot run bpf/${program} --tsdb`), ")");
  return h("li", {}, `${name}: ${count(stat.count)} · p50 ${duration(stat.p50_ns)} · ` +
    `p90 ${duration(stat.p90_ns)} · p99 ${duration(stat.p99_ns)}`);
}

let detailChart = null; // the traffic chart of the edge shown, disposed when another is picked
let detailAsked = 0;     // increases per pick: a slow answer for an edge picked before is ignored

async function drawDetail(box, id, filters) {
  const mine = ++detailAsked;
  dispose(detailChart);
  detailChart = null;
  show(box, h("p", { class: "loading" }, "Loading the edge…"));
  let answer;
  try {
    answer = await getJSON("/api/servicemap/edge", { ...filters, id });
  } catch (err) {
    if (mine === detailAsked) show(box, errorMessage(err));
    return;
  }
  if (mine !== detailAsked) return;
  const e = answer.edge, lat = answer.latency || {};
  const records = answer.l7_records || [];
  const series = h("div", { class: "chart small", id: "edge-series" });
  show(box,
    h("h2", {}, `${shortId(e.source)} → ${shortId(e.target)}`, e.server ? ` (${e.server})` : ""),
    h("p", {}, `${bytes(e.bytes)} in ${count(e.conns)} connection${e.conns === 1 ? "" : "s"}`),
    h("ul", { class: "latency" }, latencyLine("connect", lat.connect, "tcp_connlat"),
      latencyLine("RTT", lat.rtt, "tcp_rtt"), latencyLine("L7", lat.l7, "l7")),
    series,
    records.length
      ? h("table", { class: "l7" },
        h("caption", {}, `L7 calls (newest ${records.length})`),
        h("thead", {}, h("tr", {}, ["time", "protocol", "method", "path", "status", "latency", "error", "comm"]
          .map((c) => h("th", {}, c)))),
        h("tbody", {}, records.map((r) => h("tr", {}, h("td", {}, clock(r.ts_ns)), h("td", {}, r.protocol ?? ""),
          h("td", {}, r.method ?? ""), h("td", {}, r.path ?? r.query ?? ""), h("td", {}, r.status ?? ""),
          h("td", { class: "n" }, duration(r.latency_ns)), h("td", { class: r.error ? "bad" : null }, r.error ?? ""),
          h("td", {}, r.comm ?? "")))))
      : h("p", { class: "muted" }, "No L7 calls on this edge in the range (run `sudo bpfdepot run bpf/l7 --tsdb` to see HTTP, DNS, MongoDB and gRPC calls)."));
  const points = answer.series || [];
  if (points.length) {
    detailChart = chart(series);
    detailChart.setOption({
      grid: { left: 70, right: 20, top: 20, bottom: 30 },
      tooltip: { trigger: "axis" },
      xAxis: { type: "time", ...span(answer.range) },
      yAxis: { type: "value", name: "bytes", axisLabel: { formatter: (v) => size(v) } },
      series: [{ type: "bar", name: "bytes", data: points.map((p) => [p.t_ns / 1e6, p.bytes]), itemStyle: { color: "#2f6fdb" } }],
    });
  }
}

export async function render(root, p, stale) {
  const by = BY.includes(p.get("by")) ? p.get("by") : "comm";
  const filters = common(p);
  let answer;
  try {
    answer = await getJSON("/api/servicemap", { ...filters, by, program: p.get("program") }, waiting(root));
  } catch (err) {
    show(root, h("h1", {}, "Service map"), errorMessage(err));
    return null;
  }
  if (stale()) return null;
  const header = [
    h("h1", {}, "Service map"),
    h("p", { class: "controls" }, "Nodes by ",
      h("select", { id: "by", onchange: (ev) => update({ by: ev.target.value, edge: null }) },
        BY.map((b) => h("option", { value: b, selected: b === by }, b))),
      " · ", rangeLine(answer.range)),
  ];
  if (answer.empty || !answer.edges?.length) {
    show(root, ...header, emptyMessage(answer.empty ? answer : {
      why: "no topology edges in this range", run: "sudo bpfdepot run bpf/topology --tsdb",
    }, "topology data"));
    return null;
  }
  const graph = h("div", { class: "chart map", id: "map-graph" });
  const detail = h("section", { id: "edge-detail", class: "detail" },
    h("p", { class: "muted" }, "Click an edge (or a row below) for its latency and L7 calls."));
  const missing = SOURCES.filter(([field]) => answer.edges.every((e) => e[field] === null || e[field] === undefined))
    .map(([, program]) => program);
  const left = answer.left_out?.edges
    ? h("p", { class: "muted" }, `${count(answer.left_out.edges)} smaller edges (${bytes(answer.left_out.bytes)}) not drawn`) : null;
  show(root, ...header, graph,
    h("p", { class: "legend" }, "Edge width: bytes · colour: worst of error and retransmit rate (green 0 %, red ≥ 10 %, grey: not measured)"),
    missing.length ? h("p", { class: "muted" }, "Not measured in this range (run them for the rates): ",
      missing.map((m, i) => [i ? ", " : "", h("code", {}, `sudo bpfdepot run bpf/${m} --tsdb`)])) : null,
    edgeTable(answer, (id) => pick(id, true)), left, detail);
  const drawn = chart(graph);
  drawn.setOption(graphOption(answer));
  drawn.on("click", (ev) => { if (ev.dataType === "edge") pick(ev.data.id, true); });

  // an edge's detail is drawn in place (the graph keeps its layout) and kept in the URL
  async function pick(id, fresh) {
    if (fresh) remember({ edge: id });
    for (const row of root.querySelectorAll("tr.selected")) row.classList.remove("selected");
    root.querySelector(`tr[data-edge="${CSS.escape(id)}"]`)?.classList.add("selected");
    await drawDetail(detail, id, filters);
  }
  if (p.get("edge")) await pick(p.get("edge"), false);
  return disposeAll;
}
