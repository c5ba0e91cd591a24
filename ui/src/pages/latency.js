// Page 3: latency over time for one metric (connect, RTT, HTTP, gRPC, DNS, MongoDB, file):
// per group (comm, unit, pod, ...) a heatmap of log2 latency buckets per time step and the
// p50 / p90 / p99 lines. The server aggregates (loader/ui/API.md); the page only draws.
import { getJSON } from "../api.js";
import { chart, disposeAll, span } from "../charts.js";
import { common, update } from "../state.js";
import { count, duration, emptyMessage, errorMessage, h, message, rangeLine, show, waiting } from "../view.js";

const BY = ["none", "comm", "unit", "pod", "namespace"];
const EAGER = 2; // panels drawn before the page counts as drawn
const HEAT = ["#fff7d6", "#fed976", "#fd8d3c", "#e31a1c", "#800026"];

function heatmapOption(answer, group) {
  const times = group.heatmap.t_ns;
  const cells = [];
  let most = 1;
  group.heatmap.counts.forEach((row, y) => row.forEach((n, x) => {
    if (n > 0) { cells.push([x, y, n]); most = Math.max(most, n); }
  }));
  return {
    cells: cells.length,
    option: {
      grid: { left: 80, right: 90, top: 16, bottom: 40 },
      tooltip: {
        formatter: (p) => {
          const b = answer.buckets[p.value[1]];
          return `${new Date(times[p.value[0]] / 1e6).toLocaleTimeString("en-GB")}<br>` +
            `${duration(b.lo_ns)} – ${duration(b.hi_ns)}: ${count(p.value[2])}`;
        },
      },
      xAxis: { type: "category", data: times.map((t) => new Date(t / 1e6).toLocaleTimeString("en-GB")), splitArea: { show: false } },
      yAxis: { type: "category", data: answer.buckets.map((b) => `≥ ${duration(b.lo_ns)}`) },
      visualMap: { min: 0, max: most, calculable: false, orient: "vertical", right: 0, top: 16, itemHeight: 120,
        inRange: { color: HEAT }, text: [count(most), "0"] },
      series: [{ type: "heatmap", name: group.group || "(none)", data: cells, progressive: 0 }],
    },
  };
}

function linesOption(group, range) {
  const s = group.series;
  const at = (values) => s.t_ns.map((t, i) => [t / 1e6, values[i]]);
  return {
    grid: { left: 80, right: 90, top: 30, bottom: 30 },
    legend: { top: 0 },
    tooltip: { trigger: "axis", valueFormatter: (v) => duration(v) },
    xAxis: { type: "time", ...span(range) },
    yAxis: { type: "log", name: "", axisLabel: { formatter: (v) => duration(v) } },
    series: [["p50", "#2f6fdb"], ["p90", "#e69500"], ["p99", "#c0392b"]].map(([name, color]) => ({
      type: "line", name, data: at(s[`${name}_ns`]), showSymbol: true, symbolSize: 5, connectNulls: false,
      lineStyle: { width: 2, color }, itemStyle: { color },
    })),
  };
}

function groupPanel(answer, group) {
  const name = group.group === "" ? "(none)" : group.group;
  const heat = h("div", { class: "chart heat" });
  const lines = h("div", { class: "chart lines" });
  const { cells, option } = heatmapOption(answer, group);
  heat.dataset.cells = String(cells); // cells with calls: a reader (and a test) sees it is not blank
  const panel = h("section", { class: "group", "data-group": name },
    h("h2", {}, answer.by === "none" ? `All ${answer.metric}` : `${answer.by} ${name}`),
    h("p", { class: "stats" }, `${count(group.count)} call${group.count === 1 ? "" : "s"} · p50 ${duration(group.p50_ns)} · ` +
      `p90 ${duration(group.p90_ns)} · p99 ${duration(group.p99_ns)}` +
      (group.errors ? ` · ${count(group.errors)} errors` : "")),
    heat, lines);
  return { panel, draw: () => { chart(heat).setOption(option); chart(lines).setOption(linesOption(group, answer.range)); } };
}

export async function render(root, p, stale) {
  const filters = common(p);
  const by = BY.includes(p.get("by")) ? p.get("by") : "none";
  let metrics, answer;
  try {
    metrics = (await getJSON("/api/latency/metrics", filters, waiting(root))).metrics || [];
  } catch (err) {
    show(root, h("h1", {}, "Latency"), errorMessage(err));
    return null;
  }
  const metric = p.get("metric") || (metrics.find((m) => m.count > 0) || metrics[0] || {}).metric || "connect";
  const header = () => [
    h("h1", {}, "Latency over time"),
    h("p", { class: "controls" }, "Metric ",
      h("select", { id: "metric", onchange: (ev) => update({ metric: ev.target.value }) },
        (metrics.some((m) => m.metric === metric) ? metrics : [...metrics, { metric, count: 0 }])
          .map((m) => h("option", { value: m.metric, selected: m.metric === metric }, `${m.metric} (${count(m.count)})`))),
      " by ",
      h("select", { id: "by", onchange: (ev) => update({ by: ev.target.value }) },
        BY.map((b) => h("option", { value: b, selected: b === by }, b))),
      answer ? ` · ${rangeLine(answer.range)}` : ""),
  ];
  if (metrics.length && metrics.every((m) => !m.count) && !p.get("metric")) {
    show(root, ...header(), message("empty", "No latency data in this range",
      "None of the latency programs wrote calls in this range. Each metric comes from one program:",
      null), h("ul", { class: "runs" }, metrics.map((m) => h("li", {}, `${m.metric}: `, h("code", {}, m.run)))));
    return null;
  }
  try {
    answer = await getJSON("/api/latency", { ...filters, metric, by, program: p.get("program") });
  } catch (err) {
    show(root, ...header(), errorMessage(err));
    return null;
  }
  if (stale()) return null;
  if (answer.empty || !answer.groups?.length) {
    const run = metrics.find((m) => m.metric === metric)?.run;
    show(root, ...header(), emptyMessage(answer.empty ? answer : { why: `no ${metric} calls in this range`, run },
      `${metric} latency`));
    return null;
  }
  const panels = answer.groups.map((g) => groupPanel(answer, g));
  const left = answer.left_out?.groups
    ? h("p", { class: "muted" }, `${count(answer.left_out.groups)} more groups (${count(answer.left_out.count)} calls) not drawn`) : null;
  show(root, ...header(),
    h("p", { class: "legend" }, "Heatmap: calls per time step and latency bucket (log2); lines: percentiles per step."),
    panels.map((x) => x.panel), left);
  // the first panels now, the others when scrolled to: ten groups are twenty charts, and
  // drawing those a reader has not reached would only delay the page
  panels.slice(0, EAGER).forEach((x) => x.draw());
  const later = new IntersectionObserver((seen) => {
    for (const entry of seen.filter((e) => e.isIntersecting)) {
      later.unobserve(entry.target);
      panels.find((x) => x.panel === entry.target)?.draw();
    }
  }, { rootMargin: "200px" });
  panels.slice(EAGER).forEach((x) => later.observe(x.panel));
  return () => { later.disconnect(); disposeAll(); };
}
