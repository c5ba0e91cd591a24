// Page 4: where packets die — skb drops by reason, protocol, port or kernel location (the top
// values and their counts per time step), with the TCP resets sent and the retransmits beside.
import { getJSON } from "../api.js";
import { chart, disposeAll, span } from "../charts.js";
import { common, update } from "../state.js";
import { count, emptyMessage, errorMessage, h, rangeLine, show, waiting } from "../view.js";

const BY = ["reason", "protocol", "port", "location"];
const PALETTE = ["#c0392b", "#e67e22", "#f1c40f", "#27ae60", "#2980b9", "#8e44ad", "#16a085",
  "#d35400", "#2c3e50", "#7f8c8d"];

function short(value) {
  return String(value).replace(/^SKB_DROP_REASON_/, "");
}

function overTime(answer) {
  const s = answer.series;
  return {
    grid: { left: 60, right: 20, top: 40, bottom: 30 },
    legend: { top: 0, type: "scroll" },
    tooltip: { trigger: "axis" },
    color: PALETTE,
    xAxis: { type: "time", ...span(answer.range) },
    yAxis: { type: "value", name: "drops", minInterval: 1 },
    series: s.values.map((value, i) => ({
      type: "bar", stack: "drops", name: short(value), barMaxWidth: 24,
      data: s.t_ns.map((t, j) => [t / 1e6, s.counts[i][j]]),
    })),
  };
}

function smallTable(title, rows, cols, run) {
  if (rows === null || rows === undefined) {
    return h("p", { class: "muted" }, `${title}: not stored for this range (run `, h("code", {}, run), ")");
  }
  if (!rows.length) return h("p", { class: "muted" }, `${title}: none in this range`);
  return h("table", { class: "counts" }, h("caption", {}, title),
    h("thead", {}, h("tr", {}, cols.map((c) => h("th", { class: c === "count" ? "n" : null }, c)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, cols.map((c) => h("td", { class: c === "count" ? "n" : null },
      c === "count" ? count(r[c]) : r[c] ?? ""))))));
}

export async function render(root, p, stale) {
  const by = BY.includes(p.get("by")) ? p.get("by") : "reason";
  let answer;
  try {
    answer = await getJSON("/api/drops", { ...common(p), by, program: p.get("program") }, waiting(root));
  } catch (err) {
    show(root, h("h1", {}, "Drops and errors"), errorMessage(err));
    return null;
  }
  if (stale()) return null;
  const header = [
    h("h1", {}, "Drops and errors"),
    h("p", { class: "controls" }, "Drops by ",
      h("select", { id: "by", onchange: (ev) => update({ by: ev.target.value }) },
        BY.map((b) => h("option", { value: b, selected: b === by }, b))),
      " · ", rangeLine(answer.range)),
  ];
  if (answer.empty) {
    show(root, ...header, emptyMessage(answer, "drops"));
    return null;
  }
  const top = answer.top || [];
  const graph = h("div", { class: "chart drops", id: "drops-chart" });
  show(root, ...header,
    h("p", { class: "stats" }, `${count(answer.total)} packets dropped`),
    top.length ? graph : h("p", { class: "muted" }, "No drops in this range."),
    top.length ? h("table", { class: "counts top" }, h("caption", {}, `Drops by ${by}`),
      h("thead", {}, h("tr", {}, h("th", {}, by), h("th", { class: "n" }, "count"))),
      h("tbody", {}, top.map((t) => h("tr", { "data-value": t.value }, h("td", {}, String(t.value)),
        h("td", { class: "n" }, count(t.count)))))) : null,
    answer.left_out?.values ? h("p", { class: "muted" },
      `${count(answer.left_out.values)} more values (${count(answer.left_out.count)} drops) summed as "other"`) : null,
    h("div", { class: "tables" },
      smallTable("TCP resets sent", answer.resets, ["port", "state", "count"], "sudo bpfdepot run bpf/skb_drops --tsdb"),
      smallTable("Retransmits", answer.retransmits, ["daddr", "dport", "state", "count"], "sudo bpfdepot run bpf/tcp_retrans --tsdb")));
  if (top.length && answer.series?.t_ns?.length) chart(graph).setOption(overTime(answer));
  return disposeAll;
}
