// The single-page shell: the navigation, the range and label filter (kept in the URL), and the
// router that draws one page per path. Every page is a module with `render(root, p)` that may
// return a cleanup function (timers, charts) called before the next page is drawn.
import "./style.css";
import { h, message, show } from "./view.js";
import { RANGES, DEFAULT_FROM, keptQuery, labelText, navigate, params, parseLabels, update, LABELS } from "./state.js";
import * as instances from "./pages/instances.js";
import * as servicemap from "./pages/map.js";
import * as latency from "./pages/latency.js";
import * as drops from "./pages/drops.js";
import * as flame from "./pages/flame.js";

const PAGES = [
  ["/instances", "Instances", instances],
  ["/map", "Service map", servicemap],
  ["/latency", "Latency", latency],
  ["/drops", "Drops and errors", drops],
  ["/flame", "Flame graphs", flame],
];

let cleanup = null;
let drawn = 0; // increases per draw, so a slow answer for a page left meanwhile is ignored

function pageFor(path) {
  if (path === "/" || path === "/index.html") return PAGES[0];
  return PAGES.find(([p]) => p === path.replace(/\/+$/, "")) || null;
}

function drawNav(current) {
  const nav = document.getElementById("nav");
  nav.replaceChildren(...PAGES.map(([path, title]) => h("a", {
    href: path + keptQuery(), class: current && current[0] === path ? "current" : null,
    onclick: (ev) => {
      if (ev.button !== 0 || ev.ctrlKey || ev.metaKey || ev.shiftKey) return;
      ev.preventDefault();
      navigate(path, new URLSearchParams(keptQuery()));
    },
  }, title)));
}

/** Seconds since the epoch -> the value of a datetime-local input (local time). */
function localInput(seconds) {
  const d = new Date(seconds * 1000);
  return new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 19);
}

function drawFilters() {
  const p = params();
  const from = p.get("from") || DEFAULT_FROM, to = p.get("to") || "now";
  const preset = to === "now" && RANGES.some(([v]) => v === from) ? from : "custom";
  const select = document.getElementById("range");
  select.replaceChildren(...RANGES.map(([v, text]) => h("option", { value: v }, text)),
    h("option", { value: "custom" }, "custom range"));
  select.value = preset;
  const custom = document.getElementById("custom");
  custom.hidden = preset !== "custom";
  const absolute = (v) => /^\d+(\.\d+)?$/.test(v);
  const fromBox = document.getElementById("from"), toBox = document.getElementById("to");
  const now = Date.now() / 1000;
  fromBox.value = localInput(absolute(from) ? Number(from) : now - 3600);
  toBox.value = localInput(absolute(to) ? Number(to) : now);
  document.getElementById("label").value = labelText(p);
  document.getElementById("filter-error").textContent = "";
}

function applyFilters(ev) {
  ev.preventDefault();
  const { found, bad } = parseLabels(document.getElementById("label").value);
  if (bad.length) {
    document.getElementById("filter-error").textContent =
      `not a label filter: ${bad.join(" ")} (write ${LABELS.map((k) => `${k}=VALUE`).join(", ")})`;
    return;
  }
  const range = document.getElementById("range").value;
  let from = range, to = null;
  if (range === "custom") {
    from = String(Math.floor(new Date(document.getElementById("from").value).getTime() / 1000));
    to = String(Math.ceil(new Date(document.getElementById("to").value).getTime() / 1000));
    if (from === "NaN" || to === "NaN") {
      document.getElementById("filter-error").textContent = "pick both ends of the custom range";
      return;
    }
  }
  const changes = { from, to };
  for (const key of LABELS) changes[key] = found[key] || null;
  update(changes);
}

async function draw() {
  if (cleanup) { try { cleanup(); } catch (err) { console.warn(err); } }
  cleanup = null;
  const page = pageFor(location.pathname);
  const root = document.getElementById("page");
  drawNav(page);
  drawFilters();
  // the instances page is live state: no time range or label filter applies to it
  document.getElementById("filters").hidden = !page || page[0] === "/instances";
  const mine = ++drawn;
  if (!page) {
    show(root, message("error", `No page at ${location.pathname}`,
      `The pages are ${PAGES.map(([p]) => p).join(", ")}.`, null));
    return;
  }
  document.title = `${page[1]} · bpfdepot`;
  show(root, h("p", { class: "loading" }, "Loading…"));
  root.dataset.page = page[0].slice(1);
  root.dataset.state = "loading";
  let done = null;
  try {
    done = await page[2].render(root, params(), () => mine !== drawn);
  } catch (err) {
    // a bug in this page, not bad input: say so plainly; the console keeps the details
    console.error(err);
    show(root, message("error", `The ${page[1].toLowerCase()} page failed to draw`,
      `${err.name}: ${err.message}`, "reload the page; if it happens again, report it with this URL"));
  }
  if (mine !== drawn) { if (typeof done === "function") done(); return; }
  cleanup = typeof done === "function" ? done : null;
  root.dataset.state = "ready";
  // a User Timing mark per drawn page: the browser's profiler (and bench/bench_ui_pages.py)
  // reads when the page had its data drawn
  performance.mark(`bpfdepot:ready:${page[0]}`);
}

document.getElementById("filters").addEventListener("submit", applyFilters);
document.getElementById("range").addEventListener("change", () => {
  document.getElementById("custom").hidden = document.getElementById("range").value !== "custom";
});
window.addEventListener("popstate", draw);
window.addEventListener("bpfdepot:navigate", draw);
draw();
