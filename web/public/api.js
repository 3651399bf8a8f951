// REST calls of the chart page: JSON over fetch, with the API key when one was given.
// The key lives in this tab's sessionStorage (gone when the tab closes), never in localStorage,
// and never in a URL: REST sends it in X-API-Key, the WebSocket in its first message.
const KEY = "market-data.api-key";
const TEMPORARY = new Set(["provider_unavailable", "dependency_unavailable", "rate_limited"]);

export function apiKey() {
  return sessionStorage.getItem(KEY) || "";
}

export function setApiKey(key) {
  localStorage.removeItem(KEY); // where earlier versions of this page kept it
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  // status 0: the request never got an answer (the server is down or the network is gone).
  constructor(status, body, retryAfter = null) {
    const error = body && body.error;
    super(error ? `${error.code}: ${error.message}` : status ? `HTTP ${status}` : "the server cannot be reached");
    this.status = status;
    this.code = error ? error.code : status ? "http_error" : "unreachable";
    this.details = error && error.details ? error.details : null;
    this.retryAfter = retryAfter; // seconds, from Retry-After
  }

  // Worth asking again later (an outage, a rate limit), unlike a bad symbol or parameter.
  get temporary() {
    return this.status === 0 || TEMPORARY.has(this.code);
  }
}

// GET a JSON answer; with `withHeaders`, {body, headers}.
export async function getJSON(path, params = {}, withHeaders = false) {
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null) url.searchParams.set(name, value);
  }
  const headers = { Accept: "application/json" };
  const key = apiKey();
  if (key) headers["X-API-Key"] = key;
  let response;
  try {
    response = await fetch(url, { headers });
  } catch {
    throw new ApiError(0, null);
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const retryAfter = parseInt(response.headers.get("Retry-After") || "", 10);
    throw new ApiError(response.status, body, Number.isFinite(retryAfter) ? retryAfter : null);
  }
  return withHeaders ? { body, headers: response.headers } : body;
}

// Bars of a series. `query`: {start, end, limit}; answers the /ohlcv body, with `incomplete`
// true when the server said X-Data-Incomplete (the exchange failed: only stored bars came).
export async function ohlcv(sel, query) {
  const { body, headers } = await getJSON("/api/v1/ohlcv", { ...sel, ...query }, true);
  return { ...body, incomplete: headers.get("X-Data-Incomplete") === "true" };
}

// Every bar with start <= ts (< end when given), following `next` pages: a refetch after a seq
// gap, or the bars between what the page held and a reconnect's snapshot.
export async function ohlcvFrom(sel, start, maxPages = 5, end = undefined) {
  const rows = [];
  let next = start;
  for (let page = 0; next !== null && next !== undefined && page < maxPages; page++) {
    const answer = await ohlcv(sel, { start: next, end, limit: 1000 });
    rows.push(...answer.bars);
    next = answer.next;
  }
  return rows;
}
