// Small DOM helpers and the number formats every page shares.

/** Create an element: h("td", {class: "n"}, "12"). Children may be strings, nodes or arrays. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** A message block: kind "empty" (no data: what to run) or "error" (what broke and the fix). */
export function message(kind, title, detail, command) {
  return h("section", { class: `message ${kind}`, role: kind === "error" ? "alert" : "status" },
    h("h2", {}, title),
    detail ? h("p", { class: "why" }, detail) : null,
    command ? h("p", { class: "run" }, kind === "error" ? "Fix: " : "Run: ", h("code", {}, command)) : null);
}

/** The page for an API failure: the server's message and fix, never a stack trace. */
export function errorMessage(err) {
  const status = err.status ? ` (HTTP ${err.status})` : "";
  return message("error", `Cannot show this page${status}`, err.message, err.fix || null);
}

/** The page for an answer with `empty: true`: why there is nothing, and what to run. */
export function emptyMessage(answer, what) {
  return message("empty", `No ${what} in this range`, answer.why, answer.run || null);
}

const GROUPED = new Intl.NumberFormat("en-US");

/** 12345 -> "12,345" (exact counts stay exact). */
export function count(n) {
  return n === null || n === undefined ? "–" : GROUPED.format(n);
}

/** Bytes as an exact count plus a binary-prefixed size: "8,000 B (7.8 KiB)". */
export function bytes(n) {
  if (n === null || n === undefined) return "–";
  return n < 1024 ? `${count(n)} B` : `${count(n)} B (${size(n)})`;
}

/** Bytes as a short binary-prefixed size: "7.8 KiB". */
export function size(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

/** A duration in ns as "251 µs", "1.20 ms", "2.5 s". */
export function duration(ns) {
  if (ns === null || ns === undefined) return "–";
  const steps = [[1e9, "s"], [1e6, "ms"], [1e3, "µs"]];
  for (const [scale, unit] of steps) {
    if (ns >= scale) return `${parseFloat((ns / scale).toPrecision(3))} ${unit}`; // 3 digits, no trailing zeros
  }
  return `${Math.round(ns)} ns`;
}

/** A percentage of a 0..1 rate, or "–" when the source program did not run. */
export function percent(rate) {
  return rate === null || rate === undefined ? "–" : `${(rate * 100).toFixed(1)}%`;
}

/** Wall-clock time of an ns timestamp, local: "10:01:05". */
export function clock(ns) {
  return new Date(ns / 1e6).toLocaleTimeString("en-GB", { hour12: false });
}

/** The range line under a page title: "10:01:05 – 10:16:05, 10 s steps". */
export function rangeLine(range) {
  if (!range) return "";
  return `${new Date(range.from_ns / 1e6).toLocaleString("en-GB")} – ${clock(range.to_ns)}` +
    (range.step_s ? `, ${range.step_s} s steps` : "");
}

/** An `onWait` for getJSON: while the server sums a large store for the first time, say so. */
export function waiting(root) {
  return (progress) => {
    const share = progress.total ? ` (${Math.floor((100 * progress.done) / progress.total)}%)` : "";
    root.replaceChildren(h("p", { class: "loading" },
      `The server is summing this store for the first time: ${count(progress.done)} of ` +
      `${count(progress.total)} rows${share}. The page appears when it is done.`));
  };
}

/** Replace `root`'s content with `children` (nodes, strings, arrays; null and false left out). */
export function show(root, ...children) {
  root.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
}

// Text from the store (process, unit and pod names are chosen by whoever runs the process) for
// the few places a library takes HTML, such as chart tooltips: never markup.
export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}
