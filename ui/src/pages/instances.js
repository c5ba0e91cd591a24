// Page 1: what the node agent runs now — instances, their channels (received / lost),
// processors (kept / dropped / errors / restarts) and sinks (delivered / failed) — redrawn
// every POLL_MS; a count that changed since the last answer flashes.
import { getJSON } from "../api.js";
import { clock, count, errorMessage, h, message, show } from "../view.js";

const POLL_MS = 1500;

const COLUMNS = {
  channels: [["program"], ["channel"], ["received", true], ["lost", true]],
  processors: [["channel"], ["processor"], ["sent", true], ["kept", true], ["dropped", true],
    ["errors", true], ["lost", true], ["restarts", true]],
  sinks: [["sink"], ["delivered", true], ["failed", true], ["pending", true]],
};

/** One small table of an instance's channels, processors or sinks. */
function table(inst, kind, rows, previous) {
  if (rows === null || rows === undefined) {
    return h("p", { class: "muted" }, `${kind}: not reported by this agent`);
  }
  if (!rows.length) return h("p", { class: "muted" }, `${kind}: none`);
  const cols = COLUMNS[kind];
  return h("table", { class: `counts ${kind}` },
    h("caption", {}, kind),
    h("thead", {}, h("tr", {}, cols.map(([name, numeric]) => h("th", { class: numeric ? "n" : null }, name)))),
    h("tbody", {}, rows.map((row) => {
      const id = `${inst.name}/${kind}/${cols.filter(([, n]) => !n).map(([c]) => row[c]).join("/")}`;
      return h("tr", { "data-row": id }, cols.map(([name, numeric]) => {
        if (!numeric) return h("td", {}, row[name] ?? "");
        const key = `${id}/${name}`;
        const changed = previous.has(key) && previous.get(key) !== row[name];
        previous.set(key, row[name]);
        const bad = ["lost", "dropped", "errors", "failed", "restarts"].includes(name) && row[name] > 0;
        return h("td", { class: ["n", changed ? "changed" : "", bad ? "bad" : ""].join(" ").trim(),
          "data-count": key }, count(row[name]));
      }));
    })));
}

function instanceCard(inst, previous) {
  const facts = [
    inst.target, `generation ${inst.generation}`, `${inst.programs} program${inst.programs === 1 ? "" : "s"}`,
    inst.attach_ms != null ? `attached in ${inst.attach_ms} ms` : null,
    inst.since ? `since ${clock(inst.since * 1e9)}` : null,
    inst.adopted ? "adopted" : null, inst.pinned === false ? "not pinned" : null,
  ].filter(Boolean).join(" · ");
  return h("article", { class: `instance state-${inst.state}`, "data-instance": inst.name },
    h("h3", {}, inst.name, " ", h("span", { class: `badge ${inst.state}` }, inst.state)),
    h("p", { class: "muted" }, facts),
    inst.error ? h("p", { class: "bad" }, inst.error) : null,
    h("div", { class: "tables" },
      table(inst, "channels", inst.channels, previous),
      table(inst, "processors", inst.processors, previous),
      table(inst, "sinks", inst.sinks, previous)));
}

/** Draw the page and keep it live; returns the cleanup that stops polling. */
export async function render(root, _params, stale) {
  const previous = new Map(); // count cell -> last value, to flash changes
  let timer = null, stopped = false;

  async function poll() {
    let answer, failure = null;
    try {
      answer = await getJSON("/api/instances");
    } catch (err) {
      failure = err;
    }
    if (stopped || stale()) return;
    try {
      draw(answer, failure);
    } catch (err) { // a bug here must not stop the polling: say so and keep going
      console.error(err);
      show(root, message("error", "The instances page failed to draw", `${err.name}: ${err.message}`,
        "report it with the agent's `bpfdepot ps --json`"));
    }
    timer = setTimeout(poll, POLL_MS);
  }

  function draw(answer, failure) {
    if (failure) {
      show(root, errorMessage(failure));
    } else if (answer.empty) {
      show(root, h("h1", {}, "Instances"),
        message("empty", "No instances", answer.why, answer.run || null));
    } else {
      const list = answer.instances || [];
      show(root,
        h("h1", {}, "Instances"),
        h("p", { class: "muted", id: "updated" },
          `${answer.mode === "in-process" ? "this agent" : `agent pid ${answer.agent?.pid ?? "?"}`}` +
          ` · ${list.length} instance${list.length === 1 ? "" : "s"} · updated ${clock(answer.now_ns)}` +
          ` · every ${POLL_MS / 1000} s`),
        list.length ? list.map((inst) => instanceCard(inst, previous))
          : message("empty", "The agent runs no instances", null, "sudo bpfdepot load bpf/tcp_connlat"));
    }
  }

  await poll();
  return () => { stopped = true; clearTimeout(timer); };
}
