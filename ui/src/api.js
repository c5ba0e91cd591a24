// The JSON API of loader/ui/API.md: one GET helper that turns every failure into an ApiError
// carrying the server's own words (`error`, `fix`), so a page can show them instead of a trace.

/** A failed API call: what went wrong, how to fix it, and the HTTP status (0: no answer). */
export class ApiError extends Error {
  constructor(message, fix, status, path) {
    super(message);
    this.fix = fix || "";
    this.status = status;
    this.path = path;
  }
}

const BUILDING_WAIT_MS = 1000;
const BUILDING_TRIES = 600; // a first summing of a very large store takes minutes, not hours

/** GET `path` with `params` (an object of strings or arrays of strings; empty values left out).
 * While the server sums a large store for the first time (503 with `building`), it waits and
 * asks again, telling `onWait(progress)` how far the summing is. */
export async function getJSON(path, params = {}, onWait = null) {
  for (let tries = 1; ; tries += 1) {
    try {
      return await getOnce(path, params);
    } catch (err) {
      if (!err.building || tries >= BUILDING_TRIES) throw err;
      if (onWait) onWait(err.building);
      await new Promise((done) => setTimeout(done, BUILDING_WAIT_MS));
    }
  }
}

async function getOnce(path, params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    for (const one of [].concat(value)) {
      if (one !== undefined && one !== null && one !== "") query.append(key, String(one));
    }
  }
  const url = query.toString() ? `${path}?${query}` : path;
  let answer;
  try {
    answer = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
  } catch (err) {
    throw new ApiError(`the bpfdepot ui server did not answer ${path} (${err.message})`,
      "check that `bpfdepot ui` is still running, then reload the page", 0, path);
  }
  let body = null;
  try {
    body = await answer.json();
  } catch {
    throw new ApiError(`${path} answered HTTP ${answer.status} with something that is not JSON`,
      "the server at this address may not be bpfdepot ui: check the --listen address", answer.status, path);
  }
  if (!answer.ok || (body && body.error)) {
    const err = new ApiError(body?.error || `${path} answered HTTP ${answer.status}`, body?.fix,
      answer.status, path);
    err.building = answer.status === 503 && body?.building ? body.building : null;
    throw err;
  }
  return body;
}
