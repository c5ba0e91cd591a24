// Page 5: CPU and off-CPU flame graphs from the stored stacks (d3-flame-graph: click a frame to
// zoom, the search box highlights matches), per label filter and time range. The tree comes
// aggregated from the server (loader/ui/API.md); kernel frames are drawn in a cooler hue.
import flamegraph from "d3-flame-graph";
import { select } from "d3-selection";
import { getJSON } from "../api.js";
import { common, update } from "../state.js";
import { count, duration, emptyMessage, errorMessage, h, rangeLine, show, waiting } from "../view.js";

const KINDS = [["cpu", "CPU (cpu_profile)"], ["offcpu", "off-CPU (offcpu)"]];

/** Warm colours for user frames, blue-green for kernel ones, grey for [lost stack]/[other]. */
function colour(node) {
  const d = node.data;
  if (d.name.startsWith("[")) return "#c8c8c8";
  let hash = 0;
  for (const ch of d.name) hash = (hash * 31 + ch.charCodeAt(0)) >>> 0;
  const shade = hash % 60;
  return d.kernel ? `hsl(${170 + shade / 2}, 45%, ${55 + shade / 6}%)` : `hsl(${10 + shade / 2}, 80%, ${55 + shade / 6}%)`;
}

export async function render(root, p, stale) {
  const kind = p.get("kind") || "cpu";
  const program = p.get("program");
  let answer;
  const params = { ...common(p), pid: p.get("pid") };
  if (program) params.program = program; else params.kind = kind;
  try {
    answer = await getJSON("/api/flamegraph", params, waiting(root));
  } catch (err) {
    show(root, h("h1", {}, "Flame graphs"), errorMessage(err));
    return null;
  }
  if (stale()) return null;
  const search = h("input", { id: "search", type: "search", placeholder: "search frames (regex)", size: 24 });
  const matched = h("span", { id: "matched", class: "muted" });
  const reset = h("button", { id: "reset", type: "button" }, "Reset zoom");
  const header = [
    h("h1", {}, "Flame graphs"),
    h("p", { class: "controls" }, "Profile ",
      h("select", { id: "kind", onchange: (ev) => update({ kind: ev.target.value, program: null }) },
        KINDS.map(([k, text]) => h("option", { value: k, selected: !program && k === kind }, text)),
        program ? h("option", { value: program, selected: true }, program) : null),
      " · ", rangeLine(answer.range)),
  ];
  if (answer.empty || !answer.total) {
    show(root, ...header, emptyMessage(answer.empty ? answer : {
      why: "no stack samples in this range", run: `sudo bpfdepot run bpf/${program || (kind === "cpu" ? "cpu_profile" : "offcpu")} --tsdb`,
    }, "stacks"));
    return null;
  }
  const unit = answer.unit === "ns" ? (v) => duration(v) : (v) => `${count(v)} samples`;
  const box = h("div", { id: "flame", class: "flame" });
  show(root, ...header,
    h("p", { class: "stats" }, `${unit(answer.total)} in ${count(answer.stacks)} distinct stacks · click a frame to zoom`),
    h("p", { class: "controls" }, search, " ", reset, " ", matched),
    box,
    h("p", { class: "legend" }, "Warm: user frames · blue-green: kernel frames · grey: [lost stack] and frames under the share shown ([other])"));
  const graph = flamegraph()
    .width(Math.max(600, (box.clientWidth || 1210) - 10)) // inside the box's padding
    .cellHeight(18)
    .minFrameSize(1)
    .transitionDuration(150)
    .sort(true)
    .selfValue(false)
    .setColorMapper((node, original) => (node.highlight ? "#e600e6" : colour(node) || original))
    .label((node) => `${node.data.name} — ${unit(node.value)} (${(100 * node.value / answer.total).toFixed(1)}%)`);
  select(box).datum(answer.tree).call(graph);
  search.addEventListener("input", () => {
    const term = search.value.trim();
    if (!term) { graph.clear(); matched.textContent = ""; return; }
    let valid = true;
    try { new RegExp(term); } catch { valid = false; }
    if (!valid) { matched.textContent = "not a regular expression"; return; }
    matched.textContent = "";
    graph.search(term); // its handler below writes the matched share
  });
  graph.setSearchHandler((results, sum, total) => {
    matched.textContent = `matched ${(100 * sum / total).toFixed(1)}% (${results.length} frames)`;
  });
  reset.addEventListener("click", () => graph.resetZoom());
  return () => graph.destroy();
}
