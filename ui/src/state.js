// What a view shows lives in the URL, so a link reproduces it: the page is the path
// (/map, /latency, ...), the time range and label filters are query parameters the API reads
// as they are (`from`, `to`, `comm`, `unit`, `pod`, `namespace`; loader/ui/API.md), and each
// page adds its own (`by`, `metric`, `kind`, `edge`).

export const LABELS = ["comm", "unit", "pod", "namespace"];
export const RANGES = [["-15m", "last 15 minutes"], ["-1h", "last hour"], ["-6h", "last 6 hours"],
  ["-1d", "last day"], ["-7d", "last 7 days"]];
export const DEFAULT_FROM = "-15m";

/** The current query parameters. */
export function params() {
  return new URLSearchParams(location.search);
}

/** The parameters every API call of a page takes: the range and the label filters. */
export function common(p = params()) {
  const out = { from: p.get("from") || DEFAULT_FROM, to: p.get("to") || "now" };
  for (const label of LABELS) {
    const values = p.getAll(label);
    if (values.length) out[label] = values;
  }
  return out;
}

/** The query string that keeps the range and label filters (links between pages carry it). */
export function keptQuery(p = params()) {
  const kept = new URLSearchParams();
  for (const key of ["from", "to", ...LABELS]) {
    for (const value of p.getAll(key)) kept.append(key, value);
  }
  const text = kept.toString();
  return text ? `?${text}` : "";
}

/** Go to `path` with `p` (a URLSearchParams), as a new history entry; the router redraws. */
export function navigate(path, p) {
  const text = p.toString();
  history.pushState(null, "", text ? `${path}?${text}` : path);
  window.dispatchEvent(new Event("bpfdepot:navigate"));
}

function changed(changes) {
  const p = params();
  for (const [key, value] of Object.entries(changes)) {
    p.delete(key);
    for (const one of value === null || value === undefined ? [] : [].concat(value)) {
      if (one !== "") p.append(key, one);
    }
  }
  return p;
}

/** Change some parameters of the current page (null deletes one) and redraw. */
export function update(changes) {
  navigate(location.pathname, changed(changes));
}

/** Record a change the page has drawn itself (a new history entry, no redraw): the URL still
 * reproduces the view, and Back redraws the one before. */
export function remember(changes) {
  const text = changed(changes).toString();
  history.pushState(null, "", text ? `${location.pathname}?${text}` : location.pathname);
}

/** "comm=curl unit=a.service" -> {comm: ["curl"], unit: ["a.service"]}; unknown keys reported. */
export function parseLabels(text) {
  const found = {}, bad = [];
  for (const word of text.split(/[\s,]+/).filter(Boolean)) {
    const at = word.indexOf("=");
    const key = at > 0 ? word.slice(0, at) : "";
    if (!LABELS.includes(key) || at === word.length - 1) { bad.push(word); continue; }
    (found[key] ||= []).push(word.slice(at + 1));
  }
  return { found, bad };
}

/** The label filters of the URL as the text of the filter box. */
export function labelText(p = params()) {
  return LABELS.flatMap((key) => p.getAll(key).map((v) => `${key}=${v}`)).join(" ");
}
